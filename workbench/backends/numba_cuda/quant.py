"""Numba CUDA quant family: torch tensors in, the kernels of numba_kernels/cuda/quant.py, torch out.

On a GPU: tensors go to the kernels zero-copy on torch's current stream (``_launch``), outputs
allocated by torch. The
codebook's fine table (or, for codebooks too dense for one, its Eytzinger tree) is uploaded once
per (codebook, device) and cached by workbench/codebook_tables.py. Under the
simulator: CPU tensors, seen by the kernels as NumPy views (writes land in the torch outputs).
"""
from __future__ import annotations

import numpy as np
import torch

from numba_kernels.cuda import quant as K

from ._launch import array_values, as_array, ctas_per_sm, launch, launch_values

from ..registry import register_kernel
from ...codebook_tables import numba_cuda_fine, numba_cuda_tree

# persistent quantizer CTAs per SM (5 are resident at once): kernel time at 2^28 bf16 on the H100 fell as
# the grid grew from one wave to 16 per SM (nf4 bs64 0.406 -> 0.369 ms; reports/gpu-h100/numba_grid_sweep.txt)
QUANTIZE_CTAS_PER_SM = 16

_launch_kinds: dict = {}   # (quantize_fine kernel, vec) -> the argument kinds of its launch (launch_values)

_KIND = {torch.float32: K.F32, torch.float16: K.F16, torch.bfloat16: K.BF16}


def _kind(dtype) -> int:
    try:
        return _KIND[dtype]
    except KeyError:
        raise TypeError(f"A: dtype {dtype} not supported by numba_cuda (float32/float16/bfloat16)") from None


def _arr(t: torch.Tensor):
    """A kernel argument for ``t`` (bf16 as its 16-bit pattern)."""
    return as_array(t.view(torch.int16) if t.dtype == torch.bfloat16 else t)


def _out_arr(t: torch.Tensor):
    return as_array(t.view(torch.uint16) if t.dtype == torch.bfloat16 else t)


def _word_view(t: torch.Tensor) -> torch.Tensor:
    """``t`` as words of its own dtype, or as 8-byte words if it is not 16/32-bit (signed: stores
    truncate on the GPU)."""
    return t if t.dtype in (torch.int16, torch.int32) else t.view(torch.int64)


def _words(t: torch.Tensor):
    """A kernel argument of ``t``'s words (:func:`_word_view`): the tensor on the GPU, unsigned NumPy in
    the simulator (NumPy wants in-range values)."""
    t = _word_view(t)
    if t.device.type != "cpu":
        return t
    return t.numpy().view({torch.int16: np.uint16, torch.int32: np.uint32, torch.int64: np.uint64}[t.dtype])


def _sms(device: torch.device) -> int:
    if device.type != "cuda":
        return 2
    return torch.cuda.get_device_properties(device).multi_processor_count


def _fine_args(A, out, absmax, vec, scalars, fine, table) -> list:
    """The quantize_fine kernel's arguments: input words and elements, scalars, the fine table, output
    as full 8-byte words + the last partial word's bytes (disjoint views: the simulator copies each
    argument in and out), absmax."""
    n, epw, nbytes = A.numel(), 8 // A.element_size(), out.numel()
    flat = A.reshape(-1)
    elems = flat if A.dtype == torch.float32 else flat.view(torch.int16)
    words = _words(flat[:n // epw * epw] if vec else out[:0])
    return [words, _arr(elems), *scalars, fine, *table, _words(out[:nbytes // 8 * 8]),
            _out_arr(out[nbytes // 8 * 8:]), _out_arr(absmax)]


def _fine_values(A, out, absmax, vec, scalars, fine, table) -> list:
    """The launch values ``_launch._flatten(_fine_args(...))`` gives, computed from the pointers (A
    contiguous): building the views costs the host ~1-2 us each, and host time before the launch
    is the caller's (tests/test_numba_launch_layout.py holds the two equal)."""
    n, esz, nbytes = A.numel(), A.element_size(), out.numel()
    ap, op, fw = A.data_ptr(), out.data_ptr(), nbytes // 8
    nw, nt = (n * esz // 8 if vec else 0), nbytes - 8 * fw
    nb, nf = absmax.numel(), fine.numel()
    return [*array_values(ap, nw, 8), *array_values(ap, n, esz), *scalars, *array_values(fine.data_ptr(), nf, 8),
            *table, *array_values(op, fw, 8), *array_values(op + 8 * fw, nt, 1),
            *array_values(absmax.data_ptr(), nb, 4)]


def _quantize(A, codebook, blocksize, bits):
    n = A.numel()
    levels = 4 if bits == 4 else 8
    if codebook.size > (1 << levels):
        raise ValueError(f"codebook: {bits}-bit quantization needs at most {1 << levels} entries, "
                         f"{codebook.name!r} has {codebook.size}")
    out = torch.empty((n + 1) // 2 if bits == 4 else n, dtype=torch.uint8, device=A.device)
    absmax = torch.empty(-(-n // blocksize), dtype=torch.float32, device=A.device)
    if n == 0:
        return out, absmax
    grid, G, nblocks = K.quantize_grid(n, blocksize)
    kind = _kind(A.dtype)
    plan = numba_cuda_fine(codebook, A.device)
    if plan is not None:
        fine, nfine, sh, clamped, low_p, low_n, off_p, off_n = plan
        ntiles = -(-(-(-n // K.CHUNK)) // K.THREADS)
        kern = K.kernel("quantize_fine", bits, kind, int(clamped))
        pgrid = max(1, min(ntiles, _sms(A.device) * QUANTIZE_CTAS_PER_SM))
        vec = A.data_ptr() % 8 == 0                              # else every chunk loads elements
        scalars = (n, vec, G, G.bit_length() - 1, nblocks, nblocks - 1 if n % blocksize else -1, ntiles)
        table = (nfine, sh, low_p, low_n, off_p, off_n)
        kinds = _launch_kinds.get((kern, vec))
        if kinds is not None and A.is_contiguous():
            vals = _fine_values(A, out, absmax, vec, scalars, fine, table)
            if launch_values(kern, pgrid, K.THREADS, A.device, kinds, vals):
                return out, absmax
        kinds = launch(kern, pgrid, K.THREADS, A.device, *_fine_args(A, out, absmax, vec, scalars, fine, table))
        if kinds is not None:
            _launch_kinds[(kern, vec)] = kinds
        return out, absmax
    tf, tc = numba_cuda_tree(codebook, A.device, levels)
    launch(K.kernel("quantize", bits, kind), grid, K.THREADS, A.device,
            _arr(A), n, G, nblocks, tf, tc, _out_arr(out), _out_arr(absmax))
    return out, absmax


def quantize_blockwise(A, codebook, blocksize):
    return _quantize(A, codebook, blocksize, 8)


def quantize_4bit(A, codebook, blocksize):
    return _quantize(A, codebook, blocksize, 4)


def _dequantize(codes, absmax, table, blocksize, n, dtype, bits):
    dev = codes.device
    out = torch.empty(n, dtype=dtype, device=dev)
    if n == 0:
        return out
    tab = table.to(dev, torch.float32).contiguous()
    shift = blocksize.bit_length() - 1
    kind = _kind(dtype)
    opw = 2 if kind == K.F32 else 4         # outputs per 8-byte output word
    cdt = {1: torch.uint8, 2: torch.int16, 4: torch.int32}[opw * bits // 8]   # their codes' word
    if n % opw == 0 and codes.data_ptr() % (opw * bits // 8) == 0:
        nout = n // opw
        kern = K.kernel("dequantize_fast", bits, kind)
        # two waves of resident CTAs (16 per SM where 8 fit, the grid these kernels were measured with)
        grid = max(1, min(-(-nout // (K.THREADS * K.UNROLL)), _sms(dev) * 2 * ctas_per_sm(kern, dev, 8)))
        cw = codes.view(cdt)
        launch(kern, grid, K.THREADS, dev,
                _arr(cw) if cdt == torch.uint8 else _words(cw), _arr(absmax), _arr(tab), nout, shift, _words(out))
        return out
    launch(K.kernel("dequantize", bits, kind), K.dequantize_grid(n), K.THREADS, dev,
            _arr(codes), _arr(absmax), _arr(tab), n, shift, _out_arr(out))
    return out


def dequantize_blockwise(codes, absmax, table, blocksize, dtype):
    return _dequantize(codes, absmax, table, blocksize, codes.numel(), dtype, 8)


def dequantize_4bit(packed, absmax, table, blocksize, n, dtype, absmax_8bit=None, absmax_code=None,
                    absmax_offset=None):
    if absmax_8bit is not None:   # double-quantized: the block scales decoded first, by their own kernel
        dev = packed.device
        nb = absmax_8bit.numel()
        scales = torch.empty(nb, dtype=torch.float32, device=dev)
        launch(K.resolve_nested, max(1, -(-nb // K.THREADS)), K.THREADS, dev, _arr(absmax_8bit.reshape(-1)),
               _arr(absmax), _arr(absmax_code.to(dev, torch.float32).contiguous()),
               _arr(absmax_offset.to(dev, torch.float32).reshape(1)), _arr(scales))
        absmax = scales
    return _dequantize(packed, absmax, table, blocksize, n, dtype, 4)


# Importing this module registers its kernels against the declarations in workbench/library.py.
register_kernel("workbench::quantize_blockwise", "numba_cuda")(quantize_blockwise)
register_kernel("workbench::dequantize_blockwise", "numba_cuda")(dequantize_blockwise)
register_kernel("workbench::quantize_4bit", "numba_cuda")(quantize_4bit)
register_kernel("workbench::dequantize_4bit", "numba_cuda")(dequantize_4bit)
