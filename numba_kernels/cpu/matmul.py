"""Numba CPU kernel: fused 4-bit dequantize + GEMV/small GEMM (any 16-entry codebook). Pure NumPy, no torch.

out[m, n] = dtype(float32(sum_k A[m, k] * W[n, k]) + bias[n]), W[n, k] = dtype(table[c] * s[block]) -- the
rules of workbench/backends/reference/matmul.py. Per quantization block the kernel builds the block's 16
weight values once (one float32 multiply and one rounding to A's dtype each: exactly the reference's W), so
the inner loop is a table load and a multiply-add per element.

Accumulation (float32, fastmath off, no FMA): per output row n and activation row m, element k of the row
goes to lane k % 8 of 8 float32 partial sums (each lane adds its products in increasing k); the lanes are
combined as ((l0 + l4) + (l2 + l6)) + ((l1 + l5) + (l3 + l7)), then the bias is added in float32 and the
sum rounded once to A's dtype. Odd K (rows that start on a low nibble) take a scalar path with the same lanes.
Parallel over output rows (prange).

Kinds (A / out / bias): 0 = float32, 1 = bfloat16 (uint16 bits), 2 = float16 (uint16 bits).
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange

from .quant import BF16, F16, F32, bf16_bits_to_f32, f16_bits_to_f32, f32_to_bf16_bits, f32_to_f16_bits, load, store

_OPTS = dict(cache=True, fastmath=False, nogil=True)
LANES = 8


@njit(inline="always", **_OPTS)
def round_to_kind(v, kind):
    """float32 v rounded to the kind's precision (round to nearest even), returned as float32 (exact)."""
    if kind == BF16:
        return bf16_bits_to_f32(f32_to_bf16_bits(v))
    if kind == F16:
        return f16_bits_to_f32(f32_to_f16_bits(v))
    return v


@njit(inline="always", **_OPTS)
def block_lut(table, s, kind, lut):
    for j in range(16):
        lut[j] = round_to_kind(np.float32(table[j] * s), kind)


@njit(parallel=True, **_OPTS)
def gemm_4bit_fused(a, M, N, K, packed, absmax, table, blocksize, kind, bias, has_bias, out):
    """a: float32[M * K] (activations widened exactly), packed: uint8[(N*K+1)//2], absmax: float32[nblocks],
    table: float32[16], bias: float32[N] (ignored unless has_bias), out: kind's storage [M * N]."""
    for n in prange(N):
        lut = np.empty(16, np.float32)
        acc = np.zeros((M, LANES), np.float32)
        i0 = n * K
        i = i0
        end_row = i0 + K
        while i < end_row:
            b = i // blocksize
            seg_end = min((b + 1) * blocksize, end_row)
            block_lut(table, absmax[b], kind, lut)
            if (i & 1) == 0 and ((seg_end - i) & 1) == 0:
                for j in range(i, seg_end, 2):
                    byte = np.int64(packed[j >> 1])
                    w0 = lut[byte >> 4]
                    w1 = lut[byte & 15]
                    k = j - i0
                    l0 = k % LANES
                    l1 = (k + 1) % LANES
                    for m in range(M):
                        acc[m, l0] += w0 * a[m * K + k]
                        acc[m, l1] += w1 * a[m * K + k + 1]
            else:
                for j in range(i, seg_end):
                    byte = np.int64(packed[j >> 1])
                    c = (byte >> 4) if (j & 1) == 0 else (byte & 15)
                    w = lut[c]
                    k = j - i0
                    for m in range(M):
                        acc[m, k % LANES] += w * a[m * K + k]
            i = seg_end
        for m in range(M):
            y = ((acc[m, 0] + acc[m, 4]) + (acc[m, 2] + acc[m, 6])) + ((acc[m, 1] + acc[m, 5]) + (acc[m, 3] + acc[m, 7]))
            if has_bias:
                y = np.float32(y + bias[n])
            store(out, m * N + n, y, kind)


@njit(parallel=True, **_OPTS)
def gemv_4bit_k8(a, N, K, packed, absmax, table, blocksize, kind, out):
    """M = 1, K % 8 == 0 (every block segment of a row is whole 8-element groups on lane 0): the hot path,
    the same order as gemm_4bit_fused (element k into lane k % 8), with the 8 lanes in registers."""
    for n in prange(N):
        lut = np.empty(16, np.float32)
        s0 = s1 = s2 = s3 = s4 = s5 = s6 = s7 = np.float32(0.0)
        i0 = n * K
        i = i0
        end_row = i0 + K
        while i < end_row:
            b = i // blocksize
            seg_end = min((b + 1) * blocksize, end_row)
            block_lut(table, absmax[b], kind, lut)
            for j in range(i, seg_end, 8):
                k = j - i0
                p = j >> 1
                b0 = np.int64(packed[p])
                b1 = np.int64(packed[p + 1])
                b2 = np.int64(packed[p + 2])
                b3 = np.int64(packed[p + 3])
                s0 += lut[b0 >> 4] * a[k]
                s1 += lut[b0 & 15] * a[k + 1]
                s2 += lut[b1 >> 4] * a[k + 2]
                s3 += lut[b1 & 15] * a[k + 3]
                s4 += lut[b2 >> 4] * a[k + 4]
                s5 += lut[b2 & 15] * a[k + 5]
                s6 += lut[b3 >> 4] * a[k + 6]
                s7 += lut[b3 & 15] * a[k + 7]
            i = seg_end
        store(out, n, ((s0 + s4) + (s2 + s6)) + ((s1 + s5) + (s3 + s7)), kind)


@njit(parallel=True, **_OPTS)
def widen(x, kind, out):
    """Activations (kind's storage) -> float32, exactly."""
    for i in prange(x.shape[0]):
        out[i] = load(x, i, kind)
