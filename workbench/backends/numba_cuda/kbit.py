"""Numba CUDA k-bit family: torch tensors in, the kernels of numba_kernels/cuda/kbit.py, torch out.

Same signatures and outputs as workbench/backends/cuda/kbit.py (rules: workbench/backends/reference/kbit.py),
plus the non-finite flag as the quantizer's 4th output. Tensors go to the kernels zero-copy on torch's current
stream (``_launch``); no host sync (the MX emax is computed by the absmax kernel from the codebook). Under the
simulator the backend takes CPU tensors, seen by the kernels as NumPy views.
"""
from __future__ import annotations

import numpy as np
import torch

from numba_kernels.cuda import kbit as K
from numba_kernels.cuda import kbit_lane as KL

from ...codebook_tables import kbit_lane_search_table
from ._launch import as_array, ctas_per_sm, launch
from ..reference.kbit import SCALE_DTYPES, dequantize_operands, kernel_codebook, nblocks, packed_words
from ..registry import register_kernel

_KIND = {torch.float32: K.F32, torch.float16: K.F16, torch.bfloat16: K.BF16}
ABSMAX_CTAS_PER_SM = 8


def _kind(dtype) -> int:
    try:
        return _KIND[dtype]
    except KeyError:
        raise TypeError(f"dtype {dtype} not supported by numba_cuda (float32/float16/bfloat16)") from None


def _sms(device: torch.device) -> int:
    return torch.cuda.get_device_properties(device).multi_processor_count


def _in(t: torch.Tensor):
    """An input element array: float32, or 16-bit floats as their int16 patterns."""
    return as_array(t if t.dtype == torch.float32 else t.view(torch.int16))


def _bits16(t: torch.Tensor):
    """A float array, 16-bit floats as uint16 patterns (scales and dequantized outputs)."""
    return as_array(t.view(torch.uint16) if t.dtype in (torch.float16, torch.bfloat16) else t)


def _words(t: torch.Tensor):
    """Packed int32 words: the tensor on the GPU (stores truncate), unsigned NumPy in the simulator."""
    return t if t.device.type != "cpu" else as_array(t).view(np.uint32)


def _grid(kern, ntiles: int, dev: torch.device, default_per_sm: int = 8) -> int:
    """Persistent CTAs: two waves of resident ones; two in the simulator (each CTA costs a thread per lane)."""
    if dev.type == "cpu":
        return max(1, min(ntiles, 2))
    return max(1, min(ntiles, _sms(dev) * 2 * ctas_per_sm(kern, dev, default_per_sm)))


def _shift(blocksize: int) -> int:
    """log2(blocksize) for a power of two (the kernels shift), else -1 (they divide)."""
    return blocksize.bit_length() - 1 if blocksize & (blocksize - 1) == 0 else -1


def quantize_kbit(A, codebook, k, blocksize, layout, scale_format, codes_against):
    """-> (packed int32[packed_words], scales[nblocks] in the format's dtype, tensor scale float32[1] for e4m3
    else float32[0], nonfinite int32[1]: 1 if A holds a NaN or an Inf)."""
    dev = A.device
    x = A.reshape(-1).contiguous()
    n = x.numel()
    nb = nblocks(n, blocksize)
    fmt = K.FMT_IDS[scale_format]
    e4m3 = fmt == 5
    kind = _kind(A.dtype)
    cb = kernel_codebook(codebook, k, dev)
    nw = packed_words(n, k, layout)
    out = torch.empty(nw, dtype=torch.int32, device=dev)
    scales = torch.empty(nb, dtype=SCALE_DTYPES[scale_format], device=dev)
    flag = torch.zeros(1, dtype=torch.int32, device=dev)
    ts = torch.empty(1 if e4m3 else 0, dtype=torch.float32, device=dev)
    if n == 0:
        return out, scales, (ts.fill_(1.0) if e4m3 else ts), flag
    xa, sa = _in(x), _bits16(scales)
    against = int(codes_against == "decoded")
    if KL.lane_path(blocksize) and not e4m3:     # one kernel, no scratch arrays (each costs host time)
        _quantize_lanes(x, n, codebook, cb, k, blocksize, layout, fmt, against, _dummy(dev), sa, ts, out, nw, flag)
        return out, scales, ts, flag
    fused = K.fused_path(blocksize)
    # absmax_scales: every scale (two-kernel path), or only e4m3's tensor max before the fused kernel. The
    # arrays only one path reads are dummies, all distinct (the simulator copies every argument back)
    D = torch.empty(1 if fused else nb, dtype=torch.float32, device=dev)
    q = torch.empty(1 if fused else nb, dtype=torch.float32, device=dev)
    absmax = torch.empty(nb if e4m3 else 1, dtype=torch.float32, device=dev)
    gmax = (torch.zeros if e4m3 else torch.empty)(1, dtype=torch.int32, device=dev)
    if e4m3 or not fused:
        lpb = 16 if blocksize < 32 else 32
        kern = K.kernel("absmax", lpb)
        ntiles = -(-nb // (K.NWARPS * (32 // lpb)))
        launch(kern, _grid(kern, ntiles, dev, ABSMAX_CTAS_PER_SM), K.THREADS, dev, xa, kind, n, blocksize, nb,
               ntiles, as_array(cb), cb.numel(), fmt, against, as_array(absmax), sa, as_array(D), as_array(q),
               as_array(flag), as_array(gmax))
    if KL.lane_path(blocksize):
        _quantize_lanes(x, n, codebook, cb, k, blocksize, layout, fmt, against, gmax, sa, ts, out, nw, flag)
        return out, scales, ts, flag
    if fused:
        kern = K.kernel("fused", k, K.LAYOUT_IDS[layout], K.fused_variant(blocksize), kind)
        ntiles = -(-n // (K.NWARPS * K.fused_elems(blocksize)))
        launch(kern, _grid(kern, ntiles, dev), K.THREADS, dev, xa, kind, n, blocksize, ntiles, as_array(cb),
               cb.numel(), fmt, against, as_array(gmax), sa, as_array(ts), _words(out), nw, as_array(flag))
        return out, scales, ts, flag
    if e4m3:
        launch(K.encode_e4m3, -(-nb // K.THREADS), K.THREADS, dev, as_array(absmax), nb, as_array(gmax), against, sa,
               as_array(D), as_array(q), as_array(ts))
    kern = K.kernel("codes", k, K.LAYOUT_IDS[layout])
    ntiles = -(-n // K.THREADS)
    launch(kern, _grid(kern, ntiles, dev), K.THREADS, dev, xa, kind, n, blocksize, _shift(blocksize), as_array(q),
           as_array(cb), ntiles, _words(out), nw)
    return out, scales, ts, flag


_DUMMIES: dict = {}


def _dummy(dev: torch.device) -> torch.Tensor:
    """An int32[1] array argument a kernel does not touch (e4m3's tensor max where there is none)."""
    t = _DUMMIES.get(dev)
    if t is None:
        t = _DUMMIES[dev] = torch.zeros(1, dtype=torch.int32, device=dev)
    return t


def _quantize_lanes(x, n, codebook, cb, k, blocksize, layout, fmt, against, gmax, sa, ts, out, nw, flag):
    """The lane kernel (blocksize 16 or 32): the whole groups as uint64 words (16-byte loads), the n % 32 after
    them as elements (disjoint views: the simulator copies every argument back)."""
    dev = x.device
    tab, ntab, rep, sh, kbase, top = kbit_lane_search_table(codebook, dev)
    ok = int(ntab > 0)
    if x.data_ptr() % 16:        # the kernel's 16-byte loads (torch allocates 256-byte aligned; a view may not be)
        x = x.clone()
    whole = 32 * (n // 32)
    head, tail = x[:whole].view(torch.int64), x[whole:]
    kern = KL.kernel(k, K.LAYOUT_IDS[layout], _kind(x.dtype), blocksize, fmt, against)
    ntiles = -(-n // (32 * K.THREADS))
    grid = _grid(kern, ntiles, dev) if dev.type != "cpu" else 1   # simulator: small inputs go round the loop
    launch(kern, grid, K.THREADS, dev, as_array(head), _in(tail), n, as_array(tab), ntab, rep, sh,
           kbase, top, ok, as_array(cb), as_array(gmax), sa, as_array(ts), _words(out), nw, as_array(flag))


def dequantize_kbit(packed, scales, tensor_scale, codebook, k, blocksize, n, layout, scale_format, dtype):
    dev = packed.device
    words, sc, ts = dequantize_operands(packed, scales, tensor_scale, k, blocksize, n, layout, scale_format)
    if ts is None:
        ts = torch.ones(1, dtype=torch.float32, device=dev)   # read by no format but e4m3
    cb = kernel_codebook(codebook, k, dev)
    out = torch.empty(n, dtype=dtype, device=dev)
    if n == 0:
        return out
    lay, kind = K.LAYOUT_IDS[layout], _kind(dtype)
    if K.fused_path(blocksize):
        # a thread per 32-element group, every CTA at once (one group each); the n % 32 last elements one by one
        head, tail = out[:32 * (n // 32)].view(torch.int64), out[32 * (n // 32):]
        kern = K.kernel("dequant32", k, lay, kind)
        grid = -(-n // (32 * K.THREADS))
    else:
        # a thread per 8 elements stored 16 bytes at a time (grid-stride); the n % 8 last elements one by one
        head, tail = out[:8 * (n // 8)].view(torch.int64), out[8 * (n // 8):]
        kern = K.kernel("dequant8", k, lay, kind)
        ctas = -(-n // (8 * K.THREADS))
        grid = ctas if dev.type != "cpu" else _grid(kern, ctas, dev)
    if head.data_ptr() % 16:     # the kernels' 16-byte stores (torch's allocations are 256-byte aligned)
        raise RuntimeError("dequantize_kbit: output not 16-byte aligned")
    out_w = head if dev.type != "cpu" else as_array(head).view(np.uint64)
    launch(kern, grid, K.THREADS, dev, _words(words), words.numel(), n, blocksize, _shift(blocksize), _bits16(sc),
           K.FMT_IDS[scale_format], as_array(ts), as_array(cb), kind, out_w, _bits16(tail))
    return out


# Importing this module registers its kernels against the declarations in workbench/library.py.
register_kernel("workbench::quantize_kbit", "numba_cuda")(quantize_kbit)
register_kernel("workbench::dequantize_kbit", "numba_cuda")(dequantize_kbit)
