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


FINE_MAX = 8000  # entries (31.25 KB): the quant kernels' limit too (cuda_src/quant.cu, FINE_MAX)


def _f32(u):
    return np.asarray(u, np.uint64).astype(np.uint32).view(np.float32)


def _bits(f):
    return np.asarray(f, np.float32).view(np.uint32)


def fine_plan(bounds: np.ndarray, bucket_codes: np.ndarray, bits: int = 8, max_entries: int = FINE_MAX, *,
              clamped_only=False):
    """The one-load search table (the numpy twin of ``build_fine`` in cuda_src/quant.cu), or None.

    Cells (sign, exponent, top m mantissa bits) are fine enough that each holds at most one bound,
    so one uint32 entry decides a code: its low 23 - m bits are the bound's mantissa bits below the
    cell prefix (negative cells: XOR mask), the bits above the code(s) -- 4-bit: below | above << 4;
    8-bit: below, above = below + 1 (identity bucket codes only, else None). A cell without a bound
    stores low = mask. Code: ``t = (key bits ^ sign mask) & mask; up = t > (e & mask)``.
    Clamped mode, per sign: key of ``max(|s|, lowest)``, ``lowest`` = the float of the cell of the
    smallest-magnitude bound of that sign (nothing below it changes code; NaN lands there);
    positive s index ``[0, half)``, negative s follow. Direct mode (kbase = -1): key = float bits
    >> (23 - m), 384 << m entries, when ``clamped_only`` is false and it fits.
    Returns ``(entries uint32[size], m, kbase_p, kbase_n, half)``.
    """
    b = np.asarray(bounds, np.float32)
    b = np.where(b < -1, -np.inf, np.where(b >= 1, np.inf, b)).astype(np.float32)
    codes = np.asarray(bucket_codes, np.uint32)
    nb = len(codes)
    if bits == 8 and not np.array_equal(codes, np.arange(nb)):
        return None

    for m in range(1, 11):
        sh = 23 - m
        mask = np.uint32((1 << sh) - 1)
        ncell = 128 << m

        def entries(u, neg):
            u = np.asarray(u, np.uint64)
            lo, hi = _f32(u << np.uint64(sh)), _f32(((u + np.uint64(1)) << np.uint64(sh)) - np.uint64(1))
            vmin, vmax = (-hi, -lo) if neg else (lo, hi)
            base = np.searchsorted(b, vmin, "left")
            inside = np.searchsorted(b, vmax, "left") - base
            if inside.max(initial=0) > 1:
                return None
            low = np.full(base.shape, mask, np.uint32)
            has = inside > 0
            low[has] = _bits(np.abs(b[base[has]])) & mask
            if neg:
                low[has] ^= mask
            c = codes[np.minimum(base, nb - 1)]
            if bits == 4:
                c = c | (codes[np.minimum(base + 1, nb - 1)] << np.uint32(4))
            return (low | (c << np.uint32(sh))).astype(np.uint32)

        u = np.arange(ncell)
        if not clamped_only and (384 << m) <= max_entries:
            pos, neg = entries(u, False), entries(u, True)
            if pos is None or neg is None:
                continue
            e = np.full(384 << m, mask, np.uint32)  # [ncell, 256 << m): NaN keys, in bounds
            e[:ncell], e[256 << m:] = pos, neg
            return e, m, -1, -1, 256 << m
        zero = int(np.searchsorted(b, np.float32(0), "left"))
        kp = int(_bits(b[zero]) >> sh) if zero < len(b) and b[zero] < 2 else ncell - 1
        # negative cells hold bounds with |b| in (lo, hi]: a bound at -lo(key) belongs to the cell below
        kn = int((_bits(-b[zero - 1]) - 1) >> sh) if zero > 0 and b[zero - 1] > -2 else ncell - 1
        if (ncell - kp) + (ncell - kn) > max_entries:
            continue
        pos, neg = entries(u[kp:], False), entries(u[kn:], True)
        if pos is None or neg is None:
            continue
        return np.concatenate([pos, neg]), m, kp, kn, ncell - kp
    return None


def fine_lookup(plan, s: np.ndarray, bits: int = 8) -> np.ndarray:
    """Codes of float32 ``s`` through a :func:`fine_plan` table, computed as the kernels do."""
    e, m, kp, kn, half = plan
    s = np.asarray(s, np.float32)
    sb = s.view(np.uint32)
    sh = 23 - m
    mask = np.uint32((1 << sh) - 1)
    neg = np.where(sb >> 31, np.uint32(0xFFFFFFFF), np.uint32(0))
    if kp < 0:
        key = sb
        idx = np.minimum(sb >> sh, len(e) - 1).astype(np.int64)
    else:
        lowest = np.where(neg, np.uint32(kn << sh), np.uint32(kp << sh)).view(np.float32)
        key = np.fmax(np.abs(s), lowest).view(np.uint32)  # fmax: NaN -> lowest, as CUDA's fmaxf
        idx = (key >> sh).astype(np.int64) + np.where(neg, half - kn, -kp)
    ent = e[idx]
    up = ((key ^ neg) & mask) > (ent & mask)
    c = ent >> np.uint32(sh)
    if bits == 4:
        return np.where(up, c >> 4, c & 0xF).astype(np.uint8)
    return (c + up).astype(np.uint8)
