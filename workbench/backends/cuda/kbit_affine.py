"""CUDA kernels of k-bit affine groups (cuda_src/kbit_affine.cu, header kbit_kbit_affine.h) behind the backend
signatures.

Rules: workbench/backends/reference/kbit_affine.py, bit for bit. The split is the numba_cuda backend's
(backends/numba_cuda/kbit_affine.py): the kernels find each group's range (min-max or the MSE clip search), the
per-group scale and zero point come from the spec's own torch code (``reference.kbit_affine.qparams``, on the
device: no host sync), the kernels code, pack and dequantize. launches (``cuda_launch``) with device pointers on
the current torch stream of the input's device.
"""
from __future__ import annotations

import torch

from . import check, kernels, on_device, ptr
from ..reference import kbit_affine as RA
from ..reference.kbit import nblocks, packed_words
from ..registry import register_kernel
from ...wire import ELEMENT_KIND as KIND

FMT = {"fp32": 0, "fp16": 1, "bf16": 2}
LAYOUT = {"bitplane": 0, "dense": 1}


def quantize_kbit_affine(A, k, groupsize, layout, scale_format, clip):
    """-> (packed int32 words, scales [nblocks] in scale_format's dtype, zero points uint8 [nblocks])."""
    dev = A.device
    run = kernels("kbit_affine")
    x = A.reshape(-1).contiguous()
    n = x.numel()
    nb = nblocks(n, groupsize)
    kind = KIND[A.dtype]
    lo = torch.empty(nb, dtype=torch.float32, device=dev)
    hi = torch.empty(nb, dtype=torch.float32, device=dev)
    if clip == "minmax":
        check(on_device(dev.index, run.kbit_affine_range, ptr(x), kind, n, groupsize, nb, ptr(lo), ptr(hi)),
              "kbit_affine_range")
    else:
        grid = RA.clip_grid(dev)
        check(on_device(dev.index, run.kbit_affine_mse, ptr(x), kind, n, groupsize, nb, k, FMT[scale_format],
                        ptr(grid), grid.numel(), ptr(lo), ptr(hi)), "kbit_affine_mse")
    S, z, _, r = RA.qparams(lo, hi, k, scale_format)
    nw = packed_words(n, k, layout)
    words = torch.empty(nw, dtype=torch.int32, device=dev)
    check(on_device(dev.index, run.kbit_affine_codes, ptr(x), kind, n, groupsize, ptr(r.contiguous()), ptr(z), k,
                    LAYOUT[layout], ptr(words), nw), "kbit_affine_codes")
    return words, S, z


def dequantize_kbit_affine(packed, scales, zeros, k, groupsize, n, layout, dtype):
    dev = packed.device
    words, D, z = RA.dequantize_operands(packed, scales, zeros, k, groupsize, n, layout, dev)
    out = torch.empty(n, dtype=dtype, device=dev)
    check(on_device(dev.index, kernels("kbit_affine").kbit_affine_dequantize, ptr(words), words.numel(), n, k,
                    LAYOUT[layout], groupsize, ptr(D), ptr(z), KIND[dtype], ptr(out)), "kbit_affine_dequantize")
    return out


register_kernel("workbench::quantize_kbit_affine", "cuda")(quantize_kbit_affine)
register_kernel("workbench::dequantize_kbit_affine", "cuda")(dequantize_kbit_affine)
