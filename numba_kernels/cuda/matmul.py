"""Numba CUDA prototypes of the 4-bit matmul family: a fused dequant-GEMV (M <= GEMV_MAX_M) and a simple tiled
GEMM, any 16-entry codebook, nested absmax decoded in the kernel.

Pure kernels on device arrays (torch adapters: workbench/backends/numba_cuda/matmul.py); they also run under the
CUDA simulator (``NUMBA_ENABLE_CUDASIM=1``) on small inputs, so reductions use shared memory and syncthreads,
no warp shuffles. Rules of workbench/backends/reference/matmul.py:

    s[b]    = float32(code2[a8[b]] * absmax[b >> 8]) + offset[0]   (nested; else absmax[b]; offset a 1-element
                                                                     array: no host read of a device scalar)
    W[n, k] = dtype(table[c(n*K + k)] * s[(n*K + k) // blocksize])  (exact, rule 2)
    out     = float32 sum + float32(bias[n])                        (the adapter rounds it once to A's dtype)

Every float32 step is an explicit ``*_rn`` libdevice call on the GPU (NVVM would contract a*b + c into an FMA),
NumPy float32 arithmetic in the simulator. Accumulation order (float32), held to the reference's error_bound:

* ``gemv``: one block of GEMV_THREADS threads per output row n; thread t takes elements k = t, t + T, t + 2T, ...
  in increasing k, then a shared-memory tree over the threads (t + h for h = T/2, T/4, ..., 1), one per row m.
  ``gemv_words`` (K % 8 == 0, the common case): the same with 8-element words (one coalesced 4-byte load and one
  block scale per word; thread t takes words t, t + T, ...).
* ``gemm_tiled``: a TILE x TILE block of threads per TILE x TILE output tile; K in steps of TILE_K: the A tile and
  the dequantized W tile (float32, rule 2) go to shared memory, each thread adds its products in increasing k.

Element kinds (A, as numba_kernels/cuda/quant.py): 0 float32, 1 float16, 2 bfloat16 as its int16 bit pattern.
Prototypes: no vector loads of activations, the weight table rebuilt per element; the production kernels are
cuda_src/matmul.cu.
"""
from __future__ import annotations

import numpy as np

import workbench._compat  # noqa: F401  (numpy.row_stack shim, before any kernel compiles)
from numba import config, cuda, float32, int32, int64, uint32, uint64
from numba.cuda import libdevice

from .quant import (BF16, F16, F32, _bf16_bits, _float2half_rn, _float_as_int, _half2float,  # noqa: F401
                    _int_as_float, _load)
from .warp import _ld16, _xor

GEMV_THREADS = 128
GEMV_MAX_M = 4
TILE = 16
TILE_K = 32

if config.ENABLE_CUDASIM:
    def _mul(a, b):
        with np.errstate(invalid="ignore", over="ignore"):
            return np.float32(np.float32(a) * np.float32(b))

    def _add(a, b):
        with np.errstate(invalid="ignore", over="ignore"):
            return np.float32(np.float32(a) + np.float32(b))
else:
    _mul = libdevice.fmul_rn
    _add = libdevice.fadd_rn


@cuda.jit(device=True, inline=True)
def _round_to(v, kind):
    """float32(dtype(v)): v rounded to A's precision (round to nearest even; fp32 unchanged)."""
    if kind == F16:
        return float32(_half2float(_float2half_rn(v)))
    if kind == BF16:
        return _int_as_float(_bf16_bits(v) << 16)
    return v


@cuda.jit(device=True, inline=True)
def _weight(packed, i, absmax, a8, code2, offset, nested, table, blocksize, kind):
    """W at flat index i (rules 1 and 2)."""
    byte = int64(packed[i >> 1])
    c = (byte >> 4) if (i & 1) == 0 else (byte & 15)
    return _round_to(_mul(table[c], _scale(absmax, a8, code2, offset, nested, i // blocksize)), kind)


@cuda.jit(fastmath=False)
def gemv(A, kind, M, N, K, packed, absmax, a8, code2, offset, nested, table, blocksize, bias, has_bias, out):
    """out[m * N + n] (float32) for M <= GEMV_MAX_M rows of A; grid = N blocks of GEMV_THREADS."""
    red = cuda.shared.array((GEMV_MAX_M, GEMV_THREADS), float32)
    acc = cuda.local.array(GEMV_MAX_M, float32)
    t = cuda.threadIdx.x
    n = cuda.blockIdx.x
    for m in range(GEMV_MAX_M):
        acc[m] = float32(0.0)
    row = int64(n) * K
    for k in range(t, K, GEMV_THREADS):
        w = _weight(packed, row + k, absmax, a8, code2, offset, nested, table, blocksize, kind)
        for m in range(M):
            acc[m] = _add(acc[m], _mul(w, _load(A, m * K + k, kind)))
    for m in range(GEMV_MAX_M):
        red[m, t] = acc[m]
    cuda.syncthreads()
    h = GEMV_THREADS // 2
    while h > 0:
        if t < h:
            for m in range(M):
                red[m, t] = _add(red[m, t], red[m, t + h])
        cuda.syncthreads()
        h //= 2
    if t < M:
        y = red[t, 0]
        if has_bias:
            y = _add(y, _load(bias, n, kind))
        out[t * N + n] = y


@cuda.jit(device=True, inline=True)
def _scale(absmax, a8, code2, offset, nested, b):
    if nested:
        return _add(_mul(code2[a8[b]], absmax[b >> 8]), offset[0])
    return absmax[b]


@cuda.jit(fastmath=False)
def gemv_words(A, kind, M, N, K, words, absmax, a8, code2, offset, nested, table, blocksize, bias, has_bias, out):
    """The GEMV for K % 8 == 0: ``words`` the packed bytes as int32 (8 codes each, little endian: byte i holds
    elements 2i (high nibble) and 2i + 1), one coalesced load and one block scale per 8 elements. Thread t takes
    words t, t + T, ... of the row, elements in increasing k; then the same tree as ``gemv``."""
    red = cuda.shared.array((GEMV_MAX_M, GEMV_THREADS), float32)
    acc = cuda.local.array(GEMV_MAX_M, float32)
    t = cuda.threadIdx.x
    n = cuda.blockIdx.x
    for m in range(GEMV_MAX_M):
        acc[m] = float32(0.0)
    kw = K // 8
    row = int64(n) * K
    for w in range(t, kw, GEMV_THREADS):
        v = int64(words[int64(n) * kw + w]) & 0xFFFFFFFF
        k0 = w * 8
        s = _scale(absmax, a8, code2, offset, nested, (row + k0) // blocksize)
        for e in range(8):
            byte = (v >> (8 * (e >> 1))) & 0xFF
            c = (byte >> 4) if (e & 1) == 0 else (byte & 15)
            wt = _round_to(_mul(table[c], s), kind)
            for m in range(M):
                acc[m] = _add(acc[m], _mul(wt, _load(A, m * K + k0 + e, kind)))
    for m in range(GEMV_MAX_M):
        red[m, t] = acc[m]
    cuda.syncthreads()
    h = GEMV_THREADS // 2
    while h > 0:
        if t < h:
            for m in range(M):
                red[m, t] = _add(red[m, t], red[m, t + h])
        cuda.syncthreads()
        h //= 2
    if t < M:
        y = red[t, 0]
        if has_bias:
            y = _add(y, _load(bias, n, kind))
        out[t * N + n] = y


# ------------------------------------------------------------------ the warp-per-row GEMV

LANES_THREADS = 64 if config.ENABLE_CUDASIM else 256    # the simulator runs a Python thread per lane
LANES_WARPS = LANES_THREADS // 32
LANES_TAB = 16 * LANES_THREADS                          # decoded-weight table entries (16 per thread)

if config.ENABLE_CUDASIM:
    def _fma(a, b, c):
        with np.errstate(invalid="ignore", over="ignore"):
            return np.float32(np.float64(a) * np.float64(b) + np.float64(c))

    def _entry(x, j, tid):
        """The table index of byte j's code for thread tid: code * LANES_THREADS + tid."""
        return ((int(x) >> (8 * j)) & 0xFF) * LANES_THREADS + tid
else:
    _fma = libdevice.fmaf_rn

    @cuda.jit(device=True, inline=True)
    def _entry(x, j, tid):
        # one byte permute: byte 0 the thread (< 256), byte 1 the code (byte j of x), bytes 2-3 zero (tid's)
        return libdevice.byte_perm(x, tid, 0x5504 | (j << 4))


@cuda.jit(device=True, inline=True)
def _unpack2(u, kind):
    """The two float32 of a 32-bit word of bf16 or fp16 activations (element 2i in the low half)."""
    if kind == BF16:
        return _int_as_float((u << 16) & 0xFFFFFFFF), _int_as_float(u & 0xFFFF0000)
    return float32(_half2float(u & 0xFFFF)), float32(_half2float(u >> 16))


@cuda.jit(device=True, inline=True)
def _bf16_finite(v):
    """float32(bf16(v)) for a v that is no NaN (rounding half to even in 32-bit integer steps; Inf stays Inf)."""
    b = uint32(_float_as_int(v) & 0xFFFFFFFF)
    return _int_as_float(uint32(b + uint32(0x7FFF) + ((b >> 16) & 1)) & 0xFFFF0000)


@cuda.jit(device=True, inline=True)
def _xor_f(v, off, s2, ph, tid):
    """A float32 xor-shuffle (through its bits: the simulator's buffer is int32)."""
    return _int_as_float(_xor(_float_as_int(v), off, s2, ph, tid))


def lanes_chunk(K: int, blocksize: int) -> int:
    """Elements per lane chunk of ``gemv_lanes`` (a chunk lies in one quantization block), 0 where it does not
    apply (K % 32 != 0 or a blocksize that is not a power of two >= 32)."""
    if K % 32 or blocksize < 32 or blocksize & (blocksize - 1):
        return 0
    return 64 if blocksize >= 64 and K % 64 == 0 else 32


_LANES: dict = {}


def gemv_lanes(ch: int, M: int, kind: int, rows: bool = True, min_blocks: int = 0):
    """The warp-per-row GEMVs, compiled for chunk ``ch`` (lanes_chunk), M activation rows and A's element kind.
    Two ways to give chunks to lanes (``rows``):

    * rows (the default): lane l of a CTA's warps takes output row 32 * blockIdx + l; the CTA's warps split K
      into LANES_WARPS contiguous chunk ranges, every lane of a warp on the same chunk, so an activation load is
      one broadcast address; the partial sums meet in shared memory (warp order) at the end.
    * chunks (cuda_src/matmul.cu's): a warp per output row, lane l on the row's chunks l, l + 32, ... (an
      activation load touches 32 cache lines); then a warp butterfly.

    Per chunk a lane decodes the block scale (rule 1) and writes the 16 possible weights dtype(table[c] * s)
    (rule 2) into its own column of a shared table (entry (c, t) at c * THREADS + t: a lane's entries share its
    bank); each weight is then one byte permute (code and thread into the entry's index), one shared load and M
    fused multiply-adds (exact products for fp16/bf16 A). Weights and scale inputs are loaded one chunk ahead;
    weights and activations as 16-byte vectors (A and the packed bytes as int64 arrays: K % 32 == 0, 16-byte
    aligned). Float32 accumulation: two partial sums per lane and row (even and odd elements), added, then the
    combination above. out[m * N + n] float32 (bias added); grid: ``lanes_grid``, LANES_THREADS per block.
    min_blocks > 0: launch bounds of that many resident CTAs per SM (not under the simulator)."""
    key = (ch, M, kind, rows, min_blocks)
    if key in _LANES:
        return _LANES[key]
    NV = ch // 32                    # 16-byte weight vectors per chunk (32 codes each)
    MM = M
    KIND = kind
    ROWS = rows
    bounds = {"launch_bounds": (LANES_THREADS, min_blocks)} if min_blocks and not config.ENABLE_CUDASIM else {}

    @cuda.jit(fastmath=False, **bounds)
    def gemv(A, N, K, B, absmax, a8, code2, offset, nested, table, bshift, bias, has_bias, out):
        tab = cuda.shared.array(LANES_TAB, float32)
        c2 = cuda.shared.array(256, float32)
        s2 = cuda.shared.array((2, LANES_THREADS), int32)
        cb = cuda.local.array(16, float32)
        acc = cuda.local.array((GEMV_MAX_M, 2), float32)
        av = cuda.local.array((GEMV_MAX_M, 8), float32)
        wv = cuda.local.array(4, uint64)     # this chunk's packed weights (up to 2 vectors)
        nx = cuda.local.array(4, uint64)     # the next chunk's
        tid = cuda.threadIdx.x
        lane = tid & 31
        warp = tid >> 5
        if nested:
            for j in range(tid, 256, LANES_THREADS):
                c2[j] = code2[j]
        cuda.syncthreads()
        off = offset[0] if nested else float32(0.0)
        for j in range(16):
            cb[j] = table[j]
        for m in range(MM):
            acc[m, 0] = float32(0.0)
            acc[m, 1] = float32(0.0)
        chunks = K // ch
        if ROWS:
            n = int64(cuda.blockIdx.x) * 32 + lane
            per = (chunks + LANES_WARPS - 1) // LANES_WARPS
            c = int64(warp) * per
            cend = c + per if c + per < chunks else chunks
            step = 1
        else:
            n = int64(cuda.blockIdx.x) * LANES_WARPS + warp
            c = int64(lane)
            cend = chunks
            step = 32
        row = n if n < N else int64(N - 1)   # rows past N redo the last and are not stored
        wrow = row * (K // 16)               # int64 index of the row's first packed vector half
        erow = row * K
        ku = K // 2 if KIND == F32 else K // 4          # int64 words per activation row
        nq = int32(0)
        na = float32(0.0)
        if c < cend:
            for v in range(NV):
                nx[2 * v], nx[2 * v + 1] = _ld16(B, wrow + c * (2 * NV) + 2 * v)
            b = (erow + c * ch) >> bshift
            nq = int32(a8[b]) if nested else int32(0)
            na = absmax[b >> 8] if nested else absmax[b]
        while c < cend:
            for j in range(2 * NV):
                wv[j] = nx[j]
            s = _add(_mul(c2[uint32(nq)], na), off) if nested else na
            cn = c + step
            if cn < cend:                    # the next chunk's weights and scale inputs
                for v in range(NV):
                    nx[2 * v], nx[2 * v + 1] = _ld16(B, wrow + cn * (2 * NV) + 2 * v)
                b = (erow + cn * ch) >> bshift
                nq = int32(a8[b]) if nested else int32(0)
                na = absmax[b >> 8] if nested else absmax[b]
            if KIND == BF16 and abs(s) <= float32(3.4028234663852886e38):   # rule 2 into this lane's column
                for j in range(16):
                    tab[uint32(j * LANES_THREADS + tid)] = _bf16_finite(_mul(cb[j], s))
            else:
                for j in range(16):
                    tab[uint32(j * LANES_THREADS + tid)] = _round_to(_mul(cb[j], s), KIND)
            for g in range(ch // 8):         # 8 elements: k = c * ch + 8 g + 0..7
                k0 = c * ch + 8 * g
                for m in range(MM):
                    base = int64(m) * ku + (k0 * (2 if KIND == F32 else 1)) // 4
                    if KIND == F32:
                        x0, x1 = _ld16(A, base)
                        x2, x3 = _ld16(A, base + 2)
                        av[m, 0] = _int_as_float(x0 & 0xFFFFFFFF)
                        av[m, 1] = _int_as_float(x0 >> 32)
                        av[m, 2] = _int_as_float(x1 & 0xFFFFFFFF)
                        av[m, 3] = _int_as_float(x1 >> 32)
                        av[m, 4] = _int_as_float(x2 & 0xFFFFFFFF)
                        av[m, 5] = _int_as_float(x2 >> 32)
                        av[m, 6] = _int_as_float(x3 & 0xFFFFFFFF)
                        av[m, 7] = _int_as_float(x3 >> 32)
                    else:
                        x0, x1 = _ld16(A, base)
                        for h in range(4):
                            u = uint32(((x0 if h < 2 else x1) >> (32 * (h & 1))) & 0xFFFFFFFF)
                            av[m, 2 * h], av[m, 2 * h + 1] = _unpack2(u, KIND)
                word = (wv[g >> 1] >> (32 * (g & 1))) & 0xFFFFFFFF
                hi = uint32((word >> 4) & 0x0F0F0F0F)   # byte j: the code of element 2j (high nibble)
                lo = uint32(word & 0x0F0F0F0F)          # element 2j + 1
                for j in range(4):
                    we = tab[uint32(_entry(hi, j, tid))]   # unsigned: no negative-index wraparound
                    wo = tab[uint32(_entry(lo, j, tid))]
                    for m in range(MM):
                        acc[m, 0] = _fma(we, av[m, 2 * j], acc[m, 0])
                        acc[m, 1] = _fma(wo, av[m, 2 * j + 1], acc[m, 1])
            c = cn
        if ROWS:                             # the warps' partial sums of each row, added in warp order
            cuda.syncthreads()               # every table read done: its space holds them
            for m in range(MM):
                tab[uint32((warp * MM + m) * 32 + lane)] = _add(acc[m, 0], acc[m, 1])
            cuda.syncthreads()
            for t in range(tid, 32 * MM, LANES_THREADS):
                m = t >> 5
                n = int64(cuda.blockIdx.x) * 32 + (t & 31)
                v = tab[uint32(t)]
                for w in range(1, LANES_WARPS):
                    v = _add(v, tab[uint32(w * MM * 32 + t)])
                if n < N:
                    if has_bias:
                        v = _add(v, _load(bias, n, KIND))
                    out[int64(m) * N + n] = v
        else:
            ph = 0
            for m in range(MM):
                v = _add(acc[m, 0], acc[m, 1])
                o = 16
                while o > 0:
                    v = _add(v, _xor_f(v, o, s2, ph, tid))
                    ph ^= 1
                    o >>= 1
                if lane == 0 and n < N:
                    if has_bias:
                        v = _add(v, _load(bias, n, KIND))
                    out[int64(m) * N + n] = v

    _LANES[key] = gemv
    return gemv


def lanes_grid(N: int, rows: bool = True) -> int:
    """CTAs of ``gemv_lanes``: 32 output rows each (rows), else LANES_WARPS."""
    return -(-N // (32 if rows else LANES_WARPS))


@cuda.jit(fastmath=False)
def gemm_tiled(A, kind, M, N, K, packed, absmax, a8, code2, offset, nested, table, blocksize, bias, has_bias, out):
    """out[m * N + n] (float32), any M; grid = ceil(M / TILE) * ceil(N / TILE) blocks of TILE * TILE threads."""
    a_s = cuda.shared.array((TILE, TILE_K), float32)
    w_s = cuda.shared.array((TILE, TILE_K), float32)
    tiles_n = (N + TILE - 1) // TILE
    m0 = (cuda.blockIdx.x // tiles_n) * TILE
    n0 = (cuda.blockIdx.x % tiles_n) * TILE
    t = cuda.threadIdx.x
    ty = t // TILE
    tx = t % TILE
    acc = float32(0.0)
    for k0 in range(0, K, TILE_K):
        for j in range(t, TILE * TILE_K, TILE * TILE):      # cooperative loads: a row of the tile per TILE_K
            r = j // TILE_K
            kk = j % TILE_K
            k = k0 + kk
            m = m0 + r
            n = n0 + r
            a_s[r, kk] = _load(A, m * K + k, kind) if (m < M and k < K) else float32(0.0)
            if n < N and k < K:
                w_s[r, kk] = _weight(packed, int64(n) * K + k, absmax, a8, code2, offset, nested, table, blocksize,
                                     kind)
            else:
                w_s[r, kk] = float32(0.0)
        cuda.syncthreads()
        for kk in range(TILE_K):
            if k0 + kk < K:
                acc = _add(acc, _mul(a_s[ty, kk], w_s[tx, kk]))
        cuda.syncthreads()
    m = m0 + ty
    n = n0 + tx
    if m < M and n < N:
        if has_bias:
            acc = _add(acc, _load(bias, n, kind))
        out[m * N + n] = acc


def gemm_grid(M: int, N: int) -> int:
    return -(-M // TILE) * -(-N // TILE)
