import numpy as np
import pytest
import torch

import workbench as wb
from workbench import codebooks as cbs
from workbench.codebooks import CodebookError


@pytest.mark.parametrize("name", cbs.names())
def test_registered_codebooks_are_well_formed(name):
    cb = cbs.get(name)
    assert cb.table.dtype == np.float32 and cb.bounds.dtype == np.float32 and cb.bucket_codes.dtype == np.uint8
    assert cb.size == 2 ** cb.bits and 1 <= cb.bits <= 8
    assert len(cb.bounds) == len(cb.bucket_codes) - 1
    assert np.all(np.diff(cb.bounds) > 0), "bounds strictly increasing"
    assert np.all(np.diff(cb.values) >= 0), "bucket values ascending"
    assert np.all(np.abs(cb.table) <= 1.0)
    # every bucket's own value quantizes back into that bucket
    back = cb.quantize_normalized(cb.values)
    assert np.array_equal(cb.table[back], cb.values)


def test_fp4_follows_bnb_cpu_sign_of_zero():
    cb = cbs.fp4()
    assert list(cb.quantize_normalized(np.array([-1e-4, 0.0, 1e-4], np.float32))) == [0, 0, 8]
    assert cb.table[8] == 0.0 and np.signbit(cb.table[8])


def test_registry():
    assert cbs.get("NF4") is cbs.get("nf4")
    with pytest.raises(KeyError, match="registered: "):
        cbs.get("nf5")
    with pytest.raises(CodebookError, match="already registered"):
        cbs.register("nf4", cbs.nf4())
    mine = cbs.from_values(np.linspace(-1, 1, 16), "my-linear4")
    cbs.register("my-linear4-test", mine, overwrite=True)
    assert cbs.get("my-linear4-test") is mine
    assert "my-linear4-test" in cbs.describe(mine) or "my-linear4" in cbs.describe(mine)


def test_from_values_pads_and_rejects():
    cb = cbs.from_values(np.linspace(-1, 1, 15), "odd", pad_to_pow2=True)
    assert cb.size == 16 and len(cb.bucket_codes) == 15
    with pytest.raises(CodebookError, match="empty"):
        cbs.from_values([])
    with pytest.raises(CodebookError):
        cbs.from_values(np.linspace(-1, 1, 512))


def _mse(cb, data, bs=64):
    p, s = wb.quantize_4bit(torch.from_numpy(data), blocksize=bs, codebook=cb, backend="reference")
    out = wb.dequantize_4bit(p, s, backend="reference").numpy()
    return float(np.mean((out - data) ** 2))


def test_lloyd_max_beats_nf4_on_its_own_distribution():
    rng = np.random.default_rng()
    train, test = rng.standard_normal(1 << 17).astype(np.float32), rng.standard_normal(1 << 17).astype(np.float32)
    lm = cbs.lloyd_max(train, bits=4, blocksize=64)
    assert lm.size == 16 and lm.values[0] == -1.0 and lm.values[-1] == 1.0
    assert _mse(lm, test) < _mse(cbs.nf4(), test) * 1.0
    assert _mse(cbs.nf4(), test) < _mse(cbs.get("int4-asym"), test)


def test_quantile_and_student_t_builders():
    rng = np.random.default_rng()
    q = cbs.quantile(rng.laplace(size=50_000), bits=4, blocksize=64)
    assert q.size == 16 and np.all(np.diff(q.values) > 0)
    t = cbs.student_t(5.0)
    assert t.size == 16 and t.values[0] == -1.0 and t.values[-1] == 1.0
    e = cbs.e2m1()
    assert sorted(set(np.round(e.values * 6, 6))) == [-6, -4, -3, -2, -1.5, -1, -0.5, 0, 0.5, 1, 1.5, 2, 3, 4, 6]


def test_user_codebook_runs_through_4bit_and_8bit(rng):
    cb = cbs.from_values(np.sort(np.r_[-1.0, 1.0, np.random.default_rng().uniform(-0.99, 0.99, 14)]), "random16")
    A = torch.randn(1000, generator=rng)
    p, s = wb.quantize_4bit(A, codebook=cb)
    assert s.quant_type == "random16"
    out = wb.dequantize_4bit(p, s)
    assert out.shape == A.shape
    # each output equals table[nearest] * absmax of its block
    am = s.absmax.repeat_interleave(64)[:1000]
    codes = cb.quantize_normalized(torch.clamp(A * (1 / am[:1000]), -1, 1).numpy())
    tail = 1000 - 1000 % 64
    codes[tail:] = cb.quantize_normalized(torch.clamp(A[tail:] / s.absmax[-1], -1, 1).numpy())
    assert torch.equal(out, torch.from_numpy(cb.table[codes]) * am)
    cb8 = cbs.from_values(np.linspace(-1, 1, 8), "lin3")
    c, s8 = wb.quantize_blockwise(A, codebook=cb8, blocksize=128)
    assert int(c.max()) < 8


# ---------------------------------------------------------------- hand-built Codebook validation

def _parts(name="nf4"):
    cb = cbs.get(name)
    return dict(name="hand", table=cb.table.copy(), bounds=cb.bounds.copy(), bucket_codes=cb.bucket_codes.copy())


def _bad(match, **changes):
    kw = _parts()
    kw.update(changes)
    with pytest.raises(CodebookError, match=match):
        cbs.Codebook(**kw)


def test_hand_built_codebook_accepts_the_builtins_fields():
    for name in ("nf4", "fp4", "dynamic", "e2m1", "linear4"):
        kw = _parts(name)
        cb = cbs.Codebook(**kw)
        assert np.array_equal(cb.table, kw["table"]) and np.array_equal(cb.bounds, kw["bounds"])
    strided = np.repeat(cbs.nf4().table, 2)[::2]  # a non-contiguous view is stored contiguous
    assert cbs.Codebook("s", strided, cbs.nf4().bounds, cbs.nf4().bucket_codes).table.flags.c_contiguous


def test_hand_built_codebook_rejects_bad_bounds():
    b = _parts()["bounds"]
    _bad(r"bounds: expected strictly increasing thresholds; bounds\[1\]", bounds=b[::-1].copy())
    dup = b.copy()
    dup[4] = dup[3]
    _bad(r"strictly increasing.*bounds\[4\]", bounds=dup)
    for v in (np.nan, np.inf, -np.inf):
        nb = b.copy()
        nb[7] = v
        _bad(r"bounds: values must be finite .*bounds\[7\]", bounds=nb)
    _bad(r"bounds: expected len\(bucket_codes\) - 1 = 15 thresholds, got 16", bounds=np.append(b, np.float32(1.0)))
    _bad(r"bounds: expected len\(bucket_codes\) - 1 = 15 thresholds, got 14", bounds=b[:-1].copy())
    _bad(r"bounds: expected dtype float32, got float64", bounds=b.astype(np.float64))


def test_hand_built_codebook_rejects_bad_bucket_codes():
    c = _parts()["bucket_codes"]
    out = c.copy()
    out[5] = 16  # would be packed into the neighbouring nibble
    _bad(r"bucket_codes: codes index the 16-entry table, expected values in 0..15; bucket_codes\[5\] = 16",
         bucket_codes=out)
    _bad(r"bucket_codes: expected 1..16 buckets", bucket_codes=np.arange(17, dtype=np.uint8) % 16,
         bounds=np.linspace(-0.9, 0.9, 16).astype(np.float32))
    _bad(r"bucket_codes: expected 1..16 buckets", bucket_codes=c[:0], bounds=np.zeros(0, np.float32))
    _bad(r"bucket_codes: expected dtype uint8, got int64", bucket_codes=c.astype(np.int64))
    _bad(r"bucket_codes: expected a 1-D numpy.ndarray of uint8, got list", bucket_codes=c.tolist())


def test_hand_built_codebook_rejects_bad_tables():
    t = _parts()["table"]
    _bad(r"table: expected 2\*\*k float32 values with 1 <= k <= 8, got 15", table=t[:15].copy())
    _bad(r"got 512", table=np.linspace(-1, 1, 512).astype(np.float32))
    _bad(r"got 1\b", table=t[:1].copy())
    _bad(r"table: expected dtype float32, got float64", table=t.astype(np.float64))
    _bad(r"table: expected a 1-D array, got shape \(4, 4\)", table=t.reshape(4, 4))
    for v in (np.nan, np.inf):
        bad = t.copy()
        bad[3] = v
        _bad(r"table: values must be finite; table\[3\]", table=bad)
    _bad(r"codebook name: expected a str", name=None)
    _bad(r"meta: expected a dict", meta=[1])


def test_unknown_name_is_a_codebook_error_and_a_key_error():
    for exc in (CodebookError, KeyError):
        with pytest.raises(exc, match="unknown name 'nf5'; registered: "):
            cbs.get("nf5")


def test_builtin_construction_stays_fast():
    import time
    cbs.get("dynamic")
    t = time.perf_counter()
    for _ in range(200):
        cbs.Codebook("d", *(getattr(cbs.get("dynamic"), f) for f in ("table", "bounds", "bucket_codes")))
    assert (time.perf_counter() - t) / 200 < 2e-3  # validation is a few O(256) NumPy checks


def test_kernel_tables_are_cached_per_codebook(monkeypatch):
    """Every codebook -> kernel-table builder (workbench/codebook_tables.py) builds once per codebook
    (and device): the second call returns the same object, another codebook gets its own table."""
    from workbench import codebook_tables as ct
    cpu = torch.device("cpu")
    # fresh objects (not the registry's), so no earlier test has filled their caches
    a = cbs.from_dict(cbs.get("dynamic").to_dict())
    b = cbs.from_values(np.linspace(-1, 1, 256, dtype=np.float32), "linear256")
    builders = {
        "cpu_search_plan": lambda cb: ct.cpu_search_plan(cb),
        "cpu_ord_lut": lambda cb: ct.cpu_ord_lut(cb),
        "cuda_quant_arrays": lambda cb: ct.cuda_quant_arrays(cb),
        "numba_cuda_fine": lambda cb: ct.numba_cuda_fine(cb, cpu),
        "numba_cuda_tree": lambda cb: ct.numba_cuda_tree(cb, cpu, 8),
        "optim_cell_plan": lambda cb: ct.optim_cell_plan(cb, cpu),
        "bnb_table_256": lambda cb: ct.bnb_table_256(cb, cpu),
    }
    for name, build in builders.items():
        first = build(a)
        assert first is not None, name
        assert build(a) is first, f"{name}: rebuilt on the second call"
        assert build(b) is not first, f"{name}: another codebook got the first one's table"
    assert {k[0] for k in a._kernel_tables} == set(builders)
    c = cbs.from_dict(cbs.get("nf4").to_dict())
    assert ct.numba_cuda_tree(c, cpu, 4) is not ct.numba_cuda_tree(c, cpu, 8)   # the depth is part of the key
    # the CPU search modes are the kernels' own
    from numba_kernels.cpu import quant as NK
    assert (ct.LINEAR, ct.KEYLUT, ct.BSEARCH) == (NK.LINEAR, NK.KEYLUT, NK.BSEARCH)
    # a None answer (a codebook too dense for the fine table) is cached too, not rebuilt on every call
    calls = []
    monkeypatch.setattr(ct, "_build_numba_cuda_fine", lambda cb, dev: calls.append(dev))
    assert ct.numba_cuda_fine(c, cpu) is None and ct.numba_cuda_fine(c, cpu) is None
    assert calls == [cpu]
