"""Cython/OpenMP adapter for the matmul family (kernel: workbench/_native/matmul_cpu.pyx).

Paths, first that applies:
* byte planes (M <= PLANES_MAX_M, bf16/fp16 activations, K % 64 == 0, blocksize % 64 == 0, AVX2 + F16C + FMA, finite table):
  the GEMV hot path, its own float32 order (pyx docstring; a 512-bit loop with another order where the CPU has
  AVX-512 and K % 128 == 0), held to the reference's error_bound. Where :func:`takes_unscaled` holds (bf16 rows,
  AVX512_BF16) its unscaled-lookup loop runs instead (matmul_cpu_unscaled.h; the codebook rounded to bf16, the block
  scale on each partial sum), held to error_bound_unscaled; ``KBIT_CPU_UNSCALED=0`` keeps rule 2.
  workbench.matmul calls the same kernel without this adapter for plain CPU calls (``_gemv_one_call``);
* 8 lanes by k % 8 (one row; AVX2 for K % 8 == 0): the numba_cpu kernel's order, equal to it bit for bit;
* more rows: dequantize (this backend's dequantizer) + torch's matmul (``dense_matmul``: float32
  sums, one rounding), a few MiB of the weight at a time (``_cpu_quant.dequant_matmul``).
"""
from __future__ import annotations

import numpy as np
import torch

from . import native
from .._cpu_quant import block_scales, dequant_matmul
from ..registry import register_kernel

FUSED_MAX_M = 1   # the lanes' rows are scalar: from 2 rows the pieces below are faster (dequant_pieces_zen4)
PLANES_MAX_M = 32   # the byte-plane path decodes a row once for all M activation rows
_NO_BIAS = np.zeros(1, np.float32)
_NO_A8 = np.zeros(1, np.uint8)
_NO_BITS = np.zeros(1, np.uint16)
_KIND = {torch.float32: 0, torch.bfloat16: 1, torch.float16: 2}


def takes_unscaled(dtype: torch.dtype, M: int, K: int, blocksize: int) -> bool:
    """Whether gemm_4bit sends M rows of ``dtype`` to the unscaled-lookup loop (held to error_bound_unscaled). It
    still takes the rule-2 loop, whose bound the unscaled one contains, for a codebook with an entry that is
    subnormal or infinite in bf16, an activation row that holds a subnormal, and a weight row with a NaN or Inf
    scale."""
    lib = native("matmul")
    return (dtype == torch.bfloat16 and lib.unscaled_on() and 1 <= M <= PLANES_MAX_M and K % lib.WIDE_UNIT == 0
            and blocksize % lib.UNIT == 0)


def gemm_4bit(A, B, shapeB, absmax, table, blocksize, bias=None, absmax_8bit=None, absmax_code=None,
              absmax_offset=None):
    N, K = int(shapeB[0]), int(shapeB[1])
    M = A.shape[0]
    try:
        kind = _KIND[A.dtype]
    except KeyError:
        raise TypeError(f"A: the compiled CPU kernels read float32, bfloat16 or float16, not {A.dtype}") from None
    tab = table if table.dtype == torch.float32 and table.is_contiguous() else table.float().contiguous()
    lib = native("matmul")
    if M <= PLANES_MAX_M and kind and K % lib.UNIT == 0 and blocksize % lib.UNIT == 0 and lib.HAS_PLANES:
        y = _planes(lib, A, B, N, K, absmax, absmax_8bit, absmax_code, absmax_offset, tab, blocksize, kind, bias)
        if y is not None:
            return y
    if M == 1 and K % 8 == 0 and lib.HAS_AVX2:
        a = A.detach().reshape(-1).float().contiguous()
        out = torch.empty(N, dtype=torch.float32)
        bb = _NO_BIAS if bias is None else bias.detach().float().contiguous().numpy()
        nested = absmax_8bit is not None
        lib.gemv_4bit_nested(a.numpy(), N, K, B.reshape(-1).numpy(), absmax.reshape(-1).float().contiguous().numpy(),
                             absmax_8bit.reshape(-1).numpy() if nested else _NO_A8,
                             absmax_code.float().contiguous().numpy() if nested else _NO_BIAS,
                             float(absmax_offset) if nested else 0.0, nested, tab.numpy(), blocksize, kind, bb,
                             bias is not None, out.numpy())
        return out.to(A.dtype).view(1, N)
    s = block_scales(native("quant"), absmax, absmax_8bit, absmax_code, absmax_offset)
    if M > FUSED_MAX_M:
        return dequant_matmul(native("quant"), A, B, shapeB, s, tab, blocksize, bias)
    a = A.detach().reshape(-1).float().contiguous()
    out = torch.empty(M * N, dtype=torch.float32)
    bb = _NO_BIAS if bias is None else bias.detach().float().contiguous().numpy()
    native("matmul").gemm_4bit_fused(a.numpy(), M, N, K, B.reshape(-1).numpy(), s, tab.numpy(), blocksize,
                                     kind, bb, bias is not None, out.numpy())
    return out.to(A.dtype).view(M, N)


def _np(t: torch.Tensor, dtype=None) -> np.ndarray:
    """A flat NumPy view of a CPU tensor with as few torch calls as possible: after a large kernel has streamed
    the caches, each dispatched torch op costs tens of microseconds (about 0.3 ms per call was spent in ~30 of them),
    while ``Tensor.numpy`` and NumPy's own reshapes are not dispatched. bf16/fp16 come back as uint16 patterns."""
    if t.dtype in (torch.bfloat16, torch.float16):
        t = t.view(torch.int16)
    elif dtype is not None and t.dtype != dtype:
        t = t.to(dtype)
    if not t.is_contiguous():
        t = t.contiguous()
    a = t.numpy().reshape(-1)
    return a.view(np.uint16) if a.dtype == np.int16 else a


def _planes(lib, A, B, N, K, absmax, absmax_8bit, absmax_code, absmax_offset, tab, blocksize, kind, bias):
    M = A.shape[0]
    out = torch.empty(M, N, dtype=A.dtype)
    nested = absmax_8bit is not None
    done = lib.gemv_4bit_planes(_np(A), M, N, K, _np(B), _np(absmax, torch.float32),
                                _np(absmax_8bit) if nested else _NO_A8,
                                _np(absmax_code, torch.float32) if nested else _NO_BIAS,
                                float(_np(absmax_offset, torch.float32)[0]) if nested else 0.0, nested, _np(tab),
                                blocksize, kind, _NO_BITS if bias is None else _np(bias), bias is not None, _np(out))
    return out if done else None   # not done: a table with NaN or Inf


def gemv_4bit(A, B, shapeB, absmax, table, blocksize):
    return gemm_4bit(A, B, shapeB, absmax, table, blocksize)


register_kernel("workbench::gemv_4bit", "cython_cpu")(gemv_4bit)
register_kernel("workbench::gemm_4bit", "cython_cpu")(gemm_4bit)
