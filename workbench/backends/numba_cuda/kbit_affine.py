"""Numba CUDA k-bit affine groups: torch tensors in, the kernels of numba_kernels/cuda/kbit_affine.py, torch out.

Same signatures and outputs as the reference (workbench/backends/reference/kbit_affine.py, the spec) and the
compiled CPU backends (backends/_cpu_kbit.py), and their split: the kernels find each group's range (min-max or
the MSE clip search), the per-group scale and zero point come from the spec's own torch code
(``reference.kbit_affine.qparams``, on the device: no host sync), the kernels code, pack and dequantize.
Tensors go to the kernels zero-copy on torch's current stream (``_launch``). Under the simulator the backend
takes CPU tensors, seen by the kernels as NumPy views.
"""
from __future__ import annotations

import numpy as np
import torch

from numba_kernels.cuda import kbit_affine as K

from ._launch import as_array, launch
from ..reference import kbit_affine as RA
from ..reference.kbit import nblocks, packed_words
from ..registry import register_kernel

_KIND = {torch.float32: K.F32, torch.float16: K.F16, torch.bfloat16: K.BF16}


def _kind(dtype) -> int:
    try:
        return _KIND[dtype]
    except KeyError:
        raise TypeError(f"dtype {dtype} not supported by numba_cuda (float32/float16/bfloat16)") from None


def _in(t: torch.Tensor):
    """An input element array: float32, or 16-bit floats as their int16 patterns."""
    return as_array(t if t.dtype == torch.float32 else t.view(torch.int16))


def _words(t: torch.Tensor):
    """Packed int32 words: the tensor on the GPU (stores truncate), unsigned NumPy in the simulator."""
    return t if t.device.type != "cpu" else as_array(t).view(np.uint32)


def _ctas(work: int, dev: torch.device) -> int:
    """A thread per work item; two CTAs in the simulator (grid-stride loops; each CTA costs a thread per lane)."""
    ctas = max(1, -(-work // K.THREADS))
    return min(ctas, 2) if dev.type == "cpu" else ctas


def quantize_kbit_affine(A, k, groupsize, layout, scale_format, clip):
    """-> (packed int32 words, scales [nblocks] in scale_format's dtype, zero points uint8 [nblocks])."""
    dev = A.device
    x = A.reshape(-1).contiguous()
    n = x.numel()
    nb = nblocks(n, groupsize)
    kind = _kind(A.dtype)
    fmt = K.FMT_IDS[scale_format]
    lo = torch.empty(nb, dtype=torch.float32, device=dev)
    hi = torch.empty(nb, dtype=torch.float32, device=dev)
    if n:
        xa = _in(x)
        if clip == "minmax":
            launch(K.affine_range, _ctas(nb, dev), K.THREADS, dev, xa, kind, n, groupsize, nb, as_array(lo),
                   as_array(hi))
        else:
            grid = RA.clip_grid(dev)
            launch(K.affine_mse, _ctas(nb, dev), K.THREADS, dev, xa, kind, n, groupsize, nb, k, fmt, as_array(grid),
                   grid.numel(), as_array(lo), as_array(hi))
    S, z, _, r = RA.qparams(lo, hi, k, scale_format)
    nw = packed_words(n, k, layout)
    words = torch.empty(nw, dtype=torch.int32, device=dev)
    if n:
        groups = -(-n // 32)
        launch(K.affine_codes, _ctas(groups, dev), K.THREADS, dev, xa, kind, n, groupsize, as_array(r.contiguous()),
               as_array(z), k, K.LAYOUT_IDS[layout], _words(words), nw)
    return words, S, z


def dequantize_kbit_affine(packed, scales, zeros, k, groupsize, n, layout, dtype):
    dev = packed.device
    words, D, z = RA.dequantize_operands(packed, scales, zeros, k, groupsize, n, layout, dev)
    kind = _kind(dtype)
    out = torch.empty(n, dtype=dtype, device=dev)
    if n == 0:
        return out
    bits = out.view(torch.int32 if kind == K.F32 else torch.int16)      # stored as bit patterns
    ob = bits if dev.type != "cpu" else as_array(bits).view(np.uint32 if kind == K.F32 else np.uint16)
    launch(K.affine_dequant, _ctas(n, dev), K.THREADS, dev, _words(words), words.numel(), n, k, K.LAYOUT_IDS[layout],
           groupsize, as_array(D), as_array(z), kind, ob)
    return out


# Importing this module registers its kernels against the declarations in workbench/library.py.
register_kernel("workbench::quantize_kbit_affine", "numba_cuda")(quantize_kbit_affine)
register_kernel("workbench::dequantize_kbit_affine", "numba_cuda")(dequantize_kbit_affine)
