"""Numba CPU kernels for LLM.int8() vector-wise quantization (rules: workbench/backends/reference/int8.py)."""
from __future__ import annotations

import numpy as np
from numba import njit, prange

from .quant import load

_OPTS = dict(cache=True, fastmath=False, nogil=True)


@njit(parallel=True, **_OPTS)
def vectorwise_quant(x, kind, rows, cols, threshold, codes, stats, col_flags):
    """x: flat (rows * cols) input; codes int8 (rows * cols); stats float32[rows];
    col_flags uint8[cols] set to 1 for columns with an |a| >= threshold (threshold > 0)."""
    use_t = threshold > 0.0
    t = np.float32(threshold)
    for r in prange(rows):
        base = r * cols
        am = np.float32(0.0)
        for c in range(cols):
            v = abs(load(x, base + c, kind))
            if use_t and v >= t:
                col_flags[c] = 1  # benign race: every writer stores 1
                continue
            am = v if v > am else am
        stats[r] = am
        # torch (and so bitsandbytes) evaluates 127.0 / t as t.reciprocal() * 127.0: two roundings
        scale = (np.float32(1.0) / am) * np.float32(127.0)
        for c in range(cols):
            a = load(x, base + c, kind)
            if am == 0 or (use_t and abs(a) >= t):
                codes[base + c] = 0
            else:
                codes[base + c] = np.int8(np.rint(a * scale))


@njit(parallel=True, **_OPTS)
def zero_columns(codes, rows, cols, col_idx):
    for r in prange(rows):
        base = r * cols
        for j in range(col_idx.shape[0]):
            codes[base + col_idx[j]] = 0
