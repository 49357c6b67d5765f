"""CUDA production kernels for the quant family (cuda_src/quant.cu) behind the backend signatures.

ctypes calls with device pointers on the current torch stream. The only per-call device allocations
are the outputs: the quantizers get the codebook's bounds/bucket_codes as host arrays (cached by
workbench/codebook_tables.py; the library builds its search table from them once per codebook and keeps
the fine table on each device, <= 32 KB), the dequantizers read the table tensor they are given.
"""
from __future__ import annotations

import ctypes

import torch

from . import check, load, on, ptr, stream

from ..registry import register_kernel
from ...codebook_tables import cuda_quant_arrays

from ...wire import DTYPE_CODE
FLAG_BNB_SCALE = 1  # KBIT_QFLAG_BNB_SCALE: bitsandbytes-CUDA scaling (parity studies only)

_c = ctypes
_QUANT_ARGS = [_c.c_void_p, _c.c_int, _c.c_longlong, _c.c_int, _c.c_void_p, _c.c_int, _c.c_void_p, _c.c_int,
               _c.c_void_p, _c.c_void_p, _c.c_int, _c.c_void_p]
_lib = None


def lib() -> ctypes.CDLL:
    global _lib
    if _lib is None:
        L = load("quant")
        for name in ("kbit_quantize_blockwise", "kbit_quantize_4bit"):
            getattr(L, name).argtypes = _QUANT_ARGS
            getattr(L, name).restype = _c.c_int
        L.kbit_dequantize_blockwise.argtypes = [_c.c_void_p, _c.c_void_p, _c.c_void_p, _c.c_int, _c.c_longlong,
                                                _c.c_int, _c.c_void_p, _c.c_int, _c.c_void_p]
        L.kbit_dequantize_blockwise.restype = _c.c_int
        L.kbit_dequantize_4bit.argtypes = [_c.c_void_p, _c.c_void_p, _c.c_void_p, _c.c_longlong, _c.c_int,
                                           _c.c_void_p, _c.c_int, _c.c_void_p]
        L.kbit_dequantize_4bit.restype = _c.c_int
        L.kbit_quant_tuning.argtypes = [_c.c_int]      # A/B knob (studies/probes/quant_dequant_ab.py)
        L.kbit_quant_tuning.restype = None
        L.kbit_quant_ieee_build.restype = _c.c_int
        _lib = L
    return _lib


def _dtype(t: torch.Tensor) -> int:
    try:
        return DTYPE_CODE[t.dtype]
    except KeyError:
        raise TypeError(f"A: dtype {t.dtype} not supported by the cuda backend (float32/float16/bfloat16)") from None


def _quantize(fn_name: str, A, codebook, blocksize, out_numel, flags: int):
    n = A.numel()
    bounds, codes = cuda_quant_arrays(codebook)
    out = torch.empty(out_numel, dtype=torch.uint8, device=A.device)
    absmax = torch.empty(-(-n // blocksize), dtype=torch.float32, device=A.device)
    with on(A.device):
        st = getattr(lib(), fn_name)(ptr(A), _dtype(A), n, blocksize, bounds.ctypes.data, len(bounds),
                                     codes.ctypes.data, len(codes), ptr(out), ptr(absmax), flags, stream(A.device))
    check(st, fn_name)
    return out, absmax


def quantize_blockwise(A, codebook, blocksize, *, flags: int = 0):
    return _quantize("kbit_quantize_blockwise", A, codebook, blocksize, A.numel(), flags)


def quantize_4bit(A, codebook, blocksize, *, flags: int = 0):
    if codebook.size > 16:
        raise ValueError(f"codebook: 4-bit quantization needs at most 16 entries, {codebook.name!r} has {codebook.size}")
    return _quantize("kbit_quantize_4bit", A, codebook, blocksize, (A.numel() + 1) // 2, flags)


def _table(table, device) -> torch.Tensor:
    t = table if (table.device == device and table.dtype == torch.float32) else table.to(device, torch.float32)
    return t.contiguous()


def dequantize_blockwise(codes, absmax, table, blocksize, dtype):
    n = codes.numel()
    out = torch.empty(n, dtype=dtype, device=codes.device)
    tab = _table(table, codes.device)
    with on(codes.device):
        st = lib().kbit_dequantize_blockwise(ptr(codes), ptr(absmax), ptr(tab), tab.numel(), n, blocksize, ptr(out),
                                             _dtype(out), stream(codes.device))
    check(st, "kbit_dequantize_blockwise")
    return out


def dequantize_4bit(packed, absmax, table, blocksize, n, dtype):
    out = torch.empty(n, dtype=dtype, device=packed.device)
    tab = _table(table, packed.device)
    if tab.numel() != 16:
        raise ValueError(f"table: 4-bit dequantization needs 16 values, got {tab.numel()}")
    with on(packed.device):
        st = lib().kbit_dequantize_4bit(ptr(packed), ptr(absmax), ptr(tab), n, blocksize, ptr(out), _dtype(out),
                                        stream(packed.device))
    check(st, "kbit_dequantize_4bit")
    return out


# Importing this module registers its kernels against the declarations in workbench/library.py.
register_kernel("workbench::quantize_blockwise", "cuda")(quantize_blockwise)
register_kernel("workbench::dequantize_blockwise", "cuda")(dequantize_blockwise)
register_kernel("workbench::quantize_4bit", "cuda")(quantize_4bit)
register_kernel("workbench::dequantize_4bit", "cuda")(dequantize_4bit)
