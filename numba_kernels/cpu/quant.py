"""Numba CPU kernels for blockwise 8-bit and 4-bit quantization with any codebook.

Pure functions on NumPy arrays (no torch). fp16 and bf16 travel as uint16 bit patterns
(Numba has no float16 on CPU) and are widened/narrowed exactly in registers, so no
full-size float32 copy of the input or output is ever made. Rounding follows
docs/ARCHITECTURE.md bit for bit: float32 arithmetic, fastmath off, one parallel task per
quantization block (absmax and quantization while the block is in cache).

Input kinds: 0 = float32, 1 = bfloat16 (uint16 bits), 2 = float16 (uint16 bits).
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
    if (x & np.uint32(0x7FFFFFFF)) > np.uint32(0x7F800000):
        return np.uint16((x >> np.uint32(16)) | np.uint32(0x40))
    bias = np.uint32(0x7FFF) + ((x >> np.uint32(16)) & np.uint32(1))
    return np.uint16((x + bias) >> np.uint32(16))


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


# Search plans (built once per codebook by workbench/backends/_cpu_common.py):
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
    n = x.shape[0]
    nblocks = (n + blocksize - 1) // blocksize
    for b in prange(nblocks):
        start = b * blocksize
        end = min(start + blocksize, n)
        is_tail = end - start < blocksize
        am = block_absmax(x, start, end, kind)
        amc = am if am > TINY else TINY
        recip = np.float32(1.0) / amc
        absmax[b] = amc if is_tail else am
        for i in range(start, end):
            s = scaled(load(x, i, kind), amc, recip, is_tail)
            codes[i] = encode(s, mode, bnd, bucket_codes, kbound, kcode_lo, kcode_hi, bounds_pad)


@njit(parallel=True, **_OPTS)
def quantize_blockwise_stochastic(x, kind, bounds_pad, bucket_codes, values, blocksize, rand, codes, absmax):
    """Stochastic rounding between the two representable values bracketing s:
    up with probability (s - lo) / (hi - lo) (float32), decided by rand[i] (uniform [0, 1))."""
    n = x.shape[0]
    nblocks = (n + blocksize - 1) // blocksize
    last = values.shape[0] - 1
    for b in prange(nblocks):
        start = b * blocksize
        end = min(start + blocksize, n)
        is_tail = end - start < blocksize
        am = block_absmax(x, start, end, kind)
        amc = am if am > TINY else TINY
        recip = np.float32(1.0) / amc
        absmax[b] = amc if is_tail else am
        for i in range(start, end):
            s = scaled(load(x, i, kind), amc, recip, is_tail)
            k = bsearch(s, bounds_pad)
            lo = k if s >= values[k] else k - 1
            if lo < 0 or lo >= last:
                codes[i] = bucket_codes[k]
                continue
            p = (s - values[lo]) / (values[lo + 1] - values[lo])
            codes[i] = bucket_codes[lo + 1] if rand[i] < p else bucket_codes[lo]


@njit(parallel=True, **_OPTS)
def dequantize_blockwise(codes, absmax, table, blocksize, kind, out):
    n = codes.shape[0]
    nblocks = (n + blocksize - 1) // blocksize
    for b in prange(nblocks):
        start = b * blocksize
        end = min(start + blocksize, n)
        am = absmax[b]
        for i in range(start, end):
            store(out, i, table[codes[i]] * am, kind)


# ------------------------------------------------------------------ 4-bit (any 16-entry codebook)

@njit(parallel=True, **_OPTS)
def quantize_4bit(x, kind, blocksize, bnd, bucket_codes, identity, zero_code, packed, absmax):
    """Counts land in ``packed`` first (branch-free, vectorizable); non-identity codebooks
    (bitsandbytes' FP4) are remapped byte by byte while the block is in cache."""
    n = x.shape[0]
    nblocks = (n + blocksize - 1) // blocksize
    for b in prange(nblocks):
        start = b * blocksize  # blocksize is even: blocks never split a byte
        end = min(start + blocksize, n)
        is_tail = end - start < blocksize
        am = block_absmax(x, start, end, kind)
        amc = am if am > TINY else TINY
        recip = np.float32(1.0) / amc
        absmax[b] = amc if is_tail else am
        pairs_end = start + ((end - start) & ~1)
        for i in range(start, pairs_end, 2):
            hi = count15(scaled(load(x, i, kind), amc, recip, is_tail), bnd)
            lo = count15(scaled(load(x, i + 1, kind), amc, recip, is_tail), bnd)
            packed[i >> 1] = np.uint8((hi << 4) | lo)
        if not identity:
            for j in range(start >> 1, pairs_end >> 1):
                c = packed[j]
                packed[j] = (bucket_codes[c >> 4] << np.uint8(4)) | bucket_codes[c & np.uint8(15)]
        if pairs_end < end:  # odd tail: bitsandbytes pads with 0.0
            hi = bucket_codes[count15(scaled(load(x, pairs_end, kind), amc, recip, is_tail), bnd)]
            packed[pairs_end >> 1] = (hi << np.uint8(4)) | zero_code


@njit(parallel=True, **_OPTS)
def dequantize_4bit(packed, absmax, table, blocksize, n, kind, out):
    nblocks = (n + blocksize - 1) // blocksize
    for b in prange(nblocks):
        start = b * blocksize
        end = min(start + blocksize, n)
        am = absmax[b]
        for i in range(start, end, 2):
            byte = packed[i >> 1]
            store(out, i, table[byte >> 4] * am, kind)
            if i + 1 < end:
                store(out, i + 1, table[byte & 15] * am, kind)
