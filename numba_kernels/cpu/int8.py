"""Numba CPU kernels for LLM.int8() vector-wise quantization (rules: workbench/backends/reference/int8.py)."""
from __future__ import annotations

import numpy as np
from numba import njit, prange

from .quant import load

_OPTS = dict(cache=True, fastmath=False, nogil=True)


@njit(parallel=True, **_OPTS)
def vectorwise_quant(x, kind, rows, cols, use_t, t, codes, stats, col_flags):
    """x: flat (rows * cols) input; codes int8 (rows * cols); stats float32[rows];
    col_flags uint8[cols] set to 1 for columns with an |a| >= t (when use_t).

    t is the threshold already rounded to A's dtype (torch compares ``A.abs() >= threshold`` in
    A's dtype), as a float32: widening is exact and monotone, so the float32 compare here is
    torch's. Non-finite values as the reference: NaN is never an outlier and makes its row's
    stat NaN (every code of the row 0); +-Inf is an outlier when use_t (t <= Inf), else it makes
    the stat Inf (codes: x * 0 -> 0, Inf * 0 = NaN -> 0); a non-finite or out-of-range product
    (all-zero row: 0 * inf; subnormal stat: 127 / stat overflows) is coded 0."""
    for r in prange(rows):
        base = r * cols
        am = np.float32(0.0)
        for c in range(cols):
            v = abs(load(x, base + c, kind))
            if use_t and v >= t:
                col_flags[c] = 1  # benign race: every writer stores 1
                continue
            am = v if (v > am or v != v) else am  # NaN-propagating max (torch's amax)
        stats[r] = am
        # torch (and so bitsandbytes) evaluates 127.0 / t as t.reciprocal() * 127.0: two roundings
        scale = (np.float32(1.0) / am) * np.float32(127.0)
        for c in range(cols):
            a = load(x, base + c, kind)
            if use_t and abs(a) >= t:
                codes[base + c] = 0
            else:
                q = np.rint(a * scale)
                codes[base + c] = np.int8(q) if abs(q) <= np.float32(127.0) else np.int8(0)  # NaN -> 0


@njit(parallel=True, **_OPTS)
def zero_columns(codes, rows, cols, col_idx):
    for r in prange(rows):
        base = r * cols
        for j in range(col_idx.shape[0]):
            codes[base + col_idx[j]] = 0
