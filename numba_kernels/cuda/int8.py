"""Numba CUDA kernels for the LLM.int8() family, bit-exact to workbench/backends/reference/int8.py.

Pure kernels on device arrays (torch adapters live in workbench.backends.numba_cuda.int8). They run
under the CUDA simulator (``NUMBA_ENABLE_CUDASIM=1``) on small inputs: shared memory and
syncthreads only, no warp shuffles. Every rounding float32 operation is an explicit ``*_rn``
libdevice call on the GPU because NVVM contracts a*b+c into an FMA by default (numba does not pass
``fma=0`` without fastmath); the simulator uses NumPy float32 arithmetic, which rounds each step.

Input element kinds: 0 float32, 1 float16, 2 bfloat16 given as its int16 bit pattern.
"""
from __future__ import annotations

import numpy as np

import workbench._compat  # noqa: F401  (numpy.row_stack shim, before any kernel compiles)
from numba import cuda, float32, int32

from .quant import (BF16, F16, F32, _add, _bf16_bits, _div, _float2half_rn, _half2float, _i2f,  # noqa: F401
                    _int_as_float, _load, _mul, _rint)

THREADS = 128
DEQUANT_CONST = np.float32(7.874015718698502e-3)
MM_DEQUANT_CONST = np.float32(6.200124e-05)
F127 = np.float32(127.0)
F1 = np.float32(1.0)


@cuda.jit(device=True, inline=True)
def _q8(v):
    """rne(v) as int8 value; NaN/Inf -> 0."""
    if v != v or abs(v) > float32(1e30):
        return 0
    return int32(_rint(v))


@cuda.jit(device=True, inline=True)
def _round_to(v, kind):
    """float(dtype(v)): v rounded to fp16/bf16 (fp32: unchanged)."""
    if kind == F16:
        return float32(_half2float(_float2half_rn(v)))
    if kind == BF16:
        if v != v or abs(v) > float32(3.0e38):
            return v
        return _int_as_float(_bf16_bits(v) << 16)
    return v


@cuda.jit(fastmath=False)
def row_quant(A, kind, rows, cols, thr, use_thr, codes, stats, flags):
    """One block per row: absmax over non-outliers (flags[c] = 1 for outlier columns), then codes."""
    s_m = cuda.shared.array(THREADS, float32)
    tid = cuda.threadIdx.x
    r = cuda.blockIdx.x
    base = r * cols
    m = float32(0.0)
    for c in range(tid, cols, THREADS):
        x = abs(_load(A, base + c, kind))
        if use_thr != 0 and x >= thr:
            flags[c] = 1
        elif x > m:
            m = x
    s_m[tid] = m
    cuda.syncthreads()
    stride = THREADS // 2
    while stride > 0:
        if tid < stride:
            s_m[tid] = max(s_m[tid], s_m[tid + stride])
        cuda.syncthreads()
        stride //= 2
    m = s_m[0]
    if tid == 0:
        stats[r] = m
    scale = _mul(_div(F1, m), F127)  # torch: row_stats.reciprocal() * 127 (two roundings)
    for c in range(tid, cols, THREADS):
        x = _load(A, base + c, kind)
        q = 0
        if not (use_thr != 0 and abs(x) >= thr):
            q = _q8(_mul(x, scale))
        codes[base + c] = q


@cuda.jit(fastmath=False)
def zero_cols(codes, rows, cols, idx, nidx):
    t = cuda.grid(1)
    if t < rows * nidx:
        r = t // nidx
        j = t - r * nidx
        codes[r * cols + idx[j]] = 0


@cuda.jit(fastmath=False)
def col_stats(A, kind, rows, cols, thr, use_thr, out):
    c = cuda.grid(1)
    if c >= cols:
        return
    m = float32(0.0)
    for r in range(rows):
        x = abs(_load(A, r * cols + c, kind))
        if not (use_thr != 0 and x >= thr) and x > m:
            m = x
    out[c] = m


@cuda.jit(fastmath=False)
def col_codes(A, kind, rows, cols, thr, use_thr, cstats, out):
    i = cuda.grid(1)
    if i >= rows * cols:
        return
    c = i % cols
    x = _load(A, i, kind)
    q = 0
    if not (use_thr != 0 and abs(x) >= thr):
        t = _round_to(_mul(x, F127), kind)
        q = _q8(_div(t, cstats[c]))
    out[i] = q


@cuda.jit(fastmath=False)
def vdequant(q, stats, rows, cols, out):
    i = cuda.grid(1)
    if i < rows * cols:
        out[i] = _mul(_mul(float32(q[i]), stats[i // cols]), DEQUANT_CONST)


@cuda.jit(device=True, inline=True)
def _dot(A, B, m, n, K):
    """sum_k A[m, k] * B[n, k] in int32, k increasing."""
    acc = int32(0)
    for k in range(K):
        acc += int32(A[m * K + k]) * int32(B[n * K + k])
    return acc


@cuda.jit(fastmath=False)
def matmul(A, B, M, N, K, C):
    """C[m, n] = sum_k A[m, k] * B[n, k] in int32; one thread per output."""
    i = cuda.grid(1)
    if i >= M * N:
        return
    m = i // N
    C[i] = _dot(A, B, m, i - m * N, K)


@cuda.jit(device=True, inline=True)
def _deq(acc, rs, cs, bias, has_bias, n):
    v = _mul(_mul(_i2f(int32(acc)), _mul(rs, cs)), MM_DEQUANT_CONST)
    if has_bias != 0:
        v = _add(v, bias[n])
    return v


@cuda.jit(fastmath=False)
def mm_dequant(C, rs, cs, bias, has_bias, M, N, out):
    """float32 result; the adapter rounds it to the output dtype (one rounding, as torch's .to())."""
    i = cuda.grid(1)
    if i < M * N:
        m = i // N
        n = i - m * N
        out[i] = _deq(C[i], rs[m], cs[n], bias, has_bias, n)


@cuda.jit(fastmath=False)
def scaled_mm(A, B, rs, cs, bias, has_bias, M, N, K, out):
    """fused matmul + dequant (float32 out)."""
    i = cuda.grid(1)
    if i >= M * N:
        return
    m = i // N
    n = i - m * N
    out[i] = _deq(_dot(A, B, m, n, K), rs[m], cs[n], bias, has_bias, n)


def grid1(n: int, threads: int = THREADS) -> int:
    return max(1, (n + threads - 1) // threads)
