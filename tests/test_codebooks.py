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
