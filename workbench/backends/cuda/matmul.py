"""CUDA production kernels for the matmul family (cuda_src/matmul.cu) behind the reference signatures.

M <= 4 activation rows: the fused dequant-GEMV ``kbit_gemv_4bit`` (nested absmax decoded in the kernel, codebook
in shared memory, bias in its epilogue). Larger M: the weight is dequantized once (this backend's
dequantize_4bit; nested scales by rule 1 with torch elementwise ops) and multiplied by cuBLAS in float32 (the
bias added in float32, one rounding to A's dtype) -- correct, not yet fast: the tensor-core GEMM is still to come. Numerics and bound: workbench/backends/reference/matmul.py.
"""
from __future__ import annotations

import ctypes

import torch

from . import check, load, on, ptr, stream
from ..registry import register_kernel

from ...wire import DTYPE_CODE
GEMV_MAX_M = 4
_c = ctypes
_P, _I, _L = _c.c_void_p, _c.c_int, _c.c_longlong
_lib = None


def lib() -> ctypes.CDLL:
    global _lib
    if _lib is None:
        L = load("matmul")
        L.kbit_gemv_4bit.argtypes = [_P, _I, _I, _L, _L, _P, _P, _P, _P, _P, _P, _I, _P, _P, _P]
        L.kbit_gemv_4bit.restype = _I
        L.kbit_matmul_ieee_build.restype = _I
        _lib = L
    return _lib


def _f32(t, device):
    return t if (t.device == device and t.dtype == torch.float32 and t.is_contiguous()) else \
        t.to(device, torch.float32).contiguous()


def gemm_4bit(A, B, shapeB, absmax, table, blocksize, bias=None, absmax_8bit=None, absmax_code=None,
              absmax_offset=None):
    N, K = int(shapeB[0]), int(shapeB[1])
    M = A.shape[0]
    dev = A.device
    try:
        dt = DTYPE_CODE[A.dtype]
    except KeyError:
        raise TypeError(f"A: dtype {A.dtype} not supported by the cuda backend (float32/float16/bfloat16)") from None
    tab = _f32(table, dev)
    if M <= GEMV_MAX_M:
        out = torch.empty((M, N), dtype=A.dtype, device=dev)
        code2 = None if absmax_8bit is None else _f32(absmax_code, dev)
        off = None if absmax_8bit is None else _f32(absmax_offset.reshape(1), dev)
        with on(dev):
            st = lib().kbit_gemv_4bit(ptr(A), dt, M, N, K, ptr(B), ptr(absmax), ptr(absmax_8bit), ptr(code2),
                                      ptr(off), ptr(tab), blocksize, ptr(bias), ptr(out), stream(dev))
        check(st, "kbit_gemv_4bit")
        return out
    from .quant import dequantize_4bit
    from ..reference.matmul import resolve_absmax
    s = resolve_absmax(absmax, absmax_8bit, absmax_code, absmax_offset).contiguous()
    W = dequantize_4bit(B, s, tab, blocksize, N * K, A.dtype).view(N, K)
    # float32 operands: cuBLAS's bf16/fp16 GEMM may reduce split-K partials in 16 bits
    # (allow_bf16_reduced_precision_reduction), outside the spec's bound; TF32 is off for matmul by default.
    y = A.float() @ W.float().t()
    if bias is not None:
        y = y + bias.float()
    return y.to(A.dtype)


def gemv_4bit(A, B, shapeB, absmax, table, blocksize):
    return gemm_4bit(A, B, shapeB, absmax, table, blocksize)


register_kernel("workbench::gemv_4bit", "cuda")(gemv_4bit)
register_kernel("workbench::gemm_4bit", "cuda")(gemm_4bit)
