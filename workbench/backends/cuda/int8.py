"""CUDA production kernels for the LLM.int8() family (cuda_src/int8.cu) behind the reference signatures.

Same numerics as workbench/backends/reference/int8.py bit for bit (codes, row/col stats, outlier
columns, int32 matmul, mm dequant). The outlier part of the mixed decomposition is a dense matmul in
A's dtype (cuBLAS through torch.addmm, as bitsandbytes does).
"""
from __future__ import annotations

import functools
import threading

import torch

from . import check, kernels, on_device, ptr, raw_stream

from ..reference.int8 import mixed_scaled_mm_of
from ..registry import register_kernel

from ...wire import DTYPE_CODE
@functools.lru_cache(maxsize=256)
def threshold_in(dtype: torch.dtype, threshold: float) -> float:
    """The threshold as torch compares ``A.abs() >= threshold``: rounded to A's dtype."""
    return float(torch.tensor(float(threshold), dtype=torch.float64).to(dtype))


def _dtype(t: torch.Tensor) -> int:
    try:
        return DTYPE_CODE[t.dtype]
    except KeyError:
        raise TypeError(f"A: dtype {t.dtype} not supported by the cuda backend (float32/float16/bfloat16)") from None


_pinned = threading.local()


def _host_counts(device: torch.device) -> torch.Tensor:
    """Two int64 in pinned host memory that the column-list kernel writes (under unified addressing a
    kernel can store to it directly): the count read needs no device->host copy. One pair per host
    thread and stream; a call synchronizes before it reads them, so the next call may reuse them."""
    bufs = getattr(_pinned, "bufs", None)
    if bufs is None:
        bufs = _pinned.bufs = {}
    key = raw_stream(device.index if device.index is not None else torch.cuda.current_device())
    if key not in bufs:
        bufs[key] = torch.zeros(2, dtype=torch.int64, pin_memory=True)
    return bufs[key]


def _quant_rows(A: torch.Tensor, threshold: float):
    A = A if A.is_contiguous() else A.contiguous()
    rows, cols = A.shape
    dev = A.device
    codes = torch.empty((rows, cols), dtype=torch.int8, device=dev)
    stats = torch.empty(rows, dtype=torch.float32, device=dev)
    use = threshold > 0.0
    pad = (cols + 15) // 16 * 16
    # outlier bookkeeping (cuda_src/int8.cu OutlierWork): column flags, the probe's flags (each padded to
    # 16 bytes, read as 16-byte words), the probe's count and its int32 column list; unused when use == 0
    flags = torch.empty(2 * pad + 16 + 4 * cols, dtype=torch.uint8, device=A.device) if use else None
    index = torch.empty(cols + 2, dtype=torch.int64, device=A.device) if use else None  # columns, counts
    thr = threshold_in(A.dtype, threshold) if use else 0.0
    counts = _host_counts(dev) if use else None
    check(on_device(dev.index, kernels("int8").kbit_int8_vectorwise_quant, A.data_ptr(), _dtype(A), rows, cols,
                    thr, int(use), codes.data_ptr(), stats.data_ptr(), ptr(flags), ptr(index), ptr(counts)),
          "kbit_int8_vectorwise_quant")
    if not use:
        return codes, stats, None
    # the list has a data-dependent size, so reading its count is one device->host sync (bitsandbytes
    # syncs on outliers.any() too); the columns the probe found are zeroed already, late ones (outliers
    # only in rows the probe did not read) are zeroed in every row now
    torch.cuda.current_stream(A.device).synchronize()
    n_cols, n_late = counts.tolist()
    if n_late and rows > 1:
        scratch = torch.empty(cols + 1, dtype=torch.int64, device=A.device)
        check(on_device(dev.index, kernels("int8").kbit_int8_zero_late_cols, ptr(codes), rows, cols, ptr(flags),
                        ptr(scratch)), "kbit_int8_zero_late_cols")
    return codes, stats, index[:n_cols]


def int8_vectorwise_quant(A, threshold):
    return _quant_rows(A, threshold)


def int8_outlier_cols(A, threshold):
    if threshold <= 0.0:
        return torch.empty(0, dtype=torch.int64, device=A.device)
    return _quant_rows(A, threshold)[2]  # the row kernel's column flags


outlier_columns = int8_outlier_cols


def int8_double_quant(A, threshold):
    A = A.contiguous()
    codes, stats, cols = _quant_rows(A, threshold)
    rows, ncols = A.shape
    col_codes = torch.empty((rows, ncols), dtype=torch.int8, device=A.device)
    col_stats = torch.empty(ncols, dtype=torch.float32, device=A.device)
    use = threshold > 0.0
    thr = threshold_in(A.dtype, threshold) if use else 0.0
    check(on_device(A.device.index, kernels("int8").kbit_int8_col_quant, ptr(A), _dtype(A), rows, ncols, thr, int(use),
                    ptr(col_codes), ptr(col_stats)), "kbit_int8_col_quant")
    return codes, col_codes, stats, col_stats, cols


def int8_vectorwise_dequant(A, stats):
    A = A.contiguous()
    out = torch.empty(A.shape, dtype=torch.float32, device=A.device)
    stats = stats.contiguous().float()
    check(on_device(A.device.index, kernels("int8").kbit_int8_vectorwise_dequant, ptr(A), ptr(stats), A.shape[0],
                    A.shape[1], ptr(out)), "kbit_int8_vectorwise_dequant")
    return out


def _int_mm(A, B):
    """cuBLASLt's exact int8 x int8 -> int32 GEMM (torch._int_mm) where its shape rules allow it
    (m > 16, k and n multiples of 8); None otherwise (then our dp4a kernel runs)."""
    M, K = A.shape
    N = B.shape[0]
    if M <= 16 or K % 8 or N % 8 or K < 16:
        return None
    try:
        return torch._int_mm(A, B.t())
    except RuntimeError:
        return None


def int8_linear_matmul(A, B):
    A, B = A.contiguous(), B.contiguous()
    C = _int_mm(A, B)
    if C is not None:
        return C
    M, K = A.shape
    N = B.shape[0]
    C = torch.empty((M, N), dtype=torch.int32, device=A.device)
    check(on_device(A.device.index, kernels("int8").kbit_int8_linear_matmul, ptr(A), ptr(B), ptr(C), M, N, K),
          "kbit_int8_linear_matmul")
    return C


def _bias(bias):
    return None if bias is None else bias.contiguous().float().view(-1)


def int8_mm_dequant(A, row_stats, col_stats, bias=None, dtype=torch.float16):
    A = A.contiguous()
    M, N = A.shape
    out = torch.empty((M, N), dtype=dtype, device=A.device)
    b = _bias(bias)
    rs, cs = row_stats.contiguous().float(), col_stats.contiguous().float()  # keep alive over the call
    check(on_device(A.device.index, kernels("int8").kbit_int8_mm_dequant, ptr(A), ptr(rs), ptr(cs), ptr(b), M, N,
                    ptr(out), _dtype(out)), "kbit_int8_mm_dequant")
    return out


def int8_scaled_mm(CA, CB, SCA, SCB, bias=None, dtype=torch.float16):
    """cuBLASLt int32 GEMM + our dequant kernel where torch._int_mm applies, else the fused dp4a
    GEMM with the dequant epilogue; both exact int32 then the same float32 dequant rounding."""
    CA, CB = CA.contiguous(), CB.contiguous()
    C = _int_mm(CA, CB)
    if C is not None:
        return int8_mm_dequant(C, SCA, SCB, bias, dtype)
    M, K = CA.shape
    N = CB.shape[0]
    out = torch.empty((M, N), dtype=dtype, device=CA.device)
    b = _bias(bias)
    rs, cs = SCA.contiguous().float(), SCB.contiguous().float()  # keep alive over the call
    check(on_device(CA.device.index, kernels("int8").kbit_int8_scaled_mm, ptr(CA), ptr(CB), ptr(rs), ptr(cs), ptr(b),
                    M, N, K, ptr(out), _dtype(out)), "kbit_int8_scaled_mm")
    return out


int8_mixed_scaled_mm = mixed_scaled_mm_of(int8_scaled_mm, int8_vectorwise_dequant)


# Importing this module registers its kernels against the declarations in workbench/library.py.
register_kernel("workbench::int8_vectorwise_quant", "cuda")(int8_vectorwise_quant)
register_kernel("workbench::outlier_columns", "cuda")(outlier_columns)
register_kernel("workbench::int8_double_quant", "cuda")(int8_double_quant)
register_kernel("workbench::int8_vectorwise_dequant", "cuda")(int8_vectorwise_dequant)
register_kernel("workbench::int8_linear_matmul", "cuda")(int8_linear_matmul)
register_kernel("workbench::int8_mm_dequant", "cuda")(int8_mm_dequant)
register_kernel("workbench::int8_scaled_mm", "cuda")(int8_scaled_mm)
register_kernel("workbench::int8_mixed_scaled_mm", "cuda")(int8_mixed_scaled_mm)
