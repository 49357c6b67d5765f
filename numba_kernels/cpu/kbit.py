"""Numba CPU kernels of the k-bit family (K = 2..8, bit-plane and dense layouts, six scale formats).

Pure functions on NumPy arrays (no torch). The rules are the reference's docstring,
workbench/backends/reference/kbit.py, bit for bit: float32 arithmetic, fastmath off, scale
encodings done on the float's bits (exact floor(log2), round half to even with np.rint, saturation;
numba_kernels/kbit_scalar.py, shared with the CUDA kernels).

Passes: block absmax (parallel over blocks), scale encoding (serial, one value per block), then
codes + packing (parallel over chunks of 32-element groups: each group writes exactly K words in
both layouts, so no two tasks touch one word). Inputs must be finite (the public API checks).
Affine groups (reference/kbit_affine.py): group min/max (parallel over groups), then codes + packing with
the per-group 1/scale and zero point the adapter computed by the spec's torch code.

The nearest-code search: a binary search for p = #{c[j] <= s} in the sorted codebook, then the
closer of c[p-1] and c[p] by float32 distance (the upper one only when strictly closer), then a
walk down over entries at the same float32 distance -- exactly ``argmin_j fl(|s - c[j]|)`` with the
first index on ties, because fl(|s - c|) is monotone on either side of s.

Element arrays (``x``, ``out``) are uint16 views whatever the kind (see ``load``).
Scale format ids: 0 fp32, 1 fp16, 2 bf16, 3 e4m4, 4 e8m0, 5 e4m3. Layout ids: 0 bitplane, 1 dense.
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange

from ..kbit_scalar import scale_helpers
from .quant import bf16_bits_to_f32, f16_bits_to_f32, f32_to_bf16_bits, f32_to_f16_bits

_OPTS = dict(cache=True, fastmath=False, nogil=True)
FMT_IDS = {"fp32": 0, "fp16": 1, "bf16": 2, "e4m4": 3, "e8m0": 4, "e4m3": 5}
LAYOUT_IDS = {"bitplane": 0, "dense": 1}
GROUPS_PER_TASK = 64


# ------------------------------------------------------------------ element access
# Inputs and outputs of every kind travel as uint16 arrays (a float32 array viewed as uint16, two
# halves per element, little-endian): one compiled signature per kernel instead of two, which halves
# the parallel kernels' compile time.

@njit(inline="always", **_OPTS)
def load(x, i, kind):
    if kind == 0:
        return np.uint32(np.uint32(x[2 * i]) | (np.uint32(x[2 * i + 1]) << np.uint32(16))).view(np.float32)
    if kind == 1:
        return bf16_bits_to_f32(x[i])
    return f16_bits_to_f32(x[i])


@njit(inline="always", **_OPTS)
def store(out, i, v, kind):
    if kind == 0:
        u = np.float32(v).view(np.uint32)
        out[2 * i] = np.uint16(u & np.uint32(0xFFFF))
        out[2 * i + 1] = np.uint16(u >> np.uint32(16))
    elif kind == 1:
        out[i] = f32_to_bf16_bits(v)
    else:
        out[i] = f32_to_f16_bits(v)


# ------------------------------------------------------------------ exact float helpers (numba_kernels/kbit_scalar.py)

@njit(inline="always", **_OPTS)
def _float_bits(a):
    return np.float32(a).view(np.uint32)


@njit(inline="always", **_OPTS)
def _bits_float(u):
    return np.uint32(u).view(np.float32)


@njit(inline="always", **_OPTS)
def _bit_length(u):
    length = 0
    while u:
        u = u >> 1
        length += 1
    return length


@njit(inline="always", **_OPTS)
def _rint(v):
    return np.rint(v)


_S = scale_helpers(njit(inline="always", **_OPTS), _float_bits, _bits_float, _bit_length, _rint)
encode_one, decode_one, divisor, _floor_log2 = _S.encode_one, _S.decode_one, _S.divisor, _S.floor_log2


@njit(**_OPTS)
def floor_log2(a):
    """floor(log2 a) for a float32 a > 0. Module level: a closure over jitted functions would get a new cache
    entry in every process."""
    return _floor_log2(a)


# ------------------------------------------------------------------ passes

@njit(parallel=True, **_OPTS)
def block_absmax(x, kind, n, blocksize, absmax):
    for b in prange(absmax.size):
        start = b * blocksize
        end = min(start + blocksize, n)
        am = np.float32(0.0)
        for i in range(start, end):
            v = abs(load(x, i, kind))
            am = v if v > am else am
        absmax[b] = am


@njit(**_OPTS)
def encode_scales(absmax, fmt, emax, codes_decoded, bits, D, q):
    """bits[b] (the stored scale's bit pattern), D[b] (its float32 value), q[b] (the divisor the codes
    use); returns the e4m3 per-tensor scale (1.0 for the other formats)."""
    ts = np.float32(1.0)
    if fmt == 5:
        g = np.float32(0.0)
        for b in range(absmax.size):
            g = absmax[b] if absmax[b] > g else g
        if g > 0:
            ts = g / np.float32(448.0)
    for b in range(absmax.size):
        a = absmax[b]
        bits[b] = encode_one(a, fmt, emax, ts)
        d = decode_one(np.int64(bits[b]), fmt, ts)
        D[b] = d
        q[b] = divisor(a, d, fmt, codes_decoded)
    return ts


@njit(**_OPTS)
def decode_scales(bits, fmt, ts, D):
    for b in range(bits.size):
        D[b] = decode_one(np.int64(bits[b]), fmt, ts)


@njit(inline="always", **_OPTS)
def nearest(s, cb, m):
    # m = 2**k: the count of entries <= s by a branch-free binary search (a data-dependent branch per step
    # mispredicts half the time)
    lo = 0
    half = m >> 1
    while half > 0:
        lo += half if cb[lo + half - 1] <= s else 0
        half >>= 1
    # the upper neighbour only when strictly closer; selects, not branches (the choice is a coin toss)
    up = lo if lo < m else m - 1
    dn = lo - 1 if lo > 0 else 0
    du = abs(cb[up] - s)
    dd = abs(s - cb[dn])
    take = (lo < m) & (du < dd)
    j = lo if take else dn
    tie = np.float32(np.nan) if take else dd     # NaN equals nothing: no walk after taking the upper neighbour
    while j > 0 and abs(s - cb[j - 1]) == tie:
        j -= 1
    return j


@njit(inline="always", **_OPTS)
def code_table(s, tab, sh, kbase, half, safe, cb):
    """The spec's code of s through the codebook's search table (numba_kernels/cell_plan.py:kbit_plan; tab[2i] =
    bound bits, tab[2i + 1] = code below | above << 8) for |s| < safe; other s, and codebooks without a table
    (safe = 0), take the full search."""
    if not abs(s) < safe:
        return nearest(s, cb, cb.size)
    return table_code(s, tab, sh, kbase, half)


@njit(inline="always", **_OPTS)
def table_code(s, tab, sh, kbase, half):
    """The table's code of s, right for |s| < safe; any other s (NaN too) still reads an entry in bounds."""
    bits = _float_bits(s)
    c = np.int64((bits & np.uint32(0x7FFFFFFF)) >> np.uint32(sh))
    top = kbase + half - 1
    c = kbase if c < kbase else (top if c > top else c)
    e = 2 * (c - kbase + np.int64(bits >> np.uint32(31)) * half)
    return np.int64(tab[e + 1] >> np.uint32(8)) if s > _bits_float(tab[e]) else np.int64(tab[e + 1] & np.uint32(0xFF))


@njit(inline="always", **_OPTS)
def pack_group(codes, k, layout, words):
    """The 32 codes of one group into words[0:k] (bit-plane, or the dense stream's k words)."""
    for b in range(k + 1):
        words[b] = 0
    if layout == 0:
        for j in range(32):
            c = codes[j]
            for b in range(k):
                words[b] |= np.uint64((c >> b) & 1) << np.uint64(j)
    else:
        for j in range(32):
            p = j * k
            wi = p >> 5
            off = p & 31
            v = np.uint64(codes[j]) << np.uint64(off)
            words[wi] |= v & np.uint64(0xFFFFFFFF)
            if off + k > 32:
                words[wi + 1] |= v >> np.uint64(32)


@njit(inline="always", **_OPTS)
def store_group(words, g, k, out):
    for b in range(k):
        w = g * k + b
        if w < out.size:
            out[w] = np.uint32(words[b])


@njit(inline="always", **_OPTS)
def load_group(words, g, k, w):
    """Group g's k words into w[0:k], w[k] = 0 (the dense layout reads one word past)."""
    for b in range(k + 1):
        idx = g * k + b
        w[b] = np.uint64(words[idx]) if (b < k and idx < words.size) else np.uint64(0)


@njit(inline="always", **_OPTS)
def group_codes(w, k, layout, codes):
    """All 32 codes of a group from its words (w[k] = 0): bit-plane plane by plane (the j loop vectorizes)."""
    if layout == 0:
        for j in range(32):
            codes[j] = 0
        for b in range(k):
            wb = w[b]
            for j in range(32):
                codes[j] |= np.int64((wb >> np.uint64(j)) & np.uint64(1)) << b
    else:
        for j in range(32):
            codes[j] = code_at(w, j, k, layout)


@njit(inline="always", **_OPTS)
def code_at(w, j, k, layout):
    if layout == 0:
        c = 0
        for b in range(k):
            c |= np.int64((w[b] >> np.uint64(j)) & np.uint64(1)) << b
        return c
    p = j * k
    wi = p >> 5
    both = w[wi] | (w[wi + 1] << np.uint64(32))
    return np.int64((both >> np.uint64(p & 31)) & np.uint64((1 << k) - 1))


@njit(inline="always", **_OPTS)
def _task_groups(t, groups, blocksize):
    """Task t's groups g0..g1-1, the block b of its first element and the start nxt of block b + 1."""
    g0 = t * GROUPS_PER_TASK
    b = g0 * 32 // blocksize
    return g0, min(g0 + GROUPS_PER_TASK, groups), b, (b + 1) * blocksize


@njit(inline="always", **_OPTS)
def _affine_code(v, r, z, k):
    qmax = np.float32((1 << k) - 1)
    c = np.rint(v * r) + np.float32(z)
    c = np.float32(0.0) if c < 0 else (qmax if c > qmax else c)
    return np.int64(c)


def _make_quantize(affine):
    # affine: a compile-time constant (numba prunes the other branch)
    @njit(parallel=True, **_OPTS)
    def quantize(x, kind, n, blocksize, p, c, tab, sh, kbase, half, safe, k, layout, out):
        """Codes of every element, packed: group g (elements 32g..32g+31) -> words out[g*k : g*k+k] (dense: only
        those below out.size). Codes past n are 0. The code: nearest(x / p[b]) in the codebook c (through its search
        table tab, see code_table), or (affine) clamp(rint(x * p[b]) + c[b], 0, 2**k - 1) with p = 1 / scale and c
        the zero points (tab unused)."""
        groups = (n + 31) // 32
        tasks = (groups + GROUPS_PER_TASK - 1) // GROUPS_PER_TASK
        for t in prange(tasks):
            codes = np.empty(32, np.int64)
            words = np.empty(9, np.uint64)
            g0, g1, b, nxt = _task_groups(t, groups, blocksize)
            for g in range(g0, g1):
                base = g * 32
                if blocksize % 32 == 0 and n - base >= 32:     # one block, no tail: its divisor once
                    bb = base // blocksize
                    if affine:
                        for j in range(32):
                            codes[j] = _affine_code(load(x, base + j, kind), p[bb], c[bb], k)
                    else:
                        # table codes branch-free, then the rare |s| >= safe redone by the full search: the search
                        # inlined into this loop made it 3x slower
                        outside = False
                        for j in range(32):
                            s = load(x, base + j, kind) / p[bb]
                            outside |= not abs(s) < safe
                            codes[j] = table_code(s, tab, sh, kbase, half)
                        if outside:
                            for j in range(32):
                                s = load(x, base + j, kind) / p[bb]
                                if not abs(s) < safe:
                                    codes[j] = nearest(s, c, c.size)
                    b = (base + 32) // blocksize
                    nxt = (b + 1) * blocksize
                    pack_group(codes, k, layout, words)
                    store_group(words, g, k, out)
                    continue
                for j in range(32):
                    i = base + j
                    if i >= nxt:          # the block of element i, tracked: no division per element
                        b += 1
                        nxt += blocksize
                    if i >= n:
                        codes[j] = 0
                    elif affine:
                        codes[j] = _affine_code(load(x, i, kind), p[b], c[b], k)
                    else:
                        codes[j] = code_table(load(x, i, kind) / p[b], tab, sh, kbase, half, safe, c)
                pack_group(codes, k, layout, words)
                store_group(words, g, k, out)
    return quantize


def _make_dequantize(affine):
    @njit(parallel=True, **_OPTS)
    def dequantize(words, n, k, layout, blocksize, D, c, kind, out):
        """out = c[code] * D[b], or (affine, c the zero points) float32(code - c[b]) * D[b]; rounded once to the
        output kind."""
        groups = (n + 31) // 32
        tasks = (groups + GROUPS_PER_TASK - 1) // GROUPS_PER_TASK
        for t in prange(tasks):
            w = np.empty(9, np.uint64)
            codes = np.empty(32, np.int64)
            g0, g1, b, nxt = _task_groups(t, groups, blocksize)
            for g in range(g0, g1):
                load_group(words, g, k, w)
                base = g * 32
                if blocksize % 32 == 0 and n - base >= 32:     # one block, no tail: all 32 codes, then the stores
                    group_codes(w, k, layout, codes)
                    bb = base // blocksize
                    for j in range(32):
                        if affine:
                            store(out, base + j, np.float32(codes[j] - np.int64(c[bb])) * D[bb], kind)
                        else:
                            store(out, base + j, c[codes[j]] * D[bb], kind)
                    b = (base + 32) // blocksize
                    nxt = (b + 1) * blocksize
                    continue
                for j in range(min(32, n - base)):
                    i = base + j
                    if i >= nxt:
                        b += 1
                        nxt += blocksize
                    if affine:
                        store(out, i, np.float32(code_at(w, j, k, layout) - np.int64(c[b])) * D[b], kind)
                    else:
                        store(out, i, c[code_at(w, j, k, layout)] * D[b], kind)
    return dequantize


quantize_groups = _make_quantize(False)
dequantize_groups = _make_dequantize(False)


# ------------------------------------------------------------------ affine groups (spec: reference/kbit_affine.py)

@njit(inline="always", **_OPTS)
def _group_range(x, kind, n, G, b):
    """(min(0, min x), max(0, max x)) over group b's real elements."""
    mn = np.float32(0.0)
    mx = np.float32(0.0)
    for i in range(b * G, min(b * G + G, n)):
        v = load(x, i, kind)
        mn = v if v < mn else mn
        mx = v if v > mx else mx
    return mn, mx


@njit(parallel=True, **_OPTS)
def group_range(x, kind, n, G, lo, hi):
    """lo[b] = min(0, min x), hi[b] = max(0, max x) over group b's real elements."""
    for b in prange(lo.size):
        lo[b], hi[b] = _group_range(x, kind, n, G, b)


@njit(parallel=True, **_OPTS)
def mse_clip_range(x, kind, n, G, k, fmt, grid, lo, hi):
    """The "mse" clip search of reference/kbit_affine.py per group (parallel over groups): for each p in grid
    (float32), the qparams of (p*lo, p*hi), the group's codes and float32 errors, E = sum of float64(e)**2 in
    element order; keeps the range of the first least E."""
    qmax = np.float32((1 << k) - 1)
    eps = np.float32(1.1920928955078125e-07)
    for b in prange(lo.size):
        start = b * G
        end = min(start + G, n)
        mn, mx = _group_range(x, kind, n, G, b)
        best = np.inf
        blo = mn
        bhi = mx
        for c in range(grid.size):
            plo = mn * grid[c]
            phi = mx * grid[c]
            s = (phi - plo) / qmax
            s = s if s > eps else eps
            z = -np.rint(plo / s)
            z = np.float32(0.0) if z < 0 else (qmax if z > qmax else z)
            D = decode_one(encode_one(s, fmt, 0, np.float32(1.0)), fmt, np.float32(1.0))
            r = np.float32(1.0) / D
            acc = 0.0
            for i in range(start, end):
                v = load(x, i, kind)
                q = np.rint(v * r) + z
                q = np.float32(0.0) if q < 0 else (qmax if q > qmax else q)
                e = np.float64((q - z) * D - v)
                acc += e * e
            if acc < best:
                best = acc
                blo = plo
                bhi = phi
        lo[b] = blo
        hi[b] = bhi


_quantize_affine = _make_quantize(True)
_NO_TABLE = np.zeros(2, np.uint32)


def quantize_affine_groups(x, kind, n, G, r, z, k, layout, out):
    """Affine codes, packed (quantize_groups' kernel with the affine rule; it takes no search table)."""
    _quantize_affine(x, kind, n, G, r, z, _NO_TABLE, 0, 0, 0, np.float32(0), k, layout, out)
dequantize_affine_groups = _make_dequantize(True)
