"""Host-side search plans with which the GPU kernels bucketize exactly (numpy only, so the optimizer
and quantization backends can share them without importing numba.cuda): the "cell plan" (optimizer
and Numba CUDA kernels, the CUDA quantizers' fallback) and ``fine_plan``, the numpy twin of the CUDA
quantizers' one-load table (CI checks it against the spec: tests/test_fine_plan.py)."""
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


FINE_MAX = 4000  # entries (31.25 KB): the quant kernels' limit too (cuda_src/quant.cu, FINE_MAX)


def _f32(u):
    return np.asarray(u, np.uint64).astype(np.uint32).view(np.float32)


def _cell_entries(b: np.ndarray, codes: np.ndarray, vmin, vmax):
    """Fine-table entries (bound bits, code below | code above << 8) of the cells [vmin, vmax] for sorted bounds
    ``b`` (code = codes[#{b < s}]); cells without a bound store +inf; None if a cell holds more than one."""
    nb = len(codes)
    base = np.searchsorted(b, vmin, "left")
    inside = np.searchsorted(b, vmax, "left") - base
    if inside.max(initial=0) > 1:
        return None
    bound = np.full(base.shape, np.inf, np.float32)
    bound[inside > 0] = b[base[inside > 0]]
    below, above = codes[np.minimum(base, nb - 1)], codes[np.minimum(base + 1, nb - 1)]
    return np.stack([bound.view(np.uint32), below | (above << 8)], 1)


def fine_plan(bounds: np.ndarray, bucket_codes: np.ndarray, max_entries: int = FINE_MAX, *, clamped_only=False):
    """The one-load search table (the numpy twin of ``build_fine`` in cuda_src/quant.cu), or None.

    Cells are fine enough (m mantissa bits) that each holds at most one bound, so an entry
    (bound bits, code below | code above << 8) decides a code with one 8-byte load and one compare:
    ``q = s > bound ? above : below`` (cells without a bound store +inf). Clamped mode, per sign:
    the key is that of ``max(|s|, lowest)`` with ``lowest`` the float of key ``kbase`` (all smaller
    magnitudes, and NaN, share the first cell); positive s index ``[0, half)``, negative s follow.
    Returns ``(entries uint32[size + 1, 2], m, kbase_p, kbase_n, half)``; direct mode (kbase = -1, key =
    float bits >> (23 - m), 384 << m entries) when ``clamped_only`` is false and it fits. The extra last
    entry holds the NaN code, the top bucket's (``torch.bucketize`` puts NaN after every bound), as both
    codes; direct mode's unused keys (|s| >= 2, positive NaN) hold it too. The kernels see NaN only in
    blocks holding a NaN or an Inf and take its code from that entry.
    """
    b = np.asarray(bounds, np.float32)
    b = np.where(b < -1, -np.inf, np.where(b >= 1, np.inf, b)).astype(np.float32)
    codes = np.asarray(bucket_codes, np.uint32)
    nan_entry = np.array([[np.float32(np.inf).view(np.uint32), codes[-1] | (codes[-1] << 8)]], np.uint32)

    def entries(vmin, vmax):
        return _cell_entries(b, codes, vmin, vmax)

    zero = np.searchsorted(b, np.float32(0), "left")
    for m in range(1, 11):
        sh = 23 - m
        ncell = 128 << m
        u = np.arange(ncell, dtype=np.uint64)
        lo, hi = _f32(u << np.uint64(sh)), _f32(((u + np.uint64(1)) << np.uint64(sh)) - np.uint64(1))
        if not clamped_only and (384 << m) + 1 <= max_entries:
            pos, neg = entries(lo, hi), entries(-hi, -lo)
            if pos is None or neg is None:
                continue
            e = np.zeros((384 << m, 2), np.uint32)
            e[:ncell] = pos
            e[ncell:256 << m] = nan_entry  # NaN / |s| >= 2 keys: in bounds
            e[256 << m:] = neg
            return np.concatenate([e, nan_entry]), m, -1, -1, 256 << m

        def kbase(ok):  # the largest k whose merged cell [0, hi(k)] holds at most one bound
            return int(np.argmin(ok)) - 1 if not ok.all() else ncell - 1
        kp = kbase(np.searchsorted(b, hi, "left") - zero <= 1)
        kn = kbase(zero - np.searchsorted(b, -hi, "left") <= 1)
        if kp < 0 or kn < 0 or (ncell - kp) + (ncell - kn) + 1 > max_entries:
            continue
        lo_p, lo_n = lo[kp:].copy(), lo[kn:].copy()
        lo_p[0] = lo_n[0] = 0.0
        pos, neg = entries(lo_p, hi[kp:]), entries(-hi[kn:], -lo_n)
        if pos is None or neg is None:
            continue
        return np.concatenate([pos, neg, nan_entry]), m, kp, kn, ncell - kp
    return None


def fine_lookup(plan, s: np.ndarray) -> np.ndarray:
    """Codes of float32 ``s`` through a :func:`fine_plan` table, computed as the kernels do (NaN: the
    last entry's code, the top bucket's)."""
    e, m, kp, kn, half = plan
    s = np.asarray(s, np.float32)
    bits = s.view(np.uint32)
    sh = 23 - m
    if kp < 0:
        idx = np.minimum(bits >> sh, len(e) - 2).astype(np.int64)
    else:
        neg = (bits >> 31).astype(bool)
        lowest = np.where(neg, np.uint32(kn << sh), np.uint32(kp << sh)).view(np.float32)
        a = np.fmax(np.abs(s), lowest)  # fmax: NaN -> lowest, as CUDA's fmaxf
        idx = (a.view(np.uint32) >> sh).astype(np.int64) + np.where(neg, half - kn, -kp)
    idx = np.where(np.isnan(s), len(e) - 1, idx)
    ent = e[idx]
    up = s > ent[:, 0].view(np.float32)
    return (np.where(up, ent[:, 1] >> 8, ent[:, 1]) & 0xFF).astype(np.uint8)


COMPACT_MAX = 8000  # entries (31.25 KB): cuda_src/quant.cu, COMPACT_MAX


def compact_plan(bounds: np.ndarray, bucket_codes: np.ndarray, max_entries: int = COMPACT_MAX):
    """The CUDA 8-bit quantizers' compact table (the numpy twin of ``build_compact`` in cuda_src/quant.cu),
    or None: ``(entries uint32[limit + 1], kbase, limit)``.

    Cells are the top 16 bits of s (m = 7 mantissa bits), so a cell's one bound is s's top 16 bits plus 16
    stored bits: entry = bound low 16 bits | code below << 16 | code above << 24 (no bound: below == above).
    The key folds the sign, ``x = (bits ^ (bits >> 31, arithmetic)) & 0xffff0000`` (negative s: cell
    0x7fff - key), and ``k = min(x - (kbase << 16), limit << 16)`` (unsigned) sends |s| < float(kbase << 16)
    of either sign to the last entry; kbase is the largest with no bound in that range.
    """
    b = np.asarray(bounds, np.float32)
    b = np.where(b < -1, -np.inf, np.where(b >= 1, np.inf, b)).astype(np.float32)
    codes = np.asarray(bucket_codes, np.uint32)
    fin = np.abs(b[np.isfinite(b)])
    minabs = np.float32(fin.min()) if fin.size else np.float32(np.inf)
    kbase = min(int(minabs.view(np.uint32)) >> 16, 0x3FFF)
    limit = 0x8000 - 2 * kbase
    if kbase == 0 or limit + 1 > max_entries:
        return None
    key = np.arange(limit, dtype=np.int64) + kbase
    u = np.where(key < 0x4000, key, 0x7FFF - key).astype(np.uint64)
    lo, hi = _f32(u << np.uint64(16)), _f32((u << np.uint64(16)) | np.uint64(0xFFFF))
    vmin = np.append(np.where(key < 0x4000, lo, -hi), np.float32(0)).astype(np.float32)
    vmax = np.append(np.where(key < 0x4000, hi, -lo), np.float32(0)).astype(np.float32)
    base = np.searchsorted(b, vmin, "left")
    inside = np.searchsorted(b, vmax, "left") - base
    if inside.max() > 1:
        return None
    low = np.zeros(limit + 1, np.uint32)
    low[inside > 0] = b[base[inside > 0]].view(np.uint32) & 0xFFFF
    nb = len(codes)
    e = low | (codes[np.minimum(base, nb - 1)] << 16) | (codes[np.minimum(base + inside, nb - 1)] << 24)
    return e.astype(np.uint32), kbase, limit


def compact_lookup(plan, s: np.ndarray) -> np.ndarray:
    """Codes of finite float32 ``s`` (|s| < 2) through a :func:`compact_plan` table, computed as the kernel does."""
    e, kbase, limit = plan
    s = np.asarray(s, np.float32)
    bits = s.view(np.uint32)
    x = (bits ^ (s.view(np.int32) >> 31).view(np.uint32)) & np.uint32(0xFFFF0000)
    k = np.minimum(x - np.uint32(kbase << 16), np.uint32(limit << 16))  # uint32: wraps like the kernel
    y = e[(k >> 16).astype(np.int64)]
    f = ((bits & np.uint32(0xFFFF0000)) | (y & np.uint32(0xFFFF))).view(np.float32)
    return (np.where(s > f, y >> 24, y >> 16) & 0xFF).astype(np.uint8)


# --- k-bit codebooks (cuda_src/kbit.cu) ---------------------------------------------------------------
# The k-bit spec rounds s = x / q to argmin_j fl(|s - c[j]|), the first index on ties (no [-1, 1] clamp; s may
# exceed 1 with decoded scales). Where the sorted codebook's distinct values are at least `gap` apart, two
# distances from one s differ by at least `gap` exactly, so while 2 ulp(|s| + max|c|) < gap their float values
# differ too: the argmin is then the nearer neighbour of the pair around s, and that choice is monotone in s.
# So for |s| below SAFE the rule is a bucketize against per-pair thresholds found by bisection on the float
# order, and a fine table (as fine_plan's) decides it with one 8-byte load. Elements outside [KBIT_TINY, SAFE)
# (zero excepted) take the CUDA kernels' exact path: IEEE division and the full nearest search (the CPU kernels divide
# exactly, so only |s| >= SAFE leaves their table).
KBIT_TINY = np.float32(2.0 ** -40)   # below: the kernels' reciprocal division could underflow its residual


def _order_key(f: np.ndarray) -> np.ndarray:
    u = np.asarray(f, np.float32).view(np.uint32).astype(np.int64)
    return np.where(u >> 31, -(u & 0x7FFFFFFF), u)


def _from_order_key(k: np.ndarray) -> np.ndarray:
    k = np.asarray(k, np.int64)
    return np.where(k < 0, (-k) | 0x80000000, k).astype(np.uint32).view(np.float32)


def kbit_nearest(s: np.ndarray, c: np.ndarray) -> np.ndarray:
    """The spec's code of each float32 ``s``: argmin_j fl(|s - c[j]|), first index on ties."""
    s = np.asarray(s, np.float32).reshape(-1, 1)
    return np.abs(s - np.asarray(c, np.float32).reshape(1, -1)).argmin(axis=1)


def kbit_plan(values: np.ndarray, max_entries: int = FINE_MAX):
    """The k-bit quantizers' one-load search table for a sorted codebook, or None (too dense: the kernels then
    search exactly for every element). Returns ``(entries uint32[2 * half, 2], sh, kbase, half, safe)``.

    Entry = (bound bits, code below | code above << 8): code = s > bound ? above : below. Cells are s's
    magnitude bits >> sh (23 - sh mantissa bits), clamped to [kbase, kbase + half); positive s (sign bit 0)
    index [0, half), negative s [half, 2 * half). Valid for |s| < safe; the CUDA kernels also send 0 < |s| < KBIT_TINY
    to their exact path, for their division's sake."""
    c = np.asarray(values, np.float32).reshape(-1)
    uniq, first = np.unique(c, return_index=True)          # sorted distinct values, their lowest index
    if uniq.size < 2:
        return None
    gap = float(np.diff(uniq.astype(np.float64)).min())
    cmax = float(np.abs(uniq).max())
    e = 30
    while e >= 0 and 2.0 ** (np.floor(np.log2(2.0 ** e + cmax)) - 22) >= gap:
        e -= 1
    if e < 0:
        return None
    safe = np.float32(2.0 ** e)
    lo, hi = _order_key(uniq[:-1]), _order_key(uniq[1:])     # P(lo) false, P(hi) true
    a, b = uniq[:-1], uniq[1:]
    while np.any(hi - lo > 1):
        mid = (lo + hi) // 2
        s = _from_order_key(mid)
        p = np.abs(b - s) < np.abs(s - a)                     # float32: the neighbour above is strictly nearer
        hi, lo = np.where(p, mid, hi), np.where(p, lo, mid)
    bounds = _from_order_key(hi - 1)                          # code = #{bounds < s}: s > bound <=> s >= threshold
    codes = first.astype(np.uint32)

    def entries(vmin, vmax):
        return _cell_entries(bounds, codes, vmin, vmax)

    mags = np.abs(bounds).view(np.uint32)
    zero = np.searchsorted(bounds, np.float32(0), "left")
    for m in range(1, 9):
        sh = 23 - m
        top = int(mags.max() >> sh) + 2                      # cells above the largest bound: constant codes
        k = np.arange(top, dtype=np.uint64)
        cell_hi = _f32(((k + np.uint64(1)) << np.uint64(sh)) - np.uint64(1))
        pos_ok = np.searchsorted(bounds, cell_hi, "left") - zero <= 1
        neg_ok = zero - np.searchsorted(bounds, -cell_hi, "left") <= 1
        ok = pos_ok & neg_ok                                  # merged first cell [0, hi(k)] holds <= 1 bound per side
        kbase = int(np.argmin(ok)) - 1 if not ok.all() else top - 1
        if kbase < 0:
            continue
        half = top - kbase
        if 2 * half > max_entries:
            continue
        kk = np.arange(kbase, top, dtype=np.uint64)
        clo = _f32(kk << np.uint64(sh)).copy()
        chi = _f32(((kk + np.uint64(1)) << np.uint64(sh)) - np.uint64(1)).copy()
        clo[0], chi[-1] = 0.0, np.inf
        pos, neg = entries(clo, chi), entries(-chi, -clo)
        if pos is None or neg is None:
            continue
        return np.concatenate([pos, neg]).astype(np.uint32), sh, kbase, half, safe
    return None


KBIT_LANE_TINY = np.float32(2.0 ** -38)   # the lane table refuses bounds (and a first cell) this close to zero


def kbit_lane_table(plan):
    """The CUDA lane quantizer's restaging of a :func:`kbit_plan` table (cuda_src/kbit.cu: kk_lane_cells,
    kk_stage_lane), or None where it refuses one (a repeated codebook value, a bound within KBIT_LANE_TINY of zero).
    Returns ``(entries uint32[2 hx, 2] = (bound bits, code below), sh, kbase, top)``: entry 2 cell + sign, cells
    clamped below at kbase only and reaching ``top`` (float bits, 4x the plan's top cell edge or its safe bound);
    code = below + (bound - s < 0)."""
    if plan is None:
        return None
    e, sh, kbase, half, safe = plan
    topb = (kbase + half) << sh
    ext = min(topb + (2 << 23), int(np.float32(safe).view(np.uint32)))
    hx = (ext >> sh) - kbase
    if hx <= 0 or ((kbase + 1) << sh) - 1 < int(KBIT_LANE_TINY.view(np.uint32)):
        return None
    i = np.minimum(np.arange(hx), half - 1)
    rows = np.stack([e[:half][i], e[half:][i]], 1).reshape(-1, 2)      # 2 cell + sign
    lo, hi, mag = rows[:, 1] & 0xFF, rows[:, 1] >> 8, rows[:, 0] & np.uint32(0x7FFFFFFF)
    finite = mag < np.uint32(0x7F800000)
    if np.any(finite & ((hi != lo + 1) | (mag < KBIT_LANE_TINY.view(np.uint32)))):
        return None
    return np.stack([rows[:, 0], lo], 1).astype(np.uint32), sh, kbase, (kbase + hx) << sh


LANE_BYTES = 44 << 10   # the lane table's copies in shared memory (cuda_src/kbit.cu: KK_LANE_BYTES)


def kbit_lane_copies(lane, max_bytes: int = LANE_BYTES):
    """A :func:`kbit_lane_table` as the Numba lane quantizer stages it: ``rep`` copies (16, 8, .. 1: as many as
    ``max_bytes`` holds, cuda_src/kbit.cu: kk_lane_rep) interleaved entry by entry, each entry one uint64
    (bound bits | code below << 32); lane l reads copy l % rep, entry i at i * rep + l % rep. Returns
    ``(uint64[2 hx * rep], rep)``, or None where even one copy does not fit."""
    t = lane[0]
    if t.shape[0] * 8 > max_bytes:
        return None
    rep = 16
    while rep > 1 and t.shape[0] * rep * 8 > max_bytes:
        rep >>= 1
    words = t[:, 0].astype(np.uint64) | (t[:, 1].astype(np.uint64) << np.uint64(32))
    return np.repeat(words, rep), rep


def kbit_lane_lookup(lane, s: np.ndarray) -> np.ndarray:
    """Codes of float32 ``s`` (|s| bits below the lane table's top) as kk_code_lane computes them."""
    t, sh, kbase, _ = lane
    bits = np.asarray(s, np.float32).reshape(-1).view(np.uint32)
    cell = np.maximum((((bits << np.uint32(1)) >> np.uint32(sh + 1)).astype(np.int64)) - kbase, 0)
    ent = t[2 * cell + (bits >> 31)]
    d = (ent[:, 0].view(np.float32) - bits.view(np.float32)).view(np.uint32)
    return (ent[:, 1] + (d >> 31)).astype(np.int64)


def kbit_lookup(plan, s: np.ndarray, c: np.ndarray) -> np.ndarray:
    """Codes of float32 ``s`` as the kernels compute them: the plan's table inside its range, the spec's
    nearest search outside it (``c``: the codebook)."""
    e, sh, kbase, half, safe = plan
    s = np.asarray(s, np.float32).reshape(-1)
    bits = s.view(np.uint32)
    mag = bits & np.uint32(0x7FFFFFFF)
    idx = np.clip((mag >> sh).astype(np.int64), kbase, kbase + half - 1) - kbase + np.where(bits >> 31, half, 0)
    ent = e[idx]
    code = np.where(s > ent[:, 0].view(np.float32), ent[:, 1] >> 8, ent[:, 1] & 0xFF).astype(np.int64)
    a = np.abs(s)
    exact = ((a < KBIT_TINY) & (a != 0)) | ~(a < safe)
    if exact.any():
        code[exact] = kbit_nearest(s[exact], c)
    return code
