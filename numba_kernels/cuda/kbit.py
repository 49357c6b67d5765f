"""Numba CUDA kernels of the k-bit family (K = 2..8, bit-plane and dense layouts, six scale formats).

The rules are workbench/backends/reference/kbit.py's docstring, bit for bit; the scalar helpers are
numba_kernels/cpu/kbit.py's as device functions (floor(log2) from the float's bits, scale encoders and
decoders rounding half to even, the nearest-code search with the lowest index on ties). IEEE float32
throughout: ``fastmath=False``, ``x / q`` a true division (no reciprocal), one float32 multiply and one
rounding on dequantize.

Kernels (persistent CTAs of THREADS threads, grid-stride over tiles; every loop that holds a barrier or a
warp collective is uniform over the CTA):

* ``fused`` (one factory per K and layout; blocksize 16 or a multiple of 32, the usual ones): one pass, a warp
  per unit of max(blocksize, 32) elements, a lane per element of each 32-element chunk (coalesced). The block
  absmax is a shuffle reduction over min(blocksize, 32) lanes of the magnitudes' float32 bits, every lane encodes
  its block's scale and divisor itself (cheaper than a broadcast), then the chunks are read again (L1/L2 hits)
  for the codes and packed in registers (below). e4m3 needs the tensor max first: ``absmax_scales`` runs before.
* ``absmax_scales``: 16 (blocksize < 32) or 32 lanes per quantization block, strided loads; lane 0 encodes the
  stored scale, its value D and the divisor q. For e4m3 it only writes absmax and folds it into one atomic max
  per warp (the tensor scale); ``encode_e4m3`` then encodes. With ``codes`` (a lane per element,
  ``s = x / q[i // bs]``) it is the path of any other blocksize (96 is fused; 40, 24, rows of odd length are not).
* ``dequant4`` (one factory per K and layout): a thread per 4 elements, the codes gathered from one set of word
  loads, the scale decoded from its storage bits, ``cb[code] * D`` rounded once to the output dtype, one 8-byte
  store (16-bit outputs) or two (float32).

Every quantizer raises the non-finite flag (zeroed by the adapter) when it sees a NaN or an Inf; the absmax
ignores NaN (the CPU kernels' sequential ``v > am``): a lane whose raw max of bits is above Inf's (rare) takes
a second pass that skips NaN. Codes: a binary search for #{c[j] <= s} in the shared-memory codebook (K + 1
steps), then the lowest-index argmin. Packing: a warp's 32 elements own exactly K words in both layouts;
bit-plane word b is ``ballot(bit b of the code)``; dense word w's bit t is stream bit 32w + t, i.e. bit
(32w + t) % K of lane (32w + t) // K's code: one shuffle and one ballot per word. Lanes 0..K-1 store.

The simulator has no warp shuffles or ballots: their twins go through shared memory with barriers.
Element kinds are numba_kernels/cuda/quant.py's (0 float32, 1 float16, 2 bfloat16; 16-bit inputs as
int16 bit patterns, 16-bit outputs as uint16 bit patterns). Scale format ids: 0 fp32, 1 fp16, 2 bf16,
3 e4m4, 4 e8m0, 5 e4m3. Layout ids: 0 bitplane, 1 dense.
"""
from __future__ import annotations

import numpy as np

import workbench._compat  # noqa: F401  (numpy shim, before any kernel compiles)
from numba import config, cuda, float32, int32, int64, uint32, uint64
from numba.cuda import libdevice

from .quant import BF16, F16, F32, _bf16_bits, _elem_at, _float2half_rn, _float_as_int, _half2float, _int_as_float

THREADS = 64 if config.ENABLE_CUDASIM else 256   # the simulator runs a Python thread per lane
NWARPS = THREADS // 32
FULL = 0xFFFFFFFF
INF_BITS = 0x7F800000
EPS = np.float32(1e-8)
FMT_IDS = {"fp32": 0, "fp16": 1, "bf16": 2, "e4m4": 3, "e8m0": 4, "e4m3": 5}
LAYOUT_IDS = {"bitplane": 0, "dense": 1}

if config.ENABLE_CUDASIM:
    # Twins of the warp collectives: one barrier each, on a shared (2, THREADS) buffer used alternately (ph),
    # so no thread overwrites a slot another may still read (between two uses of one half lies a barrier).
    def _rint(v):
        return np.rint(np.float32(v))

    @cuda.jit(device=True)
    def _ballot(pred, s2, ph, tid):
        s2[ph, tid] = 1 if pred else 0
        cuda.syncthreads()
        base = tid & ~31
        r = 0
        for j in range(32):
            r |= int(s2[ph, base + j]) << j
        return r

    @cuda.jit(device=True)
    def _shfl(v, src, s2, ph, tid):
        s2[ph, tid] = v
        cuda.syncthreads()
        return s2[ph, (tid & ~31) + src]

    @cuda.jit(device=True)
    def _seg_max(v, G, s2, ph, tid):
        """max of v over the G consecutive lanes (G = 16 or 32) holding tid."""
        s2[ph, tid] = v
        cuda.syncthreads()
        base = tid & ~(G - 1)
        r = s2[ph, base]
        for j in range(1, G):
            r = max(r, s2[ph, base + j])
        return r

    @cuda.jit(device=True)
    def _warp_atomic_max(v, gmax, tid):
        if v > 0:
            cuda.atomic.max(gmax, 0, v)
else:
    _rint = libdevice.rintf

    @cuda.jit(device=True, inline=True)
    def _ballot(pred, s2, ph, tid):
        return cuda.ballot_sync(FULL, pred)

    @cuda.jit(device=True, inline=True)
    def _shfl(v, src, s2, ph, tid):
        return cuda.shfl_sync(FULL, v, src)

    @cuda.jit(device=True, inline=True)
    def _seg_max(v, G, s2, ph, tid):
        off = 1
        while off < G:
            o = cuda.shfl_xor_sync(FULL, v, off)
            if o > v:
                v = o
            off *= 2
        return v

    @cuda.jit(device=True, inline=True)
    def _warp_atomic_max(v, gmax, tid):
        v = _seg_max(v, 32, v, 0, tid)
        if (tid & 31) == 0 and v > 0:
            cuda.atomic.max(gmax, 0, v)


# ------------------------------------------------------------------ exact scalar helpers (cpu/kbit.py's)

@cuda.jit(device=True, inline=True)
def floor_log2(a):
    """floor(log2 a) for a finite float32 a > 0, from its bits (subnormals included)."""
    u = int32(_float_as_int(a) & 0x7FFFFFFF)
    ex = int64(u >> 23)
    if ex > 0:
        return ex - 127
    return int64(32 - cuda.clz(u)) - 150


@cuda.jit(device=True, inline=True)
def pow2f(e):
    """2**e as float32, e in -149..128 (subnormal below -126; 128 gives Inf)."""
    if e >= -126:
        return _int_as_float(int32((e + 127) << 23))
    return _int_as_float(int32(1 << (e + 149)))


@cuda.jit(device=True, inline=True)
def minifloat_bits(a, M, bias, emin, maxbits):
    """a >= 0 rounded to nearest even in a format with M mantissa bits, exponent bias ``bias``, smallest
    normal exponent ``emin``; saturates at bit pattern ``maxbits`` (also for Inf, never for finite input
    out of range of the division below)."""
    if a == 0:
        return int64(0)
    if not (a <= float32(3.4028234663852886e38)):
        return int64(maxbits)
    e = floor_log2(a)
    eq = e if e > emin else int64(emin)
    r = _rint(float32(a) / pow2f(eq - M))     # exact: a scaled by a power of two, < 2**(M+1)
    ni = int64(r)
    bits = (((eq + bias - 1) << M) + ni) if e >= emin else ni
    return bits if bits < maxbits else int64(maxbits)


@cuda.jit(device=True, inline=True)
def minifloat_value(bits, M, bias, emin):
    ex = bits >> M
    mant = bits & ((1 << M) - 1)
    if ex == 0:
        return float32(mant) * pow2f(emin - M)
    return float32(mant + (1 << M)) * pow2f(ex - bias - M)


@cuda.jit(device=True, inline=True)
def e4m4_bits(a):
    """bitsandbytes' encode_absmax_e4m4 (bias 11, no mantissa carry), saturating at 0xFF."""
    if a == 0:
        return int64(0)
    if not (a <= float32(3.4028234663852886e38)):
        return int64(0xFF)
    e = floor_log2(a)
    if e + 11 <= 0:
        m = int64(_rint(float32(a) * float32(16384.0)))
        return m if m < 15 else int64(15)
    if e + 11 > 15:
        return int64(0xFF)
    m = int64(_rint((float32(a) / pow2f(e) - float32(1.0)) * float32(16.0)))
    m = m if m < 15 else int64(15)
    return ((e + 11) << 4) | m


@cuda.jit(device=True, inline=True)
def e4m4_value(b):
    e = b >> 4
    m = b & 15
    if e == 0:
        return float32(m) * pow2f(-14)
    return float32(16 + m) * pow2f(e - 15)


@cuda.jit(device=True, inline=True)
def encode_one(a, fmt, emax, ts):
    """The stored scale's bit pattern (fp32: its bits; never used, fp32 stores a itself)."""
    if fmt == 0:
        return int64(0)
    if fmt == 1:
        return minifloat_bits(a, 10, 15, -14, 0x7BFF)
    if fmt == 2:
        return minifloat_bits(a, 7, 127, -126, 0x7F7F)
    if fmt == 3:
        return e4m4_bits(a)
    if fmt == 4:
        if a == 0:
            return int64(0)
        if not (a <= float32(3.4028234663852886e38)):
            return int64(254)
        E = floor_log2(a) - emax + 127
        return int64(0) if E < 0 else (int64(254) if E > 254 else E)
    return minifloat_bits(float32(a) / ts, 3, 7, -6, 0x7E)


@cuda.jit(device=True, inline=True)
def decode_one(bits, a, fmt, ts):
    """D from the stored bits (fp32: a itself)."""
    if fmt == 0:
        return float32(a)
    if fmt == 1:
        return minifloat_value(bits, 10, 15, -14)
    if fmt == 2:
        return minifloat_value(bits, 7, 127, -126)
    if fmt == 3:
        return e4m4_value(bits)
    if fmt == 4:
        return pow2f(bits - 127)
    return minifloat_value(bits, 3, 7, -6) * ts


@cuda.jit(device=True, inline=True)
def _store_scale(sc, b, bits, a, fmt):
    if fmt == 0:
        sc[b] = a
    else:
        sc[b] = bits


@cuda.jit(device=True, inline=True)
def _scale_value(sc, b, fmt, ts):
    """D[b] from the stored scales (fp32 float32, fp16/bf16 uint16 patterns, the byte formats uint8)."""
    if fmt == 0:
        return float32(sc[b])
    r = int64(sc[b])
    if fmt == 1:
        return float32(_half2float(int32(r & 0xFFFF)))
    if fmt == 2:
        return _int_as_float(int32((r & 0xFFFF) << 16))
    return decode_one(r, float32(0.0), fmt, ts)


@cuda.jit(device=True, inline=True)
def _encode_block(a, b, fmt, emax, codes_decoded, ts, sc, D, q):
    bits = encode_one(a, fmt, emax, ts)
    d = decode_one(bits, a, fmt, ts)
    _store_scale(sc, b, bits, a, fmt)
    D[b] = d
    if fmt == 4:
        q[b] = d
    else:
        base = d if codes_decoded else a
        q[b] = base if base > EPS else EPS


@cuda.jit(device=True, inline=True)
def _block_of(i, bs, shift):
    """i // bs as uint64: a shift for power-of-two blocksizes (shift >= 0), else an unsigned division
    (NVPTX divides in 32 bits when both operands fit)."""
    if shift >= 0:
        return uint64(i) >> uint64(shift)
    return uint64(i) // uint64(bs)


@cuda.jit(device=True, inline=True)
def _imax(a, b):
    return a if a > b else b


@cuda.jit(device=True, inline=True)
def _mag_at(x, i, kind):
    """|float32(x[i])|'s bits as int32 (NaN > Inf > every finite value, as integers); i unsigned."""
    if kind == F32:
        return int32(_float_as_int(x[i]) & 0x7FFFFFFF)
    h = int32(x[i]) & 0x7FFF
    if kind == BF16:
        return int32(h << 16)
    return int32(_float_as_int(float32(_half2float(h))) & 0x7FFFFFFF)


# ------------------------------------------------------------------ absmax + scales

def _make_absmax(lpb: int):
    BPW = 32 // lpb                  # quantization blocks per warp
    BPC = NWARPS * BPW               # per CTA tile

    @cuda.jit(fastmath=False)
    def absmax_scales(x, kind, n, bs, nb, ntiles, cb, m, fmt, codes_decoded, absmax, sc, D, q, flag, gmax):
        s2 = cuda.shared.array((2, THREADS), int32)
        s_e = cuda.shared.array(1, int32)
        tid = cuda.threadIdx.x
        lane = tid & 31
        l = lane & (lpb - 1)
        emax = int64(0)
        if fmt == 4:                 # floor(log2 max|c|), the element format's emax (MX rule)
            if tid == 0:
                s_e[0] = 0
            cuda.syncthreads()
            for j in range(tid, m, THREADS):
                cuda.atomic.max(s_e, 0, int32(_float_as_int(cb[j]) & 0x7FFFFFFF))
            cuda.syncthreads()
            emax = floor_log2(_int_as_float(s_e[0]))
        ph = 0
        gm = int32(0)                # the e4m3 tensor max, over this thread's blocks
        for tile in range(cuda.blockIdx.x, ntiles, cuda.gridDim.x):
            b = tile * BPC + (tid >> 5) * BPW + (lane // lpb)
            start = b * bs
            end = start + bs if start + bs < n else n
            if b >= nb:
                end = start
            mx = int32(0)
            i = start + l
            while i + 3 * lpb < end:          # four loads in flight
                u0 = _mag_at(x, uint64(i), kind)
                u1 = _mag_at(x, uint64(i + lpb), kind)
                u2 = _mag_at(x, uint64(i + 2 * lpb), kind)
                u3 = _mag_at(x, uint64(i + 3 * lpb), kind)
                mx = _imax(mx, _imax(_imax(u0, u1), _imax(u2, u3)))
                i += 4 * lpb
            while i < end:
                mx = _imax(mx, _mag_at(x, uint64(i), kind))
                i += lpb
            if mx >= INF_BITS:                # a NaN or an Inf (rare): flag, and a max that skips NaN
                flag[0] = 1
                if mx > INF_BITS:
                    mx = int32(0)
                    i = start + l
                    while i < end:
                        u = _mag_at(x, uint64(i), kind)
                        if u <= INF_BITS and u > mx:
                            mx = u
                        i += lpb
            mx = _seg_max(mx, lpb, s2, ph, tid)
            ph ^= 1
            if l == 0 and b < nb:
                a = _int_as_float(mx)
                if fmt == 5:
                    absmax[b] = a
                    gm = _imax(gm, mx)
                else:
                    _encode_block(a, b, fmt, emax, codes_decoded, float32(1.0), sc, D, q)
        if fmt == 5:
            _warp_atomic_max(gm, gmax, tid)

    return absmax_scales


@cuda.jit(fastmath=False)
def encode_e4m3(absmax, nb, gmax, codes_decoded, sc, D, q, ts_out):
    """The e4m3 scales once the global max is known: t = max / 448 (1.0 when all are zero)."""
    g = _int_as_float(gmax[0])
    ts = g / float32(448.0) if g > 0 else float32(1.0)
    b = cuda.blockIdx.x * THREADS + cuda.threadIdx.x
    if b == 0:
        ts_out[0] = ts
    if b < nb:
        _encode_block(absmax[b], b, 5, int64(0), codes_decoded, ts, sc, D, q)


# ------------------------------------------------------------------ codes + packing

def _make_codes(k: int, layout: int):
    """(codes kernel, fused kernel) for K = k and the layout."""
    M = 1 << k

    @cuda.jit(device=True, inline=True)
    def nearest(s, cb):
        """argmin_j fl(|s - c[j]|), lowest j on ties: p = #{c[j] <= s} in K + 1 steps, then the closer
        neighbour (the upper only when strictly closer), then a walk down over equal distances."""
        p = 0
        for t in range(k):                    # unrolled: k is a constant here
            h = M >> (t + 1)
            if cb[uint32(p + h - 1)] <= s:
                p += h
        if cb[uint32(p)] <= s:
            p += 1
        if p == 0:
            return 0
        if p < M:
            if abs(cb[p] - s) < abs(s - cb[p - 1]):
                return p
        j = p - 1
        d = abs(s - cb[j])
        while j > 0 and abs(s - cb[j - 1]) == d:
            j -= 1
        return j

    @cuda.jit(device=True, inline=True)
    def pack_store(c, lane, i0, out, nw, s2, ph, tid):
        """The K words of the warp's 32 codes (elements i0..i0+31, this lane's: c), stored by lanes 0..K-1.
        Returns the next ph."""
        mine = uint32(0)
        for w in range(k):
            if layout == 0:
                bit = (c >> w) & 1
            else:                             # dense: stream bit 32w + lane of this warp's K words
                p = 32 * w + lane
                src = p // k
                bit = (_shfl(c, src, s2, ph, tid) >> (p - src * k)) & 1
                ph ^= 1
            word = _ballot(bit != 0, s2, ph, tid)
            ph ^= 1
            if lane == w:
                mine = uint32(word)
        wi = (i0 >> 5) * k + lane
        if lane < k and wi < nw:
            out[uint64(wi)] = mine
        return ph

    @cuda.jit(fastmath=False)
    def codes(x, kind, n, bs, shift, q, cb_g, ntiles, out, nw):
        cb = cuda.shared.array(M, float32)
        s2 = cuda.shared.array((2, THREADS), int32)
        tid = cuda.threadIdx.x
        lane = tid & 31
        for j in range(tid, M, THREADS):
            cb[j] = cb_g[j]
        cuda.syncthreads()
        ph = 0
        for tile in range(cuda.blockIdx.x, ntiles, cuda.gridDim.x):
            i = tile * THREADS + tid
            c = int32(0)
            if i < n:
                c = int32(nearest(_elem_at(x, uint64(i), kind) / q[_block_of(i, bs, shift)], cb))
            ph = pack_store(c, lane, i - lane, out, nw, s2, ph, tid)

    @cuda.jit(fastmath=False)
    def fused(x, kind, n, bs, ntiles, cb_g, m, fmt, codes_decoded, gmax, sc, ts_out, out, nw, flag):
        """Blocksize 16 or a multiple of 32: a warp per unit of U = max(bs, 32) elements, a lane per element
        of each 32-element chunk. Absmax by a shuffle reduction over W = min(bs, 32) lanes, every lane encodes
        its block's scale itself (no broadcast), then the chunks again (L1/L2 hits) for the codes. e4m3: the
        tensor max is in gmax (absmax_scales ran first)."""
        cb = cuda.shared.array(M, float32)
        s2 = cuda.shared.array((2, THREADS), int32)
        s_e = cuda.shared.array(1, int32)
        tid = cuda.threadIdx.x
        lane = tid & 31
        for j in range(tid, M, THREADS):
            cb[j] = cb_g[j]
        if tid == 0:
            s_e[0] = 0
        cuda.syncthreads()
        emax = int64(0)
        if fmt == 4:                 # floor(log2 max|c|), the element format's emax (MX rule)
            for j in range(tid, m, THREADS):
                cuda.atomic.max(s_e, 0, int32(_float_as_int(cb[j]) & 0x7FFFFFFF))
            cuda.syncthreads()
            emax = floor_log2(_int_as_float(s_e[0]))
        ts = float32(1.0)
        if fmt == 5:
            g = _int_as_float(gmax[0])
            if g > 0:
                ts = g / float32(448.0)
            if cuda.blockIdx.x == 0 and tid == 0:
                ts_out[0] = ts
        U = bs if bs >= 32 else 32
        W = bs if bs < 32 else 32
        chunks = U // 32
        ph = 0
        for tile in range(cuda.blockIdx.x, ntiles, cuda.gridDim.x):
            base = (tile * NWARPS + (tid >> 5)) * U
            mx = int32(0)
            for ch in range(chunks):
                i = base + ch * 32 + lane
                if i < n:
                    mx = _imax(mx, _mag_at(x, uint64(i), kind))
            if mx >= INF_BITS:       # a NaN or an Inf (rare): flag, and a max that skips NaN
                flag[0] = 1
                if mx > INF_BITS:
                    mx = int32(0)
                    for ch in range(chunks):
                        i = base + ch * 32 + lane
                        if i < n:
                            u = _mag_at(x, uint64(i), kind)
                            if u <= INF_BITS and u > mx:
                                mx = u
            mx = _seg_max(mx, W, s2, ph, tid)
            ph ^= 1
            a = _int_as_float(mx)
            bits = encode_one(a, fmt, emax, ts)
            if fmt == 4:
                q = decode_one(bits, a, fmt, ts)
            else:
                base_q = decode_one(bits, a, fmt, ts) if codes_decoded else a
                q = base_q if base_q > EPS else EPS
            blk = base // bs + (lane >> 4 if bs < 32 else 0)
            if (lane & (W - 1)) == 0 and blk * bs < n:
                _store_scale(sc, uint64(blk), bits, a, fmt)
            for ch in range(chunks):
                i0 = base + ch * 32
                i = i0 + lane
                c = int32(0)
                if i < n:
                    c = int32(nearest(_elem_at(x, uint64(i), kind) / q, cb))
                ph = pack_store(c, lane, i0, out, nw, s2, ph, tid)

    return codes, fused


# ------------------------------------------------------------------ dequantize

def _make_dequant4(k: int, layout: int):
    """A thread per 4 elements: the codes of a quad from one set of word loads, one scale decode when the
    blocksize is a multiple of 4, one 8-byte store (16-bit outputs) or two (float32) into ``out_w`` (the first
    n // 4 quads as uint64 words); the n % 4 last elements go to ``out_t`` (element view, disjoint)."""
    M = 1 << k
    MASK = uint64(M - 1)

    @cuda.jit(device=True, inline=True)
    def bits_of(v, kind):
        if kind == F32:
            return uint64(_float_as_int(v) & 0xFFFFFFFF)
        if kind == BF16:
            return uint64(_bf16_bits(v))
        return uint64(_float2half_rn(v) & 0xFFFF)

    @cuda.jit(fastmath=False)
    def dequant4(words, nw, n, bs, shift, sc, fmt, ts_g, cb_g, kind, out_w, out_t):
        cb = cuda.shared.array(M, float32)
        tid = cuda.threadIdx.x
        for j in range(tid, M, THREADS):
            cb[j] = cb_g[j]
        cuda.syncthreads()
        ts = float32(ts_g[0])
        quads = (n + 3) >> 2
        full = n >> 2
        bs4 = (bs & 3) == 0
        step = cuda.gridDim.x * THREADS
        t = cuda.blockIdx.x * THREADS + tid
        while t < quads:
            i0 = t * 4
            if layout == 0:
                base = (i0 >> 5) * k
                j = uint32(i0 & 31)
                c0 = uint32(0)
                c1 = uint32(0)
                c2 = uint32(0)
                c3 = uint32(0)
                for b in range(k):
                    wb = uint32(words[uint64(base + b)]) >> j
                    c0 |= (wb & uint32(1)) << uint32(b)
                    c1 |= ((wb >> uint32(1)) & uint32(1)) << uint32(b)
                    c2 |= ((wb >> uint32(2)) & uint32(1)) << uint32(b)
                    c3 |= ((wb >> uint32(3)) & uint32(1)) << uint32(b)
            else:
                p = i0 * k
                wi = p >> 5
                lo = uint64(uint32(words[uint64(wi)]))
                hi = uint64(uint32(words[uint64(wi + 1)])) if wi + 1 < nw else uint64(0)
                both = (lo | (hi << uint64(32))) >> uint64(p & 31)
                c0 = uint32(both & MASK)
                c1 = uint32((both >> uint64(k)) & MASK)
                c2 = uint32((both >> uint64(2 * k)) & MASK)
                c3 = uint32((both >> uint64(3 * k)) & MASK)
            if bs4:
                d = _scale_value(sc, _block_of(i0, bs, shift), fmt, ts)
                d0 = d
                d1 = d
                d2 = d
                d3 = d
            else:                             # a block boundary may fall inside the quad
                last = n - 1
                d0 = _scale_value(sc, _block_of(i0, bs, shift), fmt, ts)
                d1 = _scale_value(sc, _block_of(i0 + 1 if i0 + 1 < n else last, bs, shift), fmt, ts)
                d2 = _scale_value(sc, _block_of(i0 + 2 if i0 + 2 < n else last, bs, shift), fmt, ts)
                d3 = _scale_value(sc, _block_of(i0 + 3 if i0 + 3 < n else last, bs, shift), fmt, ts)
            v0 = cb[c0] * d0
            v1 = cb[c1] * d1
            v2 = cb[c2] * d2
            v3 = cb[c3] * d3
            if t < full:
                if kind == F32:
                    out_w[uint64(2 * t)] = bits_of(v0, kind) | (bits_of(v1, kind) << uint64(32))
                    out_w[uint64(2 * t + 1)] = bits_of(v2, kind) | (bits_of(v3, kind) << uint64(32))
                else:
                    out_w[uint64(t)] = (bits_of(v0, kind) | (bits_of(v1, kind) << uint64(16))
                                        | (bits_of(v2, kind) << uint64(32)) | (bits_of(v3, kind) << uint64(48)))
            else:                             # the n % 4 last elements
                for e in range(n - i0):
                    v = v0 if e == 0 else (v1 if e == 1 else v2)
                    if kind == F32:
                        out_t[e] = v
                    else:
                        out_t[e] = uint32(bits_of(v, kind))
            t += step

    return dequant4


_KERNELS: dict = {}


def kernel(op: str, *key):
    """The compiled kernel: ('absmax', lpb), ('codes' or 'fused', k, layout), ('dequant4', k, layout)."""
    full = (op, *key)
    if full not in _KERNELS:
        if op in ("codes", "fused"):
            _KERNELS[("codes", *key)], _KERNELS[("fused", *key)] = _make_codes(*key)
        else:
            _KERNELS[full] = {"absmax": _make_absmax, "dequant4": _make_dequant4}[op](*key)
    return _KERNELS[full]


def fused_path(blocksize: int) -> bool:
    """Blocksizes of the fused kernel (a warp's units hold whole blocks); others take absmax_scales + codes."""
    return blocksize == 16 or blocksize % 32 == 0


__all__ = ["BF16", "F16", "F32", "FMT_IDS", "LAYOUT_IDS", "THREADS", "encode_e4m3", "fused_path", "kernel"]
