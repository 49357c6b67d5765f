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
        m = np.uint32(0)  # max of |a| as float32 bits: NaN-propagating like torch's amax, branch-free
        for c in range(cols):
            v = abs(load(x, base + c, kind))
            if use_t and v >= t:
                col_flags[c] = 1  # benign race: every writer stores 1
                continue
            u = np.float32(v).view(np.uint32)
            m = u if u > m else m
        am = np.uint32(m).view(np.float32)
        stats[r] = am
        # torch (and so bitsandbytes) evaluates 127.0 / t as t.reciprocal() * 127.0: two roundings
        scale = (np.float32(1.0) / am) * np.float32(127.0)
        if m < np.uint32(0x7F800000) and scale < np.float32(np.inf):
            # |a| <= am for every non-outlier: |a * scale| < 127.5, a finite product
            for c in range(cols):
                a = load(x, base + c, kind)
                if use_t and abs(a) >= t:
                    codes[base + c] = 0
                else:
                    codes[base + c] = np.int8(np.rint(a * scale))
        else:
            # stat NaN (a * NaN), Inf (a * 0 = 0, Inf * 0 = NaN), 0 or subnormal (127 / stat = Inf:
            # a * Inf = +-Inf, 0 * Inf = NaN): every product is 0 or not finite -> the whole row is 0
            for c in range(cols):
                codes[base + c] = 0


@njit(parallel=True, **_OPTS)
def zero_columns(codes, rows, cols, col_idx):
    for r in prange(rows):
        base = r * cols
        for j in range(col_idx.shape[0]):
            codes[base + col_idx[j]] = 0
