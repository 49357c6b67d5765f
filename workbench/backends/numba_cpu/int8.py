"""Numba CPU adapter for the LLM.int8() family; ops without a dedicated kernel reuse the reference."""
from __future__ import annotations

import numpy as np
import torch

from numba_kernels.cpu import int8 as K

from ..reference.int8 import (int8_linear_matmul, int8_mm_dequant, int8_vectorwise_dequant,  # noqa: F401
                              outlier_columns)
from .._cpu_common import as_numpy_bits

OPS = ("int8_vectorwise_quant", "int8_vectorwise_dequant", "int8_double_quant", "int8_linear_matmul",
       "int8_mm_dequant", "outlier_columns")


def int8_vectorwise_quant(A, threshold):
    rows, cols = A.shape
    x, kind = as_numpy_bits(A.reshape(-1))
    codes = torch.empty(rows, cols, dtype=torch.int8)
    stats = torch.empty(rows, dtype=torch.float32)
    flags = np.zeros(cols, np.uint8)
    K.vectorwise_quant(x, kind, rows, cols, float(threshold), codes.view(-1).numpy(), stats.numpy(), flags)
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
