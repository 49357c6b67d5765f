"""Cython/OpenMP adapter for the matmul family (kernel: workbench/_native/matmul_cpu.pyx).

Same order as the numba_cpu kernel (8 lanes by k % 8), so the two are equal bit for bit; AVX2 hot path for
M = 1, K % 8 == 0. Above FUSED_MAX_M rows: dequantize once (this backend's dequantizer) + torch float32 matmul.
"""
from __future__ import annotations

import numpy as np
import torch

from . import native
from ..registry import register_kernel

FUSED_MAX_M = 8
_NO_BIAS = np.zeros(1, np.float32)
_NO_A8 = np.zeros(1, np.uint8)
_KIND = {torch.float32: 0, torch.bfloat16: 1, torch.float16: 2}


def _absmax(absmax, absmax_8bit, absmax_code, absmax_offset) -> torch.Tensor:
    if absmax_8bit is None:
        return absmax.detach().reshape(-1).float().contiguous()
    out = torch.empty(absmax_8bit.numel(), dtype=torch.float32)
    native("matmul").resolve_nested(absmax_8bit.reshape(-1).numpy(), absmax.reshape(-1).float().contiguous().numpy(),
                                    absmax_code.float().contiguous().numpy(), float(absmax_offset), out.numpy())
    return out


def gemm_4bit(A, B, shapeB, absmax, table, blocksize, bias=None, absmax_8bit=None, absmax_code=None,
              absmax_offset=None):
    N, K = int(shapeB[0]), int(shapeB[1])
    M = A.shape[0]
    try:
        kind = _KIND[A.dtype]
    except KeyError:
        raise TypeError(f"A: the compiled CPU kernels read float32, bfloat16 or float16, not {A.dtype}") from None
    tab = table.float().contiguous()
    lib = native("matmul")
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
    s = _absmax(absmax, absmax_8bit, absmax_code, absmax_offset)
    if M > FUSED_MAX_M:
        from .quant import dequantize_4bit
        W = dequantize_4bit(B.reshape(-1), s, tab, blocksize, N * K, A.dtype).view(N, K)
        y = A.float() @ W.float().t()
        if bias is not None:
            y = y + bias.float()
        return y.to(A.dtype)
    a = A.detach().reshape(-1).float().contiguous()
    out = torch.empty(M * N, dtype=torch.float32)
    bb = _NO_BIAS if bias is None else bias.detach().float().contiguous().numpy()
    native("matmul").gemm_4bit_fused(a.numpy(), M, N, K, B.reshape(-1).numpy(), s.numpy(), tab.numpy(), blocksize,
                                     kind, bb, bias is not None, out.numpy())
    return out.to(A.dtype).view(M, N)


def gemv_4bit(A, B, shapeB, absmax, table, blocksize):
    return gemm_4bit(A, B, shapeB, absmax, table, blocksize)


register_kernel("workbench::gemv_4bit", "cython_cpu")(gemv_4bit)
register_kernel("workbench::gemm_4bit", "cython_cpu")(gemm_4bit)
