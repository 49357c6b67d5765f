"""CUDA kernels of the k-bit family (cuda_src/kbit.cu, header kbit_kbit.h) behind the backend signatures.

A first, exact version (rules: workbench/backends/reference/kbit.py); ctypes calls with device pointers on
the current torch stream. The library is loaded on first call, so a failed build takes down this family only.
"""
from __future__ import annotations

import ctypes

import torch

from . import check, load, on, ptr, stream
from ..reference.kbit import nblocks, packed_words
from ..registry import register_kernel

from ...wire import ELEMENT_KIND as KIND
FMT = {"fp32": 0, "fp16": 1, "bf16": 2, "e4m4": 3, "e8m0": 4, "e4m3": 5}
LAYOUT = {"bitplane": 0, "dense": 1}
_c = ctypes
_lib = None


def lib() -> ctypes.CDLL:
    global _lib
    if _lib is None:
        L = load("kbit")
        P, I, LL = _c.c_void_p, _c.c_int, _c.c_longlong
        L.kbit_kbit_quantize.argtypes = [P, I, LL, I, P, I, I, I, I, I, I, P, P, P, P, P, P, LL, P]
        L.kbit_kbit_quantize.restype = I
        L.kbit_kbit_dequantize.argtypes = [P, LL, LL, I, I, I, P, LL, I, P, P, I, P, P, P]
        L.kbit_kbit_dequantize.restype = I
        _lib = L
    return _lib


def _floor_log2(a: float) -> int:
    import math
    return math.frexp(a)[1] - 1


def _scales_tensor(bits: torch.Tensor, fmt: str) -> torch.Tensor:
    if fmt == "fp32":
        return bits.view(torch.float32)
    if fmt in ("fp16", "bf16"):
        return (((bits + 32768) & 0xFFFF) - 32768).to(torch.int16).view(torch.float16 if fmt == "fp16" else torch.bfloat16)
    return bits.to(torch.uint8)


def _scale_bits(scales: torch.Tensor, fmt: str) -> torch.Tensor:
    if fmt == "fp32":
        return scales.contiguous().view(torch.int32)
    if fmt in ("fp16", "bf16"):
        return scales.contiguous().view(torch.int16).to(torch.int32) & 0xFFFF
    return scales.to(torch.int32)


def quantize_kbit(A, codebook, k, blocksize, layout, scale_format, codes_against):
    dev = A.device
    n = A.numel()
    nb = nblocks(n, blocksize)
    cb = codebook.to(device=dev, dtype=torch.float32).contiguous()
    emax = _floor_log2(float(codebook.detach().abs().max()))
    absmax, D, q = (torch.empty(nb, dtype=torch.float32, device=dev) for _ in range(3))
    bits = torch.empty(nb, dtype=torch.int32, device=dev)
    ts = torch.empty(1, dtype=torch.float32, device=dev)
    nw = packed_words(n, k, layout)
    out = torch.empty(nw, dtype=torch.int32, device=dev)
    with on(dev):
        check(lib().kbit_kbit_quantize(ptr(A), KIND[A.dtype], n, blocksize, ptr(cb), cb.numel(), k, LAYOUT[layout],
                                       FMT[scale_format], emax, int(codes_against == "decoded"), ptr(absmax),
                                       ptr(bits), ptr(D), ptr(q), ptr(ts), ptr(out), nw, stream(dev)),
              "kbit_kbit_quantize")
    return out, _scales_tensor(bits, scale_format), (ts if scale_format == "e4m3" else ts[:0])


def dequantize_kbit(packed, scales, tensor_scale, codebook, k, blocksize, n, layout, scale_format, dtype):
    dev = packed.device
    bits = _scale_bits(scales.reshape(-1), scale_format).contiguous()
    ts = tensor_scale.reshape(-1)[:1].to(dev, torch.float32).contiguous()
    if ts.numel() == 0:
        ts = torch.ones(1, dtype=torch.float32, device=dev)
    cb = codebook.to(device=dev, dtype=torch.float32).contiguous()
    D = torch.empty(bits.numel(), dtype=torch.float32, device=dev)
    out = torch.empty(n, dtype=dtype, device=dev)
    words = packed.reshape(-1).contiguous()
    with on(dev):
        check(lib().kbit_kbit_dequantize(ptr(words), words.numel(), n, k, LAYOUT[layout], blocksize, ptr(bits),
                                         bits.numel(), FMT[scale_format], ptr(ts), ptr(cb), KIND[dtype], ptr(D),
                                         ptr(out), stream(dev)),
              "kbit_kbit_dequantize")
    return out


register_kernel("workbench::quantize_kbit", "cuda")(quantize_kbit)
register_kernel("workbench::dequantize_kbit", "cuda")(dequantize_kbit)
