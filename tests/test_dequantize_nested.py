"""dequantize_4bit of a double-quantized state: the op takes the nested absmax (absmax_8bit, absmax_code,
absmax_offset, as gemm_4bit does) and each backend decodes it itself. Every CPU backend gives the bits of the
two-step form (the scales by dequantize_blockwise plus the offset in float32, then the plain 4-bit dequantizer),
into poisoned outputs; the validation remembered on the state follows in-place changes and replaced tensors."""
import pytest
import torch
from _poison import bits, poison_empty

import workbench as wb
from workbench import codebooks as cbs
from workbench.backends import status
from workbench.backends.reference import quant as R
from workbench.ops import _nested_args

BACKENDS = ("reference", "numba_cpu", "cython_cpu", "bnb")
DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def _need(backend):
    ok, why = status(backend)
    if not ok and backend == "bnb":   # the oracle is an optional extra
        pytest.skip(f"bnb: {why}")
    assert ok, f"{backend} unavailable: {why}"   # a build problem must not pass silently


def _two_step(P, qs, dtype):
    """The spec written as bitsandbytes' functional.dequantize_4bit does it."""
    scales = wb.dequantize_blockwise(qs.absmax, qs.state2, backend="reference") + qs.offset.float()
    n = qs.shape.numel()
    return R.dequantize_4bit(P.view(-1).view(torch.uint8), scales, qs.code.float(), qs.blocksize, n, dtype)


def _state(rng, n, bs, qt="nf4"):
    W = torch.randn(n, generator=rng) * 3
    W[torch.randint(0, n, (max(1, n // 40),), generator=rng)] *= 30
    return wb.quantize_4bit(W, blocksize=bs, quant_type=qt, compress_statistics=True, backend="reference")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("bs", (32, 64, 4096))
def test_nested_dequantize_gives_the_two_step_bits(backend, bs, rng, monkeypatch):
    _need(backend)
    poison_empty(monkeypatch)
    # a partial last block, and a partial last group of 256 blocks
    for n in (bs * 256 + bs * 3 + 5, bs * 7 + 1):
        P, qs = _state(rng, n, bs, "fp4" if n % 2 else "nf4")
        for dtype in DTYPES:
            got, want = wb.dequantize_4bit(P, qs, dtype=dtype, backend=backend).view(-1), _two_step(P, qs, dtype)
            if backend == "bnb":   # its CPU kernel writes +0 for FP4's -0 code (workbench/parity.py), else equal
                assert torch.equal(got, want), (backend, n, dtype)
            else:
                assert torch.equal(bits(got), bits(want)), (backend, n, dtype)


@pytest.mark.parametrize("backend", ("reference", "numba_cpu", "cython_cpu"))
def test_the_op_takes_the_nested_arguments(backend, rng):
    """torch.ops.workbench.dequantize_4bit with the nested three, as the public call passes them."""
    _need(backend)
    P, qs = _state(rng, 64 * 300 + 7, 64)
    a2, a8, c2, off = _nested_args(qs, backend)
    n = qs.shape.numel()
    out = torch.ops.workbench.dequantize_4bit(P.view(-1), a2, qs.code, 64, n, torch.bfloat16, a8, c2, off, backend)
    assert torch.equal(bits(out), bits(_two_step(P, qs, torch.bfloat16)))


@pytest.mark.parametrize("backend", ("numba_cpu", "cython_cpu"))
def test_the_remembered_validation_follows_the_state(backend, rng):
    """The second call reuses the first one's checks (the memo); the nested tensors changed in place, or a new
    state2 put in, are what the next call decodes."""
    _need(backend)
    P, qs = _state(rng, 64 * 600 + 9, 64)
    first = wb.dequantize_4bit(P, qs, backend=backend)
    assert qs.memo is not None   # remembered: the nested tensors are the state's own
    assert torch.equal(wb.dequantize_4bit(P, qs, backend=backend), first)
    qs.state2.absmax.mul_(3)
    qs.offset.add_(0.125)
    qs.absmax[5] ^= 0x11
    assert torch.equal(wb.dequantize_4bit(P, qs, backend=backend), _two_step(P, qs, torch.float32))
    _, other = _state(rng, 64 * 600 + 9, 64)
    qs.state2, qs.offset, qs.absmax = other.state2, other.offset, other.absmax
    assert torch.equal(wb.dequantize_4bit(P, qs, backend=backend), _two_step(P, qs, torch.float32))


@pytest.mark.parametrize("backend", ("reference", "numba_cpu", "cython_cpu"))
def test_other_nestings_are_resolved_before_the_op(backend, rng):
    """A second level of another blocksize (the kernels decode bitsandbytes' 256) and one whose code has fewer than
    256 entries (padded for the uint8 index, never read past its codes)."""
    _need(backend)
    P, qs = _state(rng, 64 * 700 + 3, 64)
    scales = wb.dequantize_blockwise(qs.absmax, qs.state2, backend="reference") + qs.offset.float()
    for nested_bs, code in ((128, None), (256, cbs.get("nf4"))):
        q, s2 = wb.quantize_blockwise(scales - qs.offset, blocksize=nested_bs, codebook=code, backend="reference")
        qs.absmax, qs.state2 = q, s2
        got = wb.dequantize_4bit(P, qs, backend=backend)
        assert torch.equal(bits(got.view(-1)), bits(_two_step(P, qs, torch.float32))), (nested_bs, code)
