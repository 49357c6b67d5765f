"""LLM.int8() family, plain torch: the executable spec (bitsandbytes 0.50.2 torch rules).

Inputs arrive validated (2-D, contiguous, finite, fp32/fp16/bf16 on this backend's device).

Vectorwise (row-wise absmax) quantization of ``A[rows, cols]`` with ``threshold`` t >= 0::

    outlier[i, j]  = t > 0 and |A[i, j]| >= t      # compared in A's dtype (t rounded to it)
    row_stats[i]   = max_j |A[i, j]| over non-outliers, as float32 (0 if none)
    scale[i]       = (1.0f / row_stats[i]) * 127.0f # torch's scalar/tensor is reciprocal-then-multiply
                                                     # (two roundings; inf for 0): bnb's exact rule
    code[i, j]     = rint_even(float(A[i, j]) * scale[i])  (0 for outliers; 0 if not finite)
    outlier_cols   = sorted column indices holding any outlier (int64); None when t == 0
    rows > 1:  code[:, outlier_cols] = 0

"0 if not finite" covers all-zero rows (0 * inf = NaN) and rows whose absmax is so small that
127/absmax overflows; torch's float->int8 cast sends these to 0 on CPU, and every backend
here does the same explicitly.

Column statistics (``int8_double_quant``, bitsandbytes' CUDA op, whose column part is torch)::

    col_stats[j] = max_i |A[i, j]| over non-outliers (float32)
    col_code     = rint_even( float(dtype(A * 127)) / col_stats[j] )   # A*127 rounds in A's dtype
                   (outliers count as 0; non-finite -> 0)

Matmul: ``C[m, n] = sum_k CA[m, k] * CB[n, k]`` exactly in int32 (|C| <= k*127^2), then
``out = float32(C) * (row_stats[m] * col_stats[n]) * 6.200124e-05f (+ bias)``, cast to dtype.
The mixed decomposition adds ``A[:, outlier_cols] @ dequant(CB[:, outlier_cols]).T`` in A's dtype.
"""
from __future__ import annotations

import torch

from ..registry import register_kernel

INV_127 = 7.874015718698502e-3   # bitsandbytes' dequant constant
INV_127_SQ = 6.200124e-05        # bitsandbytes' int8_mm_dequant constant


def _codes(x: torch.Tensor) -> torch.Tensor:
    """float32 -> int8 by round-half-even; non-finite -> 0 (|x| <= 127 otherwise)."""
    r = torch.round(x)
    r = torch.where(torch.isfinite(r), r, torch.zeros((), dtype=r.dtype, device=r.device))
    return r.to(torch.int8)


def _outlier_mask(A: torch.Tensor, threshold: float) -> torch.Tensor:
    return A.abs() >= threshold  # torch compares in A's dtype: the threshold is rounded to it


def int8_outlier_cols(A: torch.Tensor, threshold: float) -> torch.Tensor:
    """Sorted int64 indices of the columns with any |A| >= threshold (empty for threshold 0)."""
    if threshold <= 0:
        return torch.empty(0, dtype=torch.int64, device=A.device)
    return torch.argwhere(_outlier_mask(A, threshold).any(dim=0)).view(-1)


def int8_vectorwise_quant(A: torch.Tensor, threshold: float):
    rows = A.shape[0]
    outlier_cols = None
    X = A
    if threshold > 0:
        mask = _outlier_mask(A, threshold)
        outlier_cols = torch.argwhere(mask.any(dim=0)).view(-1)
        X = A.masked_fill(mask, 0)
    row_stats = X.abs().amax(dim=1).float() if A.shape[1] else torch.zeros(rows, device=A.device)
    scale = 127.0 / row_stats  # torch: row_stats.reciprocal() * 127.0 (two float32 roundings)
    codes = _codes(X.float() * scale.unsqueeze(1))
    if rows > 1 and outlier_cols is not None and outlier_cols.numel():
        codes[:, outlier_cols] = 0
    return codes, row_stats, outlier_cols


def int8_double_quant(A: torch.Tensor, threshold: float):
    codes_row, row_stats, outlier_cols = int8_vectorwise_quant(A, threshold)
    X = A
    if threshold > 0:
        X = A.masked_fill(_outlier_mask(A, threshold), 0)
    col_stats = X.abs().amax(dim=0).float()
    codes_col = _codes(X.mul(127.0).float() / col_stats.unsqueeze(0))
    return codes_row, codes_col, row_stats, col_stats, outlier_cols


def int8_vectorwise_dequant(codes: torch.Tensor, stats: torch.Tensor) -> torch.Tensor:
    return codes.float() * stats.view(-1, 1) * INV_127


def int8_linear_matmul(A: torch.Tensor, B: torch.Tensor) -> torch.Tensor:
    """``A[m, k] @ B[n, k].T`` exactly in int32 (float64 products and sums are exact here)."""
    return torch.matmul(A.double(), B.double().t()).to(torch.int32)


def int8_mm_dequant(C: torch.Tensor, row_stats: torch.Tensor, col_stats: torch.Tensor, bias=None,
                    dtype=torch.float16) -> torch.Tensor:
    out = C.float() * (row_stats.view(-1, 1) * col_stats.view(1, -1)) * INV_127_SQ
    if bias is not None:
        out = out + bias.float()
    return out.to(dtype)


def int8_scaled_mm(CA, CB, SCA, SCB, bias=None, dtype=torch.float16):
    return int8_mm_dequant(int8_linear_matmul(CA, CB), SCA, SCB, bias, dtype)


def mixed_scaled_mm_of(int8_scaled_mm, int8_vectorwise_dequant):
    """A backend's ``int8_mixed_scaled_mm`` from its ``int8_scaled_mm`` and ``int8_vectorwise_dequant``: the
    composition is the spec's; the outlier part is a dense matmul in A's dtype (cuBLAS on CUDA, as bitsandbytes)."""
    def int8_mixed_scaled_mm(A, CA, CB, SCA, SCB, outlier_cols=None, bias=None):
        """bitsandbytes' MatMul8bitLt forward: int8 part + outlier columns of A in A's dtype."""
        out = int8_scaled_mm(CA, CB, SCA, SCB, bias, A.dtype)
        if outlier_cols is not None and outlier_cols.numel():
            subA = A[:, outlier_cols].contiguous()
            subB = int8_vectorwise_dequant(CB[:, outlier_cols].contiguous(), SCB).to(A.dtype).t()
            out = out.addmm(subA, subB)
            return out, subA
        return out, torch.empty(0, device=A.device, dtype=A.dtype)
    return int8_mixed_scaled_mm


int8_mixed_scaled_mm = mixed_scaled_mm_of(int8_scaled_mm, int8_vectorwise_dequant)


def outlier_columns(A: torch.Tensor, threshold: float) -> torch.Tensor:
    return int8_outlier_cols(A, threshold)


# Importing this module registers its kernels against the declarations in workbench/library.py.
register_kernel("workbench::int8_vectorwise_quant", "reference")(int8_vectorwise_quant)
register_kernel("workbench::outlier_columns", "reference")(outlier_columns)
register_kernel("workbench::int8_double_quant", "reference")(int8_double_quant)
register_kernel("workbench::int8_vectorwise_dequant", "reference")(int8_vectorwise_dequant)
register_kernel("workbench::int8_linear_matmul", "reference")(int8_linear_matmul)
register_kernel("workbench::int8_mm_dequant", "reference")(int8_mm_dequant)
register_kernel("workbench::int8_scaled_mm", "reference")(int8_scaled_mm)
register_kernel("workbench::int8_mixed_scaled_mm", "reference")(int8_mixed_scaled_mm)
