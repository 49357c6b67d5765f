"""GPU parity for the LLM.int8() family: the CUDA production kernels and the Numba CUDA kernels equal
the reference run on the same CUDA tensors bit for bit (codes, row/col stats, outlier columns, int32
matmul, mm dequant), for fp32/fp16/bf16, odd and misaligned shapes, poisoned outputs; and against
bitsandbytes' own CUDA kernels where it is installed. Run on a GPU box: ``pytest -m gpu tests/test_int8_gpu.py``.
"""
import importlib

import pytest
import torch

from workbench.backends import status
from workbench.backends.reference import int8 as R

pytestmark = pytest.mark.gpu

DTYPES = (torch.float32, torch.float16, torch.bfloat16)
BACKENDS = ("cuda", "numba_cuda")
SHAPES = ((1, 7), (3, 4097), (257, 1000), (64, 8), (1024, 4096), (5, 40001))  # last: > 16384 columns


def _backend(name):
    ok, reason = status(name)
    if not ok:
        pytest.skip(f"{name}: {reason}")
    return importlib.import_module(f"workbench.backends.{name}.int8")


@pytest.fixture
def poisoned(monkeypatch):
    real = torch.empty
    fills = {torch.int8: -77, torch.uint8: 0xAB, torch.int32: 123456789, torch.int64: -1}

    def empty(*a, **k):
        t = real(*a, **k)
        return t.fill_(fills.get(t.dtype, float("nan")))

    for name in BACKENDS:
        try:
            monkeypatch.setattr(importlib.import_module(f"workbench.backends.{name}.int8").torch, "empty", empty)
        except Exception:
            pass


def planted(rng, rows, cols, dtype, device="cuda", misalign=False):
    a = torch.randn(rows, cols, generator=rng) * 2
    hot = torch.randint(0, cols, (max(1, cols // 64),), generator=rng)
    a[:, hot] *= 6
    if rows > 2:
        a[0] = 0
        a[1] = 9.0
    a = a.to(dtype)
    if misalign:  # a view starting one element into a buffer: no 16-byte alignment
        buf = torch.empty(rows * cols + 1, dtype=dtype)
        buf[1:] = a.reshape(-1)
        return buf.to(device)[1:].view(rows, cols)
    return a.to(device)


def _eq(x, y, what):
    """Equal bit for bit, compared on the CPU (the spec is the reference run on CPU tensors:
    bitsandbytes 0.50.2's torch rules as its CPU path executes them)."""
    assert (x is None) == (y is None), what
    if x is not None:
        x, y = x.cpu(), y.cpu()
        assert x.dtype == y.dtype and x.shape == y.shape, what
        assert torch.equal(x, y), f"{what}: {int((x != y).sum())} of {x.numel()} differ"


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("threshold", (0.0, 6.0, 2.5))
def test_quant_exact(backend, dtype, shape, threshold, rng, poisoned):
    B = _backend(backend)
    for misalign in (False, True):
        A = planted(rng, *shape, dtype, misalign=misalign)
        want = R.int8_double_quant(A.cpu(), threshold)
        got = B.int8_double_quant(A, threshold)
        for name, x, y in zip(("codes", "col_codes", "row_stats", "col_stats", "outlier_cols"), want, got):
            _eq(x, y, f"{backend} {name} {dtype} {shape} thr={threshold} misalign={misalign}")
        _eq(R.int8_vectorwise_quant(A.cpu(), threshold)[0], B.int8_vectorwise_quant(A, threshold)[0], "codes")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", (torch.float16, torch.float32))
@pytest.mark.parametrize("probe", (None, "0", "1", "100000"))
def test_outlier_columns_found_late_and_sparse(backend, dtype, probe, rng, poisoned, monkeypatch):
    """Outlier columns that only the last / first / a middle row reveals, plus sparse random outliers:
    every row must end up zeroed in every outlier column. The CUDA kernel zeroes the columns a probe of
    a few rows found while it codes each row and the "late" ones afterwards; KBIT_INT8_PROBE sets the
    probe's rows (default 32: row 0 and the middle row are probed, the last is not; 0: every column is
    late; 100000: all rows probed, none late)."""
    if probe is not None:
        monkeypatch.setenv("KBIT_INT8_PROBE", probe)
    B = _backend(backend)
    rows, cols = 3001, 1032
    A = torch.randn(rows, cols, generator=rng)
    A[-1, 5] = 9.0
    A[0, 700] = -9.0
    A[rows // 2, 1031] = 7.0
    flat = torch.randint(0, rows * cols, (400,), generator=rng)
    A.view(-1)[flat] = 8.0 * torch.sign(torch.randn(400, generator=rng))
    A[:, 64] *= 10  # one column hot in (nearly) every row
    A = A.to(dtype)
    want = R.int8_vectorwise_quant(A, 6.0)
    got = B.int8_vectorwise_quant(A.cuda(), 6.0)
    for name, x, y in zip(("codes", "row_stats", "outlier_cols"), want, got):
        _eq(x, y, f"{backend} {name} {dtype}")
    assert want[2].numel() > 300


def test_cuda_outlier_counts_fresh_per_call_and_stream(rng):
    """The column count comes back through pinned host memory reused per stream: calls with different
    counts, alternating between the default and a side stream, each get their own."""
    B = _backend("cuda")
    side = torch.cuda.Stream()
    for k, n_hot in enumerate((3, 40, 0, 17, 1)):
        A = torch.randn(257, 1024, generator=rng)
        A[:, torch.randperm(1024, generator=rng)[:n_hot]] = 9.0
        want = R.int8_vectorwise_quant(A, 6.0)
        with torch.cuda.stream(side if k % 2 else torch.cuda.current_stream()):
            got = B.int8_vectorwise_quant(A.cuda(), 6.0)
        torch.cuda.synchronize()
        assert got[2].numel() == n_hot
        for name, x, y in zip(("codes", "row_stats", "outlier_cols"), want, got):
            _eq(x, y, f"{name} n_hot={n_hot}")


@pytest.mark.parametrize("occupancy", ("loose", "tight"))
@pytest.mark.parametrize("threshold", (0.0, 6.0))
def test_cuda_row_kernel_builds_agree(occupancy, threshold, rng, monkeypatch):
    """The row kernel's two builds (KBIT_INT8_OCC, read per call) give the reference's codes."""
    B = _backend("cuda")
    monkeypatch.setenv("KBIT_INT8_OCC", occupancy)
    A = torch.randn(333, 4104, generator=rng) * 2
    A[:, [5, 700, 4103]] *= 6
    A = A.half().cuda()
    want = R.int8_vectorwise_quant(A.cpu(), threshold)
    got = B.int8_vectorwise_quant(A, threshold)
    for name, x, y in zip(("codes", "row_stats", "outlier_cols"), want, got):
        _eq(x, y, f"{name} {occupancy} thr={threshold}")


@pytest.mark.parametrize("backend", BACKENDS)
def test_no_outliers_gives_an_empty_list(backend, rng):
    B = _backend(backend)
    A = (torch.randn(33, 515, generator=rng) * 0.1).half().cuda()
    codes, stats, cols = B.int8_vectorwise_quant(A, 6.0)
    want = R.int8_vectorwise_quant(A.cpu(), 6.0)
    assert cols is not None and cols.numel() == 0 and cols.dtype == torch.int64
    _eq(want[0], codes, "codes")
    _eq(want[1], stats, "row_stats")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("mkn", ((1, 1, 1), (17, 33, 9), (130, 4097, 67), (256, 1024, 512)))
@pytest.mark.parametrize("dtype", DTYPES)
def test_matmul_exact(backend, mkn, dtype, rng, poisoned):
    B = _backend(backend)
    m, k, n = mkn
    CA, SA, _ = R.int8_vectorwise_quant(torch.randn(m, k, generator=rng), 0.0)
    CB, SB, _ = R.int8_vectorwise_quant(torch.randn(n, k, generator=rng), 0.0)
    bias = torch.randn(n, generator=rng).to(dtype)
    C = R.int8_linear_matmul(CA, CB)  # CPU int64 matmul: exact
    g = [t.cuda() for t in (CA, CB, SA, SB, bias)]
    gCA, gCB, gSA, gSB, gbias = g
    _eq(C, B.int8_linear_matmul(gCA, gCB), f"{backend} int32 matmul {mkn}")
    for b, gb in ((None, None), (bias, gbias)):
        _eq(R.int8_mm_dequant(C, SA, SB, b, dtype), B.int8_mm_dequant(C.cuda(), gSA, gSB, gb, dtype),
            f"{backend} mm_dequant")
        _eq(R.int8_scaled_mm(CA, CB, SA, SB, b, dtype), B.int8_scaled_mm(gCA, gCB, gSA, gSB, gb, dtype),
            f"{backend} scaled_mm")
    _eq(R.int8_vectorwise_dequant(CB, SB), B.int8_vectorwise_dequant(gCB, gSB), f"{backend} vectorwise dequant")


@pytest.mark.parametrize("dtype", DTYPES)
def test_reference_on_gpu_vs_cpu(dtype, rng):
    """Diagnostic: the torch reference executed on CUDA vs on CPU (both torch; the CPU run is the spec).
    Prints the code mismatch count; fails only on more than a 1-step difference."""
    A = planted(rng, 1024, 4096, dtype)
    g = R.int8_vectorwise_quant(A, 0.0)
    c = R.int8_vectorwise_quant(A.cpu(), 0.0)
    d = (g[0].cpu().int() - c[0].int()).abs()
    print(f"reference cuda-vs-cpu {dtype}: {int((d > 0).sum())} codes differ, stats equal {torch.equal(g[1].cpu(), c[1])}")
    assert int(d.max()) <= 1


@pytest.mark.parametrize("backend", BACKENDS)
def test_mixed_decomposition(backend, rng):
    B = _backend(backend)
    A = planted(rng, 100, 256, torch.float16)
    W = torch.randn(72, 256, generator=rng).half().cuda()
    CA, SA, cols = R.int8_vectorwise_quant(A, 6.0)
    CB, SB, _ = R.int8_vectorwise_quant(W, 0.0)
    assert cols.numel() > 0
    want, _ = R.int8_mixed_scaled_mm(A, CA, CB, SA, SB, cols, None)
    got, _ = B.int8_mixed_scaled_mm(A, CA, CB, SA, SB, cols, None)
    # the int8 part is bit-exact and the fp16 outlier addmm is the same cuBLAS call
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    exact = A.float() @ W.float().t()
    plain = R.int8_scaled_mm(*R.int8_vectorwise_quant(A, 0.0)[:1], CB, R.int8_vectorwise_quant(A, 0.0)[1], SB,
                             None, torch.float16)
    assert (got.float() - exact).abs().mean() < (plain.float() - exact).abs().mean()


def _bnb():
    try:
        import bitsandbytes.functional as F
        torch.ops.bitsandbytes.int8_vectorwise_quant.default(torch.zeros(2, 8, dtype=torch.float16, device="cuda"), 0.0)
        return F
    except Exception as e:  # not installed, or no CUDA library for this box
        pytest.skip(f"bitsandbytes CUDA not usable: {e}")


@pytest.mark.parametrize("shape", ((1, 7), (3, 4097), (1024, 4096)))
@pytest.mark.parametrize("threshold", (0.0, 6.0))
def test_vs_bitsandbytes_cuda(shape, threshold, rng):
    F = _bnb()
    A = planted(rng, *shape, torch.float16)
    if shape[0] > 2:
        A[1] = 1.5  # bitsandbytes' CUDA kernel stores -FLT_MIN for a row made only of outliers
    qb, sb, cb = F.int8_vectorwise_quant(A.clone(), threshold)
    q, s, c = _backend("cuda").int8_vectorwise_quant(A, threshold)
    _eq(sb, s, "row_stats vs bitsandbytes")
    _eq(cb, c, "outlier cols vs bitsandbytes")
    # bitsandbytes scales with __fdividef(127, absmax) (approximate); codes may differ by one step
    # where the product lands within an ulp of a .5 boundary
    d = (qb.int() - q.int()).abs()
    assert int(d.max()) <= 1 and float((d > 0).float().mean()) < 1e-3


def test_mm_dequant_vs_bitsandbytes_cuda(rng):
    F = _bnb()
    CA, SA, _ = R.int8_vectorwise_quant(torch.randn(64, 256, generator=rng).cuda(), 0.0)
    CB, SB, _ = R.int8_vectorwise_quant(torch.randn(48, 256, generator=rng).cuda(), 0.0)
    C = R.int8_linear_matmul(CA, CB)
    ours = _backend("cuda").int8_mm_dequant(C, SA, SB, None, torch.float16)
    theirs = F.int8_mm_dequant(C, SA, SB)
    # bitsandbytes-CUDA multiplies by 6.200012e-05f, its torch backend (our spec) by 6.200124e-05:
    # relative 1.8e-5, below fp16's half-ulp (2.4e-4) except near rounding boundaries -> <= 1 ulp
    torch.testing.assert_close(ours, theirs, rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", (torch.float16, torch.bfloat16))
def test_halfway_rows_and_tiny_absmax(backend, dtype, rng):
    """Rows [m, m/2, -m/2, m/4, ...]: torch's scale (1/m)*127 and an IEEE 127/m round some 63.5s
    differently, so this separates the two rules; a subnormal bf16 absmax overflows 1/m -> codes 0."""
    B = _backend(backend)
    m = (torch.rand(4096, generator=rng) * 100 + 0.01).to(dtype)
    A = torch.stack([m, m / 2, -m / 2, m / 4] * 4, dim=1).to(dtype)  # 16 columns: the vector path
    if dtype == torch.bfloat16:
        A[0] = torch.tensor([1e-39, -5e-40, 0.0, 1e-39] * 4).to(dtype)
    want = R.int8_vectorwise_quant(A, 0.0)
    buf = torch.empty(A.numel() + 1, dtype=dtype, device="cuda")
    buf[1:] = A.reshape(-1).cuda()
    for a in (A.cuda(), buf[1:].view(A.shape)):  # aligned (vector path) and misaligned (scalar path)
        got = B.int8_vectorwise_quant(a, 0.0)
        _eq(want[0], got[0], f"{backend} halfway codes")
        _eq(want[1], got[1], f"{backend} halfway row_stats")
    ieee = torch.round(A.float() * (torch.tensor(127.0) / want[1]).unsqueeze(1))
    ieee = torch.where(torch.isfinite(ieee), ieee, torch.zeros(())).to(torch.int8)
    assert not torch.equal(ieee, want[0]), "data does not separate the two scale rules"
