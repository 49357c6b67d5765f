"""Numba CPU adapter for the matmul family (kernels: numba_kernels/cpu/matmul.py).

The fused kernel (8 lanes by k % 8) runs for one activation row, the GEMV; above that the weight is dequantized (the
numba dequantizer, exact) and multiplied by torch (``dense_matmul``: float32 sums, one rounding, torch's order), a few
MiB of it at a time (``_cpu_quant.dequant_matmul``), as cython_cpu does: the fused loop's rows are scalar, several
times slower than the pieces from 2 rows on (reports/matmul-cpu/dequant_pieces_zen4/). Order and bound:
workbench/backends/reference/matmul.py.
"""
from __future__ import annotations

import numpy as np
import torch

from numba_kernels.cpu import matmul as K
from numba_kernels.cpu import quant as QK

from .._cpu_common import as_numpy_bits, kind_of
from .._cpu_quant import block_scales, dequant_matmul
from ..registry import register_kernel

FUSED_MAX_M = 1
_NO_BIAS = np.zeros(1, np.float32)


def _out(M, N, dtype):
    out = torch.empty(M * N, dtype=dtype)
    return out, (out.numpy() if dtype == torch.float32 else out.view(torch.int16).numpy().view(np.uint16))


def _fused(A, B, shapeB, s, table, blocksize, bias):
    N, Kd = int(shapeB[0]), int(shapeB[1])
    M = A.shape[0]
    kind = kind_of(A.dtype, "A")
    x, _ = as_numpy_bits(A.reshape(-1))
    if kind == 0:
        a = x
    else:
        a = np.empty(x.shape[0], np.float32)
        K.widen(x, kind, a)
    packed = B.reshape(-1).numpy()
    tab = table.float().contiguous().numpy()
    out, o = _out(M, N, A.dtype)
    if M == 1 and Kd % 8 == 0 and bias is None:
        K.gemv_4bit_k8(a, N, Kd, packed, s, tab, blocksize, kind, o)
    else:
        bb = _NO_BIAS if bias is None else bias.float().contiguous().numpy()
        K.gemm_4bit_fused(a, M, N, Kd, packed, s, tab, blocksize, kind, bb, bias is not None, o)
    return out.view(M, N)


def _unfused(A, B, shapeB, s, table, blocksize, bias):
    return dequant_matmul(QK, A, B, shapeB, s, table, blocksize, bias)


def gemm_4bit(A, B, shapeB, absmax, table, blocksize, bias=None, absmax_8bit=None, absmax_code=None,
              absmax_offset=None):
    s = block_scales(QK, absmax, absmax_8bit, absmax_code, absmax_offset)
    fn = _fused if A.shape[0] <= FUSED_MAX_M else _unfused
    return fn(A, B, shapeB, s, table, blocksize, bias)


def gemv_4bit(A, B, shapeB, absmax, table, blocksize):
    return gemm_4bit(A, B, shapeB, absmax, table, blocksize)


register_kernel("workbench::gemv_4bit", "numba_cpu")(gemv_4bit)
register_kernel("workbench::gemm_4bit", "numba_cpu")(gemm_4bit)
