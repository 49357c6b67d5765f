"""Numba CUDA kernels of the 4-bit matmul family: fused dequant-GEMVs (M <= GEMV_MAX_M) and a simple tiled GEMM,
any 16-entry codebook, nested absmax decoded in the kernel.

Pure kernels on device arrays (torch adapters: workbench/backends/numba_cuda/matmul.py); they also run under the
CUDA simulator (``NUMBA_ENABLE_CUDASIM=1``) on small inputs, so reductions use shared memory and syncthreads,
no warp shuffles (``gemv_rows``' warp barrier and vector loads have twins in numba_kernels/cuda/warp.py).
Rules of workbench/backends/reference/matmul.py:

    s[b]    = float32(code2[a8[b]] * absmax[b >> 8]) + offset[0]   (nested; else absmax[b]; offset a 1-element
                                                                     array: no host read of a device scalar)
    W[n, k] = dtype(table[c(n*K + k)] * s[(n*K + k) // blocksize])  (exact, rule 2)
    out     = float32 sum + float32(bias[n])                        (the adapter rounds it once to A's dtype)

Every float32 step is an explicit ``*_rn`` libdevice call on the GPU (NVVM would contract a*b + c into an FMA),
NumPy float32 arithmetic in the simulator. Accumulation order (float32), held to the reference's error_bound:

* ``gemv_rows`` (K % 32 == 0, power-of-two blocksize >= 32, 16-byte aligned operands; the fast path): lanes are
  output rows, the CTA's warps split K; its docstring has the order.
* ``gemv``: one block of GEMV_THREADS threads per output row n; thread t takes elements k = t, t + T, t + 2T, ...
  in increasing k, then a shared-memory tree over the threads (t + h for h = T/2, T/4, ..., 1), one per row m.
  ``gemv_words`` (K % 8 == 0, the common case): the same with 8-element words (one coalesced 4-byte load and one
  block scale per word; thread t takes words t, t + T, ...).
* ``gemv_tiled`` (the adapter's choice where the production path takes its unscaled-lookup GEMM): the GEMV on the
  weight's tiled copy with unscaled lookups (not rule 2; held to the reference's error_bound_unscaled); its
  docstring has the order.
* ``gemm_tiled``: a TILE x TILE block of threads per TILE x TILE output tile; K in steps of TILE_K: the A tile and
  the dequantized W tile (float32, rule 2) go to shared memory, each thread adds its products in increasing k.

Element kinds (A, as numba_kernels/cuda/quant.py): 0 float32, 1 float16, 2 bfloat16 as its int16 bit pattern.
``gemv`` / ``gemv_words`` / ``gemm_tiled`` are plain prototypes (per-element loads and weights); the production
kernels are cuda_src/matmul.cu, and reports/matmul-h200/numba_gemv/ has ``gemv_rows`` beside them.
"""
from __future__ import annotations

import numpy as np

import workbench._compat  # noqa: F401  (numpy.row_stack shim, before any kernel compiles)
from numba import config, cuda, float32, int32, int64, uint32, uint64
from numba.cuda import libdevice

from .quant import (BF16, F16, F32, _bf16_bits, _float2half_rn, _float_as_int, _half2float,  # noqa: F401
                    _int_as_float, _load)
from .warp import _ld16, _ld16f, _ld_byte, _prefetch_l2, _syncwarp

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


@cuda.jit(device=True, inline=True)
def _sum_rows(red, acc, t, n, M, N, kind, bias, has_bias, out):
    """The block-per-row GEMVs' end: the threads' partial sums of each activation row by a shared-memory tree
    (fixed order), bias added, out[m * N + n] stored by thread m."""
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
    _sum_rows(red, acc, t, n, M, N, kind, bias, has_bias, out)


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
    _sum_rows(red, acc, t, n, M, N, kind, bias, has_bias, out)


# ------------------------------------------------------------------ the lanes-as-rows GEMV

ROWS_THREADS = 64 if config.ENABLE_CUDASIM else 256     # the simulator runs a Python thread per lane
ROWS_WARPS = ROWS_THREADS // 32
ROWS_TAB = 16 * ROWS_THREADS                            # decoded-weight table entries (16 per thread)
ROWS_STAGE = ROWS_WARPS * 2 * GEMV_MAX_M * 64           # staged activations: per warp, 2 buffers of M x 64 floats

if config.ENABLE_CUDASIM:
    def _fma(a, b, c):
        with np.errstate(invalid="ignore", over="ignore"):
            return np.float32(np.float64(a) * np.float64(b) + np.float64(c))

    def _u64(a, i):
        return int(a[i]) & 0xFFFFFFFFFFFFFFFF

    def _entry(x, j, tcol):
        """The table's byte offset for byte j of x (4 * code | the warp-pair bits, zero here) and tcol = 4 * tid."""
        return (((int(x) >> (8 * j)) & 0xFF) >> 2) * (4 * ROWS_THREADS) + tcol
else:
    _fma = libdevice.fmaf_rn

    @cuda.jit(device=True, inline=True)
    def _u64(a, i):
        return uint64(a[i])

    @cuda.jit(device=True, inline=True)
    def _entry(x, j, tcol):
        # one byte permute: byte 0 of tcol ((4 tid) & 0xFF), byte j of x as byte 1 (4 * code | tid >> 6: the
        # entry's offset 1024 code + 4 tid), bytes 2-3 zero (tcol < 256)
        return libdevice.byte_perm(x, tcol, 0x5504 | (j << 4))


@cuda.jit(device=True, inline=True)
def _unpack2(u, kind):
    """The two float32 of a 32-bit word of bf16 or fp16 activations (element 2i in the low half)."""
    if kind == BF16:
        return _int_as_float((u << 16) & 0xFFFFFFFF), _int_as_float(u & 0xFFFF0000)
    return float32(_half2float(u & 0xFFFF)), float32(_half2float(u >> 16))


@cuda.jit(device=True, inline=True)
def _dot8(word, tab, tgrp, tcol, av, e0, sums, M):
    """The lanes-as-rows GEMVs' inner step: the 8 codes of ``word`` (byte j: elements 2j, high nibble, and 2j + 1)
    looked up in this lane's column of ``tab`` (one byte permute and one shared load each) and multiplied into
    ``sums[m, 0]`` (even elements) and ``sums[m, 1]`` (odd) against activations ``av[m, e0 + 0..7]``."""
    hi = ((word >> 2) & uint32(0x3C3C3C3C)) | tgrp   # byte j: 4 * code of element 2j
    lo = ((word << 2) & uint32(0x3C3C3C3C)) | tgrp   # element 2j + 1
    for j in range(4):
        we = _ld_byte(tab, uint32(_entry(hi, j, tcol)))
        wo = _ld_byte(tab, uint32(_entry(lo, j, tcol)))
        for m in range(M):
            sums[m, 0] = _fma(we, av[m, e0 + 2 * j], sums[m, 0])
            sums[m, 1] = _fma(wo, av[m, e0 + 2 * j + 1], sums[m, 1])


@cuda.jit(device=True, inline=True)
def _store_row(out, v, m, n, N, bias, has_bias, kind):
    """The lanes-as-rows GEMVs' end: out[m * N + n] = v (+ bias[n], one float32 add) for a row n < N."""
    if n < N:
        if has_bias:
            v = _add(v, _load(bias, n, kind))
        out[int64(m) * N + n] = v


@cuda.jit(device=True, inline=True)
def _bf16_finite(v):
    """float32(bf16(v)) for a v that is no NaN (rounding half to even in 32-bit integer steps; Inf stays Inf)."""
    b = uint32(_float_as_int(v) & 0xFFFFFFFF)
    return _int_as_float(uint32(b + uint32(0x7FFF) + ((b >> 16) & 1)) & 0xFFFF0000)


def rows_chunk(K: int, blocksize: int) -> int:
    """Elements per chunk of ``gemv_rows`` (a chunk lies in one quantization block), 0 where it does not apply
    (K % 32 != 0 or a blocksize that is not a power of two >= 32)."""
    if K % 32 or blocksize < 32 or blocksize & (blocksize - 1):
        return 0
    return 64 if blocksize >= 64 and K % 64 == 0 else 32


_ROWS: dict = {}


def gemv_rows(ch: int, M: int, kind: int, spread: bool = True):
    """The GEMV with lanes as output rows, compiled for chunk ``ch`` (rows_chunk), M activation rows and A's
    element kind.

    Lane l of every warp of a CTA takes output row 32 * blockIdx + l; the CTA's W = ROWS_WARPS warps take the row's
    chunks in turn (warp w: chunks w, w + W, w + 2W, ...), all lanes of a warp on the same chunk (the weight loads
    are each lane's own 32 bytes, the activations the same for the whole warp): the warps, in step, read
    neighbouring pieces of the same rows, so a weight line is fetched whole once rather than a sector at a time. Per
    chunk the warp stages its 64 x M activations as float32 in shared memory (a coalesced load, one warp barrier;
    two buffers), and every lane decodes its block scale (rule 1) and writes the 16 possible weights dtype(table[c]
    * s) (rule 2) into its own column of a shared table (entry (c, t) at byte 1024 c + 4 t: a lane's entries share
    its bank). Each weight is then one byte permute (code and thread into the entry's byte offset), one shared load
    and M fused multiply-adds (exact products for fp16/bf16 A) with activations read as broadcast 16-byte shared
    loads. Weights and scale inputs are loaded two of the warp's chunks ahead, the activations one, weights as
    16-byte vectors (A and the packed bytes as int64 arrays: K % 32 == 0, 16-byte aligned). Float32 accumulation:
    two partial sums per lane and row (even and odd elements), added, then the warps' sums of a row in warp order.
    out[m * N + n] float32 (bias added); grid ``rows_grid(N)`` blocks of ROWS_THREADS. ``spread=False`` gives each
    warp a contiguous range of chunks instead (the earlier order, kept for studies/probes/numba_gemv_spread_ab.py)."""
    key = (ch, M, kind, spread)
    if key in _ROWS:
        return _ROWS[key]
    NV = ch // 32                    # 16-byte weight vectors per chunk (32 codes each)
    AW = ch // 2 if kind == F32 else ch // 4     # int64 words of a chunk's activations (per row m)
    MM = M
    STEP = ROWS_WARPS if spread else 1   # from one of a warp's chunks to its next
    KIND = kind
    # resident CTAs per SM: 3 at M = 1 (85 registers; 96 unbounded), else 2 (128; up to 133 unbounded); ptxas
    # spills nothing but 4 bytes at M = 4 with 32-element chunks
    bounds = {"launch_bounds": (ROWS_THREADS, 3 if M == 1 else 2)} if not config.ENABLE_CUDASIM else {}

    @cuda.jit(fastmath=False, **bounds)
    def gemv(A, N, K, B, absmax, a8, code2, offset, nested, table, bshift, bias, has_bias, out):
        tab = cuda.shared.array(ROWS_TAB, float32)
        stg = cuda.shared.array(ROWS_STAGE, float32)
        c2 = cuda.shared.array(256, float32)
        cb = cuda.local.array(16, float32)
        acc = cuda.local.array((GEMV_MAX_M, 2), float32)
        av = cuda.local.array((GEMV_MAX_M, 8), float32)
        wv = cuda.local.array(4, uint64)     # this chunk's packed weights (up to 2 vectors)
        nx = cuda.local.array(8, uint64)     # the next two chunks' (0-3: c + 1, 4-7: c + 2)
        xa = cuda.local.array(GEMV_MAX_M, uint64)   # the next chunk's activation word (lanes < AW)
        xc = cuda.local.array(GEMV_MAX_M, uint64)   # this chunk's
        tid = cuda.threadIdx.x
        lane = tid & 31
        warp = tid >> 5
        if nested:
            for j in range(tid, 256, ROWS_THREADS):
                c2[j] = code2[j]
        cuda.syncthreads()
        off = offset[0] if nested else float32(0.0)
        for j in range(16):
            cb[j] = table[j]
        for m in range(MM):
            acc[m, 0] = float32(0.0)
            acc[m, 1] = float32(0.0)
        tcol = uint32((4 * tid) & 0xFF)
        tgrp = uint32(tid >> 6) * uint32(0x01010101)   # tid >> 6 in every byte: the offset's byte 1 low bits
        chunks = K // ch
        per = (chunks + ROWS_WARPS - 1) // ROWS_WARPS
        c0 = int64(warp) * (1 if STEP > 1 else per)    # this warp's chunks: c0, c0 + STEP, ... below cend
        cend = int64(chunks) if STEP > 1 else min(c0 + per, int64(chunks))
        n = int64(cuda.blockIdx.x) * 32 + lane
        row = n if n < N else int64(N - 1)   # rows past N redo the last and are not stored
        wrow = row * (K // 16)               # int64 index of the row's first packed weights
        erow = row * K
        ku = K // 2 if KIND == F32 else K // 4          # int64 words per activation row
        sbase = warp * (2 * GEMV_MAX_M * 64)
        nq1 = int32(0)                       # scale inputs of chunk c + 1 and c + 2
        na1 = float32(0.0)
        nq2 = int32(0)
        na2 = float32(0.0)
        buf = sbase
        if c0 < cend:                        # chunk c0 into the next slots, c0 + STEP into the ones after
            for v in range(NV):
                nx[2 * v], nx[2 * v + 1] = _ld16(B, wrow + c0 * (2 * NV) + 2 * v)
            b = (erow + c0 * ch) >> bshift
            nq1 = int32(a8[uint64(b)]) if nested else int32(0)
            na1 = absmax[uint64(b >> 8)] if nested else absmax[uint64(b)]
            if lane < AW:
                for m in range(MM):
                    xa[m] = _u64(A, uint64(int64(m) * ku + c0 * AW + lane))
        if c0 + STEP < cend:
            for v in range(NV):
                nx[4 + 2 * v], nx[4 + 2 * v + 1] = _ld16(B, wrow + (c0 + STEP) * (2 * NV) + 2 * v)
            b = (erow + (c0 + STEP) * ch) >> bshift
            nq2 = int32(a8[uint64(b)]) if nested else int32(0)
            na2 = absmax[uint64(b >> 8)] if nested else absmax[uint64(b)]
        for i in range(per):                 # the same trip count in every warp (the simulator's barrier twin)
            c = c0 + i * STEP
            if c < cend:
                for j in range(2 * NV):      # rotate the prefetched chunks: c's inputs now, c + 2 STEP's loads next
                    wv[j] = nx[j]
                    nx[j] = nx[4 + j]
                nq = nq1
                na = na1
                nq1 = nq2
                na1 = na2
                for m in range(MM):
                    xc[m] = xa[m]
                if c + 2 * STEP < cend:      # two of the warp's chunks ahead: weights and scale inputs
                    for v in range(NV):
                        nx[4 + 2 * v], nx[4 + 2 * v + 1] = _ld16(B, wrow + (c + 2 * STEP) * (2 * NV) + 2 * v)
                    b = (erow + (c + 2 * STEP) * ch) >> bshift
                    nq2 = int32(a8[uint64(b)]) if nested else int32(0)
                    na2 = absmax[uint64(b >> 8)] if nested else absmax[uint64(b)]
                buf = sbase + (i & 1) * (GEMV_MAX_M * 64)
                if lane < AW:                # stage: lane l < AW converts int64 word l of the chunk
                    for m in range(MM):
                        x = xc[m]
                        e = uint32(buf + m * 64 + lane * (2 if KIND == F32 else 4))
                        if KIND == F32:
                            stg[e] = _int_as_float(x & 0xFFFFFFFF)
                            stg[e + 1] = _int_as_float(x >> 32)
                        else:
                            stg[e], stg[e + 1] = _unpack2(uint32(x & 0xFFFFFFFF), KIND)
                            stg[e + 2], stg[e + 3] = _unpack2(uint32(x >> 32), KIND)
                    if c + STEP < cend:      # the warp's next chunk: the activations
                        for m in range(MM):
                            xa[m] = _u64(A, uint64(int64(m) * ku + (c + STEP) * AW + lane))
                s = _add(_mul(c2[uint32(nq)], na), off) if nested else na
                if KIND == BF16 and abs(s) <= float32(3.4028234663852886e38):   # rule 2 into this lane's column
                    for j in range(16):
                        tab[uint32(j * ROWS_THREADS + tid)] = _bf16_finite(_mul(cb[j], s))
                else:
                    for j in range(16):
                        tab[uint32(j * ROWS_THREADS + tid)] = _round_to(_mul(cb[j], s), KIND)
            _syncwarp()                      # the staged activations (the other buffer's readers are past it)
            if c < cend:
                for g in range(ch // 8):     # 8 elements: k = c * ch + 8 g + 0..7
                    for m in range(MM):
                        e = uint32(buf + m * 64 + 8 * g)
                        av[m, 0], av[m, 1], av[m, 2], av[m, 3] = _ld16f(stg, e)
                        av[m, 4], av[m, 5], av[m, 6], av[m, 7] = _ld16f(stg, e + 4)
                    _dot8(uint32((wv[g >> 1] >> (32 * (g & 1))) & 0xFFFFFFFF), tab, tgrp, tcol, av, 0, acc, MM)
        cuda.syncthreads()                   # every table read done: its space holds the warps' sums
        for m in range(MM):
            tab[uint32((warp * MM + m) * 32 + lane)] = _add(acc[m, 0], acc[m, 1])
        cuda.syncthreads()
        for t in range(tid, 32 * MM, ROWS_THREADS):
            m = t >> 5
            n = int64(cuda.blockIdx.x) * 32 + (t & 31)
            v = tab[uint32(t)]
            for w in range(1, ROWS_WARPS):   # warp order
                v = _add(v, tab[uint32(w * MM * 32 + t)])
            _store_row(out, v, m, n, N, bias, has_bias, KIND)

    _ROWS[key] = gemv
    return gemv


def rows_grid(N: int) -> int:
    """CTAs of ``gemv_rows``: 32 output rows each."""
    return -(-N // 32)


# ------------------------------------------------------------------ the GEMV on the tiled weight layout

TILE_ROWS = 16                                          # output rows per tile of the tiled layout
TILE_CHUNK = 64                                         # elements of a row per chunk


def tiled_applies(K: int, blocksize: int) -> bool:
    """Whether ``gemv_tiled`` can take an (N, K) weight of this blocksize: whole 64-element chunks in the tiled
    layout, each inside one quantization block (a power of two >= 64)."""
    return K % TILE_CHUNK == 0 and blocksize >= TILE_CHUNK and not blocksize & (blocksize - 1)


_TILED: dict = {}


TILED_PREFETCH = 6   # gemv_tiled at M >= 2: a warp's chunk this many of its chunks ahead is asked into L2 (0: none)


def gemv_tiled(M: int, kind: int, prefetch: int | None = None):
    """The GEMV on the weight's tiled copy (the layout the production unscaled-lookup GEMM reads,
    workbench/backends/cuda/gemm_layout.py: ``[N/16 tiles][K/64 chunks][32 lanes][16 bytes]``), compiled for M
    activation rows (<= GEMV_MAX_M) of fp16 or bf16 A, with unscaled lookups as that GEMM has them.

    Why: ``gemv_rows`` reads the row layout, where a warp's 16-byte weight load touches 32 rows' lines, and Nsight
    Compute found it bound by the L1 pipe (reports/matmul-h200/numba_gemv); in the tiled layout a warp's load is 512
    contiguous bytes, and the production kernel's weight stream alone runs at 95 % of copy there (45 % in rows).

    CTA b takes tile b (output rows 16 b .. 16 b + 15); its ROWS_WARPS warps take the chunks in turn (warp w: chunks
    w, w + W, ...), so in step they read neighbouring 512-byte pieces. Lane 4 g + t holds elements 16 t .. 16 t + 15
    of the chunk for rows g and g + 8 (one 16-byte load), and reads those 16 activations of each row m itself (two
    16-byte loads, one 128-byte line for the warp). A weight is ``dtype(table[c])`` from the lane's own column of a
    shared table (entry (c, tid) at byte 1024 c + 4 tid, made once), one byte permute and one shared load; the product
    with an fp16/bf16 activation is exact. Per chunk and row the lane sums its 16 products in float32 (even and odd
    elements apart, then added) and adds that partial times the row's block scale (rule 1) to its accumulator by one
    fused multiply-add. Weights and scale inputs are loaded two of the warp's chunks ahead, activations one at
    M <= 2 (at their chunk at M = 3, 4), and at M >= 2 the weights ``prefetch`` chunks ahead (TILED_PREFETCH) are
    asked into L2 (four lanes, a 128-byte line each; H100: 1.11-1.14x at M = 4 on the two large shapes, no faster
    at M = 1, reports/matmul-h100/public_call_host). Then the sums of a row: the 4 lanes of each warp and the warps
    in order (warp-major, lane t inner), bias added.

    Numerics: not rule 2; held to the reference's ``error_bound_unscaled``, like the production GEMM. Outputs
    float32 ``out[m * N + n]``; grid ``tiled_grid(N)`` blocks of ROWS_THREADS; A and the tiled codes as int64 arrays
    (16-byte aligned); every table entry finite in A's dtype (the adapter checks)."""
    PF = (TILED_PREFETCH if M > 1 else 0) if prefetch is None else prefetch   # one row: measured no faster
    key = (M, kind, PF)
    if key in _TILED:
        return _TILED[key]
    MM = M
    KIND = kind
    XAHEAD = M <= 2   # activations one chunk ahead: at M = 3, 4 their registers would spill (ptxas -v)
    # ROWS_THREADS threads, as gemv_rows: _entry's byte offsets (1024 c + 4 tid) assume it. Resident CTAs per SM:
    # 3 at M = 1 (79 registers), else 2 (122-128); no spills (studies/probes/numba_ptx_report.py, numba-cuda 0.30.4)
    bounds = {"launch_bounds": (ROWS_THREADS, 3 if M == 1 else 2)} if not config.ENABLE_CUDASIM else {}

    @cuda.jit(fastmath=False, **bounds)
    def gemv(A, N, K, T, absmax, a8, code2, offset, nested, table, bshift, bias, has_bias, out):
        tab = cuda.shared.array(ROWS_TAB, float32)
        c2 = cuda.shared.array(256, float32)
        acc = cuda.local.array((GEMV_MAX_M, 2), float32)
        part = cuda.local.array((GEMV_MAX_M, 2), float32)
        av = cuda.local.array((GEMV_MAX_M, 16), float32)
        wv = cuda.local.array(2, uint64)      # this chunk's codes: rows g and g + 8
        nx = cuda.local.array(4, uint64)      # the next two chunks' (0-1: c + W, 2-3: c + 2 W)
        xa = cuda.local.array((GEMV_MAX_M, 4), uint64)   # the next chunk's activations (16 per row m)
        sq = cuda.local.array(6, int32)       # scale inputs (uint8 code) of rows g, g + 8: this chunk, +W, +2W
        sa = cuda.local.array(6, float32)     # and their absmax
        tid = cuda.threadIdx.x
        lane = tid & 31
        warp = tid >> 5
        g = lane >> 2
        t = lane & 3
        if nested:
            for j in range(tid, 256, ROWS_THREADS):
                c2[j] = code2[j]
        for j in range(16):                   # this lane's column: dtype(table[j]) as float32
            tab[uint32(j * ROWS_THREADS + tid)] = _round_to(table[j], KIND)
        cuda.syncthreads()
        off = offset[0] if nested else float32(0.0)
        for m in range(MM):
            acc[m, 0] = float32(0.0)
            acc[m, 1] = float32(0.0)
        tcol = uint32((4 * tid) & 0xFF)
        tgrp = uint32(tid >> 6) * uint32(0x01010101)
        tile = int64(cuda.blockIdx.x)
        chunks = int64(K // TILE_CHUNK)
        per = (chunks + ROWS_WARPS - 1) // ROWS_WARPS
        n0 = tile * TILE_ROWS + g
        last = int64(N - 1)                   # rows past N read the last row's scales and are not stored
        e0 = (n0 if n0 < last else last) * K
        e1 = (n0 + 8 if n0 + 8 < last else last) * K
        wbase = tile * chunks * 64 + 2 * lane  # int64 index of chunk 0's codes for this lane
        ku = K // 4                           # int64 words per activation row
        c = int64(warp)
        for a in range(2):                    # chunks warp and warp + W into the next slots
            ca = c + a * ROWS_WARPS
            if ca < chunks:
                nx[2 * a], nx[2 * a + 1] = _ld16(T, wbase + ca * 64)
                for r in range(2):
                    b = ((e0 if r == 0 else e1) + ca * TILE_CHUNK) >> bshift
                    sq[2 + 2 * a + r] = int32(a8[uint64(b)]) if nested else int32(0)
                    sa[2 + 2 * a + r] = absmax[uint64(b >> 8)] if nested else absmax[uint64(b)]
        if XAHEAD and c < chunks:
            for m in range(MM):
                xa[m, 0], xa[m, 1] = _ld16(A, uint64(int64(m) * ku + c * 16 + 4 * t))
                xa[m, 2], xa[m, 3] = _ld16(A, uint64(int64(m) * ku + c * 16 + 4 * t + 2))
        pf_lane = (lane & 7) == 0             # lanes 0, 8, 16, 24: the 4 lines of a warp's 512-byte chunk
        if PF > 0 and pf_lane:
            for a in range(2, PF):
                ca = c + a * ROWS_WARPS
                if ca < chunks:
                    _prefetch_l2(T, wbase + ca * 64)
        for i in range(per):
            c = int64(warp) + i * ROWS_WARPS
            if c < chunks:
                wv[0] = nx[0]                 # rotate: this chunk's inputs now, c + 2 W's loads next
                wv[1] = nx[1]
                nx[0] = nx[2]
                nx[1] = nx[3]
                for j in range(4):
                    sq[j] = sq[j + 2]
                    sa[j] = sa[j + 2]
                if not XAHEAD:                # this chunk's activations now
                    for m in range(MM):
                        xa[m, 0], xa[m, 1] = _ld16(A, uint64(int64(m) * ku + c * 16 + 4 * t))
                        xa[m, 2], xa[m, 3] = _ld16(A, uint64(int64(m) * ku + c * 16 + 4 * t + 2))
                for m in range(MM):
                    for w in range(4):
                        x = xa[m, w]
                        av[m, 4 * w], av[m, 4 * w + 1] = _unpack2(uint32(x & 0xFFFFFFFF), KIND)
                        av[m, 4 * w + 2], av[m, 4 * w + 3] = _unpack2(uint32(x >> 32), KIND)
                cpf = c + PF * ROWS_WARPS
                if PF > 0 and pf_lane and cpf < chunks:
                    _prefetch_l2(T, wbase + cpf * 64)
                c2w = c + 2 * ROWS_WARPS
                if c2w < chunks:
                    nx[2], nx[3] = _ld16(T, wbase + c2w * 64)
                    for r in range(2):
                        b = ((e0 if r == 0 else e1) + c2w * TILE_CHUNK) >> bshift
                        sq[4 + r] = int32(a8[uint64(b)]) if nested else int32(0)
                        sa[4 + r] = absmax[uint64(b >> 8)] if nested else absmax[uint64(b)]
                c1 = c + ROWS_WARPS
                if XAHEAD and c1 < chunks:
                    for m in range(MM):
                        xa[m, 0], xa[m, 1] = _ld16(A, uint64(int64(m) * ku + c1 * 16 + 4 * t))
                        xa[m, 2], xa[m, 3] = _ld16(A, uint64(int64(m) * ku + c1 * 16 + 4 * t + 2))
                for r in range(2):
                    for m in range(MM):
                        part[m, 0] = float32(0.0)
                        part[m, 1] = float32(0.0)
                    u = wv[r]
                    for h in range(2):        # 8 elements: 8 h + 0..7 of the lane's 16
                        _dot8(uint32((u >> (32 * h)) & 0xFFFFFFFF), tab, tgrp, tcol, av, 8 * h, part, MM)
                    s = _add(_mul(c2[uint32(sq[r])], sa[r]), off) if nested else sa[r]
                    for m in range(MM):
                        acc[m, r] = _fma(_add(part[m, 0], part[m, 1]), s, acc[m, r])
        cuda.syncthreads()                    # every table read done: its space holds the lanes' sums
        for m in range(MM):
            for r in range(2):
                tab[uint32(((warp * MM + m) * 2 + r) * 32 + lane)] = acc[m, r]
        cuda.syncthreads()
        for q in range(tid, TILE_ROWS * MM, ROWS_THREADS):
            m = q >> 4
            rr = q & 15                       # row of the tile: lane group rr & 7, half rr >> 3
            n = tile * TILE_ROWS + rr
            v = float32(0.0)
            for w in range(ROWS_WARPS):       # warp order, then the row's 4 lanes in order
                for tt in range(4):
                    v = _add(v, tab[uint32(((w * MM + m) * 2 + (rr >> 3)) * 32 + 4 * (rr & 7) + tt)])
            _store_row(out, v, m, n, N, bias, has_bias, KIND)

    _TILED[key] = gemv
    return gemv


def tiled_grid(N: int) -> int:
    """CTAs of ``gemv_tiled``: one 16-row tile each."""
    return -(-N // TILE_ROWS)


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
