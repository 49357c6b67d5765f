"""Numba CPU kernels for blockwise 8-bit and 4-bit quantization with any codebook.

Pure functions on NumPy arrays (no torch). fp16 and bf16 travel as uint16 bit patterns
(Numba has no float16 on CPU) and are widened/narrowed exactly in registers, so no
full-size float32 copy of the input or output is ever made. Rounding follows
docs/ARCHITECTURE.md bit for bit: float32 arithmetic, fastmath off, one parallel task per
quantization block (absmax and quantization while the block is in cache).

Input kinds: 0 = float32, 1 = bfloat16 (uint16 bits), 2 = float16 (uint16 bits).

Non-finite inputs (``nan_policy="propagate"``) follow the reference exactly: a block's absmax
is the integer max of its |x| bit patterns, so a NaN anywhere makes it NaN and otherwise an Inf
makes it Inf (never clamped to 1e-38). Such a block leaves the vectorized path: its codes are
what torch.bucketize gives the reference's scaled values (NaN -> the last bucket; finite x
scaled by an Inf absmax -> +-0 -> the code of 0.0), see ``nonfinite_codes``.
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange

F32, BF16, F16 = 0, 1, 2
TINY = np.float32(1e-38)
_OPTS = dict(cache=True, fastmath=False, nogil=True)


# ------------------------------------------------------------------ exact dtype conversion

@njit(inline="always", **_OPTS)
def f16_bits_to_f32(h):
    h = np.uint32(h)
    sign = (h & np.uint32(0x8000)) << np.uint32(16)
    exp = (h >> np.uint32(10)) & np.uint32(0x1F)
    mant = h & np.uint32(0x3FF)
    if exp == 0:
        # zero or subnormal: mant * 2**-24, exact in float32
        v = np.float32(mant) * np.float32(5.960464477539063e-08)
        return -v if sign else v
    if exp == 31:
        return np.uint32(sign | np.uint32(0x7F800000) | (mant << np.uint32(13))).view(np.float32)
    return np.uint32(sign | ((exp + np.uint32(112)) << np.uint32(23)) | (mant << np.uint32(13))).view(np.float32)


@njit(inline="always", **_OPTS)
def bf16_bits_to_f32(b):
    return np.uint32(np.uint32(b) << np.uint32(16)).view(np.float32)


@njit(inline="always", **_OPTS)
def load(x, i, kind):
    if kind == F32:
        return np.float32(x[i])
    if kind == BF16:
        return bf16_bits_to_f32(x[i])
    return f16_bits_to_f32(x[i])


@njit(inline="always", **_OPTS)
def f32_to_bf16_bits(f):
    """Round to nearest even, NaN -> quiet NaN: torch's float -> bfloat16 conversion."""
    x = np.float32(f).view(np.uint32)
    nan = (x >> np.uint32(16)) | np.uint32(0x40)
    rne = (x + np.uint32(0x7FFF) + ((x >> np.uint32(16)) & np.uint32(1))) >> np.uint32(16)
    # both computed, then a select: branch-free, so the store loops vectorize
    return np.uint16(nan if (x & np.uint32(0x7FFFFFFF)) > np.uint32(0x7F800000) else rne)


@njit(inline="always", **_OPTS)
def f32_to_f16_bits(f):
    """IEEE round-to-nearest-even float32 -> float16 bits (handles subnormals, overflow, NaN)."""
    x = np.float32(f).view(np.uint32)
    sign = np.uint32((x >> np.uint32(16)) & np.uint32(0x8000))
    x = x & np.uint32(0x7FFFFFFF)
    if x >= np.uint32(0x7F800000):
        if x > np.uint32(0x7F800000):
            return np.uint16(sign | np.uint32(0x7E00))
        return np.uint16(sign | np.uint32(0x7C00))
    if x >= np.uint32(0x477FF000):  # >= 65520: rounds to inf
        return np.uint16(sign | np.uint32(0x7C00))
    if x < np.uint32(0x38800000):  # below 2**-14: half subnormal or zero
        if x <= np.uint32(0x33000000):  # <= 2**-25 rounds (ties-to-even) to zero
            return np.uint16(sign)
        e = x >> np.uint32(23)
        m = (x & np.uint32(0x7FFFFF)) | np.uint32(0x800000)
        shift = np.uint32(126) - e
        r = m >> shift
        rem = m & ((np.uint32(1) << shift) - np.uint32(1))
        half = np.uint32(1) << (shift - np.uint32(1))
        if rem > half or (rem == half and (r & np.uint32(1))):
            r += np.uint32(1)
        return np.uint16(sign | r)
    r = ((x >> np.uint32(23)) - np.uint32(112)) << np.uint32(10) | ((x & np.uint32(0x7FFFFF)) >> np.uint32(13))
    rem = x & np.uint32(0x1FFF)
    if rem > np.uint32(0x1000) or (rem == np.uint32(0x1000) and (r & np.uint32(1))):
        r += np.uint32(1)
    return np.uint16(sign | r)


@njit(inline="always", **_OPTS)
def store(out, i, v, kind):
    if kind == F32:
        out[i] = v
    elif kind == BF16:
        out[i] = f32_to_bf16_bits(v)
    else:
        out[i] = f32_to_f16_bits(v)


# ------------------------------------------------------------------ block helpers

@njit(inline="always", **_OPTS)
def block_absmax(x, start, end, kind):
    am = np.float32(0.0)
    for i in range(start, end):
        v = abs(load(x, i, kind))
        am = v if v > am else am
    return am


@njit(inline="always", **_OPTS)
def scaled(v, am, recip, is_tail):
    """bitsandbytes' rule: multiply by the reciprocal, except in the tail block, which divides."""
    s = v / am if is_tail else v * recip
    return min(max(s, np.float32(-1.0)), np.float32(1.0))


@njit(inline="always", **_OPTS)
def widen_absmax(x, start, end, kind, buf):
    """Widen x[start:end) into buf; returns the absmax as float32 *bits*: the integer max of the
    |x| bit patterns, exact and NaN-propagating (any NaN > 0x7F800000 = Inf > every finite
    value), and it vectorizes without fast-math (a float max would skip NaN)."""
    len_ = end - start
    xs = x[start:end]  # slice views: non-negative loop indices, no wraparound checks
    m = np.uint32(0)
    if kind == 0:
        for i in range(len_):
            v = xs[i]
            buf[i] = v
            u = np.float32(v).view(np.uint32) & np.uint32(0x7FFFFFFF)
            m = u if u > m else m
    elif kind == BF16:
        for i in range(len_):
            w = np.uint32(np.uint32(xs[i]) << np.uint32(16))
            buf[i] = w.view(np.float32)
            a = np.uint32(w & np.uint32(0x7FFFFFFF))
            m = a if a > m else m
    else:
        for i in range(len_):
            buf[i] = load(xs, i, kind)
            u = np.float32(buf[i]).view(np.uint32) & np.uint32(0x7FFFFFFF)
            m = u if u > m else m
    return m


EXP_MASK = np.uint32(0x7F800000)  # |x| bits >= this: Inf or NaN

NCHUNKS = 256  # prange tasks: each owns a scratch buffer and a contiguous run of blocks


@njit(inline="always", **_OPTS)
def scale_inplace(buf, L, am, is_tail):
    """The spec's scaling of a widened block; returns the clamped absmax."""
    amc = am if am > TINY else TINY
    if is_tail:
        for i in range(L):
            buf[i] = min(max(buf[i] / amc, np.float32(-1.0)), np.float32(1.0))
    else:
        r = np.float32(1.0) / amc
        for i in range(L):
            buf[i] = min(max(buf[i] * r, np.float32(-1.0)), np.float32(1.0))
    return amc


@njit(inline="always", **_OPTS)
def load_block(x, kind, b, blocksize, buf, absmax):
    """Block b of x widened into buf and, if its absmax is finite, scaled in place (the spec's
    rule); its absmax stored. Returns (start, length, absmax bits): bits >= EXP_MASK mean a
    non-finite block, left unscaled in buf for ``nonfinite_codes``."""
    start = b * blocksize
    end = min(start + blocksize, x.shape[0])
    L = end - start
    is_tail = L < blocksize
    m = widen_absmax(x, start, end, kind, buf)
    am = np.uint32(m).view(np.float32)
    if m < EXP_MASK:
        amc = scale_inplace(buf, L, am, is_tail)
        absmax[b] = amc if is_tail else am
    else:
        absmax[b] = am  # NaN or Inf; the 1e-38 clamp keeps both (torch.clamp propagates NaN)
    return start, L, m


@njit(inline="always", **_OPTS)
def nonfinite_codes(buf, L, m, nan_code, zero_code, cs):
    """Codes of a block whose absmax (bits m) is NaN or Inf, as the reference computes them:
    NaN absmax -> every scaled value is NaN; Inf absmax -> x * (1/Inf) (full block) or x / Inf
    (tail) is +-0 for finite x and NaN for +-Inf. torch.bucketize puts NaN after every bound
    (its binary search tests !(bound >= s)): code bucket_codes[-1] (``nan_code``); +-0 gets the
    code of 0.0 (``zero_code``). buf holds the unscaled widened block."""
    if m > EXP_MASK:
        for i in range(L):
            cs[i] = nan_code
    else:
        for i in range(L):
            a = np.float32(buf[i]).view(np.uint32) & np.uint32(0x7FFFFFFF)
            cs[i] = nan_code if a >= EXP_MASK else zero_code


# Search plans (built once per codebook by workbench/codebook_tables.py, cpu_search_plan):
#   LINEAR  (<= 16 buckets): count of the 15 bounds (padded with +inf) below s; branch-free.
#   KEYLUT  (> 16 buckets): the top 16 bits of s's float32 pattern select a cell; every cell of
#           the registered codebooks holds at most one bound, so one compare against that
#           cell's bound picks between two precomputed codes. Exact, not approximate.
#   BSEARCH (fallback for codebooks with several bounds in one cell): binary search.
LINEAR, KEYLUT, BSEARCH = 0, 1, 2


@njit(inline="always", **_OPTS)
def count15(s, bnd):
    c = 0
    for j in range(15):
        c += np.int32(bnd[j] < s)
    return c


@njit(inline="always", **_OPTS)
def bsearch(s, bounds_pad):
    pos = 0
    step = (bounds_pad.shape[0] + 1) // 2
    while step > 0:
        if bounds_pad[pos + step - 1] < s:
            pos += step
        step >>= 1
    return pos


@njit(inline="always", **_OPTS)
def encode(s, mode, bnd, bucket_codes, kbound, kcode_lo, kcode_hi, bounds_pad):
    if mode == LINEAR:
        return bucket_codes[count15(s, bnd)]
    if mode == KEYLUT:
        key = np.float32(s).view(np.uint32) >> np.uint32(16)
        return kcode_hi[key] if s > kbound[key] else kcode_lo[key]
    return bucket_codes[bsearch(s, bounds_pad)]


# ------------------------------------------------------------------ 8-bit (any <= 256-entry codebook)

@njit(parallel=True, **_OPTS)
def quantize_blockwise(x, kind, blocksize, mode, bnd, bucket_codes, kbound, kcode_lo, kcode_hi, bounds_pad,
                       codes, absmax):
    """One pass per block (widen + absmax, scale in place, encode while it sits in L1);
    the search mode is chosen outside the element loop."""
    n = x.shape[0]
    nblocks = (n + blocksize - 1) // blocksize
    nchunks = min(nblocks, NCHUNKS)
    # non-finite blocks (``nonfinite_codes``): NaN -> bucket_codes[-1], +-0 -> the code of 0.0
    nan_code = bucket_codes[bucket_codes.shape[0] - 1]
    zero_code = encode(np.float32(0.0), mode, bnd, bucket_codes, kbound, kcode_lo, kcode_hi, bounds_pad)
    for c in prange(nchunks):
        buf = np.empty(blocksize, np.float32)
        for b in range(c * nblocks // nchunks, (c + 1) * nblocks // nchunks):
            start, L, m = load_block(x, kind, b, blocksize, buf, absmax)
            cs = codes[start:start + L]
            if m >= EXP_MASK:
                nonfinite_codes(buf, L, m, nan_code, zero_code, cs)
            elif mode == KEYLUT:
                for i in range(L):
                    s = buf[i]
                    key = np.float32(s).view(np.uint32) >> np.uint32(16)
                    cs[i] = kcode_hi[key] if s > kbound[key] else kcode_lo[key]
            elif mode == LINEAR:
                for i in range(L):
                    cs[i] = bucket_codes[count15(buf[i], bnd)]
            else:
                for i in range(L):
                    cs[i] = bucket_codes[bsearch(buf[i], bounds_pad)]


def ord_lut(bounds: np.ndarray, bucket_codes: np.ndarray):
    """uint32[65536] search table over the monotone integer image of float32 (see ``f32_ord``),
    or None if some cell holds more than one bound. Entry = thr << 16 | hi << 8 | lo: inside
    cell ``o >> 16`` the code is ``hi if (o & 0xFFFF) >= thr else lo``. Exact: after -0.0 is
    canonicalized to +0.0, ``s > b`` in float32 equals ``ord(s) > ord(b)`` for non-NaN values."""
    b = np.asarray(bounds, np.float32) + np.float32(0.0)          # -0.0 -> +0.0
    u = b.view(np.uint32)
    ob = np.where(u >> 31, ~u, u | np.uint32(0x80000000)).astype(np.uint32)
    assert np.all(np.diff(ob.astype(np.int64)) >= 0)
    keys = np.arange(1 << 16, dtype=np.uint64)
    cmin, cmax = keys << 16, (keys << 16) | 0xFFFF
    ob64 = ob.astype(np.uint64)
    lo = np.searchsorted(ob64, cmin, side="left")                 # bounds below the cell
    hi = np.searchsorted(ob64, cmax, side="right")                # bounds <= cell max
    if int((hi - lo).max()) > 1:
        return None
    codes = np.asarray(bucket_codes, np.uint8)
    m = len(codes)
    code_lo = codes[lo].astype(np.uint32)
    inside = hi > lo
    thr = np.zeros(1 << 16, np.uint32)
    code_hi = code_lo.copy()
    idx = np.nonzero(inside)[0]
    t = (ob[lo[idx]] & np.uint32(0xFFFF)).astype(np.uint32) + np.uint32(1)
    ch = codes[np.minimum(lo[idx] + 1, m - 1)].astype(np.uint32)
    never = t == 65536                                              # bound at the cell's top
    thr[idx] = np.where(never, 0, t)
    code_hi[idx] = np.where(never, code_lo[idx], ch)
    return (thr << np.uint32(16)) | (code_hi << np.uint32(8)) | code_lo


@njit(inline="always", **_OPTS)
def f32_ord(s):
    """Monotone map float32 -> uint32 (after +0.0 canonicalization of -0.0)."""
    u = np.float32(s + np.float32(0.0)).view(np.uint32)
    mask = np.uint32(np.int32(u) >> np.int32(31)) | np.uint32(0x80000000)
    return u ^ mask


@njit(parallel=True, **_OPTS)
def quantize_blockwise_ordlut(x, kind, blocksize, lut, codes, absmax):
    """8-bit quantize with the ``ord_lut`` table: one 4-byte load and one integer compare per
    value (the float key-LUT plan needs three loads)."""
    n = x.shape[0]
    nblocks = (n + blocksize - 1) // blocksize
    nchunks = min(nblocks, NCHUNKS)
    # non-finite blocks: the table's last cell (above +inf: every bound below it) holds
    # bucket_codes[-1] in both halves; the code of 0.0 is the table's answer for 0.0
    nan_code = np.uint8(lut[0xFFFF] & np.uint32(0xFF))
    zero_code = ordlut_code(lut, np.float32(0.0))
    for c in prange(nchunks):
        buf = np.empty(blocksize, np.float32)
        for b in range(c * nblocks // nchunks, (c + 1) * nblocks // nchunks):
            start, L, m = load_block(x, kind, b, blocksize, buf, absmax)
            cs = codes[start:start + L]
            if m >= EXP_MASK:
                nonfinite_codes(buf, L, m, nan_code, zero_code, cs)
                continue
            for i in range(L):
                cs[i] = ordlut_code(lut, buf[i])


@njit(inline="always", **_OPTS)
def ordlut_code(lut, s):
    o = f32_ord(s)
    e = lut[o >> np.uint32(16)]
    sh = np.uint32(8) if (o & np.uint32(0xFFFF)) >= (e >> np.uint32(16)) else np.uint32(0)
    return np.uint8((e >> sh) & np.uint32(0xFF))


@njit(parallel=True, **_OPTS)
def quantize_blockwise_stochastic(x, kind, bounds_pad, bucket_codes, values, blocksize, rand, codes, absmax):
    """Stochastic rounding between the two representable values bracketing s:
    up with probability (s - lo) / (hi - lo) (float32), decided by rand[i] (uniform [0, 1)).
    Non-finite blocks: s is computed by the same IEEE rule (NaN, or +-0 and NaN under an Inf
    absmax); a NaN s gets what the reference's formula gives it: bucketize -> k = m - 1,
    s >= values[k] is false -> lo = m - 2, p = NaN, rand < NaN is false -> bucket_codes[m - 2]."""
    n = x.shape[0]
    nblocks = (n + blocksize - 1) // blocksize
    last = values.shape[0] - 1
    nan_code = bucket_codes[max(last - 1, 0)]
    nchunks = min(nblocks, NCHUNKS)
    for c in prange(nchunks):
        buf = np.empty(blocksize, np.float32)
        for b in range(c * nblocks // nchunks, (c + 1) * nblocks // nchunks):
            start, L, m = load_block(x, kind, b, blocksize, buf, absmax)
            if m >= EXP_MASK:
                am = np.uint32(m).view(np.float32)
                is_tail = L < blocksize
                r = np.float32(1.0) / am  # NaN, or 0 for Inf
                for i in range(L):
                    v = buf[i] / am if is_tail else buf[i] * r  # no clamp needed: NaN or +-0
                    buf[i] = v
            stochastic_block(buf, L, bounds_pad, bucket_codes, values, last, nan_code,
                             rand[start:start + L], codes[start:start + L])


@njit(inline="always", **_OPTS)
def stochastic_block(buf, L, bounds_pad, bucket_codes, values, last, nan_code, rs, cs):
    for i in range(L):
        s = buf[i]
        if s != s:
            cs[i] = nan_code
            continue
        k = bsearch(s, bounds_pad)
        lo = k if s >= values[k] else k - 1
        if lo < 0 or lo >= last:
            cs[i] = bucket_codes[k]
            continue
        p = (s - values[lo]) / (values[lo + 1] - values[lo])
        cs[i] = bucket_codes[lo + 1] if rs[i] < p else bucket_codes[lo]


@njit(parallel=True, **_OPTS)
def dequantize_blockwise(codes, absmax, table, blocksize, kind, out):
    """float32 products gathered into a scratch block, then narrowed in a separate loop
    (a plain conversion loop vectorizes; mixed with the table gather it does not)."""
    n = codes.shape[0]
    nblocks = (n + blocksize - 1) // blocksize
    nchunks = min(nblocks, NCHUNKS)
    for c in prange(nchunks):
        buf = np.empty(blocksize, np.float32)
        for b in range(c * nblocks // nchunks, (c + 1) * nblocks // nchunks):
            start = b * blocksize
            end = min(start + blocksize, n)
            L = end - start
            am = absmax[b]
            cs = codes[start:end]
            os_ = out[start:end]
            if kind == F32:
                for i in range(L):
                    os_[i] = table[cs[i]] * am
            else:
                for i in range(L):
                    buf[i] = table[cs[i]] * am
                if kind == BF16:
                    for i in range(L):
                        os_[i] = f32_to_bf16_bits(buf[i])
                else:
                    for i in range(L):
                        os_[i] = f32_to_f16_bits(buf[i])


# ------------------------------------------------------------------ 4-bit (any 16-entry codebook)

@njit(parallel=True, **_OPTS)
def quantize_4bit(x, kind, blocksize, bnd, bucket_codes, identity, zero_code, cell_base, cell_bounds, cell_slots,
                  packed, absmax):
    """Per chunk of blocks: widen a block into a float32 scratch buffer (absmax as an integer
    max of |x| bits), scale it in place, count the bounds below each value branch-free with
    the bounds in registers, remap (non-identity codebooks such as bitsandbytes' FP4), pack.
    The cell plan (cell_base, cell_bounds, cell_slots) is the Cython kernel's AVX2 path, whose
    table lookups are register permutes Numba does not emit; here the 15-bound count gives the
    same codes."""
    n = x.shape[0]
    nblocks = (n + blocksize - 1) // blocksize
    nchunks = min(nblocks, NCHUNKS)
    nan_code = bucket_codes[bucket_codes.shape[0] - 1]  # non-finite blocks, ``nonfinite_codes``
    b0, b1, b2, b3, b4, b5, b6, b7 = bnd[0], bnd[1], bnd[2], bnd[3], bnd[4], bnd[5], bnd[6], bnd[7]
    b8, b9, b10, b11, b12, b13, b14 = bnd[8], bnd[9], bnd[10], bnd[11], bnd[12], bnd[13], bnd[14]
    for c in prange(nchunks):
        buf = np.empty(blocksize, np.float32)
        cnt = np.empty(blocksize + 1, np.uint8)
        cnt32 = np.empty(blocksize, np.int32)
        for b in range(c * nblocks // nchunks, (c + 1) * nblocks // nchunks):
            start, L, m = load_block(x, kind, b, blocksize, buf, absmax)
            if m >= EXP_MASK:
                nonfinite_codes(buf, L, m, nan_code, zero_code, cnt)
            else:
                # int32 sums, narrowed once: summing the bools directly made LLVM pack every compare mask to bytes
                # (20 % slower, 2^22 bf16 on 2 cores)
                for i in range(L):
                    s = buf[i]
                    cnt32[i] = (np.int32(b0 < s) + np.int32(b1 < s) + np.int32(b2 < s) + np.int32(b3 < s)
                                + np.int32(b4 < s) + np.int32(b5 < s) + np.int32(b6 < s) + np.int32(b7 < s)
                                + np.int32(b8 < s) + np.int32(b9 < s) + np.int32(b10 < s) + np.int32(b11 < s)
                                + np.int32(b12 < s) + np.int32(b13 < s) + np.int32(b14 < s))
                for i in range(L):
                    cnt[i] = np.uint8(cnt32[i])
                if not identity:
                    for i in range(L):
                        cnt[i] = bucket_codes[cnt[i]]
            if L & 1:
                cnt[L] = zero_code
            ps = packed[start >> 1:(start >> 1) + ((L + 1) >> 1)]
            for j in range((L + 1) >> 1):
                ps[j] = (cnt[2 * j] << np.uint8(4)) | cnt[2 * j + 1]


@njit(parallel=True, **_OPTS)
def dequantize_4bit(packed, absmax, table, blocksize, n, kind, out):
    """Per block, the 16 possible outputs are computed once (the same float32 product
    table[c] * absmax, rounded once to the output dtype); the element loop is then a nibble
    lookup, so bf16/fp16 pay 16 conversions per block instead of one per element."""
    nblocks = (n + blocksize - 1) // blocksize
    nchunks = min(nblocks, NCHUNKS)
    for c in prange(nchunks):
        t = np.empty(16, out.dtype)
        for b in range(c * nblocks // nchunks, (c + 1) * nblocks // nchunks):
            start = b * blocksize  # blocksize is even: blocks never split a byte
            end = min(start + blocksize, n)
            am = absmax[b]
            for k in range(16):
                store(t, k, table[k] * am, kind)
            L = end - start
            ps = packed[start >> 1:(start >> 1) + ((L + 1) >> 1)]
            os_ = out[start:end]
            for j in range(L >> 1):
                byte = ps[j]
                os_[2 * j] = t[byte >> 4]
                os_[2 * j + 1] = t[byte & 15]
            if L & 1:
                os_[L - 1] = t[ps[L >> 1] >> 4]


@njit(parallel=True, **_OPTS)
def resolve_nested(absmax_8bit, absmax2, code, offset, out):
    """The double-quantized absmax decoded (rule: workbench/backends/reference/quant.py):
    out[b] = float32(code[q[b]] * absmax2[b // 256]) + offset."""
    for b in prange(absmax_8bit.shape[0]):
        out[b] = np.float32(code[absmax_8bit[b]] * absmax2[b // 256]) + offset
