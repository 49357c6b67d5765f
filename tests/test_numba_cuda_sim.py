"""Numba CUDA kernels under the CUDA simulator (CPU, small inputs): exact vs the reference.

The simulator must be chosen before numba.cuda is first imported; if this process already holds
the real numba.cuda (e.g. the GPU tests ran first on a GPU box), the file re-runs itself in a
subprocess with NUMBA_ENABLE_CUDASIM=1.
"""
import pytest
import torch

import _cudasim  # first: selects the simulator before numba.cuda is imported
from _cudasim import sim

from workbench import bnb_cuda_codebooks as bcb
from workbench import codebooks as cbs
from workbench.backends.reference import quant as R


test_in_subprocess = _cudasim.subprocess_test(__file__)


@pytest.fixture(scope="module")
def Q():
    numba_cuda = _cudasim.simulator_backend()
    assert "cpu" in numba_cuda.DEVICES
    from workbench.backends.numba_cuda import quant
    return quant


@pytest.fixture
def poisoned(monkeypatch, Q):
    """Outputs the backend allocates start as garbage (0xAB bytes / NaN), so unwritten elements show."""
    real = torch.empty

    def empty(*a, **k):
        t = real(*a, **k)
        if t.dtype == torch.uint8:
            t.fill_(0xAB)
        else:
            t.fill_(float("nan"))
        return t

    monkeypatch.setattr(Q.torch, "empty", empty)


def _data(rng, n, dtype):
    a = torch.randn(n, generator=rng) * 2.5
    a[torch.randint(0, n, (max(1, n // 50),), generator=rng)] *= 40  # outliers set the absmax
    return a.to(dtype)


DTYPES = (torch.float32, torch.float16, torch.bfloat16)
# (blocksize, n): tails, odd lengths, n < blocksize, a block of >32 threads (bs 1024 -> G = 64)
CASES_4 = ((32, 77), (64, 1), (64, 512), (1024, 1498))
CASES_8 = ((32, 65), (256, 1024), (1024, 1026))


@sim
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("cbname", ["nf4", "e2m1", "fp4-bnb-cuda"])
def test_quantize_4bit_exact(Q, poisoned, rng, dtype, cbname):
    cb = bcb.fp4_bnb_cuda() if cbname == "fp4-bnb-cuda" else cbs.get(cbname)
    for bs, n in CASES_4:
        A = _data(rng, n, dtype)
        p, a = Q.quantize_4bit(A, cb, bs)
        p2, a2 = R.quantize_4bit(A, cb, bs)
        assert torch.equal(a, a2), (bs, n)
        assert torch.equal(p, p2), (bs, n, int((p != p2).sum()))
        table = cb.tensors()[0]
        d = Q.dequantize_4bit(p, a, table, bs, n, dtype)
        d2 = R.dequantize_4bit(p2, a2, table, bs, n, dtype)
        assert torch.equal(d, d2), (bs, n)


@sim
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("cbname", ["dynamic", "linear4", "dynamic-bnb-cuda"])
def test_quantize_blockwise_exact(Q, poisoned, rng, dtype, cbname):
    cb = bcb.dynamic_bnb_cuda() if cbname == "dynamic-bnb-cuda" else cbs.get(cbname)
    for bs, n in CASES_8:
        A = _data(rng, n, dtype)
        c, a = Q.quantize_blockwise(A, cb, bs)
        c2, a2 = R.quantize_blockwise(A, cb, bs)
        assert torch.equal(a, a2), (bs, n)
        assert torch.equal(c, c2), (bs, n, int((c != c2).sum()))
        table = cb.tensors()[0]
        d = Q.dequantize_blockwise(c, a, table, bs, dtype)
        assert torch.equal(d, R.dequantize_blockwise(c2, a2, table, bs, dtype)), (bs, n)


@sim
@pytest.mark.parametrize("dtype", (torch.float16, torch.bfloat16))
def test_quantize_blockwise_several_tiles_per_cta(Q, poisoned, rng, dtype, monkeypatch):
    """Persistent CTAs looping over tiles (8-bit, 16-bit input, a block of 64 threads, so the absmax
    meets in shared memory every tile): one CTA per SM here, so each CTA runs 3 tiles, the last partial."""
    monkeypatch.setattr(Q, "QUANTIZE_CTAS_PER_SM", 1)
    cb = cbs.get("dynamic")
    n = 16 * 256 * 5 + 1000            # 6 tiles of 256 chunks over 2 CTAs
    A = _data(rng, n, dtype)
    c, a = Q.quantize_blockwise(A, cb, 1024)
    c2, a2 = R.quantize_blockwise(A, cb, 1024)
    assert torch.equal(a, a2)
    assert torch.equal(c, c2), int((c != c2).sum())


@sim
def test_edge_values(Q, poisoned):
    """Zero blocks (1e-38 clamp), exact +-absmax, -0.0, ties on bounds, a zero tail block."""
    cb = cbs.get("fp4")
    A = torch.zeros(64 * 3 + 5)
    A[64:128] = torch.linspace(-1, 1, 64)
    A[100] = -0.0
    A[128:128 + 15] = torch.from_numpy(cb.bounds)      # exactly on the bounds (absmax 1 in the block)
    A[150] = 1.0
    p, a = Q.quantize_4bit(A, cb, 64)
    p2, a2 = R.quantize_4bit(A, cb, 64)
    assert torch.equal(p, p2) and torch.equal(a, a2)
    assert float(a[-1]) == pytest.approx(1e-38, rel=1e-6)  # tail clamped, stored clamped
    c, a = Q.quantize_blockwise(A, cbs.get("dynamic"), 64)
    c2, a2 = R.quantize_blockwise(A, cbs.get("dynamic"), 64)
    assert torch.equal(c, c2) and torch.equal(a, a2)


def test_eytzinger_is_bucketize(rng):
    """The tree search the kernels run equals bucketize(right=False) on the bounds (plain NumPy)."""
    import numpy as np
    from numba_kernels.cuda.quant import eytzinger
    for cb, levels in ((cbs.get("nf4"), 4), (cbs.get("e2m1"), 4), (bcb.fp4_bnb_cuda(), 4), (cbs.get("dynamic"), 8)):
        tf, tc = eytzinger(cb.bounds, cb.bucket_codes, levels)
        s = np.concatenate([torch.rand(2000, generator=rng).numpy() * 2 - 1, cb.bounds, [-1, 1, 0, -0.0]])
        s = s.astype(np.float32)
        i = np.ones(s.size, np.int64)
        for _ in range(levels):
            i = 2 * i + (s > tf[i])
        assert np.array_equal(tc[i - (1 << levels)], cb.quantize_normalized(s))


def _cell_search_np(s, plan):  # mirrors numba_kernels.cuda.optim._bucket + the code lookup
    import numpy as np
    m, S, cell, bnd, codes = plan
    bits = s.view(np.uint32).astype(np.int64)
    pos = cell[bits >> (23 - m)].astype(np.int64)
    step = 1 << (S - 1)
    while step:
        pos += np.where(s > bnd[pos + step - 1], step, 0)
        step >>= 1
    return codes[pos]


@pytest.mark.parametrize("bits", [4, 8])
def test_cell_plan_is_bucketize(rng, bits):
    """The cell search (plan built on the host, as the CUDA kernels do) equals bucketize(right=False)
    on values across all binades, on every bound, next to every bound, at +-0 and +-1."""
    import numpy as np
    from numba_kernels.cell_plan import cell_plan
    books = ([cbs.get("nf4"), cbs.get("fp4"), cbs.get("e2m1"), bcb.fp4_bnb_cuda(), cbs.get("int4-asym")] if bits == 4
             else [cbs.get("dynamic"), cbs.get("dynamic-unsigned"), bcb.dynamic_bnb_cuda(), cbs.get("linear4"),
                   cbs.get("nf4")])
    for cb in books:
        plan = cell_plan(cb.bounds, cb.bucket_codes, bits)
        b = cb.bounds.astype(np.float32)
        u = torch.rand(20000, generator=rng).numpy()
        s = np.concatenate([(u * 2 - 1), np.sign(u - .5) * 2.0 ** (-40 * u), b, np.nextafter(b, 2), np.nextafter(b, -2),
                            [-1, 1, 0, -0.0, 1e-45, -1e-45]]).astype(np.float32)
        s = np.concatenate([np.clip(s, -1, 1), np.float32(1 + 2 ** -23) * np.float32([1, -1])]).astype(np.float32)
        assert np.array_equal(_cell_search_np(s, plan), cb.quantize_normalized(np.clip(s, -1, 1))), cb.name


@sim
def test_ops_api_double_quant(Q, poisoned, rng):
    """The public API on the numba_cuda backend (simulator: CPU tensors), with double quantization of absmax,
    equals the reference backend; its dequantize_4bit decodes the nested absmax with its own kernel
    (resolve_nested), bit for bit the reference's, over a partial last group of 256 blocks."""
    import workbench
    A = _data(rng, 64 * 259 + 5, torch.bfloat16)
    p, qs = workbench.quantize_4bit(A, blocksize=64, quant_type="nf4", compress_statistics=True, backend="numba_cuda")
    p2, qs2 = workbench.quantize_4bit(A, blocksize=64, quant_type="nf4", compress_statistics=True, backend="reference")
    assert torch.equal(p, p2) and torch.equal(qs.absmax, qs2.absmax) and torch.equal(qs.state2.absmax, qs2.state2.absmax)
    for dtype in DTYPES:
        d = workbench.dequantize_4bit(p, qs, dtype=dtype, backend="numba_cuda")
        want = workbench.dequantize_4bit(p2, qs2, dtype=dtype, backend="reference")
        assert torch.equal(d.view(torch.uint8), want.view(torch.uint8)), dtype


@sim
def test_tree_fallback_and_unaligned_input(Q, poisoned, rng):
    """A codebook too dense for a fine table runs the Eytzinger-tree kernel; an input view that is not
    8-byte aligned runs the fine kernel's element loads. Both equal the reference."""
    import numpy as np
    from numba_kernels.cell_plan import fine_plan
    dense = cbs.from_values(sorted([-1.0, 0.0, 1.0] + [0.5 + k * 5e-7 for k in range(253)]), "dense-sim")
    assert fine_plan(dense.bounds, dense.bucket_codes) is None
    A = _data(rng, 64 * 5 + 3, torch.float32)
    A[7:7 + 40] = torch.from_numpy(np.float32(0.5) + np.float32(5e-7) * np.arange(40, dtype=np.float32)) * A.abs().max()
    c, a = Q.quantize_blockwise(A, dense, 64)
    c2, a2 = R.quantize_blockwise(A, dense, 64)
    assert torch.equal(a, a2) and torch.equal(c, c2)
    B = _data(rng, 64 * 4 + 9, torch.bfloat16)[1:]           # data_ptr % 8 == 2
    assert B.data_ptr() % 8 != 0
    p, a = Q.quantize_4bit(B, cbs.get("nf4"), 64)
    p2, a2 = R.quantize_4bit(B, cbs.get("nf4"), 64)
    assert torch.equal(a, a2) and torch.equal(p, p2)


@sim
@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # NumPy's "invalid value" on NaN scaling, simulator only
@pytest.mark.parametrize("dtype", DTYPES)
def test_nonfinite_blocks(Q, poisoned, rng, dtype):
    """NaN / +Inf / -Inf in full and tail blocks, odd n, through the fine kernel (nf4 4-bit, dynamic 8-bit)
    and, for float32, also the remapped 4-bit codes (fp4) and the tree kernel (a codebook too dense for a
    table; the input dtype only changes the loads those share with the fine kernel): codes exact, absmax
    NaN / Inf as the reference. (The simulator runs a thread per element in Python: this is its slowest file.)"""
    import _nonfinite as NF
    dense = cbs.from_values(sorted([-1.0, 0.0, 1.0] + [0.5 + k * 5e-7 for k in range(253)]), "dense-sim-nf")
    codes = [(cbs.get("nf4"), 4), (cbs.get("dynamic"), 8)]
    if dtype == torch.float32:
        codes += [(cbs.get("fp4"), 4), (dense, 8)]
    for tail_kind in (None, "nan", "-inf", "nan-last"):
        A = NF.nonfinite_data(rng, 64, dtype, tail_kind)
        for cb, bits in codes:
            NF.check(Q, R, A, cb, 64, bits, cb.tensors()[0])
        A = NF.nonfinite_data(rng, 32, dtype, tail_kind, tail=5)
        NF.check(Q, R, A, cbs.get("nf4"), 32, 4, cbs.get("nf4").tensors()[0])


@sim
def test_device_function_of_another_module_keeps_the_fake_cuda(Q):
    """The simulator's module swap around device-function calls is reference-counted (workbench/_compat.py): a
    device function whose module is not its kernel's still sees the fake ``cuda`` after the first thread left
    it. Thread 0 leaves early while the others sleep inside; unguarded they read the real module (no threadIdx)."""
    import time

    import numpy as np
    from numba import cuda
    import numba_kernels.cuda  # noqa: F401  (installs the guard)
    other = {"cuda": cuda, "time": time}     # the device function's module globals
    exec("def late_index(delay):\n    time.sleep(delay)\n    return cuda.threadIdx.x\n", other)
    own = {"cuda": cuda, "late_index": cuda.jit(device=True)(other["late_index"])}   # the kernel's
    exec("def kernel(out):\n    t = cuda.threadIdx.x\n    out[t] = late_index(0.02 if t == 0 else 0.2)\n", own)
    kernel = cuda.jit(own["kernel"])

    out = np.full(8, -1, dtype=np.int64)
    kernel[1, 8](out)
    assert out.tolist() == list(range(8))
