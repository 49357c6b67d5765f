"""Numba CUDA kernels of the k-bit family (K = 2..8, bit-plane and dense layouts, six scale formats).

The rules are workbench/backends/reference/kbit.py's docstring, bit for bit; the scale helpers (floor(log2)
from the float's bits, scale encoders and decoders rounding half to even) are numba_kernels/kbit_scalar.py's
as device functions, the nearest-code search numba_kernels/cpu/kbit.py's (lowest index on ties). IEEE float32
throughout: ``fastmath=False``, ``x / q`` a true division (no reciprocal), one float32 multiply and one
rounding on dequantize.

Kernels (every loop that holds a barrier or a warp collective is uniform over the CTA). The design goal is
latency tolerance: a warp keeps NS = 8 independent 32-element chunks in flight (all their global loads issued
before any use, then each dependent step done for all of them: straight-line code over small local arrays
whose indices are static once the fixed-count loops unroll, so they live in registers; the element kind, K,
the layout and the unit shape are compile-time constants).

* blocksizes 16 and 32 (the defaults) take numba_kernels/cuda/kbit_lane.py (cuda_src/kbit.cu's lane kernel: a
  thread per 32-element group) after ``absmax_scales`` where e4m3 needs the tensor max.
* ``fused`` (one factory per K, layout, shape ``fused_variant(blocksize)`` and input kind; multiples of 32 from
  64 on): one pass, persistent CTAs grid-striding over tiles. A unit is a block (CH chunks of 32, a lane per
  element of each, coalesced); for blocksizes up to 256 a warp
  takes R = NS // CH consecutive units per iteration: the R * CH loads, the R absmax values (the magnitudes'
  float32 bits, max over the unit's chunks in registers), one R-value shuffle reduction over the warp
  (halving steps: 6 shuffles for R = 4, leaving each lane its unit's max), every lane encodes its
  unit's scale (all R at once), one lane per block stores it, one shuffle per unit broadcasts the divisor,
  then the R * CH divisions, the binary searches step by step over all chunks, and the packs (below). The
  elements stay in registers between the two halves. Other multiples of 32 (above 256 or not dividing
  8 * 32): a unit per iteration, its chunks read in batches of NS loads (twice: absmax, then codes).
  e4m3 needs the tensor max first: ``absmax_scales`` runs before.
* ``absmax_scales``: 16 (blocksize < 32) or 32 lanes per quantization block, strided loads; lane 0 encodes the
  stored scale, its value D and the divisor q. For e4m3 it only writes absmax and folds it into one atomic max
  per warp (the tensor scale); ``encode_e4m3`` then encodes. With ``codes`` (a lane per element,
  ``s = x / q[i // bs]``) it is the path of any other blocksize (96 is fused; 40, 24, rows of odd length are not).
* ``dequant32`` (one factory per K, layout and output kind; blocksize 16 or a multiple of 32): cuda_src/kbit.cu's
  group dequantizer, a thread per 32-element group, ceil(n / 32 / THREADS) CTAs: the group's K words, one scale
  decode (two at blocksize 16), codes by byte permutes and a multiply (bit-plane K <= 4), an 8x8 bit transpose
  per octet (K > 4) or constant shifts (dense), ``cb[code] * D`` rounded once (bf16/fp16 pairs by one
  ``cvt.rn.*x2.f32`` when D is finite), the output through the warp's shared stage in 512-byte stores.
* ``dequant8`` (other blocksizes): a thread per 8 consecutive elements (inside one 32-element group), grid-stride:
  the word loads first, the 8 codes from them (bit-plane: each plane's byte spread into the bytes of two words;
  dense: one 64-bit window of up to 3 words), one scale decode when blocksize % 8 == 0, ``cb[code] * D`` rounded
  once to the output dtype, one 16-byte store (16-bit outputs) or two (float32); the n % 8 last elements one by
  one.

Every quantizer raises the non-finite flag (zeroed by the adapter) when it sees a NaN or an Inf; the absmax
ignores NaN (the CPU kernels' sequential ``v > am``): a lane whose raw max of bits is above Inf's (rare) takes
a second pass that skips NaN. Codes: a binary search for #{c[j] <= s} in the shared-memory codebook (K + 1
steps), then the lowest-index argmin. Packing: a warp's 32 elements own exactly K words in both layouts;
bit-plane word b is ``ballot(bit b of the code)``; dense word w's bit t is stream bit 32w + t, i.e. bit
(32w + t) % K of lane (32w + t) // K's code: one shuffle and one ballot per word. Lanes 0..K-1 store.

The simulator has no warp shuffles or ballots: their twins (numba_kernels/cuda/warp.py) go through shared
memory with barriers.
Element kinds are numba_kernels/cuda/quant.py's (0 float32, 1 float16, 2 bfloat16; 16-bit inputs as
int16 bit patterns, 16-bit outputs as uint16 bit patterns). Scale format ids: 0 fp32, 1 fp16, 2 bf16,
3 e4m4, 4 e8m0, 5 e4m3. Layout ids: 0 bitplane, 1 dense.
"""
from __future__ import annotations

import workbench._compat  # noqa: F401  (numpy shim, before any kernel compiles)
from numba import config, cuda, float32, int32, int64, uint32, uint64

from ..kbit_scalar import scale_helpers
from .quant import (BF16, F16, F32, _bf16_bits, _elem_at, _float2half_rn, _float_as_int, _half2float, _int_as_float,
                    _pack_bf16x2, _pack_f16x2, _rint)
from .inlining import forceinlined
from .warp import _ballot, _ld16, _prmt, _seg_max, _shfl, _st16, _syncwarp, _warp_atomic_max, _xor

THREADS = 64 if config.ENABLE_CUDASIM else 256   # the simulator runs a Python thread per lane
NWARPS = THREADS // 32
INF_BITS = 0x7F800000
FMT_IDS = {"fp32": 0, "fp16": 1, "bf16": 2, "e4m4": 3, "e8m0": 4, "e4m3": 5}
LAYOUT_IDS = {"bitplane": 0, "dense": 1}

# ------------------------------------------------------------------ exact scalar helpers (numba_kernels/kbit_scalar.py)

@cuda.jit(device=True, inline=True)
def _bits_float(u):
    return _int_as_float(int32(u))


@cuda.jit(device=True, inline=True)
def _bit_length(u):
    return 32 - cuda.clz(int32(u))


_S = scale_helpers(cuda.jit(device=True, inline=True), _float_as_int, _bits_float, _bit_length, _rint)
floor_log2, encode_one, decode_one, divisor = _S.floor_log2, _S.encode_one, _S.decode_one, _S.divisor


@cuda.jit(device=True, inline=True)
def divisor_of(a, fmt, emax, ts, codes_decoded):
    """(stored scale bits, divisor q) of a block with absmax a; the scale decoded only where q needs it."""
    bits = encode_one(a, fmt, emax, ts)
    d = decode_one(bits, fmt, ts) if (codes_decoded or fmt == 4) else a
    return bits, divisor(a, d, fmt, codes_decoded)


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
    return decode_one(r, fmt, ts)


@cuda.jit(device=True, inline=True)
def _encode_block(a, b, fmt, emax, codes_decoded, ts, sc, D, q):
    bits = encode_one(a, fmt, emax, ts)
    d = decode_one(bits, fmt, ts)
    _store_scale(sc, b, bits, a, fmt)
    D[b] = d
    q[b] = divisor(a, d, fmt, codes_decoded)


@cuda.jit(device=True, inline=True)
def format_constants(cb, cb_g, mc, m, fmt, gmax, ts_out, s_e, tid):
    """A quantizer CTA's prologue: stages the codebook (cb_g[:mc] into shared cb; with whatever the caller staged
    before it, visible after the barrier here) and returns (emax, ts): e8m0's element emax, floor(log2 max|c|)
    over the first m entries (the MX rule), and e4m3's tensor scale from the global max (block 0 writes it out); 0
    and 1 for the other formats. fmt is uniform over the CTA, so are the barriers."""
    for j in range(tid, mc, THREADS):
        cb[j] = cb_g[j]
    if tid == 0:
        s_e[0] = 0
    cuda.syncthreads()
    emax = int64(0)
    if fmt == 4:
        for j in range(tid, m, THREADS):
            cuda.atomic.max(s_e, 0, int32(_float_as_int(cb[j]) & 0x7FFFFFFF))
        cuda.syncthreads()
        emax = floor_log2(_int_as_float(s_e[0]))
    ts = float32(1.0)
    if fmt == 5:
        gm = _int_as_float(gmax[0])
        if gm > 0:
            ts = gm / float32(448.0)
        if cuda.blockIdx.x == 0 and tid == 0:
            ts_out[0] = ts
    return emax, ts


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

NS = 8                       # 32-element chunks whose loads a warp of the fused quantizer issues together


def fused_variant(blocksize: int) -> int:
    """The fused kernel's compile-time shape for ``blocksize`` (a multiple of 32 from 64 on; 16 and 32 take the lane
    kernel): the blocksize itself when its bs // 32 chunks fit NS (up to 256: R = NS // chunks units per
    iteration), else 0 (the generic kernel: a unit per iteration, its chunks in batches of NS)."""
    return blocksize if blocksize % 32 == 0 and 64 <= blocksize <= 32 * NS else 0


def fused_elems(blocksize: int) -> int:
    """Elements a warp of the fused kernel handles per loop iteration."""
    g = fused_variant(blocksize)
    if g == 0:
        return blocksize
    ch = g // 32
    return (NS // ch) * ch * 32


def _make_parts(k: int, layout: int):
    """(nearest, search_n, settle, pack_store) for K = k and the layout."""
    M = 1 << k

    @cuda.jit(device=True, inline=True)
    def settle(s, p, cb):
        """The code from p = #{c[j] <= s}: the closer neighbour (the upper only when strictly closer), then a
        walk down over equal distances (lowest index on ties)."""
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
    def nearest(s, cb):
        """argmin_j fl(|s - c[j]|), lowest j on ties: p = #{c[j] <= s} in K + 1 steps, then ``settle``."""
        p = 0
        for t in range(k):                    # unrolled: k is a constant here
            h = M >> (t + 1)
            if cb[uint32(p + h - 1)] <= s:
                p += h
        if cb[uint32(p)] <= s:
            p += 1
        return settle(s, p, cb)

    @cuda.jit(device=True, inline=True)
    def search_n(sv, pv, cb):
        """pv[j] = #{c <= sv[j]} for the NS values, step by step over all of them (NS independent shared
        loads per step; every index static once the loops unroll)."""
        for j in range(NS):
            pv[j] = 0
        for t in range(k):
            h = M >> (t + 1)
            for j in range(NS):
                if cb[uint32(pv[j] + h - 1)] <= sv[j]:
                    pv[j] += h
        for j in range(NS):
            if cb[uint32(pv[j])] <= sv[j]:
                pv[j] += 1

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

    return nearest, search_n, settle, pack_store


def _make_codes(k: int, layout: int):
    """The codes kernel (blocksizes of the two-kernel path) for K = k and the layout."""
    M = 1 << k
    nearest, _, _, pack_store = _make_parts(k, layout)

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

    return codes


@cuda.jit(device=True, inline=True)
def _mag(v):
    """|v|'s float32 bits as int32 (as _mag_at's, from the loaded float32 value)."""
    return int32(_float_as_int(v) & 0x7FFFFFFF)


@cuda.jit(device=True, inline=True)
def _shfl_f(v, src, s2, ph, tid):
    """A float32 shuffle (through its bits: the simulator's buffer is int32)."""
    return _int_as_float(_shfl(_float_as_int(v), src, s2, ph, tid))


def _make_fused(k: int, layout: int, g: int, kind: int):
    """The fused quantizer for K = k, the layout and the shape ``g`` (fused_variant(blocksize)).

    g > 0 (64, 96, .., 256): a unit is a block (CH = g / 32 chunks of 32, a lane per element of each), a warp takes
    R = NS // CH consecutive units per loop iteration and issues all R * CH loads before any use; then the R absmax
    reductions together (over the warp; halving steps leave lane L with unit L // SPAN's max), every lane encodes
    its own unit's scale (all R at once), one lane per block stores it, the divisors broadcast by one shuffle per
    unit, the R * CH divisions, the binary searches step by step over all of them, and the packs. The loaded
    values stay in registers (no second read). The element kind is a compile-time constant (no branch between the
    loads). g == 0 (blocksizes above 256): a unit per iteration, its chunks read in batches of NS loads (twice:
    absmax, then codes)."""
    M = 1 << k
    _, search_n, settle, pack_store = _make_parts(k, layout)
    GEN = g == 0
    CH = g // 32 if g else 1
    R = NS // CH if g else 1          # (g == 0 runs the generic loop only)
    NSE = R * CH                      # chunks per iteration (<= NS)
    W = 32                            # lanes in the reduction
    GB = g if g else 32               # the blocksize (fast shapes)
    LOGR = R.bit_length() - 1
    SPAN = W // R                     # lanes per unit after the R-value reduction (see below)
    KIND = kind

    @cuda.jit(fastmath=False)
    def fused(x, kind_, n, bs, ntiles, cb_g, m, fmt, codes_decoded, gmax, sc, ts_out, out, nw, flag):
        cb = cuda.shared.array(M, float32)
        s2 = cuda.shared.array((2, THREADS), int32)
        s_e = cuda.shared.array(1, int32)
        xv = cuda.local.array(NS, float32)    # the loaded elements, then x / q
        qv = cuda.local.array(NS, float32)    # each chunk's divisor
        pv = cuda.local.array(NS, int32)      # search positions, then codes
        mv = cuda.local.array(R, int32)       # the units' absmax bits
        tid = cuda.threadIdx.x
        lane = tid & 31
        emax, ts = format_constants(cb, cb_g, M, m, fmt, gmax, ts_out, s_e, tid)
        ph = 0
        if GEN:
            chunks = bs >> 5
            for tile in range(cuda.blockIdx.x, ntiles, cuda.gridDim.x):
                tbase = tile * NWARPS * bs
                base = tbase + (tid >> 5) * bs
                mx = int32(0)
                c0 = 0
                while c0 < chunks:
                    for j in range(NS):               # NS loads in flight
                        i = base + (c0 + j) * 32 + lane
                        xv[j] = _elem_at(x, uint64(i), KIND) if (c0 + j < chunks and i < n) else float32(0.0)
                    for j in range(NS):
                        mx = _imax(mx, _mag(xv[j]))
                    c0 += NS
                if mx >= INF_BITS:       # a NaN or an Inf (rare): flag, and a max that skips NaN
                    flag[0] = 1
                    if mx > INF_BITS:
                        mx = int32(0)
                        for ch in range(chunks):
                            i = base + ch * 32 + lane
                            if i < n:
                                u = _mag_at(x, uint64(i), KIND)
                                if u <= INF_BITS and u > mx:
                                    mx = u
                mx = _seg_max(mx, 32, s2, ph, tid)
                ph ^= 1
                a = _int_as_float(mx)
                bits, q = divisor_of(a, fmt, emax, ts, codes_decoded)
                if lane == 0 and base < n:
                    _store_scale(sc, uint64(base // bs), bits, a, fmt)
                c0 = 0
                while c0 < chunks:
                    for j in range(NS):
                        i = base + (c0 + j) * 32 + lane
                        xv[j] = _elem_at(x, uint64(i), KIND) if (c0 + j < chunks and i < n) else float32(0.0)
                    for j in range(NS):
                        xv[j] = xv[j] / q
                    search_n(xv, pv, cb)
                    for j in range(NS):
                        i = base + (c0 + j) * 32 + lane
                        pv[j] = int32(settle(xv[j], pv[j], cb)) if i < n else int32(0)
                    for j in range(NS):     # chunks inside the unit and holding some element of the CTA's first
                        if c0 + j < chunks and tbase + (c0 + j) * 32 < n:    # warp (uniform over the CTA)
                            ph = pack_store(pv[j], lane, base + (c0 + j) * 32, out, nw, s2, ph, tid)
                    c0 += NS
        else:
            for tile in range(cuda.blockIdx.x, ntiles, cuda.gridDim.x):
                tbase = tile * NWARPS * (NSE * 32)
                base = tbase + (tid >> 5) * (NSE * 32)
                for j in range(NSE):                  # every load of the iteration first
                    i = base + j * 32 + lane
                    xv[j] = _elem_at(x, uint64(i), KIND) if i < n else float32(0.0)
                for r in range(R):
                    mx = int32(0)
                    for c in range(CH):
                        mx = _imax(mx, _mag(xv[r * CH + c]))
                    if mx >= INF_BITS:   # a NaN or an Inf (rare): flag, and a max that skips NaN
                        flag[0] = 1
                        if mx > INF_BITS:
                            mx = int32(0)
                            for c in range(CH):
                                u = _mag(xv[r * CH + c])
                                if u <= INF_BITS and u > mx:
                                    mx = u
                    mv[r] = mx
                # The R maxima over the warp at once: each halving step sends half of a lane's values to its
                # partner (the lane at xor off) and keeps the other half, maxed with what comes back; then
                # plain steps. Lane L ends with the max of unit u = L // SPAN (6 shuffles for R = 4)
                if R >= 4:
                    up = (lane & (W >> (LOGR - 1))) != 0
                    for i in range(2):
                        got = _xor(mv[i] if up else mv[i + 2], W >> (LOGR - 1), s2, ph, tid)
                        ph ^= 1
                        mv[i] = _imax(mv[i + 2] if up else mv[i], got)
                if R >= 2:
                    up = (lane & (W >> LOGR)) != 0
                    got = _xor(mv[0] if up else mv[1], W >> LOGR, s2, ph, tid)
                    ph ^= 1
                    mv[0] = _imax(mv[1] if up else mv[0], got)
                mine = mv[0]
                o = SPAN >> 1
                while o > 0:
                    mine = _imax(mine, _xor(mine, o, s2, ph, tid))
                    ph ^= 1
                    o >>= 1
                a = _int_as_float(mine)
                bits, q = divisor_of(a, fmt, emax, ts, codes_decoded)
                u = lane // SPAN                          # this lane's unit
                blk = base // GB + u
                if (lane & (SPAN - 1)) == 0 and blk * GB < n:   # one lane per block stores its scale
                    _store_scale(sc, uint64(blk), bits, a, fmt)
                for r in range(R):
                    qr = _shfl_f(q, r * SPAN, s2, ph, tid)
                    ph ^= 1
                    for c in range(CH):
                        qv[r * CH + c] = qr
                for j in range(NSE, NS):              # unused slots (CH not dividing NS)
                    xv[j] = float32(0.0)
                    qv[j] = float32(1.0)
                for j in range(NS):
                    xv[j] = xv[j] / qv[j]
                search_n(xv, pv, cb)
                for j in range(NSE):
                    pv[j] = int32(settle(xv[j], pv[j], cb)) if base + j * 32 + lane < n else int32(0)
                for j in range(NSE):
                    if tbase + j * 32 < n:            # chunk j of the CTA's first warp holds an element: uniform
                        ph = pack_store(pv[j], lane, base + j * 32, out, nw, s2, ph, tid)

    return fused


# ------------------------------------------------------------------ dequantize

@cuda.jit(device=True, inline=True)
def _spread4(v):
    """The 4 low bits of v into the low bits of the 4 bytes of a uint32 (bit e -> bit 8e)."""
    return ((((v * uint32(0x01010101)) & uint32(0x08040201)) + uint32(0x7F7F7F7F)) >> uint32(7)) & uint32(0x01010101)


def _make_dequant8(k: int, layout: int, kind: int):
    """A thread per 8 elements (8-aligned, so inside one 32-element group): the word loads first, the codes of
    the 8 from them (bit-plane: each plane's byte spread into the bytes of two words; dense: one 64-bit
    window), one scale decode when the blocksize is a multiple of 8, one 16-byte store (16-bit outputs) or two
    (float32) into ``out_w`` (the first n // 8 groups as uint64 words, 16-byte aligned); the n % 8 last
    elements go to ``out_t`` (element view, disjoint)."""
    M = 1 << k
    MASK = uint64(M - 1)
    KIND = kind                       # the output kind, compile-time

    @cuda.jit(device=True, inline=True)
    def bits_of(v, kind):
        if kind == F32:
            return uint64(_float_as_int(v) & 0xFFFFFFFF)
        if kind == BF16:
            return uint64(_bf16_bits(v))
        return uint64(_float2half_rn(v) & 0xFFFF)

    @cuda.jit(fastmath=False)
    def dequant8(words, nw, n, bs, shift, sc, fmt, ts_g, cb_g, kind_, out_w, out_t):
        cb = cuda.shared.array(M, float32)
        wv = cuda.local.array(k, uint32)
        cv = cuda.local.array(8, uint32)
        dv = cuda.local.array(8, float32)
        ov = cuda.local.array(8, uint64)
        tid = cuda.threadIdx.x
        for j in range(tid, M, THREADS):
            cb[j] = cb_g[j]
        cuda.syncthreads()
        ts = float32(ts_g[0])
        groups = (n + 7) >> 3
        full = n >> 3
        bs8 = (bs & 7) == 0
        step = cuda.gridDim.x * THREADS
        t = cuda.blockIdx.x * THREADS + tid
        while t < groups:
            i0 = t * 8
            if layout == 0:
                base = (i0 >> 5) * k
                for b in range(k):            # the K loads first
                    wv[b] = uint32(words[uint64(base + b)])
                j = uint32(i0 & 31)
                slo = uint32(0)
                shi = uint32(0)
                for b in range(k):
                    y = (wv[b] >> j) & uint32(0xFF)
                    slo |= _spread4(y & uint32(15)) << uint32(b)
                    shi |= _spread4(y >> uint32(4)) << uint32(b)
                for e in range(4):
                    cv[e] = (slo >> uint32(8 * e)) & uint32(0xFF)
                    cv[e + 4] = (shi >> uint32(8 * e)) & uint32(0xFF)
            else:
                p = i0 * k
                wi = p >> 5
                w0 = uint64(uint32(words[uint64(wi)]))
                w1 = uint64(uint32(words[uint64(wi + 1)])) if wi + 1 < nw else uint64(0)
                w2 = uint64(uint32(words[uint64(wi + 2)])) if wi + 2 < nw else uint64(0)
                off = uint64(p & 31)
                v = (w0 | (w1 << uint64(32))) >> off
                if off != 0:
                    v |= w2 << (uint64(64) - off)
                for e in range(8):
                    cv[e] = uint32((v >> uint64(e * k)) & MASK)
            if bs8:
                d = _scale_value(sc, _block_of(i0, bs, shift), fmt, ts)
                for e in range(8):
                    dv[e] = d
            else:                             # a block boundary may fall inside the 8
                last = n - 1
                for e in range(8):
                    ie = i0 + e
                    dv[e] = _scale_value(sc, _block_of(ie if ie < n else last, bs, shift), fmt, ts)
            for e in range(8):
                ov[e] = bits_of(cb[cv[e]] * dv[e], KIND)
            if t < full:
                if KIND == F32:
                    _st16(out_w, uint64(4 * t), ov[0] | (ov[1] << uint64(32)), ov[2] | (ov[3] << uint64(32)))
                    _st16(out_w, uint64(4 * t + 2), ov[4] | (ov[5] << uint64(32)), ov[6] | (ov[7] << uint64(32)))
                else:
                    _st16(out_w, uint64(2 * t),
                          ov[0] | (ov[1] << uint64(16)) | (ov[2] << uint64(32)) | (ov[3] << uint64(48)),
                          ov[4] | (ov[5] << uint64(16)) | (ov[6] << uint64(32)) | (ov[7] << uint64(48)))
            else:                             # the n % 8 last elements
                rem = n - i0
                for e in range(8):
                    if e < rem:
                        if KIND == F32:
                            out_t[e] = cb[cv[e]] * dv[e]
                        else:
                            out_t[e] = uint32(ov[e])
            t += step

    return dequant8


@cuda.jit(device=True, inline=True)
def _transpose8(a, b):
    """The 8x8 bit transpose of cuda_src/kbit.cu:kk_transpose8 (rows: a's then b's bytes)."""
    t = uint32(((a >> uint32(4)) ^ b) & uint32(0x0F0F0F0F))
    b = uint32(b ^ t)
    a = uint32(a ^ (t << uint32(4)))
    t = uint32((a ^ (a >> uint32(14))) & uint32(0x0000CCCC))
    a = uint32(a ^ t ^ (t << uint32(14)))
    t = uint32((b ^ (b >> uint32(14))) & uint32(0x0000CCCC))
    b = uint32(b ^ t ^ (t << uint32(14)))
    t = uint32((a ^ (a >> uint32(7))) & uint32(0x00AA00AA))
    a = uint32(a ^ t ^ (t << uint32(7)))
    t = uint32((b ^ (b >> uint32(7))) & uint32(0x00AA00AA))
    b = uint32(b ^ t ^ (t << uint32(7)))
    return a, b


@cuda.jit(device=True, inline=True)
def _half_pair(a, b, kind):
    """bf16/fp16(a) | bf16/fp16(b) << 16, NaN as _bf16_bits / _float2half_rn write it (the slow path)."""
    if kind == BF16:
        return uint32(_bf16_bits(a)) | (uint32(_bf16_bits(b)) << uint32(16))
    return uint32(_float2half_rn(a) & 0xFFFF) | (uint32(_float2half_rn(b) & 0xFFFF) << uint32(16))


@cuda.jit(device=True, inline=True)
def _finite(d):
    return _mag(d) < INF_BITS


def _make_dequant32(k: int, layout: int, kind: int):
    """cuda_src/kbit.cu:kk_dequantize_group_kernel in Numba (blocksize 16 or a multiple of 32): a thread per
    32-element group, its K words (the group's, in both layouts), the block scale decoded once (twice for
    blocksize 16); the codes by constant shifts (bit-plane: each octet's plane bytes gathered by byte permutes,
    then one multiply per element for K <= 4 or an 8x8 bit transpose per octet for K > 4; dense: a shift and a
    mask); ``cb[code] * D`` rounded once, bf16/fp16 pairs packed; the group's 64 (128 for float32) output bytes
    go to the warp's shared stage and leave in stores of 512 contiguous bytes (per-thread 64-byte stores left
    the CUDA kernel at 47 % of DRAM bandwidth). In a CTA that is not whole (the last), with no warp barrier (the
    simulator's is the CTA's), each lane stores its own slots: whole groups 16 bytes at a time into ``out_w``
    (the n // 32 whole groups), the partial last group element by element into ``out_t`` (the n % 32 after them;
    the two views are disjoint: the simulator copies every argument back)."""
    M = 1 << k
    MASK = uint32(M - 1)
    KIND = kind
    SLOTS = 8 if kind == F32 else 4          # 16-byte slots of one group's output
    SH = 0 if SLOTS == 8 else 1              # slot swizzle: 8 consecutive slots of a store phase in distinct banks
    STAGE = THREADS * SLOTS * 2              # uint64 words
    EPW = 2 if kind == F32 else 4            # elements per uint64 word
    EB = 64 // EPW                           # their bits

    @forceinlined
    def code_of(w, lo, hi, j):
        if layout == 0:
            e = j & 7
            if k > 4:
                return _prmt(lo if e < 4 else hi, 0, 0x4440 | (e & 3))
            if e <= 4:        # bits e of the four bytes to bits 24 + e .. 27 + e of the product: mask, multiply, shift
                return ((lo & uint32(0x01010101 << e)) * uint32(0x01020408) & 0xFFFFFFFF) >> uint32(24 + e)
            return (((lo >> uint32(e)) & uint32(0x01010101)) * uint32(0x01020408) & 0xFFFFFFFF) >> uint32(24)
        p = j * k
        wi = p >> 5
        sh = p & 31
        if sh + k <= 32:
            return (w[wi] >> uint32(sh)) & MASK
        return ((w[wi] >> uint32(sh)) | (w[wi + 1] << uint32(32 - sh))) & MASK

    @cuda.jit(device=True, inline=True)
    def slot_of(t, q):
        """Stage slot of thread t's 16-byte piece q: XOR-swizzled so that 8 consecutive slots of a store phase fall
        in distinct banks."""
        return uint32(t) * uint32(SLOTS) + uint32(q ^ (((t & 31) >> SH) & (SLOTS - 1)))

    @forceinlined
    def put(st, t, q, lo, hi):
        _st16(st, uint32(2 * slot_of(t, q)), lo, hi)

    @forceinlined
    def octet(o, w, cb, d, fin, st, tid):
        """Elements 8 o .. 8 o + 7 of the group into the lane's stage slot(s); one call per o, each with a
        constant o, so every word and slot index is static (w stays in registers; a loop over o may stay rolled)."""
        lo = uint32(0)
        hi = uint32(0)
        if layout == 0:                        # plane b's byte o -> byte b (lo) / b - 4 (hi)
            sel = o | (4 + o) << 4
            lo = _prmt(_prmt(w[0], w[1], sel), _prmt(w[2] if k > 2 else 0, w[3] if k > 3 else 0, sel),
                       0x5410)
            if k > 4:
                hi = _prmt(_prmt(w[4], w[5] if k > 5 else 0, sel),
                           _prmt(w[6] if k > 6 else 0, w[7] if k > 7 else 0, sel), 0x5410)
                lo, hi = _transpose8(lo, hi)
        v0 = cb[code_of(w, lo, hi, 8 * o + 0)] * d
        v1 = cb[code_of(w, lo, hi, 8 * o + 1)] * d
        v2 = cb[code_of(w, lo, hi, 8 * o + 2)] * d
        v3 = cb[code_of(w, lo, hi, 8 * o + 3)] * d
        v4 = cb[code_of(w, lo, hi, 8 * o + 4)] * d
        v5 = cb[code_of(w, lo, hi, 8 * o + 5)] * d
        v6 = cb[code_of(w, lo, hi, 8 * o + 6)] * d
        v7 = cb[code_of(w, lo, hi, 8 * o + 7)] * d
        if KIND == F32:
            put(st, tid, 2 * o,
                uint64(_float_as_int(v0) & 0xFFFFFFFF) | uint64(_float_as_int(v1) & 0xFFFFFFFF) << uint64(32),
                uint64(_float_as_int(v2) & 0xFFFFFFFF) | uint64(_float_as_int(v3) & 0xFFFFFFFF) << uint64(32))
            put(st, tid, 2 * o + 1,
                uint64(_float_as_int(v4) & 0xFFFFFFFF) | uint64(_float_as_int(v5) & 0xFFFFFFFF) << uint64(32),
                uint64(_float_as_int(v6) & 0xFFFFFFFF) | uint64(_float_as_int(v7) & 0xFFFFFFFF) << uint64(32))
        else:
            if KIND == BF16:                   # one conversion per pair (no NaN when D is finite)
                p0, p1 = _pack_bf16x2(v0, v1), _pack_bf16x2(v2, v3)
                p2, p3 = _pack_bf16x2(v4, v5), _pack_bf16x2(v6, v7)
            else:
                p0, p1 = _pack_f16x2(v0, v1), _pack_f16x2(v2, v3)
                p2, p3 = _pack_f16x2(v4, v5), _pack_f16x2(v6, v7)
            if not fin:
                p0, p1 = _half_pair(v0, v1, KIND), _half_pair(v2, v3, KIND)
                p2, p3 = _half_pair(v4, v5, KIND), _half_pair(v6, v7, KIND)
            put(st, tid, o, uint64(p0) | uint64(p1) << uint64(32),
                uint64(p2) | uint64(p3) << uint64(32))

    @cuda.jit(fastmath=False)
    def dequant32(words, nw, n, bs, shift, sc, fmt, ts_g, cb_g, kind_, out_w, out_t):
        cb = cuda.shared.array(M, float32)
        st = cuda.shared.array(STAGE, uint64)
        w = cuda.local.array(k, uint32)
        tid = cuda.threadIdx.x
        lane = tid & 31
        for j in range(tid, M, THREADS):
            cb[j] = cb_g[j]
        cuda.syncthreads()
        ts = float32(ts_g[0])
        g = uint64(cuda.blockIdx.x) * uint64(THREADS) + uint64(tid)
        base = g * uint64(32)
        whole = (uint64(cuda.blockIdx.x) + uint64(1)) * uint64(THREADS * 32) <= uint64(n)   # CTA-uniform
        if base < uint64(n):
            for b in range(k):
                w[b] = uint32(words[g * uint64(k) + uint64(b)]) if g * uint64(k) + uint64(b) < uint64(nw) \
                    else uint32(0)
            d0 = _scale_value(sc, _block_of(base, bs, shift), fmt, ts)
            d1 = d0
            if bs == 16:
                d1 = _scale_value(sc, _block_of(base + uint64(16) if base + uint64(16) < uint64(n) else base, bs,
                                                shift), fmt, ts)
            fin = _finite(d0) and _finite(d1)
            octet(0, w, cb, d0, fin, st, tid)
            octet(1, w, cb, d0, fin, st, tid)
            octet(2, w, cb, d1, fin, st, tid)
            octet(3, w, cb, d1, fin, st, tid)
        if whole:                                    # 512 contiguous bytes per store
            _syncwarp()
            gout = (g - uint64(lane)) * uint64(SLOTS)            # the warp's first 16-byte output slot
            for q in range(SLOTS):
                ch = 32 * q + lane                               # piece ch % SLOTS of the warp's lane ch // SLOTS
                a, b = _ld16(st, uint32(2 * slot_of(tid - lane + ch // SLOTS, ch % SLOTS)))
                _st16(out_w, (gout + uint64(ch)) * uint64(2), a, b)
        elif base + uint64(32) <= uint64(n):         # the last CTA's whole groups: this lane's own slots
            for q in range(SLOTS):
                a, b = _ld16(st, uint32(2 * slot_of(tid, q)))
                _st16(out_w, (g * uint64(SLOTS) + uint64(q)) * uint64(2), a, b)
        elif base < uint64(n):                       # the partial last group: element by element into out_t
            for j in range(32):
                if base + uint64(j) < uint64(n):
                    u = uint64(st[2 * slot_of(tid, j // (EPW * 2)) + (j % (EPW * 2)) // EPW])
                    v = (u >> uint64(EB * (j % EPW))) & uint64((1 << EB) - 1)
                    if KIND == F32:
                        out_t[j] = _int_as_float(int32(v))
                    else:
                        out_t[j] = uint32(v)

    return dequant32


_KERNELS: dict = {}


def kernel(op: str, *key):
    """The compiled kernel: ('absmax', lpb), ('codes', k, layout), ('fused', k, layout, fused_variant(bs), kind),
    ('dequant8', k, layout, output kind), ('dequant32', k, layout, output kind)."""
    full = (op, *key)
    if full not in _KERNELS:
        _KERNELS[full] = {"absmax": _make_absmax, "codes": _make_codes, "fused": _make_fused,
                          "dequant8": _make_dequant8, "dequant32": _make_dequant32}[op](*key)
    return _KERNELS[full]


def fused_path(blocksize: int) -> bool:
    """Blocksizes of the fused kernel (a warp's units hold whole blocks); others take absmax_scales + codes."""
    return blocksize == 16 or blocksize % 32 == 0


__all__ = ["BF16", "F16", "F32", "FMT_IDS", "LAYOUT_IDS", "NS", "THREADS", "encode_e4m3", "fused_elems",
           "fused_path", "fused_variant", "kernel"]
