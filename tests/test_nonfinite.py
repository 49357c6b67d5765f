"""NaN / +-Inf inputs (nan_policy="propagate") on the compiled CPU backends equal the reference bit
for bit, and a block's absmax is non-finite exactly when the block holds a NaN or an Inf (the
public API uses absmax as the non-finite flag instead of a pass over the data).

The spec (workbench/backends/reference/quant.py, docs/ARCHITECTURE.md): absmax propagates NaN,
the tail's 1e-38 clamp keeps NaN/Inf, torch.bucketize puts NaN after every bound."""
import numpy as np
import pytest
import torch
from _codebooks import random_codebook

from workbench import codebooks as cbs
from workbench.backends import get_op, status

BACKENDS = ["numba_cpu", "cython_cpu"]
DTYPES = [torch.float32, torch.float16, torch.bfloat16]
NAN, INF = float("nan"), float("inf")


def _need(backend):
    ok, why = status(backend)
    if not ok:
        pytest.fail(f"{backend} unavailable: {why}")


def _bits_equal(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Equal, with NaN == NaN (any payload) and +0 != -0 kept apart for finite values."""
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    na, nb = torch.isnan(a), torch.isnan(b)
    if not torch.equal(na, nb):
        return False
    a, b = a.masked_fill(na, 0), b.masked_fill(nb, 0)
    return torch.equal(a.float().view(torch.int32), b.float().view(torch.int32))


def _codebook(name, rng):
    if name == "random8":
        return random_codebook(8, rng)
    if name == "random3":
        return cbs.from_values(np.r_[-1.0, np.sort(torch.rand(6, generator=rng).numpy() * 1.9 - 0.95), 1.0], "random3")
    if name == "dense":  # several bounds per 16-bit float cell: the binary-search plan
        return cbs.from_values(np.r_[np.linspace(-1, -0.5, 128), 0.5 + np.arange(127) * 1e-6, 1.0], "dense")
    return cbs.dynamic() if name == "dynamic" else cbs.get(name)


def _poisoned(rng, dtype, bs):
    """Fresh random data of an odd size (full blocks + a tail) with NaN, +Inf, -Inf planted in
    some full blocks and in the tail, and a block with both; returns (A, set of poisoned blocks)."""
    nfull = int(torch.randint(3, 9, (1,), generator=rng))
    tail = int(torch.randint(1, bs, (1,), generator=rng))
    n = nfull * bs + tail
    scale = 10 ** float(torch.empty(1).uniform_(-3, 3, generator=rng))
    A = (torch.randn(n, generator=rng) * scale).to(dtype)
    nb = nfull + 1
    # block 0 clean; 1: NaN; 2: +Inf; 3 (if any): -Inf and NaN; others random; tail random kind
    plan = {1: [NAN], 2: [INF]}
    if nfull > 3:
        plan[3] = [-INF, NAN]
    for b in range(4, nb):
        pick = int(torch.randint(0, 5, (1,), generator=rng))
        plan[b] = [[], [NAN], [INF], [-INF], [INF, -INF]][pick]
    for b, vals in plan.items():
        start = b * bs
        L = min(bs, n - start)
        for v in vals:
            A[start + int(torch.randint(0, L, (1,), generator=rng))] = v
    poisoned = {b for b in range(nb) if not torch.isfinite(A[b * bs:(b + 1) * bs].float()).all()}
    return A, poisoned


def _whole_block_nan(bs, dtype, n_full=2, tail=7):
    """An all-NaN full block and an all-Inf/-Inf tail."""
    A = torch.randn(n_full * bs + tail).to(dtype)
    A[:bs] = NAN
    A[n_full * bs:] = torch.tensor([INF, -INF] * tail)[:tail].to(dtype)
    return A


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("cbname", ["dynamic", "random8", "dense", "random3", "nf4", "fp4"])
def test_blockwise_nonfinite_exact(rng, backend, dtype, cbname):
    _need(backend)
    cb = _codebook(cbname, rng)
    q, rq = get_op(backend, "quantize_blockwise"), get_op("reference", "quantize_blockwise")
    dq, rdq = get_op(backend, "dequantize_blockwise"), get_op("reference", "dequantize_blockwise")
    table = cb.tensors()[0]
    for bs in (32, 64, 256, 4096):
        for A in (_poisoned(rng, dtype, bs)[0], _whole_block_nan(bs, dtype)):
            before = A.clone()
            c, a = q(A, cb, bs)
            c_ref, a_ref = rq(A, cb, bs)
            assert _bits_equal(A, before)
            assert torch.equal(c, c_ref), (bs, A.numel(), int((c != c_ref).sum()))
            assert _bits_equal(a, a_ref), (bs, a, a_ref)
            assert _bits_equal(dq(c, a, table, bs, dtype), rdq(c_ref, a_ref, table, bs, dtype)), bs


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("cbname", ["nf4", "fp4", "random4"])
def test_4bit_nonfinite_exact(rng, backend, dtype, cbname):
    _need(backend)
    if cbname == "random4":
        cb = cbs.from_values(np.r_[-1.0, np.sort(torch.rand(14, generator=rng).numpy() * 1.9 - 0.95), 1.0], "random4")
    else:
        cb = cbs.get(cbname)
    q, rq = get_op(backend, "quantize_4bit"), get_op("reference", "quantize_4bit")
    dq, rdq = get_op(backend, "dequantize_4bit"), get_op("reference", "dequantize_4bit")
    table = cb.tensors()[0]
    for bs in (32, 64, 128, 1024):
        for A in (_poisoned(rng, dtype, bs)[0], _whole_block_nan(bs, dtype)):
            n = A.numel()
            p, a = q(A, cb, bs)
            p_ref, a_ref = rq(A, cb, bs)
            assert torch.equal(p, p_ref), (bs, n, int((p != p_ref).sum()))
            assert _bits_equal(a, a_ref), (bs, a, a_ref)
            for out in (dtype, torch.float32):
                assert _bits_equal(dq(p, a, table, bs, n, out), rdq(p_ref, a_ref, table, bs, n, out)), bs


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("cbname", ["dynamic", "random8", "fp4"])
def test_stochastic_nonfinite_exact(rng, backend, dtype, cbname):
    _need(backend)
    cb = _codebook(cbname, rng)
    q, rq = get_op(backend, "quantize_blockwise_stochastic"), get_op("reference", "quantize_blockwise_stochastic")
    for bs in (32, 256):
        for A in (_poisoned(rng, dtype, bs)[0], _whole_block_nan(bs, dtype)):
            rand = torch.rand(A.numel(), generator=rng)
            rand[::5] = 0.0
            c, a = q(A, cb, bs, rand)
            c_ref, a_ref = rq(A, cb, bs, rand)
            assert torch.equal(c, c_ref), (bs, int((c != c_ref).sum()))
            assert _bits_equal(a, a_ref), (bs, a, a_ref)


@pytest.mark.parametrize("backend,op", [(b, op) for b in ("reference", *BACKENDS, "bnb")
                                        for op in ("quantize_blockwise", "quantize_4bit")])
@pytest.mark.parametrize("dtype", DTYPES)
def test_absmax_flags_nonfinite_blocks(rng, backend, op, dtype):
    """The design point: absmax[b] is non-finite iff block b holds a NaN or an Inf -- NaN iff it
    holds a NaN -- for 8-bit and 4-bit quantization, full blocks and the tail, on every CPU
    backend. bnb: bitsandbytes' own CPU kernels; its native 8-bit quantizer skips NaN in the absmax,
    which the bnb adapter corrects (workbench/backends/bnb/quant.py)."""
    _need(backend)
    cb = cbs.dynamic() if op == "quantize_blockwise" else cbs.get("nf4")
    if True:
        fn = get_op(backend, op)
        for bs in (64, 256):
            A, poisoned = _poisoned(rng, dtype, bs)
            _, absmax = fn(A, cb, bs)
            nonfinite = {int(b) for b in torch.nonzero(~torch.isfinite(absmax)).view(-1)}
            assert nonfinite == poisoned, (op, bs, sorted(nonfinite), sorted(poisoned))
            has_nan = {b for b in poisoned if torch.isnan(A[b * bs:(b + 1) * bs].float()).any()}
            assert {int(b) for b in torch.nonzero(torch.isnan(absmax)).view(-1)} == has_nan, (op, bs)
            # clean blocks: finite absmax, the reference's value
            ref = get_op("reference", op)(A, cb, bs)[1]
            clean = [b for b in range(absmax.numel()) if b not in poisoned]
            assert torch.equal(absmax[clean], ref[clean]), (op, bs)


def test_bucketize_nan_semantics():
    """What the spec relies on: torch.bucketize puts NaN after every bound (right=False and True),
    +-0 together, and the reference's NaN block dequantizes to NaN throughout."""
    bounds = torch.tensor([-0.5, 0.0, 0.5])
    s = torch.tensor([NAN, -NAN, -0.0, 0.0])
    assert torch.bucketize(s, bounds).tolist() == [3, 3, 1, 1]
    assert torch.bucketize(s[:2], bounds, right=True).tolist() == [3, 3]
    cb = cbs.get("nf4")
    A = torch.randn(100)
    A[5] = NAN
    c, a = get_op("reference", "quantize_blockwise")(A, cb, 64)
    assert torch.isnan(a[0]) and torch.isfinite(a[1])
    assert (c[:64] == int(cb.bucket_codes[-1])).all()
    out = get_op("reference", "dequantize_blockwise")(c, a, cb.tensors()[0], 64, torch.float32)
    assert torch.isnan(out[:64]).all() and torch.isfinite(out[64:]).all()
