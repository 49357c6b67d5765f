"""The host-side "cell plan" that the GPU kernels use to bucketize exactly (numpy only, so the
optimizer and quantization backends can share it without importing numba.cuda)."""
from __future__ import annotations

import numpy as np


def cell_plan(bounds: np.ndarray, bucket_codes: np.ndarray, bits: int, mmax: int = 4, *,
              tries=None, index_dtype=np.int32):
    """(m, S, cell[384 << m], bounds f32[264], codes[257]) for the cell search;
    cell and codes are ``index_dtype`` arrays.

    key(s) = float bits >> (23 - m): s in [+0, 2) -> [0, 128 << m), s in (-2, -0] -> [256 << m, 384 << m).
    Per cell the plan stores pos = #{bounds' < min(cell)} and guarantees at most 2**S - 1 bounds
    inside the cell. bounds' folds the spec's [-1, 1] clamp (bounds < -1 -> -inf, >= 1 -> +inf), so
    #{bounds' < s} = #{bounds < clamp(s)} for |s| < 2 and the kernels need no clamp. Falls back to
    m = 1 and a full search (S = bits), which always fits.
    The optimizer kernels (uint8 tables, ``tries=(1, 2, 3)``) and the quantization kernels share it.
    """
    b = np.asarray(bounds, np.float32)
    b = np.where(b < -1, -np.inf, np.where(b >= 1, np.inf, b)).astype(np.float32)
    if tries is None:
        tries = [1] if bits == 4 else [2, 3]
    full = 4 if bits == 4 else 8
    for S in [*tries, full]:
        for m in (range(1, mmax + 1) if S != full else [1]):
            ncell = 128 << m
            u = np.arange(ncell, dtype=np.uint64)
            lo = (u << np.uint64(23 - m)).astype(np.uint32).view(np.float32)
            hi = (((u + np.uint64(1)) << np.uint64(23 - m)) - np.uint64(1)).astype(np.uint32).view(np.float32)
            bp, tp = np.searchsorted(b, lo, "left"), np.searchsorted(b, hi, "left")
            bn, tn = np.searchsorted(b, -hi, "left"), np.searchsorted(b, -lo, "left")
            if max((tp - bp).max(), (tn - bn).max()) <= (1 << S) - 1:
                cell = np.zeros(384 << m, index_dtype)
                cell[:ncell] = bp
                cell[256 << m:] = bn
                bpad = np.full(256 + 8, np.inf, np.float32)
                bpad[:b.size] = b
                codes = np.asarray(bucket_codes, index_dtype)
                cpad = np.concatenate([codes, np.full(257 - codes.size, codes[-1], index_dtype)])
                return m, S, cell, bpad, cpad
    raise AssertionError("unreachable: the full search always fits")
