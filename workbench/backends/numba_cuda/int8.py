"""Numba CUDA LLM.int8() family: torch tensors in, numba_kernels/cuda/int8.py kernels, torch out.

Bit-exact to the reference (codes, stats, outlier columns, int32 matmul, mm dequant). Outputs are
allocated by torch; kernels launch on torch's current stream. Under the CUDA simulator the backend
takes CPU tensors (small inputs only). The outlier part of the mixed decomposition is torch.addmm in
A's dtype, as in bitsandbytes.
"""
from __future__ import annotations

import torch

from numba_kernels.cuda import int8 as K

from ._launch import as_array, launch

from ..reference.int8 import mixed_scaled_mm_of
from ..registry import register_kernel

_KIND = {torch.float32: K.F32, torch.float16: K.F16, torch.bfloat16: K.BF16}


def threshold_in(dtype: torch.dtype, threshold: float) -> float:
    return float(torch.tensor(float(threshold), dtype=torch.float64).to(dtype))


def _kind(dtype) -> int:
    try:
        return _KIND[dtype]
    except KeyError:
        raise TypeError(f"A: dtype {dtype} not supported by numba_cuda (float32/float16/bfloat16)") from None


def _arr(t: torch.Tensor):
    t = t.contiguous().reshape(-1)
    return as_array(t.view(torch.int16) if t.dtype == torch.bfloat16 else t)


def _quant_rows(A, threshold):
    A = A.contiguous()
    rows, cols = A.shape
    codes = torch.empty((rows, cols), dtype=torch.int8, device=A.device)
    stats = torch.empty(rows, dtype=torch.float32, device=A.device)
    use = threshold > 0.0
    flags = torch.zeros(cols, dtype=torch.uint8, device=A.device)
    thr = threshold_in(A.dtype, threshold) if use else 0.0
    launch(K.row_quant, rows, K.THREADS, A.device, _arr(A), _kind(A.dtype), rows, cols, thr, int(use),
            _arr(codes), _arr(stats), _arr(flags))
    if not use:
        return codes, stats, None
    idx = torch.nonzero(flags).view(-1)
    if idx.numel() and rows > 1:
        n = rows * idx.numel()
        launch(K.zero_cols, K.grid1(n), K.THREADS, A.device, _arr(codes), rows, cols, _arr(idx), idx.numel())
    return codes, stats, idx


def int8_vectorwise_quant(A, threshold):
    return _quant_rows(A, threshold)


def int8_outlier_cols(A, threshold):
    """Outlier column detection as a by-product of the row kernel's flags."""
    if threshold <= 0.0:
        return torch.empty(0, dtype=torch.int64, device=A.device)
    return _quant_rows(A, threshold)[2]


outlier_columns = int8_outlier_cols


def int8_double_quant(A, threshold):
    A = A.contiguous()
    codes, stats, idx = _quant_rows(A, threshold)
    rows, cols = A.shape
    use = threshold > 0.0
    thr = threshold_in(A.dtype, threshold) if use else 0.0
    cstats = torch.empty(cols, dtype=torch.float32, device=A.device)
    ccodes = torch.empty((rows, cols), dtype=torch.int8, device=A.device)
    a, kind = _arr(A), _kind(A.dtype)
    launch(K.col_stats, K.grid1(cols), K.THREADS, A.device, a, kind, rows, cols, thr, int(use), _arr(cstats))
    launch(K.col_codes, K.grid1(rows * cols), K.THREADS, A.device, a, kind, rows, cols, thr, int(use),
            _arr(cstats), _arr(ccodes))
    return codes, ccodes, stats, cstats, idx


def int8_vectorwise_dequant(A, stats):
    A = A.contiguous()
    rows, cols = A.shape
    out = torch.empty((rows, cols), dtype=torch.float32, device=A.device)
    launch(K.vdequant, K.grid1(rows * cols), K.THREADS, A.device, _arr(A), _arr(stats.float()), rows, cols, _arr(out))
    return out


def int8_linear_matmul(A, B):
    M, Kd = A.shape
    N = B.shape[0]
    C = torch.empty((M, N), dtype=torch.int32, device=A.device)
    launch(K.matmul, K.grid1(M * N), K.THREADS, A.device, _arr(A), _arr(B), M, N, Kd, _arr(C))
    return C


def _bias_arr(bias, device):
    if bias is None:
        return _arr(torch.zeros(1, dtype=torch.float32, device=device)), 0
    return _arr(bias.float()), 1


def int8_mm_dequant(A, row_stats, col_stats, bias=None, dtype=torch.float16):
    M, N = A.shape
    out = torch.empty((M, N), dtype=torch.float32, device=A.device)
    b, hb = _bias_arr(bias, A.device)
    launch(K.mm_dequant, K.grid1(M * N), K.THREADS, A.device, _arr(A), _arr(row_stats.float()),
            _arr(col_stats.float()), b, hb, M, N, _arr(out))
    return out.to(dtype)


def int8_scaled_mm(CA, CB, SCA, SCB, bias=None, dtype=torch.float16):
    M, Kd = CA.shape
    N = CB.shape[0]
    out = torch.empty((M, N), dtype=torch.float32, device=CA.device)
    b, hb = _bias_arr(bias, CA.device)
    launch(K.scaled_mm, K.grid1(M * N), K.THREADS, CA.device, _arr(CA), _arr(CB), _arr(SCA.float()),
            _arr(SCB.float()), b, hb, M, N, Kd, _arr(out))
    return out.to(dtype)


int8_mixed_scaled_mm = mixed_scaled_mm_of(int8_scaled_mm, int8_vectorwise_dequant)


# Importing this module registers its kernels against the declarations in workbench/library.py.
register_kernel("workbench::int8_vectorwise_quant", "numba_cuda")(int8_vectorwise_quant)
register_kernel("workbench::outlier_columns", "numba_cuda")(outlier_columns)
register_kernel("workbench::int8_double_quant", "numba_cuda")(int8_double_quant)
register_kernel("workbench::int8_vectorwise_dequant", "numba_cuda")(int8_vectorwise_dequant)
register_kernel("workbench::int8_linear_matmul", "numba_cuda")(int8_linear_matmul)
register_kernel("workbench::int8_mm_dequant", "numba_cuda")(int8_mm_dequant)
register_kernel("workbench::int8_scaled_mm", "numba_cuda")(int8_scaled_mm)
register_kernel("workbench::int8_mixed_scaled_mm", "numba_cuda")(int8_mixed_scaled_mm)
