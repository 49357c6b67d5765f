"""Numba CUDA matmul prototypes (GEMV, tiled GEMM) under the CUDA simulator (CPU, small odd shapes): held to the
reference's error_bound (float32 sums in their own order), weights exact (rule 2).

Same pattern as test_numba_cuda_sim.py: the simulator is chosen before numba.cuda is first imported; if this
process already holds the real numba.cuda, the file re-runs itself in a subprocess.
"""
import pytest
import torch

import _cudasim  # first: selects the simulator before numba.cuda is imported
from _cudasim import sim

import workbench as wb
from workbench import codebooks as cbs
from workbench.backends.reference import matmul as R
from workbench.matmul import gemv_4bit, matmul_4bit

test_in_subprocess = _cudasim.subprocess_test(__file__)

DTYPES = (torch.bfloat16, torch.float16, torch.float32)
# (N, K, M, blocksize): odd K (rows starting on a low nibble), blocks straddling rows, M on both kernels,
# K % 8 == 0 with M <= 4 (the 4-byte word GEMV), K % 32 == 0 (the warp-per-row GEMV, 64- and 32-element chunks,
# more chunks than lanes: two rounds and the loads one chunk ahead; rows not filling the last CTA's warps)
SHAPES = [(5, 37, 1, 32), (9, 64, 3, 64), (3, 130, 6, 128), (7, 21, 17, 32), (6, 96, 2, 32), (3, 2112, 1, 64),
          (5, 1056, 4, 32)]


@pytest.fixture(scope="module")
def backend():
    _cudasim.simulator_backend()
    from workbench.backends.numba_cuda import matmul
    return matmul


@pytest.fixture
def rows(backend, monkeypatch):
    """The backend with every GEMV on the row layout (rule 2), whatever the production dispatch would take."""
    monkeypatch.setattr(backend, "GEMV_LAYOUT", "rows")
    return backend


def _check(got, ref, A, P, qs, b):
    W = wb.dequantize_4bit(P, qs, backend="reference").to(A.dtype)
    bound = R.error_bound(A.reshape(-1, A.shape[-1]), W, b, A.dtype, ref.reshape(-1, W.shape[0]))
    err = (got.float() - ref.float()).abs().reshape(bound.shape)
    assert (err <= bound).all(), (err - bound).max()


@sim
@pytest.mark.parametrize("dtype", DTYPES)
def test_gemv_and_tiled_gemm_vs_reference(rows, rng, dtype):
    backend = rows
    for i, (N, K, M, bs) in enumerate(SHAPES):
        W = torch.randn(N, K, generator=rng).to(dtype)
        A = (torch.randn(M, K, generator=rng) * 4).to(dtype)
        b = torch.randn(N, generator=rng).to(dtype) if i % 2 else None
        P, qs = wb.quantize_4bit(W, blocksize=bs, compress_statistics=i % 2 == 0, backend="reference",
                                 codebook=cbs.get("af4") if i == 2 else None)
        ref = matmul_4bit(A, P, qs, bias=b, backend="reference")
        got = matmul_4bit(A, P, qs, bias=b, backend="numba_cuda")
        assert got.dtype == dtype and got.shape == (M, N)
        _check(got, ref, A, P, qs, b)
        if M <= backend.K.GEMV_MAX_M:
            _check(gemv_4bit(A, P, state=qs, backend="numba_cuda"), gemv_4bit(A, P, state=qs, backend="reference"),
                   A, P, qs, None)


@sim
def test_nested_absmax_decoded_in_kernel(rows, rng):
    """Nested blocksize 256: more than 256 weight blocks, so the second-level absmax index b >> 8 moves."""
    N, K, bs = 9, 2048, 32                    # 576 blocks
    W = torch.randn(N, K, generator=rng)
    A = torch.randn(2, K, generator=rng)
    P, qs = wb.quantize_4bit(W, blocksize=bs, compress_statistics=True, backend="reference")
    _check(matmul_4bit(A, P, qs, backend="numba_cuda"), matmul_4bit(A, P, qs, backend="reference"), A, P, qs, None)


@sim
@pytest.mark.parametrize("dtype", DTYPES)
def test_weights_exact_with_one_hot_rows(rows, rng, dtype):
    """One-hot activation rows: every sum holds one product, so the outputs are the dequantized weights (rule 2,
    nested scales included) bit for bit -- the word GEMV (K % 8 == 0), the element GEMV (odd K) and the tiled GEMM."""
    for N, K, M, bs in [(5, 64, 3, 32), (4, 45, 2, 32), (3, 72, 6, 64)]:
        W = (torch.randn(N, K, generator=rng) * 3).to(dtype)
        P, qs = wb.quantize_4bit(W, blocksize=bs, compress_statistics=True, backend="reference")
        Wd = wb.dequantize_4bit(P, qs, backend="reference").to(dtype)
        ks = torch.randperm(K, generator=rng)[:M]
        A = torch.zeros(M, K, dtype=dtype)
        A[torch.arange(M), ks] = 1
        assert torch.equal(matmul_4bit(A, P, qs, backend="numba_cuda"), Wd[:, ks].t()), (N, K, M)


@sim
def test_gemv_rows_contiguous_chunk_order(rows, rng, monkeypatch):
    """``gemv_rows(spread=False)`` (each warp a contiguous range of chunks; studies/probes/numba_gemv_spread_ab.py
    times it against the default) holds the same bound, on shapes with more chunks than warps and fewer."""
    K = rows.K
    build = K.gemv_rows
    monkeypatch.setattr(K, "gemv_rows", lambda ch, M, kind: build(ch, M, kind, False))
    for N, Kd, M, bs in [(3, 2112, 1, 64), (5, 1056, 4, 32), (9, 64, 3, 64)]:
        W = torch.randn(N, Kd, generator=rng)
        A = torch.randn(M, Kd, generator=rng).to(torch.bfloat16)
        P, qs = wb.quantize_4bit(W, blocksize=bs, compress_statistics=True, backend="reference")
        _check(gemv_4bit(A, P, state=qs, backend="numba_cuda"), gemv_4bit(A, P, state=qs, backend="reference"),
               A, P, qs, None)


@sim
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_gemv_on_the_tiled_layout(backend, rng, monkeypatch, dtype):
    """``KBIT_NUMBA_GEMV_LAYOUT=tiled``: ``gemv_tiled`` on the tiled copy of the weight, within error_bound_unscaled,
    on N not a multiple of 16 (a padded tile; rows g + 8 past N), more chunks than warps and fewer, M = 1..4 (the
    activations one chunk ahead and not), blocks longer than a chunk, nested scales and bias; a codebook not finite
    in fp16, K % 64 != 0 and fp32 A stay on the rule-2 kernels."""
    K = backend.K
    monkeypatch.setattr(backend, "GEMV_LAYOUT", "tiled")
    build, ran = K.gemv_tiled, []
    monkeypatch.setattr(K, "gemv_tiled", lambda M, kind: ran.append(M) or build(M, kind))
    for i, (N, Kd, M, bs) in enumerate([(21, 128, 1, 64), (40, 576, 3, 128), (16, 320, 4, 64), (7, 64, 2, 64),
                                        (35, 1024, 1, 256)]):
        W = torch.randn(N, Kd, generator=rng)
        A = (torch.randn(M, Kd, generator=rng) * 2).to(dtype)
        b = torch.randn(N, generator=rng).to(dtype) if i % 2 else None
        P, qs = wb.quantize_4bit(W, blocksize=bs, compress_statistics=i != 1, backend="reference")
        got = matmul_4bit(A, P, qs, bias=b, backend="numba_cuda")
        assert ran[-1:] == [M], (N, Kd, M)
        ref = matmul_4bit(A, P, qs, bias=b, backend="reference")
        a2, a8, c2, off = ((qs.state2.absmax, qs.absmax, qs.state2.code, qs.offset) if qs.nested
                           else (qs.absmax, None, None, None))
        bound = R.unscaled_bound_of(A, P, (N, Kd), a2, qs.code, bs, b, a8, c2, off, ref=ref)
        assert ((got.float() - ref.float()).abs() <= bound).all(), (N, Kd, M)
    ran.clear()
    W = torch.randn(5, 96, generator=rng)
    P, qs = wb.quantize_4bit(W, blocksize=32, backend="reference")
    matmul_4bit(torch.randn(1, 96, generator=rng).to(dtype), P, qs, backend="numba_cuda")   # K % 64, blocksize 32
    P, qs = wb.quantize_4bit(torch.randn(5, 128, generator=rng), blocksize=64, backend="reference")
    matmul_4bit(torch.randn(1, 128, generator=rng), P, qs, backend="numba_cuda")              # fp32 A
    # a kernel-level table past fp16's range (public codebooks lie in [-1, 1]), small scales: rule 2 is finite
    A = torch.randn(2, 128, generator=rng).to(torch.float16)
    table, absmax = qs.code.float() * 1e6, torch.full_like(qs.absmax, 1e-5)
    got = backend.gemm_4bit(A, P, (5, 128), absmax, table, 64)
    ref = R.gemm_4bit(A, P, (5, 128), absmax, table, 64)
    W = R.dequantize_weight(P, (5, 128), absmax, table, 64, torch.float16)
    assert ((got.float() - ref.float()).abs() <= R.error_bound(A, W, None, torch.float16, ref)).all()
    assert ran == []


@sim
def test_gemv_layout_auto_follows_the_production_dispatch(backend, rng, monkeypatch):
    """The default layout rule: ``gemv_tiled`` (unscaled, error_bound_unscaled) exactly where the cuda backend's
    dispatch takes its unscaled-lookup GEMM (``takes_lut``), the rule-2 row GEMV (error_bound) elsewhere. One row
    counts as a large weight here (the threshold lowered: 2^24 elements is too slow for the simulator)."""
    from workbench.backends.cuda import matmul as CM
    K = backend.K
    monkeypatch.setattr(backend, "GEMV_LAYOUT", "auto")
    monkeypatch.setattr(CM, "LUT_M1_MIN_WEIGHTS", 40 * 256)
    tiled, rows_ = K.gemv_tiled, K.gemv_rows
    ran = []
    monkeypatch.setattr(K, "gemv_tiled", lambda M, kind: ran.append("tiled") or tiled(M, kind))
    monkeypatch.setattr(K, "gemv_rows", lambda *a: ran.append("rows") or rows_(*a))
    for N, Kd, M, bs, want in [(21, 128, 3, 64, "tiled"), (40, 320, 1, 64, "tiled"), (9, 128, 1, 64, "rows"),
                               (9, 128, 2, 32, "rows"), (17, 192, 4, 128, "tiled")]:
        W = torch.randn(N, Kd, generator=rng)
        A = torch.randn(M, Kd, generator=rng).to(torch.bfloat16)
        P, qs = wb.quantize_4bit(W, blocksize=bs, compress_statistics=True, backend="reference")
        assert CM.takes_lut(A.dtype, M, N, Kd, bs, True) == (want == "tiled"), (N, Kd, M, bs)
        got = matmul_4bit(A, P, qs, backend="numba_cuda")
        assert ran[-1:] == [want], (N, Kd, M, bs, ran)
        ref = matmul_4bit(A, P, qs, backend="reference")
        if want == "tiled":
            bound = R.unscaled_bound_of(A, P, (N, Kd), qs.state2.absmax, qs.code, bs, None, qs.absmax,
                                        qs.state2.code, qs.offset, ref=ref)
            assert ((got.float() - ref.float()).abs() <= bound).all(), (N, Kd, M)
        else:
            _check(got, ref, A, P, qs, None)
