"""CUDA kernels of the k-bit family (cuda_src/kbit.cu, header kbit_kbit.h) behind the backend signatures.

Rules: workbench/backends/reference/kbit.py, bit for bit. The quantizers search through the codebook's table
(codebook_tables.kbit_search_table, built once per codebook tensor). Launches (``cuda_launch``) with device pointers
on the current torch stream of the input's device; scales are written and read in their storage dtype, so no
conversion pass runs around the kernels. The library is loaded on first call, so a failed build takes down this
family only.
"""
from __future__ import annotations

import ctypes

import torch

from . import check, kernels, load, on_device, ptr
from ...codebook_tables import kbit_search_table
from ..reference.kbit import SCALE_DTYPES, dequantize_operands, kernel_codebook, nblocks, packed_words
from ..registry import register_kernel

from ...wire import ELEMENT_KIND as KIND
FMT = {"fp32": 0, "fp16": 1, "bf16": 2, "e4m4": 3, "e8m0": 4, "e4m3": 5}
LAYOUT = {"bitplane": 0, "dense": 1}
_c = ctypes
_lib = None


def lib() -> ctypes.CDLL:
    """The family's library (its knob, kbit_kbit_tuning, through ctypes); the launches go through kernels("kbit")."""
    global _lib
    if _lib is None:
        _lib = load("kbit")
    return _lib


def _fast_path(blocksize: int) -> bool:
    """The fused warp kernel's blocksizes (cuda_src/kbit.cu); others take the two-kernel path."""
    return blocksize == 16 or blocksize % 32 == 0


_NO_TENSOR_SCALE: dict[int, torch.Tensor] = {}   # device index -> float32[0]: the formats without one share it


def quantize_kbit(A, codebook, k, blocksize, layout, scale_format, codes_against):
    dev = A.device
    if not A.is_contiguous():
        A = A.contiguous()
    n = A.numel()
    nb = nblocks(n, blocksize)
    cb = kernel_codebook(codebook, k, dev)
    table, size, sh, kbase, half, safe = kbit_search_table(codebook, dev)   # the caller's tensor: a cache hit
    scales = torch.empty(nb, dtype=SCALE_DTYPES[scale_format], device=dev)
    nonfinite = torch.empty(1, dtype=torch.int32, device=dev)
    nw = packed_words(n, k, layout)
    out = torch.empty(nw, dtype=torch.int32, device=dev)
    # the float32 scratch: e4m3's tensor max (word 0) and the two-kernel path's divisors (the rest); none otherwise.
    # Each allocation costs the host 2-3 us of a call whose kernel takes a few us at small n.
    fast = _fast_path(blocksize)
    scratch = None if fast and scale_format != "e4m3" else torch.empty(1 if fast else 1 + nb, dtype=torch.float32,
                                                                         device=dev)
    if scale_format == "e4m3":
        ts = torch.empty(1, dtype=torch.float32, device=dev)
    else:
        ts = _NO_TENSOR_SCALE.get(dev.index)
        if ts is None:
            ts = _NO_TENSOR_SCALE[dev.index] = torch.empty(0, dtype=torch.float32, device=dev)
    check(on_device(dev.index, kernels("kbit").kbit_kbit_quantize, A.data_ptr(), KIND[A.dtype], n, blocksize,
                    cb.data_ptr(), cb.numel(), k, ptr(table), size, sh, kbase, half, safe, LAYOUT[layout],
                    FMT[scale_format], int(codes_against == "decoded"), scales.data_ptr(),
                    ptr(ts) if ts.numel() else 0, out.data_ptr(), nw, nonfinite.data_ptr(), ptr(scratch)),
          "kbit_kbit_quantize")
    return out, scales, ts, nonfinite


def dequantize_kbit(packed, scales, tensor_scale, codebook, k, blocksize, n, layout, scale_format, dtype):
    dev = packed.device
    words, s, ts = dequantize_operands(packed, scales, tensor_scale, k, blocksize, n, layout, scale_format)
    cb = kernel_codebook(codebook, k, dev)
    out = torch.empty(n, dtype=dtype, device=dev)
    check(on_device(dev.index, kernels("kbit").kbit_kbit_dequantize, words.data_ptr(), words.numel(), n, k,
                    LAYOUT[layout], blocksize, s.data_ptr(), FMT[scale_format], ptr(ts), cb.data_ptr(), cb.numel(),
                    KIND[dtype], out.data_ptr()),
          "kbit_kbit_dequantize")
    return out


register_kernel("workbench::quantize_kbit", "cuda")(quantize_kbit)
register_kernel("workbench::dequantize_kbit", "cuda")(dequantize_kbit)
