"""Numba CUDA matmul family (prototypes; kernels: numba_kernels/cuda/matmul.py): torch tensors in, float32 sums out,
rounded once to A's dtype here (rule 4 of workbench/backends/reference/matmul.py).

M <= GEMV_MAX_M: the fused dequant-GEMV (lanes as output rows, ``gemv_rows``, when K % 32 == 0, the blocksize is
a power of two >= 32 and A and B are 16-byte aligned; else a block per row, 4-byte words when K % 8 == 0); above:
the simple tiled GEMM. Both decode the nested absmax in the kernel. Under the CUDA simulator the backend takes CPU
tensors (small inputs only).

fp16/bf16 rows that the cuda backend's dispatch sends to its unscaled-lookup GEMM (``takes_lut``: 2..4 rows with
K % 64 == 0 and blocksize >= 64, one row on weights of more than 2^24 elements, a codebook finite in A's dtype) go to
``gemv_tiled`` instead, given 16-byte aligned A and a power-of-two blocksize: it reads the cuda backend's tiled copy of
the weight (made once and kept, workbench/backends/cuda/gemm_layout.py) with unscaled lookups, so it is held to
``error_bound_unscaled`` like the production GEMM; the other rows keep rule 2. So each call has the numerics of the
production path it prototypes. ``KBIT_NUMBA_GEMV_LAYOUT`` (``GEMV_LAYOUT``) = ``rows`` or ``tiled`` forces one layout
where it applies (the A/B of studies/probes/numba_gemv_layout_ab.py); ``auto``, the default, is the rule above.
"""
from __future__ import annotations

import os

import torch

from numba_kernels.cuda import matmul as K

from ._launch import as_array, launch
from ..cuda import gemm_layout
from ..cuda.matmul import table_fits, takes_lut
from ..registry import register_kernel

GEMV_LAYOUT = os.environ.get("KBIT_NUMBA_GEMV_LAYOUT", "auto")

_KIND = {torch.float32: K.F32, torch.float16: K.F16, torch.bfloat16: K.BF16}


def _arr(t: torch.Tensor):
    t = t.contiguous().reshape(-1)
    return as_array(t.view(torch.int16) if t.dtype == torch.bfloat16 else t)


_absent: dict = {}   # (device, dtype) -> a one-element zero array


def _absent_input(dev: torch.device, dtype: torch.dtype):
    """The argument a kernel takes for an absent input (no nested absmax, no bias): never read, so one zero per device
    and dtype, made once (a tensor made per call is a fill kernel per call, microseconds of GPU time beside a GEMV of
    a few)."""
    a = _absent.get((dev, dtype))
    if a is None:
        a = _absent[dev, dtype] = _arr(torch.zeros(1, dtype=dtype, device=dev))
    return a


def gemm_4bit(A, B, shapeB, absmax, table, blocksize, bias=None, absmax_8bit=None, absmax_code=None,
              absmax_offset=None):
    try:
        kind = _KIND[A.dtype]
    except KeyError:
        raise TypeError(f"A: dtype {A.dtype} not supported by numba_cuda (float32/float16/bfloat16)") from None
    N, Kd = int(shapeB[0]), int(shapeB[1])
    M = A.shape[0]
    dev = A.device
    out = torch.empty(M * N, dtype=torch.float32, device=dev)
    nested = absmax_8bit is not None
    a8 = _arr(absmax_8bit) if nested else _absent_input(dev, torch.uint8)
    code2 = _arr(absmax_code.float()) if nested else _absent_input(dev, torch.float32)
    offset = _arr(absmax_offset.float().reshape(1)) if nested else _absent_input(dev, torch.float32)
    b = _arr(bias) if bias is not None else _absent_input(dev, A.dtype)
    A = A.contiguous()
    if (GEMV_LAYOUT != "rows" and M <= K.GEMV_MAX_M and kind != K.F32 and K.tiled_applies(Kd, int(blocksize))
            and A.data_ptr() % 16 == 0 and table_fits(table, A.dtype)
            and (GEMV_LAYOUT == "tiled" or takes_lut(A.dtype, M, N, Kd, int(blocksize), True))):
        codes = gemm_layout.tiled_copy(B, N, Kd)   # None: copies off, or no room (then the row layout below)
        if codes is not None:
            launch(K.gemv_tiled(M, kind), K.tiled_grid(N), K.ROWS_THREADS, dev,
                   as_array(A.reshape(-1).view(torch.int64)), N, Kd, as_array(codes.view(torch.int64)),
                   _arr(absmax.float()), a8, code2, offset, int(nested), _arr(table.float()),
                   int(blocksize).bit_length() - 1, b, int(bias is not None), _arr(out))
            return out.view(M, N).to(A.dtype)
    ch = K.rows_chunk(Kd, int(blocksize)) if M <= K.GEMV_MAX_M else 0
    if ch and A.data_ptr() % 16 == 0 and B.data_ptr() % 16 == 0:  # the lanes-as-rows GEMV, 16-byte loads
        launch(K.gemv_rows(ch, M, kind), K.rows_grid(N), K.ROWS_THREADS, dev,
               as_array(A.reshape(-1).view(torch.int64)), N, Kd, as_array(B.reshape(-1).view(torch.int64)),
               _arr(absmax.float()), a8, code2, offset, int(nested), _arr(table.float()),
               int(blocksize).bit_length() - 1, b, int(bias is not None), _arr(out))
        return out.view(M, N).to(A.dtype)
    words = Kd % 8 == 0 and M <= K.GEMV_MAX_M
    packed = B.reshape(-1).view(torch.int32) if words else B.reshape(-1)   # K % 8 == 0: 4-byte words per row
    args = (_arr(A), kind, M, N, Kd, _arr(packed), _arr(absmax.float()), a8, code2, offset, int(nested),
            _arr(table.float()), int(blocksize), b, int(bias is not None), _arr(out))
    if words:
        launch(K.gemv_words, N, K.GEMV_THREADS, dev, *args)
    elif M <= K.GEMV_MAX_M:
        launch(K.gemv, N, K.GEMV_THREADS, dev, *args)
    else:
        launch(K.gemm_tiled, K.gemm_grid(M, N), K.TILE * K.TILE, dev, *args)
    return out.view(M, N).to(A.dtype)


def gemv_4bit(A, B, shapeB, absmax, table, blocksize):
    return gemm_4bit(A, B, shapeB, absmax, table, blocksize)


register_kernel("workbench::gemv_4bit", "numba_cuda")(gemv_4bit)
register_kernel("workbench::gemm_4bit", "numba_cuda")(gemm_4bit)
