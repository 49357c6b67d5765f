"""Numba CUDA matmul prototypes on a GPU: the GEMV (M <= 4) and the tiled GEMM held to the reference's error_bound
on the issue's kind of shapes (bf16/fp16/fp32, nested absmax, bias, any codebook), and against the production
CUDA kernels where present. The simulator twin: tests/test_matmul_sim.py."""
import pytest
import torch

import workbench as wb
from workbench import codebooks as cbs
from workbench.backends import status
from workbench.backends.reference import matmul as R
from workbench.matmul import matmul_4bit

pytestmark = pytest.mark.gpu

# the warp-per-row GEMV (K % 32 == 0: 64- and 32-element chunks, M up to 4, rows not filling the last CTA), the
# block-per-row GEMV (K % 32 != 0), the tiled GEMM
SHAPES = [(4096, 4096, 1, 64), (1000, 1030, 3, 128), (257, 4096, 16, 64), (96, 200, 65, 32), (301, 2112, 4, 32),
          (77, 8192, 2, 256)]


def _backend(name):
    ok, reason = status(name)
    if not ok or reason == "CUDA simulator":
        pytest.skip(f"{name}: {reason}")


@pytest.fixture
def rows(monkeypatch):
    """Every Numba GEMV on the row layout (rule 2), whatever the production dispatch would take."""
    from workbench.backends.numba_cuda import matmul as NM
    monkeypatch.setattr(NM, "GEMV_LAYOUT", "rows")


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_numba_cuda_matmul_vs_reference(rng, rows, dtype):
    _backend("numba_cuda")
    for i, (N, K, M, bs) in enumerate(SHAPES):
        W = torch.randn(N, K, generator=rng).to(dtype).cuda()
        A = torch.randn(M, K, generator=rng).to(dtype).cuda()
        b = torch.randn(N, generator=rng).to(dtype).cuda() if i % 2 else None
        P, qs = wb.quantize_4bit(W, blocksize=bs, compress_statistics=i % 2 == 0,
                                 codebook=cbs.get("af4") if i == 1 else None)
        ref = matmul_4bit(A, P, qs, bias=b, backend="reference")
        got = matmul_4bit(A, P, qs, bias=b, backend="numba_cuda")
        Wd = wb.dequantize_4bit(P, qs, backend="reference").to(dtype)
        bound = R.error_bound(A, Wd, b, dtype, ref)
        assert ((got.float() - ref.float()).abs() <= bound).all(), (N, K, M)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_numba_cuda_gemv_weights_exact_with_one_hot_rows(rng, rows, dtype):
    """One-hot activation rows: each output is one dequantized weight (rule 2, nested scales included), bit for bit,
    through both GEMVs; a NaN block scale makes its row's outputs NaN and no other."""
    _backend("numba_cuda")
    for N, K, M, bs in [(45, 2048, 4, 64), (33, 1056, 3, 32), (9, 1030, 2, 64)]:
        W = (torch.randn(N, K, generator=rng) * 3).to(dtype).cuda()
        P, qs = wb.quantize_4bit(W, blocksize=bs, compress_statistics=False)
        qs.absmax[1] = float("nan")                    # a NaN block scale (the bf16 table's slow path)
        Wd = wb.dequantize_4bit(P, qs, backend="reference").to(dtype)
        ks = torch.randperm(K, generator=rng)[:M]
        A = torch.zeros(M, K, dtype=dtype, device="cuda")
        A[torch.arange(M), ks] = 1
        got = matmul_4bit(A, P, qs, backend="numba_cuda")
        nan = matmul_4bit(A, P, qs, backend="reference").isnan()    # row 0 in full: 0 * NaN is NaN
        assert nan[:, 0].all() and not nan[:, 1:].any()
        assert torch.equal(got.isnan(), nan), (N, K, M)
        assert torch.equal(got[~nan], Wd[:, ks].t()[~nan]), (N, K, M)


def test_numba_cuda_gemv_layout_auto_follows_the_production_dispatch(rng, monkeypatch):
    """The default: ``gemv_tiled`` exactly where the cuda backend takes its unscaled-lookup GEMM -- one row on a
    weight of more than 2^24 elements, 2..4 rows -- held to error_bound_unscaled; the row GEMV (rule 2) elsewhere."""
    _backend("numba_cuda")
    from numba_kernels.cuda import matmul as K
    from workbench.backends.cuda import matmul as CM
    from workbench.backends.numba_cuda import matmul as NM
    monkeypatch.setattr(NM, "GEMV_LAYOUT", "auto")
    tiled, rows_ = K.gemv_tiled, K.gemv_rows
    ran = []
    monkeypatch.setattr(K, "gemv_tiled", lambda M, kind: ran.append("tiled") or tiled(M, kind))
    monkeypatch.setattr(K, "gemv_rows", lambda *a: ran.append("rows") or rows_(*a))
    for N, Kd, M, bs in [(4104, 4160, 1, 64), (4096, 4096, 1, 64), (1000, 1024, 3, 64), (301, 2112, 4, 32)]:
        W = torch.randn(N, Kd, generator=rng).cuda()
        A = torch.randn(M, Kd, generator=rng).to(torch.bfloat16).cuda()
        P, qs = wb.quantize_4bit(W, blocksize=bs, compress_statistics=True)
        want = "tiled" if CM.takes_lut(A.dtype, M, N, Kd, bs, True) else "rows"
        assert want == ("tiled" if (N * Kd > 1 << 24 or M > 1) and bs >= 64 else "rows"), (N, Kd, M, bs)
        got = matmul_4bit(A, P, qs, backend="numba_cuda")
        assert ran[-1:] == [want], (N, Kd, M, bs, ran)
        ref = matmul_4bit(A, P, qs, backend="reference")
        if want == "tiled":
            bound = R.unscaled_bound_of(A, P, (N, Kd), qs.state2.absmax, qs.code, bs, None, qs.absmax,
                                        qs.state2.code, qs.offset, ref=ref)
        else:
            bound = R.error_bound(A, wb.dequantize_4bit(P, qs, backend="reference").to(A.dtype), None, A.dtype, ref)
        assert ((got.float() - ref.float()).abs() <= bound).all(), (N, Kd, M)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_numba_cuda_gemv_on_the_tiled_layout(rng, monkeypatch, dtype):
    """``KBIT_NUMBA_GEMV_LAYOUT=tiled`` (``gemv_tiled`` on the tiled copy): within error_bound_unscaled on a large
    square weight, N not a multiple of 16, 33 chunks (not a multiple of the CTA's 8 warps), blocks of 256, M = 1..4,
    nested scales and bias, over an output buffer the allocator last gave to NaNs."""
    _backend("numba_cuda")
    from numba_kernels.cuda import matmul as K
    from workbench.backends.numba_cuda import matmul as NM
    monkeypatch.setattr(NM, "GEMV_LAYOUT", "tiled")
    build, ran = K.gemv_tiled, []
    monkeypatch.setattr(K, "gemv_tiled", lambda M, kind: ran.append(M) or build(M, kind))
    for i, (N, Kd, M, bs) in enumerate([(4096, 4096, 1, 64), (1000, 1024, 3, 128), (301, 2112, 4, 64),
                                        (77, 8192, 2, 256)]):
        W = torch.randn(N, Kd, generator=rng).to(dtype).cuda()
        A = torch.randn(M, Kd, generator=rng).to(dtype).cuda()
        b = torch.randn(N, generator=rng).to(dtype).cuda() if i % 2 else None
        P, qs = wb.quantize_4bit(W, blocksize=bs, compress_statistics=i != 1)
        ref = matmul_4bit(A, P, qs, bias=b, backend="reference")
        torch.full((M * N,), float("nan"), device="cuda")   # freed at once: the next float32 block of this size
        got = matmul_4bit(A, P, qs, bias=b, backend="numba_cuda")
        assert ran[-1:] == [M], (N, Kd, M)
        a2, a8, c2, off = ((qs.state2.absmax, qs.absmax, qs.state2.code, qs.offset) if qs.nested
                           else (qs.absmax, None, None, None))
        bound = R.unscaled_bound_of(A, P, (N, Kd), a2, qs.code, bs, b, a8, c2, off, ref=ref)
        assert ((got.float() - ref.float()).abs() <= bound).all(), (N, Kd, M)
