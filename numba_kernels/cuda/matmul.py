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
from numba import config, cuda, float32, int64
from numba.cuda import libdevice

from .quant import BF16, F16, F32, _bf16_bits, _float2half_rn, _half2float, _int_as_float, _load  # noqa: F401

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
