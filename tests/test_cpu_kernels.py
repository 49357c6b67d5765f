"""Numba CPU and Cython CPU kernels equal the reference bit for bit."""
import numpy as np
import pytest
import torch

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


def _random_codebook(bits, rng):
    v = np.sort(np.random.default_rng(int(torch.randint(0, 2**31, (1,), generator=rng))).uniform(-0.98, 0.98, 2**bits - 2))
    return cbs.from_values(np.r_[-1.0, v, 1.0], f"random{bits}")


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
    cb = _random_codebook(4, rng) if cbname == "random4" else cbs.get(cbname)
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
@pytest.mark.parametrize("cbname", ["dynamic", "dynamic-unsigned", "random8", "random3", "fp4"])
def test_blockwise_exact(rng, backend, dtype, cbname):
    _need(backend)
    cb = {"random8": lambda: _random_codebook(8, rng), "random3": lambda: _random_codebook(3, rng)}.get(
        cbname, lambda: cbs.get(cbname))()
    q, dq = get_op(backend, "quantize_blockwise"), get_op(backend, "dequantize_blockwise")
    rq, rdq = get_op("reference", "quantize_blockwise"), get_op("reference", "dequantize_blockwise")
    table = cb.tensors()[0]
    for bs in BLOCKSIZES:
        for n, A in [*_inputs(rng, dtype, bs), (320, _special(dtype))]:
            c, a = q(A, cb, bs)
            c_ref, a_ref = rq(A, cb, bs)
            assert torch.equal(c, c_ref), (bs, n, int((c != c_ref).sum()))
            assert torch.equal(a, a_ref), (bs, n)
            assert torch.equal(dq(c, a, table, bs, dtype), rdq(c_ref, a_ref, table, bs, dtype)), (bs, n)


def test_dense_codebook_falls_back_to_binary_search(rng):
    """Codebook with several bounds inside one float32 16-bit cell: the key-LUT plan can't be
    used; the binary-search plan must still be exact."""
    from workbench.backends._cpu_common import BSEARCH, search_plan
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
def test_stochastic_rounding_equal_and_unbiased(rng, dtype):
    cb = cbs.get("dynamic")
    A = (torch.randn(40_000, generator=rng) * 2).to(dtype)
    rand = torch.rand(A.numel(), generator=rng)
    ref = get_op("reference", "quantize_blockwise_stochastic")(A, cb, 256, rand)
    got = get_op("numba_cpu", "quantize_blockwise_stochastic")(A, cb, 256, rand)
    assert torch.equal(got[0], ref[0]) and torch.equal(got[1], ref[1])
    # unbiased: averaging many draws of one block converges to the input, nearest rounding does not
    x = torch.full((256,), 0.0123) * torch.linspace(0.5, 1.0, 256)
    x[0] = 1.0
    draws = torch.stack([wb.dequantize_blockwise(*wb.quantize_blockwise(
        x, blocksize=256, rounding="stochastic", generator=rng)) for _ in range(400)])
    nearest = wb.dequantize_blockwise(*wb.quantize_blockwise(x, blocksize=256))
    step = 0.0031  # the dynamic map's spacing near 0.01
    assert (draws.mean(0) - x).abs().max() < 0.25 * step
    assert (nearest - x).abs().max() > (draws.mean(0) - x).abs().max()
