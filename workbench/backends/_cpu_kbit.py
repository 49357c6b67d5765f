"""The k-bit-family adapter shared by the compiled CPU backends.

numba_kernels/cpu/kbit.py and workbench/_native/kbit_cpu.pyx expose the same kernel functions on
NumPy arrays (block_absmax, encode_scales, decode_scales, quantize_groups, dequantize_groups,
floor_log2, FMT_IDS, LAYOUT_IDS, and for affine groups group_range, quantize_affine_groups,
dequantize_affine_groups); :func:`bind` wraps either into the four ops of the backend contract (rules:
workbench/backends/reference/kbit.py and kbit_affine.py): torch tensors in, zero-copy views, outputs allocated
here. Affine scales and zero points (one value per group) come from the spec's own torch code
(``reference.kbit_affine.qparams``) on the ranges the kernels find (min-max, or the MSE clip search).
"""
from __future__ import annotations

import numpy as np
import torch

from ..codebook_tables import kbit_search_table
from ._cpu_common import alloc, as_numpy_bits, kind_of
from ..validation import nonfinite_flag
from .reference import kbit_affine as RA
from .reference.kbit import nblocks, packed_words


_CLIP_GRID = np.array(RA.CLIP_GRID, np.float32)


def _empty(n: int, dtype: torch.dtype) -> torch.Tensor:
    """Every output the kernels write (tests poison it to prove each element is written)."""
    return alloc(n, dtype)


def _scales_tensor(bits: np.ndarray, fmt: str) -> torch.Tensor:
    if fmt == "fp32":
        return torch.from_numpy(bits.view(np.int32)).view(torch.float32)
    if fmt in ("fp16", "bf16"):
        return torch.from_numpy(bits.astype(np.uint16).view(np.int16)).view(
            torch.float16 if fmt == "fp16" else torch.bfloat16)
    return torch.from_numpy(bits.astype(np.uint8))


def _scale_bits(scales: torch.Tensor, fmt: str) -> np.ndarray:
    s = scales.detach().reshape(-1).contiguous()
    if fmt == "fp32":
        return np.ascontiguousarray(s.view(torch.int32).numpy().view(np.uint32))
    if fmt in ("fp16", "bf16"):
        return s.view(torch.int16).numpy().view(np.uint16).astype(np.uint32)
    return s.numpy().astype(np.uint32)


def _codebook(codebook: torch.Tensor) -> np.ndarray:
    return np.ascontiguousarray(codebook.detach().to("cpu", torch.float32).numpy())


_NO_TABLE = np.zeros(4, np.uint32)   # one cell per sign (half = 1): lookups stay in bounds, safe = 0 discards them
_CPU = torch.device("cpu")


def _search_table(codebook: torch.Tensor):
    """(entries as uint32 pairs, sh, kbase, half, safe) of the codebook's search table (codebook_tables.
    kbit_search_table, cached per codebook tensor); safe = 0 without one (the kernels search every element)."""
    t, _, sh, kbase, half, safe = kbit_search_table(codebook, _CPU)
    if t is None:
        return _NO_TABLE, 0, 0, 1, np.float32(0)
    return t.numpy().view(np.uint32), sh, kbase, half, np.float32(safe)


def bind(K, module: str) -> dict:
    """quantize_kbit / dequantize_kbit over kernel module ``K``, ``__module__`` set to the backend's."""

    def quantize_kbit(A, codebook, k, blocksize, layout, scale_format, codes_against):
        x, kind = as_numpy_bits(A)
        x = x.view(np.uint16)            # float32 as two halves: one kernel signature for every kind
        n = A.numel()
        cb = _codebook(codebook)
        nb = nblocks(n, blocksize)
        absmax = np.empty(nb, np.float32)
        K.block_absmax(x, kind, n, blocksize, absmax)
        bits = np.empty(nb, np.uint32)
        D = np.empty(nb, np.float32)
        q = np.empty(nb, np.float32)
        emax = int(K.floor_log2(np.float32(np.abs(cb).max())))
        ts = K.encode_scales(absmax, K.FMT_IDS[scale_format], emax, codes_against == "decoded", bits, D, q)
        words = _empty(packed_words(n, k, layout), torch.int32)
        tab, sh, kbase, half, safe = _search_table(codebook)
        K.quantize_groups(x, kind, n, blocksize, q, cb, tab, sh, kbase, half, safe, k, K.LAYOUT_IDS[layout],
                          words.numpy().view(np.uint32))
        tensor_scale = torch.tensor([ts], dtype=torch.float32) if scale_format == "e4m3" else torch.empty(0)
        return words, _scales_tensor(bits, scale_format), tensor_scale, nonfinite_flag(A)

    def dequantize_kbit(packed, scales, tensor_scale, codebook, k, blocksize, n, layout, scale_format, dtype):
        kind_of(dtype, "dtype")
        bits = _scale_bits(scales, scale_format)
        D = np.empty(bits.size, np.float32)
        ts = np.float32(tensor_scale.reshape(-1)[0].item()) if tensor_scale.numel() else np.float32(1.0)
        K.decode_scales(bits, K.FMT_IDS[scale_format], ts, D)
        out = _empty(n, dtype)
        arr, okind = as_numpy_bits(out)
        arr = arr.view(np.uint16)
        words = packed.detach().reshape(-1).contiguous().numpy().view(np.uint32)
        K.dequantize_groups(words, n, k, K.LAYOUT_IDS[layout], blocksize, D, _codebook(codebook), okind, arr)
        return out

    def quantize_kbit_affine(A, k, groupsize, layout, scale_format, clip):
        x, kind = as_numpy_bits(A)
        x = x.view(np.uint16)
        n = A.numel()
        nb = nblocks(n, groupsize)
        lo, hi = np.empty(nb, np.float32), np.empty(nb, np.float32)
        if clip == "minmax":
            K.group_range(x, kind, n, groupsize, lo, hi)
        else:
            K.mse_clip_range(x, kind, n, groupsize, k, K.FMT_IDS[scale_format], _CLIP_GRID, lo, hi)
        S, z, _, r = RA.qparams(torch.from_numpy(lo), torch.from_numpy(hi), k, scale_format)
        words = _empty(packed_words(n, k, layout), torch.int32)
        K.quantize_affine_groups(x, kind, n, groupsize, r.numpy(), z.numpy(), k, K.LAYOUT_IDS[layout],
                                 words.numpy().view(np.uint32))
        return words, S, z

    def dequantize_kbit_affine(packed, scales, zeros, k, groupsize, n, layout, dtype):
        kind_of(dtype, "dtype")
        D = np.ascontiguousarray(scales.detach().reshape(-1).float().numpy())
        z = np.ascontiguousarray(zeros.detach().reshape(-1).numpy())
        out = _empty(n, dtype)
        arr, okind = as_numpy_bits(out)
        words = packed.detach().reshape(-1).contiguous().numpy().view(np.uint32)
        K.dequantize_affine_groups(words, n, k, K.LAYOUT_IDS[layout], groupsize, D, z, okind, arr.view(np.uint16))
        return out

    ops = {"quantize_kbit": quantize_kbit, "dequantize_kbit": dequantize_kbit,
           "quantize_kbit_affine": quantize_kbit_affine, "dequantize_kbit_affine": dequantize_kbit_affine}
    for f in ops.values():
        f.__module__ = module
    return ops
