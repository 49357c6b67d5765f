"""Numba CPU adapter for the LLM.int8() family; ops without a dedicated kernel reuse the reference."""
from __future__ import annotations

import numpy as np
import torch

from numba_kernels.cpu import int8 as K

from ..reference.int8 import (int8_linear_matmul, int8_mm_dequant, int8_vectorwise_dequant,  # noqa: F401
                              outlier_columns)
from .._cpu_common import as_numpy_bits

from ..registry import register_kernel


def _threshold_in(dtype: torch.dtype, threshold: float) -> np.float32:
    """``threshold`` rounded to ``dtype`` as torch rounds the scalar of ``A.abs() >= threshold``
    (6.01 in bf16 is 6.0), widened exactly to float32."""
    return np.float32(torch.tensor(float(threshold), dtype=torch.float64).to(dtype).item())


def int8_vectorwise_quant(A, threshold):
    rows, cols = A.shape
    x, kind = as_numpy_bits(A.reshape(-1))
    codes = torch.empty(rows, cols, dtype=torch.int8)
    stats = torch.empty(rows, dtype=torch.float32)
    flags = np.zeros(cols, np.uint8)
    K.vectorwise_quant(x, kind, rows, cols, threshold > 0, _threshold_in(A.dtype, threshold),
                       codes.view(-1).numpy(), stats.numpy(), flags)
    if threshold <= 0:
        return codes, stats, None
    idx = np.flatnonzero(flags)
    if rows > 1 and idx.size:
        K.zero_columns(codes.view(-1).numpy(), rows, cols, idx.astype(np.int64))
    return codes, stats, torch.from_numpy(idx.astype(np.int64))


def int8_double_quant(A, threshold):
    from ..reference.int8 import int8_double_quant as ref
    q_row, q_col, row_stats, col_stats, cols = ref(A, threshold)
    q_row2, row_stats2, cols2 = int8_vectorwise_quant(A, threshold)
    return q_row2, q_col, row_stats2, col_stats, cols2


# Importing this module registers its kernels against the declarations in workbench/library.py.
register_kernel("workbench::int8_vectorwise_quant", "numba_cpu")(int8_vectorwise_quant)
register_kernel("workbench::int8_vectorwise_dequant", "numba_cpu")(int8_vectorwise_dequant)
register_kernel("workbench::int8_double_quant", "numba_cpu")(int8_double_quant)
register_kernel("workbench::int8_linear_matmul", "numba_cpu")(int8_linear_matmul)
register_kernel("workbench::int8_mm_dequant", "numba_cpu")(int8_mm_dequant)
register_kernel("workbench::outlier_columns", "numba_cpu")(outlier_columns)
