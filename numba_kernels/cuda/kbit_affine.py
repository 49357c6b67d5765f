"""Numba CUDA kernels of k-bit affine groups (scale + zero point, int-k codes; K = 1..8, both layouts).

The rules are workbench/backends/reference/kbit_affine.py's docstring, bit for bit, with the structure of the
CPU kernels (numba_kernels/cpu/kbit.py: group_range, mse_clip_range, quantize_affine_groups,
dequantize_affine_groups): the kernels find each group's range (min-max, or the "mse" clip search), the adapter
computes the per-group scale and zero point with the spec's own torch code (``qparams``), then the codes kernel
codes and packs and the dequantize kernel decodes.

IEEE float32 throughout, ``fastmath=False``: every float step is an explicit ``*_rn`` libdevice call on the GPU,
because NVVM contracts a*b + c into an FMA by default even without fastmath (as numba_kernels/cuda/int8.py and
optim.py do); the simulator uses NumPy float32 / float64 arithmetic, which rounds each step. ``x * r`` with
r = 1 / D from the adapter (torchao's multiply by the reciprocal, as the spec says), ``plo / s`` a true
division, rint = round half to even.

Kernels (grid-stride loops, no warp collectives, so the simulator needs no twins):

* ``affine_range``: a thread per group: lo = min(0, min x), hi = max(0, max x) in element order.
* ``affine_mse``: a thread per group: the min-max range, then for each p of the clip grid (float32) the qparams
  of (p*lo, p*hi) (scale stored in fp32 / fp16 / bf16, rounded to nearest even and saturating), the group's
  float32 errors and E = sum of float64(e)**2 in element order; the first least E's range is kept.
* ``affine_codes``: a thread per 32-element chunk g: its codes clamp(rint(x * r[b]) + z[b], 0, 2**K - 1) packed
  into exactly K words (bit-plane: word g*K + b holds bit b of elements 32g..32g+31; dense: the little-endian
  stream, code i at bits [iK, iK + K)), stored where below the word count (dense: the last chunk's words may
  run past it). Codes past n are 0.
* ``affine_dequant``: a thread per element: its code from the words, ``float32(code - z) * D`` rounded once to
  the output kind (as bit patterns: float32 into a uint32 view, 16-bit kinds into a uint16 view).

Element kinds are numba_kernels/cuda/quant.py's (0 float32, 1 float16, 2 bfloat16; 16-bit inputs as int16 bit
patterns). Scale format ids: 0 fp32, 1 fp16, 2 bf16 (the spec's AFFINE_SCALE_FORMATS). Layout ids: 0 bitplane,
1 dense.
"""
from __future__ import annotations

import numpy as np

import workbench._compat  # noqa: F401  (numpy shim, before any kernel compiles)
from numba import config, cuda, float32, float64, int32, int64, uint32, uint64

from .quant import (BF16, F16, F32, _add, _bf16_bits, _dadd, _div, _dmul, _elem_at, _float2half_rn,
                    _float_as_int, _half2float, _int_as_float, _mul, _rint, _sub)

THREADS = 64 if config.ENABLE_CUDASIM else 256   # the simulator runs a Python thread per lane
FMT_IDS = {"fp32": 0, "fp16": 1, "bf16": 2}
LAYOUT_IDS = {"bitplane": 0, "dense": 1}
EPS = np.float32(np.finfo(np.float32).eps)        # the spec's EPS (torch.finfo(float32).eps)


@cuda.jit(device=True, inline=True)
def _stored(s, fmt):
    """D = float32(the scale s > 0 stored in fmt): fp32 itself, fp16 / bf16 rounded to nearest even, saturating
    at the largest finite value (reference.kbit_affine.store_scale)."""
    if fmt == 1:
        h = int32(_float2half_rn(s)) & 0xFFFF
        if (h & 0x7FFF) == 0x7C00:
            h = (h & 0x8000) | 0x7BFF
        return float32(_half2float(int32(h)))
    if fmt == 2:
        b = int32(_bf16_bits(s)) & 0xFFFF
        if (b & 0x7FFF) == 0x7F80:
            b = (b & 0x8000) | 0x7F7F
        return _int_as_float(int32(b << 16))
    return float32(s)


@cuda.jit(device=True, inline=True)
def _group_range(x, kind, n, G, b):
    """(min(0, min x), max(0, max x)) over group b's real elements."""
    start = int64(b) * G
    end = min(start + G, int64(n))
    mn = float32(0.0)
    mx = float32(0.0)
    for i in range(start, end):
        v = _elem_at(x, uint64(i), kind)
        mn = v if v < mn else mn
        mx = v if v > mx else mx
    return mn, mx


@cuda.jit(fastmath=False)
def affine_range(x, kind, n, G, nb, lo, hi):
    """lo[b] = min(0, min x), hi[b] = max(0, max x) over group b's real elements (a thread per group)."""
    b = cuda.grid(1)
    step = cuda.gridsize(1)
    while b < nb:
        mn, mx = _group_range(x, kind, n, G, b)
        lo[b] = mn
        hi[b] = mx
        b += step


@cuda.jit(fastmath=False)
def affine_mse(x, kind, n, G, nb, k, fmt, grid, ngrid, lo, hi):
    """The "mse" clip search per group (a thread per group), as cpu/kbit.py's mse_clip_range."""
    qmax = float32((1 << k) - 1)
    b = cuda.grid(1)
    step = cuda.gridsize(1)
    while b < nb:
        mn, mx = _group_range(x, kind, n, G, b)
        start = int64(b) * G
        end = min(start + G, int64(n))
        best = float64(np.inf)
        blo = mn
        bhi = mx
        for c in range(ngrid):
            p = float32(grid[c])
            plo = _mul(mn, p)
            phi = _mul(mx, p)
            s = _div(_sub(phi, plo), qmax)
            s = s if s > EPS else float32(EPS)
            z = -_rint(_div(plo, s))
            z = float32(0.0) if z < 0 else (qmax if z > qmax else z)
            D = _stored(s, fmt)
            r = _div(float32(1.0), D)
            acc = float64(0.0)
            for i in range(start, end):
                v = _elem_at(x, uint64(i), kind)
                q = _add(_rint(_mul(v, r)), z)
                q = float32(0.0) if q < 0 else (qmax if q > qmax else q)
                e = float64(_sub(_mul(_sub(q, z), D), v))
                acc = _dadd(acc, _dmul(e, e))
            if acc < best:
                best = acc
                blo = plo
                bhi = phi
        lo[b] = blo
        hi[b] = bhi
        b += step


@cuda.jit(fastmath=False)
def affine_codes(x, kind, n, G, r, z, k, layout, out, nw):
    """Chunk g (elements 32g..32g+31, a thread each): codes clamp(rint(x * r[b]) + z[b], 0, 2**k - 1) packed into
    words out[g*k : g*k + k] (those below nw). Codes past n are 0."""
    words = cuda.local.array(9, uint64)
    qmax = float32((1 << k) - 1)
    groups = (int64(n) + 31) // 32
    g = cuda.grid(1)
    step = cuda.gridsize(1)
    while g < groups:
        for w in range(k + 1):
            words[w] = uint64(0)
        base = int64(g) * 32
        for j in range(32):
            i = base + j
            if i >= n:
                break
            bb = i // G
            c = _add(_rint(_mul(_elem_at(x, uint64(i), kind), r[bb])), float32(z[bb]))
            c = float32(0.0) if c < 0 else (qmax if c > qmax else c)
            code = uint64(int64(c))
            if layout == 0:
                for w in range(k):
                    words[w] |= ((code >> uint64(w)) & uint64(1)) << uint64(j)
            else:
                p = j * k
                wi = p >> 5
                off = uint64(p & 31)
                v = code << off
                words[wi] |= v & uint64(0xFFFFFFFF)
                if (p & 31) + k > 32:
                    words[wi + 1] |= v >> uint64(32)
        for w in range(k):
            idx = int64(g) * k + w
            if idx < nw:
                out[uint64(idx)] = uint32(words[w])
        g += step


@cuda.jit(fastmath=False)
def affine_dequant(words, nw, n, k, layout, G, D, z, kind, out):
    """out[i] = float32(code_i - z[b]) * D[b], rounded once to the output kind (a thread per element)."""
    mask = uint64((1 << k) - 1)
    i = cuda.grid(1)
    step = cuda.gridsize(1)
    while i < n:
        g = int64(i) >> 5
        j = uint64(i & 31)
        code = uint64(0)
        if layout == 0:
            base = g * k
            for w in range(k):
                code |= ((uint64(uint32(words[uint64(base + w)])) >> j) & uint64(1)) << uint64(w)
        else:
            p = int64(i) * k
            wi = p >> 5
            both = uint64(uint32(words[uint64(wi)]))
            if wi + 1 < nw:
                both |= uint64(uint32(words[uint64(wi + 1)])) << uint64(32)
            code = (both >> uint64(p & 31)) & mask
        bb = int64(i) // G
        v = _mul(float32(int32(code) - int32(z[bb])), float32(D[bb]))
        if kind == F32:                       # every kind stored as its bit pattern (one array type per kind)
            out[i] = _float_as_int(v) & 0xFFFFFFFF
        elif kind == BF16:
            out[i] = _bf16_bits(v)
        else:
            out[i] = int32(_float2half_rn(v)) & 0xFFFF
        i += step


__all__ = ["BF16", "F16", "F32", "FMT_IDS", "LAYOUT_IDS", "THREADS", "affine_codes", "affine_dequant", "affine_mse",
           "affine_range"]
