"""CUDA production kernels for the quant family (cuda_src/quant.cu) behind the backend signatures.

Launches (``cuda_launch``) with device pointers on the current torch stream. The only per-call device allocations
are the outputs: the quantizers get the codebook's bounds/bucket_codes as host arrays (cached by
workbench/codebook_tables.py; the library builds its search table from them once per codebook and keeps
the fine table on each device, <= 32 KB), the dequantizers read the table tensor they are given.
"""
from __future__ import annotations

import ctypes

import torch

from . import check, f32, kernels, load, on_device

from ..registry import register_kernel
from ...codebook_tables import cuda_quant_arrays

from ...wire import DTYPE_CODE
FLAG_BNB_SCALE = 1  # KBIT_QFLAG_BNB_SCALE: bitsandbytes-CUDA scaling (parity studies only)

_c = ctypes
_lib = None


def lib() -> ctypes.CDLL:
    """The family's library, loaded (its launches bound) on first use; its knobs through ctypes."""
    global _lib
    if _lib is None:
        L = load("quant")
        L.kbit_quant_tuning.argtypes = [_c.c_int]      # A/B knob (studies/probes/quant_dequant_ab.py)
        L.kbit_quant_tuning.restype = None
        L.kbit_quant_ieee_build.restype = _c.c_int
        _lib = L
    return _lib


def _dtype(dtype: torch.dtype, what: str = "A") -> int:
    try:
        return DTYPE_CODE[dtype]
    except KeyError:
        raise TypeError(f"{what}: dtype {dtype} not supported by the cuda backend "
                        "(float32/float16/bfloat16)") from None


def _quantize(fn_name: str, A, codebook, blocksize, out_numel, flags: int):
    n = A.numel()
    b_ptr, nb, c_ptr, nc = cuda_quant_arrays(codebook)[2]
    dev = A.device
    out = torch.empty(out_numel, dtype=torch.uint8, device=dev)
    absmax = torch.empty(-(-n // blocksize), dtype=torch.float32, device=dev)
    st = on_device(dev.index, getattr(kernels("quant"), fn_name), A.data_ptr(), _dtype(A.dtype), n, blocksize, b_ptr,
                   nb, c_ptr, nc, out.data_ptr(), absmax.data_ptr(), flags)
    check(st, fn_name)
    return out, absmax


def quantize_blockwise(A, codebook, blocksize, *, flags: int = 0):
    return _quantize("kbit_quantize_blockwise", A, codebook, blocksize, A.numel(), flags)


def quantize_4bit(A, codebook, blocksize, *, flags: int = 0):
    if codebook.size > 16:
        raise ValueError(f"codebook: 4-bit quantization needs at most 16 entries, {codebook.name!r} has {codebook.size}")
    return _quantize("kbit_quantize_4bit", A, codebook, blocksize, (A.numel() + 1) // 2, flags)


def dequantize_blockwise(codes, absmax, table, blocksize, dtype):
    n = codes.numel()
    dev = codes.device
    out = torch.empty(n, dtype=dtype, device=dev)
    tab = f32(table, dev)
    st = on_device(dev.index, kernels("quant").kbit_dequantize_blockwise, codes.data_ptr(), absmax.data_ptr(),
                   tab.data_ptr(), tab.numel(), n, blocksize, out.data_ptr(), _dtype(dtype, "dtype"))
    check(st, "kbit_dequantize_blockwise")
    return out


def dequantize_4bit(packed, absmax, table, blocksize, n, dtype, absmax_8bit=None, absmax_code=None,
                    absmax_offset=None):
    """A double-quantized absmax (``absmax_8bit`` given) is decoded in the kernel (``kbit_dequantize_4bit_nested``:
    the reference's two roundings, nested blocksize 256): one launch, no float32 scale array."""
    dev = packed.device
    out = torch.empty(n, dtype=dtype, device=dev)
    tab = f32(table, dev)
    if tab.numel() != 16:
        raise ValueError(f"table: 4-bit dequantization needs 16 values, got {tab.numel()}")
    q = kernels("quant")
    if absmax_8bit is None:
        st = on_device(dev.index, q.kbit_dequantize_4bit, packed.data_ptr(), absmax.data_ptr(), tab.data_ptr(), n,
                       blocksize, out.data_ptr(), _dtype(dtype, "dtype"))
        check(st, "kbit_dequantize_4bit")
        return out
    code2, offset = f32(absmax_code, dev), f32(absmax_offset, dev)
    st = on_device(dev.index, q.kbit_dequantize_4bit_nested, packed.data_ptr(), absmax.data_ptr(),
                   absmax_8bit.data_ptr(), code2.data_ptr(), offset.data_ptr(), tab.data_ptr(), n, blocksize,
                   out.data_ptr(), _dtype(dtype, "dtype"))
    check(st, "kbit_dequantize_4bit_nested")
    return out


# Importing this module registers its kernels against the declarations in workbench/library.py.
register_kernel("workbench::quantize_blockwise", "cuda")(quantize_blockwise)
register_kernel("workbench::dequantize_blockwise", "cuda")(dequantize_blockwise)
register_kernel("workbench::quantize_4bit", "cuda")(quantize_4bit)
register_kernel("workbench::dequantize_4bit", "cuda")(dequantize_4bit)
