"""GPU parity matrix: the CUDA production kernels and the Numba CUDA kernels equal the reference
(run on the same CUDA tensors) bit for bit -- codes, packed bytes, absmax, dequantized values --
for fp32/fp16/bf16, blocksizes 32..4096, odd lengths, misaligned inputs, a side stream and one
2**28-element bf16 tensor; and, with the bnb-CUDA codebooks + bnb scaling, equal bitsandbytes'
own CUDA kernels. Run on a GPU machine: ``pytest -m gpu tests/test_gpu_quant.py``.
"""
import pytest
import torch

from workbench import bnb_cuda_codebooks as bcb
from workbench import codebooks as cbs
from workbench.backends import status
from workbench.backends.reference import quant as R

from test_fine_plan import edge_values

pytestmark = pytest.mark.gpu

DTYPES = (torch.float32, torch.float16, torch.bfloat16)
BLOCKSIZES = (32, 64, 128, 256, 512, 1024, 2048, 4096)
BACKENDS = ("cuda", "numba_cuda")


def _backend(name):
    ok, reason = status(name)
    if not ok:
        pytest.skip(f"{name}: {reason}")
    import importlib
    return importlib.import_module(f"workbench.backends.{name}.quant")


def _data(rng, n, dtype, device="cuda"):
    a = torch.randn(n, generator=rng) * 3
    a[torch.randint(0, n, (max(1, n // 97),), generator=rng)] *= 50
    if n > 3000:
        a[1024:1024 + 64] = 0  # all-zero blocks at blocksizes <= 64
    return a.to(dtype).to(device)


def _poison(t):
    return t.fill_(0xAB) if t.dtype == torch.uint8 else t.fill_(float("nan"))


@pytest.fixture
def poisoned(monkeypatch):
    real = torch.empty

    def empty(*a, **k):
        return _poison(real(*a, **k))

    for mod in ("cuda", "numba_cuda"):
        try:
            m = __import__(f"workbench.backends.{mod}.quant", fromlist=["torch"])
            monkeypatch.setattr(m.torch, "empty", empty)
        except Exception:
            pass


def _lengths(bs):
    return (1, bs - 1, bs, 5 * bs + 17, 37 * bs + 3)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("cbname", ["nf4", "fp4", "e2m1", "af4"])
def test_4bit_matrix(backend, dtype, cbname, rng, poisoned):
    Q = _backend(backend)
    cb = cbs.get(cbname)
    table = cb.tensors("cuda")[0]
    for bs in BLOCKSIZES:
        for n in _lengths(bs):
            A = _data(rng, n, dtype)
            p, a = Q.quantize_4bit(A, cb, bs)
            p2, a2 = R.quantize_4bit(A, cb, bs)
            assert torch.equal(a, a2), (bs, n)
            assert torch.equal(p, p2), (bs, n, int((p != p2).sum()))
            d = Q.dequantize_4bit(p, a, table, bs, n, dtype)
            assert torch.equal(d, R.dequantize_4bit(p2, a2, table, bs, n, dtype)), (bs, n)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("cbname", ["dynamic", "dynamic-unsigned", "linear4", "nf4"])
def test_8bit_matrix(backend, dtype, cbname, rng, poisoned):
    Q = _backend(backend)
    cb = cbs.get(cbname)
    table = cb.tensors("cuda")[0]
    for bs in BLOCKSIZES:
        for n in _lengths(bs):
            A = _data(rng, n, dtype)
            c, a = Q.quantize_blockwise(A, cb, bs)
            c2, a2 = R.quantize_blockwise(A, cb, bs)
            assert torch.equal(a, a2), (bs, n)
            assert torch.equal(c, c2), (bs, n, int((c != c2).sum()))
            d = Q.dequantize_blockwise(c, a, table, bs, dtype)
            assert torch.equal(d, R.dequantize_blockwise(c2, a2, table, bs, dtype)), (bs, n)


@pytest.mark.parametrize("dtype", DTYPES)
def test_numba_direct_launch_on_repeat_calls(dtype, rng, poisoned, monkeypatch):
    """After a kernel's first call (Numba's dispatcher) every call takes the direct launch (one packed
    cuLaunchKernel): calls on fresh inputs of several lengths equal the reference, and they really went
    through the direct path (counted), else this test would prove nothing about it."""
    Q = _backend("numba_cuda")
    from workbench.backends.numba_cuda import _launch
    direct = []
    real = _launch._Direct.launch
    monkeypatch.setattr(_launch._Direct, "launch", lambda self, *a: (direct.append(1), real(self, *a))[1])
    nf4, dyn = cbs.get("nf4"), cbs.get("dynamic")
    for rep, n in enumerate((4096 * 9 + 5, 4096 * 9 + 5, 70000, 1 << 20)):
        A = _data(rng, n, dtype)
        p, a = Q.quantize_4bit(A, nf4, 64)
        p2, a2 = R.quantize_4bit(A, nf4, 64)
        assert torch.equal(p, p2) and torch.equal(a, a2), (rep, n)
        d = Q.dequantize_4bit(p, a, nf4.tensors("cuda")[0], 64, n, dtype)
        assert torch.equal(d, R.dequantize_4bit(p2, a2, nf4.tensors("cuda")[0], 64, n, dtype)), (rep, n)
        c, a8 = Q.quantize_blockwise(A, dyn, 4096)
        c2, a82 = R.quantize_blockwise(A, dyn, 4096)
        assert torch.equal(c, c2) and torch.equal(a8, a82), (rep, n)
        d = Q.dequantize_blockwise(c, a8, dyn.tensors("cuda")[0], 4096, dtype)
        assert torch.equal(d, R.dequantize_blockwise(c2, a82, dyn.tensors("cuda")[0], 4096, dtype)), (rep, n)
    assert len(direct) >= 3 * 4, f"only {len(direct)} of 16 launches went the direct way"


@pytest.mark.parametrize("backend", BACKENDS)
def test_misaligned_views_and_side_stream(backend, rng):
    Q = _backend(backend)
    cb, dyn = cbs.get("nf4"), cbs.get("dynamic")
    base = _data(rng, 64 * 41 + 9, torch.bfloat16)
    A = base[3:]                      # storage offset: not 16-byte aligned
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        p, a = Q.quantize_4bit(A, cb, 64)
        c, a8 = Q.quantize_blockwise(A, dyn, 128)
        nd = 64 * (a.numel() - 1)      # whole blocks of the shifted absmax; p[1:] is misaligned
        d = Q.dequantize_4bit(p[1:], a[1:], cb.tensors("cuda")[0], 64, nd, torch.float16)
    s.synchronize()
    p2, a2 = R.quantize_4bit(A, cb, 64)
    c2, a82 = R.quantize_blockwise(A, dyn, 128)
    assert torch.equal(p, p2) and torch.equal(a, a2) and torch.equal(c, c2) and torch.equal(a8, a82)
    d2 = R.dequantize_4bit(p2[1:], a2[1:], cb.tensors("cuda")[0], 64, nd, torch.float16)
    assert torch.equal(d, d2)


@pytest.mark.parametrize("backend", BACKENDS)
def test_2_28_bf16(backend):
    Q = _backend(backend)
    g = torch.Generator(device="cuda").manual_seed(1234)
    A = torch.randn(1 << 28, device="cuda", dtype=torch.bfloat16, generator=g)
    cb = cbs.get("nf4")
    p, a = Q.quantize_4bit(A, cb, 64)
    p2, a2 = R.quantize_4bit(A, cb, 64)
    assert torch.equal(a, a2) and torch.equal(p, p2)
    del p2, a2
    d = Q.dequantize_4bit(p, a, cb.tensors("cuda")[0], 64, A.numel(), torch.bfloat16)
    assert torch.equal(d, R.dequantize_4bit(p, a, cb.tensors("cuda")[0], 64, A.numel(), torch.bfloat16))
    del d, p, a
    c, a = Q.quantize_blockwise(A, cbs.get("dynamic"), 4096)
    c2, a2 = R.quantize_blockwise(A, cbs.get("dynamic"), 4096)
    assert torch.equal(a, a2) and torch.equal(c, c2)


def _bnb():
    ok, reason = status("bnb")
    if not ok:
        pytest.skip(reason)
    from workbench.backends.bnb import quant as B
    return B


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("qt", ["nf4", "fp4", "dynamic"])
def test_bnb_cuda_twin_codebooks_match_bitsandbytes(dtype, qt, rng):
    """cuda backend + bnb-CUDA codebook + bnb scaling == bitsandbytes' CUDA kernels, bit for bit
    (random data without all-zero blocks: bnb's NaN scale there is a known, separate class)."""
    B = _bnb()
    from workbench.backends.cuda import quant as C
    cb = cbs.get(qt)
    twin = bcb.for_bnb(cb)
    for bs in (64, 128, 256, 1024, 4096) + ((32,) if qt != "dynamic" else ()):
        n = 23 * bs + 7
        A = (torch.randn(n, generator=rng) * 2).to(dtype).cuda()
        if qt == "dynamic":
            c, a = C.quantize_blockwise(A, twin, bs, flags=C.FLAG_BNB_SCALE)
            c2, a2 = B.quantize_blockwise(A, cb, bs)
        else:
            c, a = C.quantize_4bit(A, twin, bs, flags=C.FLAG_BNB_SCALE)
            c2, a2 = B.quantize_4bit(A, cb, bs)
        assert torch.equal(a, a2), (bs, n)
        assert torch.equal(c, c2), (bs, n, int((c != c2).sum()))


@pytest.mark.parametrize("dtype", DTYPES)
def test_dequant_matches_bitsandbytes(dtype, rng):
    B = _bnb()
    from workbench.backends.cuda import quant as C
    for qt in ("nf4", "fp4"):
        cb = cbs.get(qt)
        A = (torch.randn(64 * 99 + 3, generator=rng)).to(dtype).cuda()
        p, a = B.quantize_4bit(A, cb, 64)
        tab = cb.tensors("cuda")[0]
        assert torch.equal(C.dequantize_4bit(p, a, tab, 64, A.numel(), dtype),
                           B.dequantize_4bit(p, a, tab, 64, A.numel(), dtype))
    cb = cbs.get("dynamic")
    c, a = B.quantize_blockwise(A, cb, 256)
    tab = cb.tensors("cuda")[0]
    assert torch.equal(C.dequantize_blockwise(c, a, tab, 256, dtype), B.dequantize_blockwise(c, a, tab, 256, dtype))


def _edge_blocks(cb, bs, rng) -> torch.Tensor:
    """fp32 blocks whose first element is 1.0 (absmax 1: s == x exactly) and the rest edge values."""
    v = edge_values(cb)
    nb = -(-v.numel() // (bs - 1)) + 2
    body = v[torch.randint(0, v.numel(), (nb, bs - 1), generator=rng)]
    body.view(-1)[: v.numel()] = v  # every edge value at least once
    return torch.cat([torch.ones(nb, 1), body], 1).reshape(-1)


# a codebook with ~250 bounds inside [0.5, 0.50013): no fine table and no cell table holds it
DENSE = cbs.from_values(sorted([-1.0, 0.0, 1.0] + [0.5 + k * 5e-7 for k in range(253)]), "dense-test")

SEARCH_CASES = ["dynamic", "dynamic-unsigned", "linear8", "nf4", "fp4", "af4"]


def _edge_check(cbnames, rng):
    from workbench.backends.cuda import quant as C
    for name in cbnames:
        cb = DENSE if name == "dense" else cbs.get(name)
        for bs in (64, 256, 4096):
            A = _edge_blocks(cb, bs, rng).cuda()
            if cb.size <= 16:
                p, a = C.quantize_4bit(A, cb, bs)
                p2, a2 = R.quantize_4bit(A, cb, bs)
            else:
                p, a = C.quantize_blockwise(A, cb, bs)
                p2, a2 = R.quantize_blockwise(A, cb, bs)
            assert torch.equal(a, a2), (name, bs)
            assert torch.equal(p, p2), (name, bs, int((p != p2).sum()))


def test_search_tables_exact_on_edges(rng):
    """Bounds, their float32 neighbours, +-0 and tiny magnitudes land in the spec's bucket with the
    default search (fine tables for these codebooks) and with the dense codebook (the fallback)."""
    _backend("cuda")
    _edge_check(SEARCH_CASES + ["dense"], rng)


@pytest.mark.parametrize("search", ["cell", "tree", "fine", "clamped"])
def test_fallback_searches_exact_on_edges(search):
    """The cell-plan and tree searches and the 8-byte fine tables in place of the compact one (fine; clamped:
    clamped mode only) (KBIT_QUANT_SEARCH, read once per process) on the same edges and on non-finite input."""
    _backend("cuda")
    import os
    import subprocess
    import sys
    code = ("import sys, torch; sys.path.insert(0, 'tests'); import test_gpu_quant as T; "
            f"T._edge_check({SEARCH_CASES!r}, torch.Generator().manual_seed(7)); "
            "T._nonfinite_check(torch.Generator().manual_seed(8))")
    env = dict(os.environ, KBIT_QUANT_SEARCH=search)
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]


# ------------------------------------------------------------------------------ NaN / Inf (the spec)
NONFINITE_BOOKS = (("nf4", 4), ("fp4", 4), ("dynamic", 8), ("dynamic-unsigned", 8))


def _nonfinite_check(rng, backend="cuda", dtypes=DTYPES, blocksizes=(64, 4096)):
    import _nonfinite as NF
    Q = _backend(backend)
    for dtype in dtypes:
        for bs in blocksizes:
            for tail_kind in (None, "nan", "inf", "-inf", "nan-last"):
                A = NF.nonfinite_data(rng, bs, dtype, tail_kind).cuda()
                for name, bits in NONFINITE_BOOKS + ((("dense", 8),) if backend == "cuda" else ()):
                    cb = DENSE if name == "dense" else cbs.get(name)
                    NF.check(Q, R, A, cb, bs, bits, cb.tensors("cuda")[0])


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("bs", [64, 4096])
def test_nonfinite_blocks(backend, dtype, bs, rng, poisoned):
    """NaN / +Inf / -Inf in full blocks (one of each, all three, all NaN, all +-Inf) and in the tail block
    (odd n, incl. NaN as the last element: the 4-bit pad stays the code of 0) equal the reference: codes and
    packed bytes exactly, absmax NaN / +Inf where the reference has them (non-finite exactly for the blocks
    holding a NaN or an Inf), dequantized values NaN-aware."""
    _nonfinite_check(rng, backend, (dtype,), (bs,))


def test_nonfinite_reference_on_gpu_equals_cpu(rng):
    """The reference itself: torch on the GPU puts NaN where torch on the CPU does (top bucket), so the GPU
    tests above check the spec."""
    import _nonfinite as NF
    for bs in (64, 4096):
        A = NF.nonfinite_data(rng, bs, torch.float32, "nan")
        for name, bits in NONFINITE_BOOKS:
            cb = cbs.get(name)
            f = R.quantize_4bit if bits == 4 else R.quantize_blockwise
            p, a = f(A.cuda(), cb, bs)
            p2, a2 = f(A, cb, bs)
            assert torch.equal(p.cpu(), p2) and NF.same(a.cpu(), a2)


def test_dequantize_staged_stores_equal_the_direct_ones(rng):
    """cuda_src/quant.cu's dequantizers with their per-warp staged stores (the kbit_quant_tuning knob; the default
    stages 4-bit codes only) give the direct stores' outputs bit for bit: 4-bit and 8-bit codes, every output dtype, sizes with a
    partial last warp, a partial last chunk and an odd tail."""
    C = _backend("cuda")
    nf4, dyn = cbs.get("nf4"), cbs.get("dynamic")
    try:
        for n in (512 * 7, 512 * 100 + 64, 512 * 33 + 17, 5, (1 << 20) + 3):
            for dtype in DTYPES:
                A = _data(rng, n, dtype)
                p, a = C.quantize_4bit(A, nf4, 64)
                c, a8 = C.quantize_blockwise(A, dyn, 256)
                outs = []
                for staged in (0, 1):
                    C.lib().kbit_quant_tuning(staged)
                    outs.append((C.dequantize_4bit(p, a, nf4.tensors("cuda")[0], 64, n, dtype),
                                 C.dequantize_blockwise(c, a8, dyn.tensors("cuda")[0], 256, dtype)))
                for x, y in zip(*outs):
                    assert torch.equal(x.view(torch.uint8), y.view(torch.uint8)), (n, dtype)
    finally:
        C.lib().kbit_quant_tuning(-1)


@pytest.mark.parametrize("bs", (32, 64, 256, 4096))
def test_dequantize_nested_equals_its_scales_then_dequantize(bs, rng, poisoned):
    """cuda_src/quant.cu's kbit_dequantize_4bit_nested (the cuda dequantize_4bit given absmax_8bit: the block scales
    decoded in the kernel from double-quantized absmax, code2[q] * absmax2 rounded, + offset rounded) gives the
    bits of the two-step form: the scales by the blockwise dequantizer plus the offset in float32, then
    kbit_dequantize_4bit. Odd lengths (a partial
    last block, a partial second-level block), every output dtype, staged and direct stores, before and after the
    state is changed in place; the public call (its validation remembered on the state) gives the same bits, on the
    cuda backend and on numba_cuda (its own nested-scale kernel)."""
    import workbench as wb
    from workbench.ops import _nested_args, _resolve_absmax
    C = _backend("cuda")
    try:
        for n in (bs * 256 * 3 + 17, bs * 5 + 1, (1 << 20) + 3):
            W = _data(rng, n, torch.float32)
            P, qs = wb.quantize_4bit(W, blocksize=bs, compress_statistics=True, backend="cuda")
            tab = qs.code.float().contiguous()
            for step in range(2):
                if step:
                    qs.state2.absmax.mul_(3)
                    qs.offset.add_(0.125)
                a2, a8, c2, off = _nested_args(qs, "cuda")
                scales = _resolve_absmax(qs, "reference")
                for staged in (0, 1):
                    C.lib().kbit_quant_tuning(staged)
                    for dtype in DTYPES:
                        two = C.dequantize_4bit(P, scales, tab, bs, n, dtype)
                        one = C.dequantize_4bit(P, a2, tab, bs, n, dtype, a8, c2, off)
                        assert torch.equal(one.view(torch.uint8), two.view(torch.uint8)), (n, dtype, staged)
                        public = wb.dequantize_4bit(P, qs, dtype=dtype, backend="cuda")   # the same kernel
                        assert torch.equal(public.view(torch.uint8), two.view(torch.uint8)), (n, dtype, staged)
                        if staged == 0 and status("numba_cuda")[0]:   # its resolve_nested kernel, then its dequantizer
                            nb = wb.dequantize_4bit(P, qs, dtype=dtype, backend="numba_cuda")
                            assert torch.equal(nb.view(torch.uint8), two.view(torch.uint8)), (n, dtype, "numba_cuda")
    finally:
        C.lib().kbit_quant_tuning(-1)
