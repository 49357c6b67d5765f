"""Numba CUDA kernels: blockwise 8-bit and 4-bit quantization, bit-exact to docs/ARCHITECTURE.md.

Pure kernels on device arrays (no torch here); :mod:`workbench.backends.numba_cuda.quant` adapts
torch tensors. They also run under the CUDA simulator (``NUMBA_ENABLE_CUDASIM=1``) on small
inputs, which is how CI tests them; warp shuffles exist only on the GPU, so the absmax reduction
has a shared-memory twin for the simulator (``_group_max``).

Two quantizers: ``quantize_fine`` (the production kernel's layout and one-load fine table, see
its section below; every codebook ``numba_kernels.cell_plan.fine_plan`` can table) and ``quantize`` (the fallback
for codebooks too dense for a table): a quantization block of ``bs`` elements is handled by
``G = bs // 16`` threads; thread ``g`` owns the 8 element pairs ``g, g + G, ..., g + 7G`` of its
block, absmax is a shared-memory tree reduction over the group, and codes come from a
branch-free search of the bounds in Eytzinger order (``i = 2i + (s > node[i])`` for ``levels``
steps; the leaf index minus ``2**levels`` is the bucket; ``tree_f``/``tree_c`` from
:func:`eytzinger`).

Input element kinds: 0 float32, 1 float16, 2 bfloat16 given as its int16 bit pattern.
Dequantized bfloat16 is written as uint16 bit patterns (round to nearest even).

Non-finite input follows the spec (the torch reference): absmax is the integer maximum of the magnitudes'
float32 bits (sign cleared: NaN > +Inf > every finite value), so a block holding a NaN has absmax NaN, else
one holding an Inf +Inf; the tail block's stored ``max(absmax, 1e-38)`` keeps NaN; NaN scaled values get the
top bucket's code (``torch.bucketize`` puts NaN after every bound); an odd 4-bit tail pads ``s = 0``.

Hot array accesses index with ``uint32``/``uint64`` values: for a signed index Numba emits the
negative-index wraparound (compare, select, add) on every access, and these are never negative
(H100: the quantizer kernels 8-10 % faster than with signed indices; reports/gpu-h100/README.md). Cast at the access only:
mixing signed and unsigned integers in arithmetic makes Numba compute in float64.
"""
from __future__ import annotations

import numpy as np

import workbench._compat  # noqa: F401  (numpy.row_stack shim, before any kernel compiles)
from numba import config, cuda, float32, int32, uint8, uint32, uint64
from numba.cuda import libdevice
from ..cell_plan import FINE_MAX

THREADS = 256
NWARPS = THREADS // 32
PAIRS = 8                    # element pairs per thread
CHUNK = 2 * PAIRS            # elements per thread
TINY = np.float32(1e-38)
F32, F16, BF16 = 0, 1, 2


def eytzinger(bounds: np.ndarray, bucket_codes: np.ndarray, levels: int) -> tuple[np.ndarray, np.ndarray]:
    """(tree_f float32[2**levels], tree_c int32[2**levels]): bounds in Eytzinger order at 1..M-1
    (padded with +inf), bucket codes by leaf (padded with the last code; unreachable)."""
    M = 1 << levels
    b = np.full(M - 1, np.inf, np.float32)
    b[:len(bounds)] = bounds
    tree_f = np.zeros(M, np.float32)
    it = iter(b)

    def fill(i):
        if i < M:
            fill(2 * i)
            tree_f[i] = next(it)
            fill(2 * i + 1)

    fill(1)
    codes = np.asarray(bucket_codes, np.int32)
    tree_c = np.concatenate([codes, np.full(M - len(codes), codes[-1], np.int32)])
    return tree_f, tree_c


if config.ENABLE_CUDASIM:
    # the simulator's libdevice functions are stubs; the bit casts are the only simulator-only code
    def _int_as_float(i):
        return np.array([int(i) & 0xFFFFFFFF], np.uint32).view(np.float32)[0]

    def _float_as_int(v):
        return int(np.array([v], np.float32).view(np.int32)[0])

    def _half2float(h):
        return np.float32(np.array([int(h) & 0xFFFF], np.uint16).view(np.float16)[0])

    def _float2half_rn(v):
        return int(np.array([v], np.float32).astype(np.float16).view(np.uint16)[0])
else:
    _int_as_float = libdevice.int_as_float
    _float_as_int = libdevice.float_as_int
    _half2float = libdevice.half2float
    _float2half_rn = libdevice.float2half_rn

# Single-rounding arithmetic for kernels that must not be FMA-contracted (NVVM contracts a*b + c even without
# fastmath): explicit *_rn libdevice calls on the GPU, NumPy scalar steps (each rounded) in the simulator.
if config.ENABLE_CUDASIM:
    def _mul(a, b):
        with np.errstate(invalid="ignore", over="ignore"):
            return np.float32(np.float32(a) * np.float32(b))

    def _sub(a, b):
        return np.float32(np.float32(a) - np.float32(b))

    def _add(a, b):
        return np.float32(np.float32(a) + np.float32(b))

    def _div(a, b):
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            return np.float32(np.float32(a) / np.float32(b))

    def _rint(a):
        return np.float32(np.rint(np.float32(a)))

    def _i2f(i):
        return np.float32(i)

    def _dmul(a, b):
        return np.float64(np.float64(a) * np.float64(b))

    def _dadd(a, b):
        return np.float64(np.float64(a) + np.float64(b))
else:
    _mul = libdevice.fmul_rn
    _sub = libdevice.fsub_rn
    _add = libdevice.fadd_rn
    _div = libdevice.fdiv_rn
    _rint = libdevice.rintf
    _i2f = libdevice.int2float_rn
    _dmul = libdevice.dmul_rn
    _dadd = libdevice.dadd_rn


@cuda.jit(device=True, inline=True)
def _load(A, i, kind):
    if kind == BF16:
        return _int_as_float((int32(A[i]) & 0xFFFF) << 16)
    return float32(A[i])


@cuda.jit(device=True, inline=True)
def _mag_bits(v):
    """|v|'s float32 bits as an int32 (NaN > +Inf > finite, as integers)."""
    return int32(_float_as_int(v) & 0x7FFFFFFF)


@cuda.jit(device=True, inline=True)
def _clamp_tiny(m):
    """max(m, 1e-38) keeping NaN (torch's clamp)."""
    return TINY if m < TINY else m


@cuda.jit(device=True, inline=True)
def _bf16_bits(v):
    b = _float_as_int(v)
    if (b & 0x7FFFFFFF) > 0x7F800000:       # NaN stays a (quiet) NaN: the GPU's 0x7fffffff would round to -0
        return ((b >> 16) | 0x40) & 0xFFFF
    return ((b + 0x7FFF + ((b >> 16) & 1)) >> 16) & 0xFFFF


# Two floats that are no NaN to one word of 16-bit floats (the first in the low half), rounded half to even: one
# cvt.rn.{bf16,f16}x2.f32 on the GPU (it differs from _bf16_bits / _float2half_rn only in the NaN it writes).
if config.ENABLE_CUDASIM:
    def _pack_bf16x2(a, b):
        return _bf16_bits(a) | _bf16_bits(b) << 16

    def _pack_f16x2(a, b):
        return _float2half_rn(a) | _float2half_rn(b) << 16
else:
    from llvmlite import ir as _ir
    from numba.core import types as _types
    from numba.core.extending import intrinsic as _intrinsic

    def _cvt_x2(fmt: str):
        @_intrinsic
        def pack(typingctx, a, b):
            sig = _types.uint32(_types.float32, _types.float32)

            def codegen(context, builder, sig, args):
                f = _ir.FunctionType(_ir.IntType(32), [_ir.FloatType(), _ir.FloatType()])
                # cvt.rn.<fmt>x2.f32 d, hi, lo: its first source goes to the upper half
                asm = _ir.InlineAsm(f, f"cvt.rn.{fmt}x2.f32 $0, $1, $2;", "=r,f,f")
                return builder.call(asm, [args[1], args[0]])

            return sig, codegen
        return pack

    _pack_bf16x2 = _cvt_x2("bf16")
    _pack_f16x2 = _cvt_x2("f16")


def _make_quantize(bits: int, kind: int):
    levels = 4 if bits == 4 else 8
    M = 1 << levels

    @cuda.jit(fastmath=False)
    def quantize(A, n, G, nblocks, tree_f, tree_c, out, absmax):
        s_f = cuda.shared.array(M, float32)
        s_c = cuda.shared.array(M, int32)
        s_m = cuda.shared.array(THREADS, int32)
        tid = cuda.threadIdx.x
        for i in range(tid, M, THREADS):
            s_f[i] = tree_f[i]
            s_c[i] = tree_c[i]
        t = cuda.blockIdx.x * THREADS + tid
        blk = t // G
        g = t - blk * G
        bs = G * CHUNK
        pbase = blk * (bs // 2)
        x = cuda.local.array(CHUNK, float32)
        mb = int32(0)                       # max |x| as float bits
        for k in range(PAIRS):
            e = 2 * (pbase + g + k * G)
            v0 = float32(0.0)
            v1 = float32(0.0)
            if e < n:
                v0 = _load(A, e, kind)
            if e + 1 < n:
                v1 = _load(A, e + 1, kind)
            x[2 * k] = v0
            x[2 * k + 1] = v1
            mb = max(mb, _mag_bits(v0), _mag_bits(v1))
        # absmax: tree reduction over the G threads of the block (G divides THREADS)
        s_m[tid] = mb
        cuda.syncthreads()
        stride = G // 2
        while stride > 0:
            if (tid % G) < stride:
                s_m[tid] = max(s_m[tid], s_m[tid + stride])
            cuda.syncthreads()
            stride //= 2
        mb = s_m[tid - g]
        if blk >= nblocks:
            return
        m = _int_as_float(mb)
        tail = blk == nblocks - 1 and n % bs != 0
        d = _clamp_tiny(m)
        if g == 0:
            absmax[blk] = d if tail else m
        inv = float32(1.0) / d
        nbytes = (n + 1) // 2
        for k in range(PAIRS):
            p = pbase + g + k * G
            c0 = 0
            c1 = 0
            for h in range(2):
                if tail:
                    s = x[2 * k + h] / d
                else:
                    s = x[2 * k + h] * inv
                if 2 * p + h >= n:              # the 4-bit pad of an odd n: s = 0 (also in a NaN block)
                    s = float32(0.0)
                if s != s:                      # NaN: the top bucket (torch.bucketize)
                    i = 2 * M - 1
                else:
                    s = min(max(s, float32(-1.0)), float32(1.0))
                    i = 1
                    for _ in range(levels):
                        i = 2 * i + (1 if s > s_f[i] else 0)
                if h == 0:
                    c0 = s_c[i - M]
                else:
                    c1 = s_c[i - M]
            if bits == 4:
                if p < nbytes:
                    out[p] = (c0 << 4) | c1
            else:
                if 2 * p < n:
                    out[2 * p] = c0
                if 2 * p + 1 < n:
                    out[2 * p + 1] = c1

    return quantize


def _make_dequantize(bits: int, kind: int):
    TS = 1 << bits

    @cuda.jit(fastmath=False)
    def dequantize(codes, absmax, table, n, bs_shift, out):
        s_t = cuda.shared.array(TS, float32)
        tid = cuda.threadIdx.x
        for i in range(tid, TS, THREADS):
            s_t[i] = table[i] if i < table.shape[0] else float32(0.0)
        cuda.syncthreads()
        nthreads = cuda.gridDim.x * THREADS
        t = cuda.blockIdx.x * THREADS + tid
        npairs = (n + 1) // 2
        for k in range(PAIRS):
            p = t + k * nthreads
            if p >= npairs:
                return
            e = 2 * p
            a = absmax[e >> bs_shift]       # 2p and 2p+1 share a block (bs is even)
            if bits == 4:
                byte = int32(codes[p])
                q0 = byte >> 4
                q1 = byte & 15
            else:
                q0 = int32(codes[e])
                q1 = int32(codes[e + 1]) if e + 1 < n else 0
            v0 = s_t[q0] * a
            v1 = s_t[q1] * a
            if kind == BF16:
                out[e] = _bf16_bits(v0)
                if e + 1 < n:
                    out[e + 1] = _bf16_bits(v1)
            else:
                out[e] = v0
                if e + 1 < n:
                    out[e + 1] = v1

    return dequantize


# ------------------------------------------------------------------ fast path: fine tables
# The production kernel's layout and search (cuda_src/quant.cu, k_quantize with a fine plan): thread t
# owns the contiguous chunk of CHUNK elements [CHUNK t, CHUNK t + CHUNK), read as 8-byte words and
# written as 8-byte words of codes; G = bs / CHUNK consecutive threads share a block and reduce its
# absmax with warp shuffles (a shared-memory tree under the simulator, which has no shuffles). The
# code is one 8-byte shared load + one compare: entry = bound bits | (code below | code above << 8) << 32
# from numba_kernels.cell_plan.fine_plan. Persistent CTAs fill the table once.

if config.ENABLE_CUDASIM:
    @cuda.jit(device=True)
    def _group_max(v, G, tid, s_m, s_w, it):
        """max of the int32 v over the G consecutive threads of tid's group (G a power of two <= THREADS)."""
        s_m[tid] = v
        cuda.syncthreads()
        g = tid & (G - 1)
        stride = G // 2
        while stride > 0:
            if g < stride and s_m[tid + stride] > s_m[tid]:
                s_m[tid] = s_m[tid + stride]
            cuda.syncthreads()
            stride //= 2
        r = s_m[tid - g]
        cuda.syncthreads()
        return r
else:
    @cuda.jit(device=True, inline=True)
    def _group_max(v, G, tid, s_m, s_w, it):
        off = 1
        while off < G and off < 32:
            o = cuda.shfl_xor_sync(0xFFFFFFFF, v, off)
            if o > v:
                v = o
            off *= 2
        if G > 32:                          # across warps: s_w is double-buffered by tile parity
            warp = tid >> 5
            if (tid & 31) == 0:
                s_w[it, warp] = v
            cuda.syncthreads()
            first = warp & ~(G // 32 - 1)
            v = s_w[it, first]
            for k in range(1, G // 32):
                o = s_w[it, first + k]
                if o > v:
                    v = o
        return v


@cuda.jit(device=True, inline=True)
def _mag16(w, j):
    """The 16-bit magnitude (sign cleared) of 16-bit element j of an 8-byte word."""
    return int32((w >> uint64(16 * j)) & uint64(0x7FFF))


@cuda.jit(device=True, inline=True)
def _elem(w, j, kind):
    """Element j of an 8-byte input word (4 bf16/fp16 or 2 float32)."""
    if kind == F32:
        return _int_as_float(int32((w >> uint64(32 * j)) & uint64(0xFFFFFFFF)))
    h = int32((w >> uint64(16 * j)) & uint64(0xFFFF))
    if kind == BF16:
        return _int_as_float(h << 16)
    return float32(_half2float(h))


@cuda.jit(device=True, inline=True)
def _elem_at(A, i, kind):
    """Element i of the input given as float32 or as 16-bit patterns (the kernels' element view)."""
    if kind == F32:
        return float32(A[i])
    h = int32(A[i]) & 0xFFFF
    if kind == BF16:
        return _int_as_float(h << 16)
    return float32(_half2float(h))


@cuda.jit(device=True, inline=True)
def _store_word(out_w, out_b, wi, acc):
    """Output word wi: a full 8-byte word, or the bytes of the last, partial one."""
    if wi < out_w.shape[0]:
        out_w[uint64(wi)] = acc
    elif wi == out_w.shape[0]:
        for b in range(out_b.shape[0]):
            out_b[b] = (acc >> uint64(8 * b)) & uint64(0xFF)


@cuda.jit(device=True, inline=True)
def _fine_code(s, fine, sh, last, clamped, low_p, low_n, off_p, off_n):
    b = _float_as_int(s) & 0xFFFFFFFF
    if clamped:                             # key of max(|s|, lowest of s's sign); NaN -> lowest
        neg = b >> 31
        a = abs(s)
        low = _int_as_float(low_n if neg else low_p)
        if not (a >= low):
            a = low
        idx = ((_float_as_int(a) & 0xFFFFFFFF) >> sh) + (off_n if neg else off_p)
    else:
        idx = min(b >> sh, last)
    e = fine[uint32(idx)]
    c = e >> uint64(32)
    if s > _int_as_float(int32(e & uint64(0xFFFFFFFF))):
        c >>= uint64(8)
    return c & uint64(0xFF)


def _make_quantize_fine(bits: int, kind: int, clamped: bool):
    EPW = 2 if kind == F32 else 4           # elements per 8-byte input word
    NWI = CHUNK // EPW                      # input words per chunk
    NWO = CHUNK * bits // 64                # output words per chunk

    @cuda.jit(fastmath=False)
    def quantize(Aw, A, n, vec, G, gshift, nblocks, tail_blk, ntiles, fine_g, nfine, sh, low_p, low_n,
                 off_p, off_n, out_w, out_b, absmax):
        fine = cuda.shared.array(FINE_MAX, uint64)
        s_m = cuda.shared.array(THREADS, int32)
        s_w = cuda.shared.array((2, NWARPS), int32)
        tid = cuda.threadIdx.x
        for i in range(tid, nfine, THREADS):
            fine[i] = fine_g[i]
        cuda.syncthreads()
        last = nfine - 2                    # fine_plan's last entry holds the NaN code (the top bucket's)
        nan_code = (fine[nfine - 1] >> uint64(32)) & uint64(0xFF)
        words = cuda.local.array(NWI, uint64)
        it = 0
        for tile in range(cuda.blockIdx.x, ntiles, cuda.gridDim.x):
            t = tile * THREADS + tid        # chunk
            e0 = t * CHUNK
            blk = t >> gshift
            full = vec and e0 + CHUNK <= n
            mx = int32(0)                   # max |x| as float bits (NaN > +Inf > finite)
            if full:
                for k in range(NWI):
                    words[k] = Aw[uint64(t * NWI + k)]
            else:                           # the tail chunk (or an unaligned input): element loads
                for k in range(NWI):
                    words[k] = 0
                for j in range(CHUNK):
                    if e0 + j < n:
                        if kind == F32:
                            u = _float_as_int(A[uint64(e0 + j)]) & 0xFFFFFFFF
                        else:
                            u = int32(A[uint64(e0 + j)]) & 0xFFFF
                        words[j // EPW] |= uint64(u) << uint64((32 if kind == F32 else 16) * (j % EPW))
            if kind == F32:
                for k in range(NWI):
                    for j in range(EPW):
                        mx = max(mx, int32((words[k] >> uint64(32 * j)) & uint64(0x7FFFFFFF)))
            else:                           # 16-bit magnitudes, one exact conversion
                for k in range(NWI):
                    for j in range(EPW):
                        mx = max(mx, _mag16(words[k], j))
                if kind == BF16:
                    mx = int32(mx << 16)
                else:
                    mx = int32(_float_as_int(float32(_half2float(mx))) & 0x7FFFFFFF)
            mx = _group_max(mx, G, tid, s_m, s_w, it)
            it ^= 1
            if blk < nblocks and e0 < n:
                m = _int_as_float(mx)
                nonfinite = mx >= 0x7F800000    # a NaN or an Inf in the block (rare)
                tail = blk == tail_blk
                d = _clamp_tiny(m)
                if (tid & (G - 1)) == 0:
                    absmax[uint64(blk)] = d if tail else m
                inv = float32(1.0) / d
                if nonfinite:
                    # a NaN or an Inf in the block (rare): element by element, re-reading the elements (the
                    # loop need not unroll, and an indexed `words` would move it to local memory everywhere)
                    for o in range(NWO):
                        acc = uint64(0)
                        for jj in range(CHUNK // NWO):
                            j = o * (CHUNK // NWO) + jj
                            s = float32(0.0)        # the 4-bit pad of an odd n is s = 0 (the reference pads)
                            if e0 + j < n:
                                v = _elem_at(A, uint64(e0 + j), kind)
                                s = v / d if tail else v * inv
                            if s != s:
                                c = nan_code        # NaN: the top bucket (torch.bucketize)
                            else:
                                c = _fine_code(s, fine, sh, last, clamped, low_p, low_n, off_p, off_n)
                            if bits == 4:
                                acc |= uint64(c) << uint64(8 * (jj // 2) + 4 * (1 - jj % 2))
                            else:
                                acc |= uint64(c) << uint64(8 * jj)
                        _store_word(out_w, out_b, t * NWO + o, acc)
                else:
                    for o in range(NWO):
                        acc = uint64(0)
                        for jj in range(CHUNK // NWO):
                            j = o * (CHUNK // NWO) + jj
                            v = _elem(words[j // EPW], j % EPW, kind)
                            s = v / d if tail else v * inv
                            c = _fine_code(s, fine, sh, last, clamped, low_p, low_n, off_p, off_n)
                            if bits == 4:
                                acc |= uint64(c) << uint64(8 * (jj // 2) + 4 * (1 - jj % 2))
                            else:
                                acc |= uint64(c) << uint64(8 * jj)
                        _store_word(out_w, out_b, t * NWO + o, acc)

    return quantize


UNROLL = 4                                  # output words in flight per thread (dequantize)


def _make_dequantize_fast(bits: int, kind: int):
    """One 8-byte output word (4 16-bit or 2 float32 values) per thread step, UNROLL steps THREADS
    words apart: consecutive lanes load consecutive code words (OPW * bits / 8 bytes: uint8..uint32)
    and store consecutive output words (every access coalesced). Blocksizes are multiples of 4."""
    TS = 1 << bits
    OPW = 2 if kind == F32 else 4           # outputs per output word

    @cuda.jit(device=True, inline=True)
    def bits_of(y):
        if kind == F32:
            return uint64(_float_as_int(y) & 0xFFFFFFFF)
        if kind == BF16:
            return uint64(_bf16_bits(y))
        return uint64(_float2half_rn(y) & 0xFFFF)

    @cuda.jit(fastmath=False)
    def dequantize(codes, absmax, table, nout, bs_shift, out):
        s_t = cuda.shared.array(TS, float32)
        tid = cuda.threadIdx.x
        for i in range(tid, TS, THREADS):
            s_t[i] = table[i] if i < table.shape[0] else float32(0.0)
        cuda.syncthreads()
        step = cuda.gridDim.x * THREADS * UNROLL
        w0 = cuda.blockIdx.x * THREADS * UNROLL + tid
        while w0 < nout:
            for u in range(UNROLL):
                w = w0 + u * THREADS
                if w < nout:
                    a = absmax[uint64((w * OPW) >> bs_shift)]
                    v = uint64(codes[uint64(w)]) & uint64((1 << (OPW * bits)) - 1)
                    acc = uint64(0)
                    for k in range(OPW):
                        if bits == 4:           # byte k // 2: element 2b in the high nibble
                            q = (v >> uint64(8 * (k // 2) + 4 * (1 - k % 2))) & uint64(15)
                        else:
                            q = (v >> uint64(8 * k)) & uint64(255)
                        acc |= bits_of(s_t[q] * a) << uint64((64 // OPW) * k)
                    out[uint64(w)] = acc
            w0 += step

    return dequantize


_KERNELS: dict = {}


def kernel(op: str, bits: int, kind: int, S: int = 0):
    """The compiled kernel for (op in 'quantize'/'dequantize'/'quantize_fine'/'dequantize_fast', bits, kind);
    S: clamped fine table (quantize_fine)."""
    key = (op, bits, kind, S)
    if key not in _KERNELS:
        if op == "quantize_fine":
            _KERNELS[key] = _make_quantize_fine(bits, kind, bool(S))
        else:
            make = {"quantize": _make_quantize, "dequantize": _make_dequantize,
                    "dequantize_fast": _make_dequantize_fast}[op]
            _KERNELS[key] = make(bits, kind)
    return _KERNELS[key]


@cuda.jit
def resolve_nested(a8, absmax2, code2, offset, out):
    """The double-quantized absmax decoded, one thread a block (rule: workbench/backends/reference/quant.py):
    out[b] = float32(code2[a8[b]] * absmax2[b >> 8]) + offset[0], two roundings."""
    b = cuda.grid(1)
    if b < out.shape[0]:
        out[b] = _add(_mul(code2[a8[b]], absmax2[b >> 8]), offset[0])


def quantize_grid(n: int, blocksize: int) -> tuple[int, int, int]:
    """(grid, G, nblocks) for a quantize launch."""
    G = blocksize // CHUNK
    nblocks = -(-n // blocksize)
    grid = -(-(nblocks * G) // THREADS)
    return grid, G, nblocks


def dequantize_grid(n: int) -> int:
    npairs = (n + 1) // 2
    return max(1, -(-npairs // (THREADS * PAIRS)))
