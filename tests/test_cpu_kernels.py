"""Numba CPU and Cython CPU kernels equal the reference bit for bit."""
import numpy as np
import pytest
import torch
from _codebooks import random_codebook

import workbench as wb
from workbench import codebooks as cbs
from workbench.backends import get_op, status

BACKENDS = [b for b in ("numba_cpu", "cython_cpu")]
DTYPES = [torch.float32, torch.float16, torch.bfloat16]
BLOCKSIZES = [32, 64, 128, 256, 512, 1024, 2048, 4096]


def _need(backend):
    ok, why = status(backend)
    if not ok:
        pytest.fail(f"{backend} unavailable: {why}")  # a build problem must not pass silently


def _inputs(rng, dtype, bs):
    for n in (1, 2, bs - 1, bs, bs + 1, 3 * bs + 17, 7919):
        yield n, (torch.randn(n, generator=rng) * 10 ** float(torch.empty(1).uniform_(-3, 3, generator=rng))).to(dtype)


def _special(dtype):
    """All-zero block, tiny (subnormal-scaled) and huge magnitudes, exact bounds, signed zeros."""
    big = 6e4 if dtype == torch.float16 else 1e30
    x = torch.cat([torch.zeros(64), torch.full((64,), 1e-6), torch.tensor([big, -big] * 32),
                   torch.tensor([-0.0, 0.0] * 32), torch.from_numpy(cbs.nf4().bounds).repeat(5)[:64]])
    return x.to(dtype)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("cbname", ["nf4", "fp4", "random4"])
def test_4bit_exact(rng, backend, dtype, cbname):
    _need(backend)
    cb = random_codebook(4, rng) if cbname == "random4" else cbs.get(cbname)
    q, dq = get_op(backend, "quantize_4bit"), get_op(backend, "dequantize_4bit")
    rq, rdq = get_op("reference", "quantize_4bit"), get_op("reference", "dequantize_4bit")
    table = cb.tensors()[0]
    for bs in BLOCKSIZES:
        for n, A in [*_inputs(rng, dtype, bs), (320, _special(dtype))]:
            before = A.clone()
            p, a = q(A, cb, bs)
            p_ref, a_ref = rq(A, cb, bs)
            assert torch.equal(p, p_ref), (bs, n)
            assert torch.equal(a, a_ref), (bs, n)
            for out_dtype in (dtype, torch.float32):
                assert torch.equal(dq(p, a, table, bs, n, out_dtype), rdq(p_ref, a_ref, table, bs, n, out_dtype)), (bs, n)
            assert torch.equal(A, before)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("cbname", ["dynamic", "dynamic-unsigned", "random8", "random3", "fp4", "sym32"])
def test_blockwise_exact(rng, backend, dtype, cbname):
    _need(backend)
    # sym32: symmetric, no zero value -> a bound at exactly 0.0 (signed-zero edge of the table search)
    sym = np.r_[-np.geomspace(1, 1e-3, 16), np.geomspace(1e-3, 1, 16)]
    cb = {"random8": lambda: random_codebook(8, rng), "random3": lambda: random_codebook(3, rng),
          "sym32": lambda: cbs.from_values(sym, "sym32")}.get(
        cbname, lambda: cbs.get(cbname))()
    q, dq = get_op(backend, "quantize_blockwise"), get_op(backend, "dequantize_blockwise")
    rq, rdq = get_op("reference", "quantize_blockwise"), get_op("reference", "dequantize_blockwise")
    table = cb.tensors()[0]
    for bs in BLOCKSIZES:
        for n, A in [*_inputs(rng, dtype, bs), (320, _special(dtype))]:
            before = A.clone()
            c, a = q(A, cb, bs)
            c_ref, a_ref = rq(A, cb, bs)
            assert torch.equal(A, before)
            assert torch.equal(c, c_ref), (bs, n, int((c != c_ref).sum()))
            assert torch.equal(a, a_ref), (bs, n)
            assert torch.equal(dq(c, a, table, bs, dtype), rdq(c_ref, a_ref, table, bs, dtype)), (bs, n)


def test_dense_codebook_falls_back_to_binary_search(rng):
    """Codebook with several bounds inside one float32 16-bit cell: the key-LUT plan can't be
    used; the binary-search plan must still be exact."""
    from workbench.codebook_tables import BSEARCH, cpu_search_plan as search_plan
    v = np.r_[np.linspace(-1, -0.5, 128), 0.5 + np.arange(127) * 1e-6, 1.0]
    cb = cbs.from_values(v, "dense")
    assert search_plan(cb).mode == BSEARCH
    A = (torch.rand(5000, generator=rng) * 2 - 1)
    A[::7] = 0.5 + torch.rand(715, generator=rng)[: A[::7].numel()] * 1.3e-4
    ref = get_op("reference", "quantize_blockwise")(A, cb, 256)
    for backend in BACKENDS:
        _need(backend)
        got = get_op(backend, "quantize_blockwise")(A, cb, 256)
        assert torch.equal(got[0], ref[0]) and torch.equal(got[1], ref[1])


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("quant_type", ["nf4", "fp4"])
def test_double_quant_matches_reference(rng, backend, quant_type):
    _need(backend)
    A = torch.randn(64 * 1000 + 33, generator=rng, dtype=torch.float32).to(torch.bfloat16)
    p, s = wb.quantize_4bit(A, quant_type=quant_type, compress_statistics=True, backend=backend)
    p2, s2 = wb.quantize_4bit(A, quant_type=quant_type, compress_statistics=True, backend="reference")
    assert torch.equal(p, p2) and torch.equal(s.absmax, s2.absmax) and torch.equal(s.state2.absmax, s2.state2.absmax)
    assert torch.equal(wb.dequantize_4bit(p, s, backend=backend), wb.dequantize_4bit(p2, s2, backend="reference"))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("cbname", ["dynamic", "random8", "random4", "fp4"])
def test_stochastic_equal_across_backends(rng, dtype, cbname):
    """Same rand -> same codes and absmax on reference, numba_cpu and cython_cpu."""
    cb = {"random8": lambda: random_codebook(8, rng), "random4": lambda: random_codebook(4, rng)}.get(
        cbname, lambda: cbs.get(cbname))()
    ref_op = get_op("reference", "quantize_blockwise_stochastic")
    for backend in BACKENDS:
        _need(backend)
    ops = {b: get_op(b, "quantize_blockwise_stochastic") for b in BACKENDS}
    for bs in (32, 256, 4096):
        for n, A in [*_inputs(rng, dtype, bs), (320, _special(dtype))]:
            rand = torch.rand(n, generator=rng)
            # rand values that sit exactly on the decision p, and 0 (always rounds up unless p == 0)
            rand[: min(n, 8)] = 0.0
            before = A.clone()
            ref = ref_op(A, cb, bs, rand)
            for b, op in ops.items():
                got = op(A, cb, bs, rand)
                assert torch.equal(got[0], ref[0]), (b, bs, n, int((got[0] != ref[0]).sum()))
                assert torch.equal(got[1], ref[1]), (b, bs, n)
            assert torch.equal(A, before)


@pytest.mark.parametrize("backend", ["reference", *BACKENDS])
def test_stochastic_rounding_unbiased(rng, backend):
    """Averaging many draws converges to the input (error << step); nearest rounding does not.
    The bound is a few standard errors: a biased rule (e.g. p computed from the wrong
    neighbour, or 1 - p) fails it."""
    if backend != "reference":
        _need(backend)
    x = torch.full((256,), 0.0123) * torch.linspace(0.5, 1.0, 256)
    x[0] = 1.0
    draws = torch.stack([wb.dequantize_blockwise(*wb.quantize_blockwise(
        x, blocksize=256, rounding="stochastic", generator=rng, backend=backend), backend=backend)
        for _ in range(400)])
    nearest = wb.dequantize_blockwise(*wb.quantize_blockwise(x, blocksize=256, backend=backend))
    step = 0.0031  # the dynamic map's spacing near 0.01
    err = (draws.mean(0) - x).abs()
    # std of the mean of 400 Bernoulli draws of one step <= step * 0.5 / 20 = 0.025 step
    assert err.max() < 0.15 * step
    assert (nearest - x).abs().max() > 4 * err.mean()
    # and each draw is one of the two bracketing values (never further than one step)
    assert ((draws - x).abs() <= step * 1.01).all()


def test_poisoned_outputs_fully_written(rng):
    """Kernels write into preallocated arrays: fill them with garbage first; every byte/value
    must be overwritten with the reference's."""
    import numpy as np
    from numba_kernels.cpu import quant as NK
    from workbench._native import quant_cpu as CK
    from workbench.codebook_tables import cpu_search_plan as search_plan
    for dtype, kind, npdt in ((torch.float32, 0, np.float32), (torch.bfloat16, 1, np.uint16), (torch.float16, 2, np.uint16)):
        for bs, n in ((64, 64 * 37 + 5), (4096, 4096 + 33), (32, 1)):
            A = torch.randn(n, generator=rng).to(dtype)
            x = A.numpy() if kind == 0 else A.view(torch.int16).numpy().view(np.uint16)
            nb = -(-n // bs)
            for cbname in ("nf4", "fp4"):
                cb = cbs.get(cbname)
                p = search_plan(cb)
                pr, ar = get_op("reference", "quantize_4bit")(A, cb, bs)
                table = cb.tensors()[0].numpy()
                dref = get_op("reference", "dequantize_4bit")(pr, ar, cb.tensors()[0], bs, n, dtype)
                dref_bits = dref.numpy() if kind == 0 else dref.view(torch.int16).numpy().view(np.uint16)
                for K in (NK, CK):
                    packed = np.full((n + 1) // 2, 0xA5, np.uint8)
                    absmax = np.full(nb, np.nan, np.float32)
                    K.quantize_4bit(x, kind, bs, p.bnd15, p.bucket_codes, p.identity, np.uint8(p.zero_code), p.cell_base,
                                    p.cell_bounds, p.cell_slots, packed, absmax)
                    assert np.array_equal(packed, pr.numpy()) and np.array_equal(absmax, ar.numpy())
                    out = np.full(n, 0x7FC1 if kind else np.nan, npdt)
                    K.dequantize_4bit(packed, absmax, table, bs, n, kind, out)
                    assert np.array_equal(out, dref_bits)
            cb = cbs.get("dynamic")
            p = search_plan(cb)
            cr, ar = get_op("reference", "quantize_blockwise")(A, cb, bs)
            rand = torch.rand(n, generator=rng)
            sr, _ = get_op("reference", "quantize_blockwise_stochastic")(A, cb, bs, rand)
            dref = get_op("reference", "dequantize_blockwise")(cr, ar, cb.tensors()[0], bs, dtype)
            dref_bits = dref.numpy() if kind == 0 else dref.view(torch.int16).numpy().view(np.uint16)
            for K in (NK, CK):
                codes = np.full(n, 0xA5, np.uint8)
                absmax = np.full(nb, np.nan, np.float32)
                K.quantize_blockwise(x, kind, bs, p.mode, p.bnd15, p.bucket_codes, p.kbound, p.kcode_lo, p.kcode_hi,
                                     p.bounds_pad, codes, absmax)
                assert np.array_equal(codes, cr.numpy()) and np.array_equal(absmax, ar.numpy())
                codes[:] = 0xA5
                absmax[:] = np.nan
                if True:
                    K.quantize_blockwise_ordlut(x, kind, bs, NK.ord_lut(cb.bounds, cb.bucket_codes), codes, absmax)
                    assert np.array_equal(codes, cr.numpy()) and np.array_equal(absmax, ar.numpy())
                codes[:] = 0xA5
                absmax[:] = np.nan
                K.quantize_blockwise_stochastic(x, kind, p.bounds_pad, p.bucket_codes, p.values, bs, rand.numpy(),
                                                codes, absmax)
                assert np.array_equal(codes, sr.numpy()) and np.array_equal(absmax, ar.numpy())
                out = np.full(n, 0x7FC1 if kind else np.nan, npdt)
                K.dequantize_blockwise(cr.numpy(), ar.numpy(), cb.tensors()[0].numpy(), bs, kind, out)
                assert np.array_equal(out, dref_bits)


def _cell_codebooks(rng):
    """Every registered 4-bit code, and random ones: values one ulp apart, values clustered so that a cell holds more
    bounds than the plan has slots (the count fallback), and codebooks with fewer than 16 entries."""
    import numpy as np
    out = [cbs.get(n) for n in cbs.names() if cbs.get(n).size <= 16]
    g = np.random.default_rng(int(torch.randint(0, 2**31, (1,), generator=rng)))
    for i in range(6):
        v = g.uniform(-1, 1, 16).astype(np.float32)
        if i == 1:
            v[:8] = g.uniform(0.0, 0.24, 8)          # one cell with 7+ bounds: no cell plan
        if i == 3:
            v = v[:5]                                # 5 entries, padded to 8 by repeating the largest
        v[0], v[-1] = -1.0, 1.0
        v = np.sort(v)
        if i == 2:
            v[4] = np.nextafter(v[3], np.float32(2))  # two values one ulp apart: a bound between them
        out.append(cbs.from_values(v, f"cells{i}", pad_to_pow2=i == 3))
    return out


def _cell_edges(cells):
    h = cells // 2
    return np.array([(c - h) / h for c in range(cells + 1)], np.float32)


def test_cell_plan_counts_the_bounds_below_every_value(rng):
    """The 4-bit cell plans (workbench/codebook_tables.py: _cell_plan; 8 cells for AVX2, 32 for AVX-512) give the
    count of bounds below s for the values where they could go wrong: every bound, its float32 neighbours, every
    cell edge and its neighbours, -0.0, +-1, and random values, for every code that has a plan."""
    from workbench.codebook_tables import CELLS, CELLS_512, cpu_search_plan
    g = np.random.default_rng(0)
    for cb in _cell_codebooks(rng):
        p = cpu_search_plan(cb)
        if cb.name == "cells1":
            assert p.cell_slots < 0
        elif not cb.name.startswith("cells"):
            assert 0 <= p.cell_slots <= 4, cb.name   # every registered 4-bit code takes the fast path
            assert 0 <= p.cells32[2] <= 2, cb.name    # and the AVX-512 one, in at most two compares
        for cells, base, bounds, slots in ((CELLS, p.cell_base, p.cell_bounds, p.cell_slots), (CELLS_512, *p.cells32)):
            if slots < 0:   # a cell with more bounds than slots: the kernels count all 15
                continue
            b = p.bnd15[np.isfinite(p.bnd15)]
            pts = np.concatenate([b, _cell_edges(cells), g.uniform(-1, 1, 4000).astype(np.float32),
                                  np.float32([-0.0, 0.0])])
            pts = np.concatenate([pts, np.nextafter(pts, np.float32(2)), np.nextafter(pts, np.float32(-2))])
            s = np.clip(pts, -1, 1).astype(np.float32)
            c = np.minimum(np.floor(s * np.float32(cells // 2)).astype(np.int64) + cells // 2, cells - 1)
            got = base[c] + sum((bounds[j * cells + c] < s).astype(np.int32) for j in range(slots))
            want = (p.bnd15[None, :] < s[:, None]).sum(1)
            assert np.array_equal(got, want), (cb.name, cells)


def _over_one_scales():
    """absmax values a with a * float32(1 / a) > 1 in float32, so that the block's +-a scale past +-1 and the clamp
    decides: only where 1 / a is subnormal (a >= 2**126); bf16 values, so that they are the absmax in bf16 too."""
    a = ((np.arange(255, dtype=np.uint32) + 0x7E80) << 16).view(np.float32)
    with np.errstate(over="ignore"):
        return a[(a * (np.float32(1) / a)).astype(np.float32) > 1][::6][:8]


def test_cython_4bit_every_path_equals_the_reference_at_bounds_and_edges(rng):
    """Every path of the Cython kernel (SIMD levels: AVX-512 with 32 cells, AVX2 with 8, the staged per-block path),
    directly and through the op: blocks whose absmax is 1 put every bound, its neighbours and every cell edge (8 and
    32 cells) exactly in front of the search; blocks whose scaled extremes pass +-1 (the clamp); blocks holding NaN
    or Inf among fast-path blocks; bf16/fp16/fp32, a tail block, non-identity codes (fp4), a codebook without a cell
    plan, blocksizes 32 and 64."""
    from workbench._native import quant_cpu as CK
    from workbench.codebook_tables import cpu_search_plan
    if not CK.HAS_CELLS:
        pytest.skip("no AVX2: the Cython kernel counts all 15 bounds")
    g = np.random.default_rng(1)
    over = _over_one_scales()
    assert len(over) == 8
    for cb in _cell_codebooks(rng):
        p = cpu_search_plan(cb)
        b = np.asarray(cb.bounds, np.float32)
        edges = np.concatenate([_cell_edges(8), _cell_edges(32)])
        pts = np.concatenate([b, edges, np.nextafter(b, np.float32(2)), np.nextafter(b, np.float32(-2)),
                              np.nextafter(edges, np.float32(2)), np.nextafter(edges, np.float32(-2)),
                              g.uniform(-1, 1, 700).astype(np.float32)])
        pts = np.clip(pts, -1, 1)
        pts = np.concatenate([pts, np.zeros((-len(pts)) % 63, np.float32)]).reshape(-1, 63)
        x = np.concatenate([pts, np.ones((len(pts), 1), np.float32)], 1)                              # absmax 1
        clamp = g.uniform(-1, 1, (16, 64)).astype(np.float32) * np.repeat(over, 2)[:, None]
        clamp[:, 5], clamp[:, 40] = np.repeat(over, 2), -np.repeat(over, 2)                           # +-absmax
        x = torch.from_numpy(np.concatenate([x.reshape(-1), clamp.reshape(-1)]))
        x[64 * 3 + 7], x[64 * 6 + 1], x[64 * 6 + 2] = float("nan"), float("inf"), -float("inf")       # non-finite
        x = torch.cat([x, x[:37]])                                                                        # a tail
        for dtype, kind in ((torch.float32, 0), (torch.bfloat16, 1), (torch.float16, 2)):
            A = x.to(dtype)
            xa = A.numpy() if kind == 0 else A.view(torch.int16).numpy().view(np.uint16)
            for bs in (32, 64):
                pr, ar = get_op("reference", "quantize_4bit")(A, cb, bs)
                for simd in range(CK.SIMD + 1):
                    packed = np.full(pr.numel(), 0xA5, np.uint8)
                    absmax = np.full(ar.numel(), -1.0, np.float32)
                    CK.quantize_4bit(xa, kind, bs, p.bnd15, p.bucket_codes, p.identity, np.uint8(p.zero_code),
                                     p.cell_base, p.cell_bounds, p.cell_slots, packed, absmax, p.cells32, simd)
                    assert np.array_equal(packed, pr.numpy()), (cb.name, dtype, bs, simd)
                    assert np.array_equal(absmax, ar.numpy(), equal_nan=True), (cb.name, dtype, bs, simd)
            pc, ac = get_op("cython_cpu", "quantize_4bit")(A, cb, 64)
            pr, ar = get_op("reference", "quantize_4bit")(A, cb, 64)
            assert torch.equal(pc, pr) and torch.equal(ac.isnan(), ar.isnan()), (cb.name, dtype)
            assert torch.equal(ac[~ac.isnan()], ar[~ar.isnan()]), (cb.name, dtype)


def test_cython_4bit_refuses_mismatched_buffers():
    """The entry point checks what its loops index: the element width against ``kind``, the packed and absmax
    lengths, the plans' sizes."""
    from workbench._native import quant_cpu as CK
    from workbench.codebook_tables import cpu_search_plan
    p = cpu_search_plan(cbs.get("nf4"))
    x = np.zeros(256, np.uint16)
    ok = dict(packed=np.zeros(128, np.uint8), absmax=np.zeros(4, np.float32))

    def call(x=x, kind=1, packed=ok["packed"], absmax=ok["absmax"], cells32=p.cells32):
        CK.quantize_4bit(x, kind, 64, p.bnd15, p.bucket_codes, p.identity, np.uint8(p.zero_code), p.cell_base,
                         p.cell_bounds, p.cell_slots, packed, absmax, cells32)

    call()
    for bad in (dict(kind=0), dict(x=np.zeros(256, np.float32)), dict(kind=3), dict(packed=np.zeros(127, np.uint8)),
                dict(absmax=np.zeros(3, np.float32)), dict(cells32=(p.cells32[0][:16], p.cells32[1], 1))):
        with pytest.raises(ValueError):
            call(**bad)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_compiled_4bit_dequantize_rounds_like_the_reference_at_every_scale(rng, dtype):
    """The Cython kernel rounds a block's 16 products 8 at a time (integer round-half-even for bf16, F16C for
    fp16), the scalar rule for a non-finite absmax: absmax from fp16-subnormal to fp16-overflow magnitudes,
    NaN and Inf, every code, equal to the reference bit for bit (NaN where it is NaN)."""
    cb = cbs.get("nf4")
    table = cb.tensors()[0]
    nb, bs = 200, 64
    packed = torch.randint(0, 256, (nb * bs // 2,), dtype=torch.uint8, generator=rng)
    absmax = torch.exp2(torch.empty(nb).uniform_(-30, 20, generator=rng)) * torch.rand(nb, generator=rng)
    absmax[:4] = torch.tensor([float("nan"), float("inf"), 0.0, 65504.0])
    # ties for the code 1.0 (NF4's last value): half-way in bf16 (low 16 bits 0x8000) and in fp16 (low 13 bits
    # 0x1000), each with an even and an odd kept bit, so round-half-to-even shows
    ties = torch.tensor([0x3F808000, 0x3F818000, 0x40008000, 0x40018000, 0x3F801000, 0x3F803000, 0x41201000,
                         0x41203000], dtype=torch.int32)
    absmax[4:12] = ties.view(torch.float32)
    packed[2 * 32: 12 * 32] = 0xFF   # blocks 2..11: every code 15 (1.0)
    want = get_op("reference", "dequantize_4bit")(packed, absmax, table, bs, nb * bs - 3, dtype)
    for backend in ("cython_cpu", "numba_cpu"):
        if not status(backend)[0]:
            continue
        got = get_op(backend, "dequantize_4bit")(packed, absmax, table, bs, nb * bs - 3, dtype)
        nan = want.isnan()   # NaN payloads are not part of the spec (the NaN-absmax block)
        assert torch.equal(got.isnan(), nan), backend
        assert torch.equal(got[~nan].view(torch.int16), want[~nan].view(torch.int16)), backend


def test_public_calls_go_through_torch_ops_where_something_must_see_them(rng):
    """A plain eager call on CPU (or CUDA) tensors runs the backend's kernel directly (ops._eager); under a dispatch
    mode, a function mode or the profiler the public 4-bit, blockwise, int8, k-bit and matmul calls go through
    torch.ops.workbench, where each of them sees the op. The results are the same either way, bit for bit."""
    from _modes import DispatchSeen, FunctionSeen
    from workbench import ops as O

    from workbench import int8 as I8
    from workbench import kbit as KB

    A = (torch.randn(64 * 70 + 33, generator=rng) * 3).to(torch.bfloat16)
    X = (torch.randn(33, 70, generator=rng) * 3).to(torch.float16)
    X[:, 5] = 9   # an outlier column
    Wm = torch.randn(24, 128, generator=rng).to(torch.bfloat16)
    Am = torch.randn(40, 128, generator=rng).to(torch.bfloat16)   # 40 rows: the general path (no one-call GEMV)
    ops = ("quantize_4bit", "dequantize_4bit", "quantize_blockwise", "dequantize_blockwise", "int8_vectorwise_quant",
           "int8_vectorwise_dequant", "int8_double_quant", "int8_linear_matmul", "int8_mm_dequant", "outlier_columns",
           "quantize_kbit", "dequantize_kbit", "quantize_kbit_affine", "dequantize_kbit_affine", "gemm_4bit")

    def run():
        p, s = wb.quantize_4bit(A, blocksize=64, quant_type="nf4")
        c, s8 = wb.quantize_blockwise(A, blocksize=256)
        q, rs, cols = I8.int8_vectorwise_quant(X, 6.0)
        cq, _, crs, ccs, _ = I8.int8_double_quant(X)
        acc = I8.int8_linear_matmul(cq, q)
        kp, ks = KB.quantize_kbit(A, k=3)
        ap, as_ = KB.quantize_kbit(A, k=5, affine="minmax")
        pm, sm = wb.quantize_4bit(Wm, blocksize=64, compress_statistics=True)
        return (p, s.absmax, wb.dequantize_4bit(p, s), c, s8.absmax, wb.dequantize_blockwise(c, s8), q, rs, cols,
                I8.int8_vectorwise_dequant(q, rs), acc, I8.int8_mm_dequant(acc, crs, rs), I8.outlier_columns(X, 6.0),
                kp, ks.scales, KB.dequantize_kbit(kp, ks), ap, as_.scales, as_.zeros, KB.dequantize_kbit(ap, as_),
                wb.matmul_4bit(Am, pm, sm))

    assert O._eager(A) and not O._eager(torch.nn.Parameter(A.float()))
    want = run()
    for mode in (DispatchSeen(), FunctionSeen()):
        with mode:
            assert not O._eager(A)
            got = run()
        assert all(torch.equal(g, w) for g, w in zip(got, want)), type(mode).__name__
        assert all(any(f"workbench.{op}" in s for s in mode.seen) for op in ops), (type(mode).__name__, mode.seen)
    with torch.profiler.profile() as prof:
        assert not O._eager(A)
        got = run()
    assert all(torch.equal(g, w) for g, w in zip(got, want))
    keys = {e.key for e in prof.key_averages()}
    assert all(f"workbench::{op}" in keys for op in ops), keys
