"""Numba CUDA kernels: blockwise 8-bit and 4-bit quantization, bit-exact to docs/ARCHITECTURE.md.

Pure kernels on device arrays (no torch here); :mod:`workbench.backends.numba_cuda.quant` adapts
torch tensors. They also run under the CUDA simulator (``NUMBA_ENABLE_CUDASIM=1``) on small
inputs, which is how CI tests them, so they use only what the simulator implements (shared
memory and ``syncthreads``, no warp shuffles).

Work layout: a quantization block of ``bs`` elements is handled by ``G = bs // 16`` threads of one
CTA; thread ``g`` of a group owns the 8 element pairs ``g, g + G, ..., g + 7G`` of its block, so a
warp's loads touch contiguous pairs. absmax is a shared-memory tree reduction over the group.
Codes come from a branch-free search of the bounds in Eytzinger order (``i = 2i + (s > node[i])``
for ``levels`` steps; the leaf index minus ``2**levels`` is the bucket). ``tree_f``/``tree_c`` are
built by :func:`eytzinger` from the codebook.

Input element kinds: 0 float32, 1 float16, 2 bfloat16 given as its int16 bit pattern.
Dequantized bfloat16 is written as uint16 bit patterns (round to nearest even).
"""
from __future__ import annotations

import numpy as np

import workbench._compat  # noqa: F401  (numpy.row_stack shim, before any kernel compiles)
from numba import config, cuda, float32, int32, uint8
from numba.cuda import libdevice
from ..cell_plan import cell_plan  # noqa: F401  (the plan is shared with the optimizer kernels)

THREADS = 256
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


@cuda.jit(device=True, inline=True)
def _load(A, i, kind):
    if kind == BF16:
        return _int_as_float((int32(A[i]) & 0xFFFF) << 16)
    return float32(A[i])


@cuda.jit(device=True, inline=True)
def _bf16_bits(v):
    b = _float_as_int(v)
    return ((b + 0x7FFF + ((b >> 16) & 1)) >> 16) & 0xFFFF


def _make_quantize(bits: int, kind: int):
    levels = 4 if bits == 4 else 8
    M = 1 << levels

    @cuda.jit(fastmath=False)
    def quantize(A, n, G, nblocks, tree_f, tree_c, out, absmax):
        s_f = cuda.shared.array(M, float32)
        s_c = cuda.shared.array(M, int32)
        s_m = cuda.shared.array(THREADS, float32)
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
        m = float32(0.0)
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
            m = max(m, abs(v0), abs(v1))
        # absmax: tree reduction over the G threads of the block (G divides THREADS)
        s_m[tid] = m
        cuda.syncthreads()
        stride = G // 2
        while stride > 0:
            if (tid % G) < stride:
                s_m[tid] = max(s_m[tid], s_m[tid + stride])
            cuda.syncthreads()
            stride //= 2
        m = s_m[tid - g]
        if blk >= nblocks:
            return
        tail = blk == nblocks - 1 and n % bs != 0
        d = max(m, TINY)
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


# ------------------------------------------------------------------ fast path (even n, aligned)
# Words instead of elements: bf16/fp16 inputs are read as uint32 pairs, 8-bit codes written as
# uint16 pairs, packed bytes / codes read as uint32 words, 16-bit outputs written as uint32 pairs.
# The search is the cell plan of :func:`cell_plan`: pos = cell[key(s)], then an S-step branch-free
# binary search over the sorted, +inf-padded bounds from pos; code = codes[pos].



@cuda.jit(device=True, inline=True)
def _cell_search(s, m, S, s_cell, s_b, s_code):
    pos = s_cell[(_float_as_int(s) & 0xFFFFFFFF) >> (23 - m)]   # logical shift of the bit pattern
    step = 1 << (S - 1)
    while step > 0:
        if s > s_b[pos + step - 1]:
            pos += step
        step >>= 1
    return s_code[pos]


@cuda.jit(device=True, inline=True)
def _pair(A, w, kind):
    """Elements 2w and 2w+1: A is uint32 words (bf16/fp16 pairs) or float32 elements."""
    if kind == F32:
        return float32(A[2 * w]), float32(A[2 * w + 1])
    v = int32(A[w])
    if kind == BF16:
        return _int_as_float((v & 0xFFFF) << 16), _int_as_float(v & -65536)
    return float32(_half2float(v & 0xFFFF)), float32(_half2float((v >> 16) & 0xFFFF))


def _make_quantize_fast(bits: int, kind: int, S: int):
    """Persistent CTAs (tables filled once per CTA); S (search steps) is a compile-time constant."""
    @cuda.jit(fastmath=False)
    def quantize(A, n, G, nblocks, ntiles, m, cell, bnd, codes, out, absmax):
        s_cell = cuda.shared.array(384 << 4, int32)
        s_b = cuda.shared.array(256 + 8, float32)
        s_code = cuda.shared.array(257, int32)
        s_m = cuda.shared.array(THREADS, float32)
        tid = cuda.threadIdx.x
        for i in range(tid, cell.shape[0], THREADS):
            s_cell[i] = cell[i]
        for i in range(tid, 256 + 8, THREADS):
            s_b[i] = bnd[i]
        for i in range(tid, 257, THREADS):
            s_code[i] = codes[i]
        cuda.syncthreads()
        npairs = n // 2                     # n is even here
        bs = G * CHUNK
        x = cuda.local.array(CHUNK, float32)
        for tile in range(cuda.blockIdx.x, ntiles, cuda.gridDim.x):
            t = tile * THREADS + tid
            blk = t // G
            g = t - blk * G
            wbase = blk * (G * PAIRS)       # first pair (word) of the block
            mx = float32(0.0)
            for k in range(PAIRS):
                w = wbase + g + k * G
                v0 = float32(0.0)
                v1 = float32(0.0)
                if w < npairs:
                    v0, v1 = _pair(A, w, kind)
                x[2 * k] = v0
                x[2 * k + 1] = v1
                mx = max(mx, abs(v0), abs(v1))
            s_m[tid] = mx
            cuda.syncthreads()
            stride = G // 2
            while stride > 0:
                if (tid % G) < stride:
                    s_m[tid] = max(s_m[tid], s_m[tid + stride])
                cuda.syncthreads()
                stride //= 2
            mx = s_m[tid - g]
            cuda.syncthreads()              # s_m is rewritten by the next tile
            if blk < nblocks:
                tail = blk == nblocks - 1 and n % bs != 0
                d = max(mx, TINY)
                if g == 0:
                    absmax[blk] = d if tail else mx
                inv = float32(1.0) / d
                for k in range(PAIRS):
                    w = wbase + g + k * G
                    if w < npairs:
                        if tail:
                            s0 = x[2 * k] / d
                            s1 = x[2 * k + 1] / d
                        else:
                            s0 = x[2 * k] * inv
                            s1 = x[2 * k + 1] * inv
                        c0 = _cell_search(s0, m, S, s_cell, s_b, s_code)
                        c1 = _cell_search(s1, m, S, s_cell, s_b, s_code)
                        if bits == 4:
                            out[w] = (c0 << 4) | c1
                        else:
                            out[w] = c0 | (c1 << 8)        # out: uint16 pairs (little endian)

    return quantize


def _make_dequantize_fast(bits: int, kind: int):
    TS = 1 << bits
    EPW = 8 if bits == 4 else 4             # elements per input word

    @cuda.jit(fastmath=False)
    def dequantize(words, absmax, table, nwords, bs_shift, out):
        s_t = cuda.shared.array(TS, float32)
        tid = cuda.threadIdx.x
        for i in range(tid, TS, THREADS):
            s_t[i] = table[i] if i < table.shape[0] else float32(0.0)
        cuda.syncthreads()
        nthreads = cuda.gridDim.x * THREADS
        w = cuda.blockIdx.x * THREADS + tid
        while w < nwords:
            a = absmax[(w * EPW) >> bs_shift]
            v = int32(words[w])
            for j in range(EPW // 2):
                if bits == 4:
                    byte = (v >> (8 * j)) & 0xFF
                    q0 = byte >> 4
                    q1 = byte & 15
                else:
                    q0 = (v >> (16 * j)) & 0xFF
                    q1 = (v >> (16 * j + 8)) & 0xFF
                y0 = s_t[q0] * a
                y1 = s_t[q1] * a
                o = w * (EPW // 2) + j           # output pair index
                if kind == F32:
                    out[2 * o] = y0
                    out[2 * o + 1] = y1
                elif kind == BF16:
                    out[o] = _bf16_bits(y0) | (_bf16_bits(y1) << 16)
                else:
                    out[o] = (_float2half_rn(y0) & 0xFFFF) | ((_float2half_rn(y1) & 0xFFFF) << 16)
            w += nthreads

    return dequantize


_KERNELS: dict = {}


def kernel(op: str, bits: int, kind: int, S: int = 0):
    """The compiled kernel for (op in 'quantize'/'dequantize'/'quantize_fast'/'dequantize_fast', bits, kind)."""
    key = (op, bits, kind, S)
    if key not in _KERNELS:
        if op == "quantize_fast":
            _KERNELS[key] = _make_quantize_fast(bits, kind, S)
        else:
            make = {"quantize": _make_quantize, "dequantize": _make_dequantize,
                    "dequantize_fast": _make_dequantize_fast}[op]
            _KERNELS[key] = make(bits, kind)
    return _KERNELS[key]


def quantize_grid(n: int, blocksize: int) -> tuple[int, int, int]:
    """(grid, G, nblocks) for a quantize launch."""
    G = blocksize // CHUNK
    nblocks = -(-n // blocksize)
    grid = -(-(nblocks * G) // THREADS)
    return grid, G, nblocks


def dequantize_grid(n: int) -> int:
    npairs = (n + 1) // 2
    return max(1, -(-npairs // (THREADS * PAIRS)))
