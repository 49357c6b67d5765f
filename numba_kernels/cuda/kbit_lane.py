"""The k-bit quantizer for blocksizes 16 and 32 (the defaults): cuda_src/kbit.cu's lane kernel in Numba.

Rules: workbench/backends/reference/kbit.py, bit for bit (as numba_kernels/cuda/kbit.py's fused kernel, which
keeps the other blocksizes). A thread per 32-element group, grid-stride, so nothing is shared between lanes:

* the group arrives in 16-byte loads (``xh``: the n // 32 whole groups as uint64 words), the next group's issued
  before this one's codes; the partial last group element by element (``xt``: the n % 32 after them);
* the block's absmax is the integer max of the magnitudes' bits (bf16/fp16: both halves of a word at once, by
  ``max.u16x2``; Numba's own 32-bit integer code would run in 64 bits),
  its scale encoded once per block, the divisor's reciprocal r once per block;
* a whole group whose blocks' divisors lie in [2^-60, 2^100] and whose largest quotient lies inside the lane
  table codes every element from it with no branch: s = x / q as x r and two FMA corrections (exact, see
  ``_quotient``; one where x and q have 16-bit significands, ``_quotient1``), the cell from s's bits, one 8-byte
  shared load (bound bits, code below) from this lane's copy of the table (numba_kernels/cell_plan.py:
  kbit_lane_table, kbit_lane_copies: built on the host once per codebook), code = below + (bound - s < 0). Any
  other group (the tail, NaN/Inf, a divisor out of range, a codebook the table refuses) takes the exact path: IEEE
  division and the nearest search, per element;
* the codes are packed in registers (dense: constant shifts; bit-plane: densely in P-bit fields, P = 2, 4 or 8,
  code j in field j // P of word j % P, then log2(P) delta swaps exchange the word index with the low bits of the
  bit index, so word b is plane b: cuda_src/kbit.cu's KkPack) and the group's K words stored by its thread.

Every array index of the hot path is a constant once the per-octet helpers (called with constant arguments)
are inlined, so the group, its words and its codes stay in registers. The simulator has no FMA of the GPU's
rounding: its ``_quotient`` is the IEEE division the corrected quotient equals (tests/test_kbit_gpu.py checks
the GPU side).
"""
from __future__ import annotations

import workbench._compat  # noqa: F401  (numpy shim, before any kernel compiles)
from numba import config, cuda, float32, int32, uint32, uint64

from ..cell_plan import LANE_BYTES
from .kbit import INF_BITS, THREADS, _make_parts, _store_scale, divisor_of, format_constants
from .quant import BF16, F16, F32, _div, _float_as_int, _half2float, _int_as_float, _mul, _sub
from .inlining import forceinlined
from .warp import _ld8_mad, _ld16, _vmax_u16x2

LANE_ENTRIES = LANE_BYTES // 8          # uint64 entries of the staged copies (static shared memory)
Q_LO = float32(2.0 ** -60)              # divisors outside [Q_LO, Q_HI] take the exact path (kk_recip)
Q_HI = float32(2.0 ** 100)

if config.ENABLE_CUDASIM:
    def _quotient(x, q, r):
        return _div(x, q)

    _quotient1 = _quotient
else:
    from numba.cuda import libdevice

    @cuda.jit(device=True, inline=True)
    def _quotient(x, q, r):
        """x / q rounded as IEEE division, from r = 1 / q rounded (cuda_src/kbit.cu: kk_quotient): x r is within
        2 ulp, one correction makes it faithful, the second exact (residuals exact while normal: |s| >= 2^-40 and
        q in [2^-60, 2^100], the group test's range). A smaller |s| may be off, but it codes as the exact one: the
        lane table is refused when a bound or its first cell's end lies within 2^-38 of zero."""
        s0 = _mul(x, r)
        s1 = libdevice.fmaf_rn(libdevice.fmaf_rn(-s0, q, x), r, s0)
        return libdevice.fmaf_rn(libdevice.fmaf_rn(-s1, q, x), r, s1)

    @cuda.jit(device=True, inline=True)
    def _quotient1(x, q, r):
        """The same with one correction: exact for 16-bit x and a divisor of at most 11 significant bits
        (cuda_src/kbit.cu: kk_quotient1 says why)."""
        s0 = _mul(x, r)
        return libdevice.fmaf_rn(libdevice.fmaf_rn(-s0, q, x), r, s0)


@cuda.jit(device=True, inline=True)
def _short_q(q):
    """q has at most 11 significant bits (cuda_src/kbit.cu: KK_SHORT_Q)."""
    return (_float_as_int(q) & 0x1FFF) == 0


@cuda.jit(device=True, inline=True)
def _u32(v):
    return uint32(v & 0xFFFFFFFF)


def _make_lane(k: int, layout: int, kind: int, bs: int, fmt_id: int, decoded: int):
    """The lane quantizer for K = k, the layout, the input kind, blocksize 16 or 32 and the scale format (all
    compile-time)."""
    M = 1 << k
    KIND = kind
    FMT = fmt_id
    CD = decoded
    EPW = 2 if kind == F32 else 4            # elements per uint64 input word
    WPG = 32 // EPW                          # input words per group
    P = 2 if k <= 2 else (4 if k <= 4 else 8)     # bit-plane field width
    NW = P if layout == 0 else k                   # packing words
    nearest = _make_parts(k, layout)[0]

    # The element helpers are inlined in Numba's IR, the rest by NVVM (inlining.py): by NVVM these two left 24 more
    # instructions a group (1-2 % slower, reports/kbit-h200/numba_cuda/quantize_absmax_u16x2/)
    @cuda.jit(device=True, inline=True)
    def half32(cur, j):
        """The 32-bit half of the input word holding element j (16-bit kinds: elements j & ~1, j | 1)."""
        if KIND == F32:
            return _u32(cur[j >> 1] >> uint64(32 * (j & 1)))
        return _u32(cur[j >> 2] >> uint64(32 * ((j >> 1) & 1)))

    @cuda.jit(device=True, inline=True)
    def elem(cur, j):
        w = half32(cur, j)
        if KIND == F32:
            return _int_as_float(int32(w))
        if KIND == BF16:
            return _int_as_float(int32(w << uint32(16) if (j & 1) == 0 else w & uint32(0xFFFF0000)))
        return float32(_half2float(int32(w & uint32(0xFFFF) if (j & 1) == 0 else w >> uint32(16))))

    @cuda.jit(device=True, inline=True)
    def mag2(cur, h, p):
        """Word p of half h (elements 16 h + 2 p, + 1) without its two sign bits (16-bit kinds)."""
        return half32(cur, 16 * h + 2 * p) & uint32(0x7FFF7FFF)

    @forceinlined
    def absmax16(cur, h):
        """The largest magnitude of elements 16 h .. 16 h + 15 as its float32 bits (NaN > Inf > finite)."""
        if KIND == F32:
            m = uint32(0)
            for j in range(16):
                m = max(m, half32(cur, 16 * h + j) & uint32(0x7FFFFFFF))
            return m
        # the 8 words' halfword magnitudes, their halfwise max as a tree (cuda_src/kbit.cu: kk_absmax16)
        t = _vmax_u16x2(_vmax_u16x2(_vmax_u16x2(mag2(cur, h, 0), mag2(cur, h, 1)),
                                    _vmax_u16x2(mag2(cur, h, 2), mag2(cur, h, 3))),
                        _vmax_u16x2(_vmax_u16x2(mag2(cur, h, 4), mag2(cur, h, 5)),
                                    _vmax_u16x2(mag2(cur, h, 6), mag2(cur, h, 7))))
        m16 = max(t & uint32(0xFFFF), t >> uint32(16))
        if KIND == BF16:
            return m16 << uint32(16)
        return _u32(_float_as_int(float32(_half2float(int32(m16)))))

    @forceinlined
    def add(pk, j, code):
        """Element j's code into the packing words (j constant: every index and shift folds)."""
        if layout == 0:
            pk[j % P] += code << uint32(P * (j // P))
        else:
            p = j * k
            wi = p >> 5
            sh = p & 31
            pk[wi] += _u32(code << uint32(sh))
            if sh + k > 32:
                pk[wi + 1] += code >> uint32(32 - sh)

    @forceinlined
    def swap(pk, r, d, m):
        """Delta swap of words r and r + d: bit p + d of word r <-> bit p of word r + d, for the p in mask m."""
        t = ((pk[r] >> uint32(d)) ^ pk[r + d]) & uint32(m)
        pk[r + d] ^= t
        pk[r] ^= _u32(t << uint32(d))

    @forceinlined
    def seal(pk):
        """After the last add: the bit-plane words from the P-bit fields (bit b of code j -> bit j of word b)."""
        if layout == 0:
            swap(pk, 0, 1, 0x55555555)
            if P >= 4:
                swap(pk, 2, 1, 0x55555555)
                swap(pk, 0, 2, 0x33333333)
                swap(pk, 1, 2, 0x33333333)
            if P == 8:
                swap(pk, 4, 1, 0x55555555)
                swap(pk, 6, 1, 0x55555555)
                swap(pk, 4, 2, 0x33333333)
                swap(pk, 5, 2, 0x33333333)
                swap(pk, 0, 4, 0x0F0F0F0F)
                swap(pk, 1, 4, 0x0F0F0F0F)
                swap(pk, 2, 4, 0x0F0F0F0F)
                swap(pk, 3, 4, 0x0F0F0F0F)

    @forceinlined
    def code_lane(x, q, r, t, at, short):
        """The code of x from this lane's table copy; ``at`` = (sh - 1, mask, 2 kbase, 8 rep, 8 (this copy's index
        minus 2 kbase rep)): the entry's byte offset 8 ((2 cell + sign) rep + copy), cell = max(|s| bits >> sh,
        kbase) - kbase, in five integer instructions. Every step cast back to uint32: Numba widens 32-bit
        arithmetic to 64 bits. ``short`` (a constant at each call): the quotient by one correction."""
        s = _quotient1(x, q, r) if short else _quotient(x, q, r)
        bits = _u32(_float_as_int(s))
        c2 = max(uint32(uint32(bits >> at[0]) & at[1]), at[2])       # 2 max(|s| bits >> sh, kbase)
        e = _ld8_mad(t, uint32(c2 + uint32(bits >> uint32(31))), at[3], at[4])
        bound = _int_as_float(int32(_u32(e)))
        return uint32(e >> uint64(32)) + (_u32(_float_as_int(_sub(bound, s))) >> uint32(31))

    @forceinlined
    def lane8(o, cur, q, r, t, at, pk, short):
        """Octet o's 8 codes from the table (o and short constant: 8 straight-line lookups)."""
        j = 8 * o
        add(pk, j, code_lane(elem(cur, j), q, r, t, at, short))
        add(pk, j + 1, code_lane(elem(cur, j + 1), q, r, t, at, short))
        add(pk, j + 2, code_lane(elem(cur, j + 2), q, r, t, at, short))
        add(pk, j + 3, code_lane(elem(cur, j + 3), q, r, t, at, short))
        add(pk, j + 4, code_lane(elem(cur, j + 4), q, r, t, at, short))
        add(pk, j + 5, code_lane(elem(cur, j + 5), q, r, t, at, short))
        add(pk, j + 6, code_lane(elem(cur, j + 6), q, r, t, at, short))
        add(pk, j + 7, code_lane(elem(cur, j + 7), q, r, t, at, short))

    @forceinlined
    def lanes32(cur, q0, r0, q1, r1, t, at, pk, short):
        """The group's 32 codes from the table, octets 0-1 against block 0's divisor, 2-3 against block 1's
        (``short`` a constant at each call: the two call sites are two straight-line bodies)."""
        lane8(0, cur, q0, r0, t, at, pk, short)
        lane8(1, cur, q0, r0, t, at, pk, short)
        lane8(2, cur, q1, r1, t, at, pk, short)
        lane8(3, cur, q1, r1, t, at, pk, short)

    @forceinlined
    def spill8(o, cur, xs):
        """Octet o's elements into the exact path's array (o constant)."""
        for e in range(8):
            xs[8 * o + e] = elem(cur, 8 * o + e)

    @forceinlined
    def gather8(o, cs, pk):
        for e in range(8):
            add(pk, 8 * o + e, cs[8 * o + e])

    @forceinlined
    def load(xh, g, nx):
        for i in range(WPG // 2):
            a, b = _ld16(xh, uint64(g) * uint64(WPG) + uint64(2 * i))
            nx[2 * i] = a
            nx[2 * i + 1] = b

    @forceinlined
    def load_tail(xt, rem, cur):
        """The partial last group (rem < 32 elements) as whole groups arrive, zeros past rem."""
        for w in range(WPG):
            v = uint64(0)
            for e in range(EPW):
                j = w * EPW + e
                if j < rem:
                    if KIND == F32:
                        v |= uint64(_u32(_float_as_int(xt[j]))) << uint64(32 * e)
                    else:
                        v |= uint64(int32(xt[j]) & 0xFFFF) << uint64(16 * e)
            cur[w] = v

    @cuda.jit(fastmath=False)
    def lane(xh, xt, n, tab, ntab, rep, sh, kbase, top, ok, cb_g, gmax, sc, ts_out, out, nw, flag):
        t = cuda.shared.array(LANE_ENTRIES, uint64)
        cb = cuda.shared.array(M, float32)
        s_e = cuda.shared.array(1, int32)
        cur = cuda.local.array(WPG, uint64)
        nx = cuda.local.array(WPG, uint64)
        pk = cuda.local.array(NW, uint32)
        xs = cuda.local.array(32, float32)   # the exact path's elements and codes (dynamic indices: its own
        cs = cuda.local.array(32, uint32)    # arrays, so the hot path's stay in registers)
        tid = cuda.threadIdx.x
        for j in range(tid, ntab, THREADS):
            t[j] = uint64(tab[j])
        emax, ts = format_constants(cb, cb_g, M, M, FMT, gmax, ts_out, s_e, tid)   # its barrier covers the table too
        # code_lane's constants (a tuple: registers); this lane reads copy tid % rep, entry i at i * rep + tid % rep
        at = (uint32((sh - 1) & 31), uint32((0x7FFFFFFF >> ((sh - 1) & 31)) & ~1), uint32(2 * kbase), uint32(8 * rep),
              uint32((8 * ((tid & (rep - 1)) - 2 * kbase * rep)) & 0xFFFFFFFF))
        groups = (n + 31) >> 5
        whole = n >> 5
        stored = nw // k                 # groups whose K words all fit
        step = cuda.gridDim.x * THREADS
        g = cuda.blockIdx.x * THREADS + tid
        have = g < whole
        if have:
            load(xh, g, nx)
        bad = False
        while g < groups:
            base = g * 32
            if have:
                for w in range(WPG):
                    cur[w] = nx[w]
            else:
                load_tail(xt, n - base, cur)
            nxt = g + step
            have = nxt < whole
            if have:                     # the next group's loads in flight during this group's codes
                load(xh, nxt, nx)
            am0 = absmax16(cur, 0)
            am1 = absmax16(cur, 1)
            bad = bad or max(am0, am1) >= uint32(INF_BITS)
            if bs == 32:
                am0 = max(am0, am1)
                am1 = am0
            a0 = _int_as_float(int32(am0))
            bits0, q0 = divisor_of(a0, FMT, emax, ts, CD)
            r0 = float32(1.0) / q0
            in0 = q0 >= Q_LO and q0 <= Q_HI
            full = ok != 0 and g < whole and in0 and _u32(_float_as_int(_mul(a0, r0))) + uint32(4) < top
            if bs == 32:
                q1 = q0
                r1 = r0
                _store_scale(sc, uint64(g), bits0, a0, FMT)
            else:
                a1 = _int_as_float(int32(am1))
                bits1, q1 = divisor_of(a1, FMT, emax, ts, CD)
                r1 = float32(1.0) / q1
                full = full and q1 >= Q_LO and q1 <= Q_HI and _u32(_float_as_int(_mul(a1, r1))) + uint32(4) < top
                _store_scale(sc, uint64(2 * g), bits0, a0, FMT)
                if base + 16 < n:
                    _store_scale(sc, uint64(2 * g + 1), bits1, a1, FMT)
            for i in range(NW):
                pk[i] = uint32(0)
            if full and KIND != F32 and _short_q(q0) and _short_q(q1):   # 16-bit x and q: one correction
                lanes32(cur, q0, r0, q1, r1, t, at, pk, True)
            elif full:
                lanes32(cur, q0, r0, q1, r1, t, at, pk, False)
            else:
                spill8(0, cur, xs)
                spill8(1, cur, xs)
                spill8(2, cur, xs)
                spill8(3, cur, xs)
                rem = n - base
                for j in range(32):
                    cs[j] = uint32(nearest(_div(xs[j], q0 if j < 16 else q1), cb)) if j < rem else uint32(0)
                gather8(0, cs, pk)
                gather8(1, cs, pk)
                gather8(2, cs, pk)
                gather8(3, cs, pk)
            seal(pk)
            o = uint64(g * k)
            if g < stored:               # every group but a short last one: K stores, no compares
                for b in range(k):
                    out[o + uint64(b)] = pk[b]
            else:
                for b in range(k):
                    if o + uint64(b) < uint64(nw):
                        out[o + uint64(b)] = pk[b]
            g = nxt
        if bad:
            flag[0] = 1

    return lane


_KERNELS: dict = {}


def kernel(k: int, layout: int, kind: int, blocksize: int, fmt: int, codes_decoded: int):
    """The compiled lane quantizer for (K, layout id, input kind, blocksize 16 or 32, scale format id, codes against
    the decoded scale): the format is a constant of the kernel, as cuda_src/kbit.cu's DEF instance makes it for the
    defaults, so the per-group switches on it fold away."""
    key = (k, layout, kind, blocksize, fmt, int(codes_decoded))
    if key not in _KERNELS:
        _KERNELS[key] = _make_lane(*key)
    return _KERNELS[key]


def lane_path(blocksize: int) -> bool:
    return blocksize in (16, 32)


__all__ = ["LANE_ENTRIES", "kernel", "lane_path"]
