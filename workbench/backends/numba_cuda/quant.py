"""Numba CUDA quant family: torch tensors in, the kernels of numba_kernels/cuda/quant.py, torch out.

On a GPU: device arrays via ``numba.cuda.as_cuda_array`` (zero copy), launches on
``numba.cuda.external_stream(torch.cuda.current_stream())``, outputs allocated by torch. The
codebook's fine table (or, for codebooks too dense for one, its Eytzinger tree) is uploaded once
per (codebook, device) and cached. Under the
simulator: CPU tensors, seen by the kernels as NumPy views (writes land in the torch outputs).
"""
from __future__ import annotations

import numpy as np
import torch

from numba_kernels.cell_plan import fine_plan
from numba_kernels.cuda import quant as K

from . import simulator

OPS = ("quantize_blockwise", "dequantize_blockwise", "quantize_4bit", "dequantize_4bit")

_KIND = {torch.float32: K.F32, torch.float16: K.F16, torch.bfloat16: K.BF16}
_streams: dict = {}


def _kind(dtype) -> int:
    try:
        return _KIND[dtype]
    except KeyError:
        raise TypeError(f"A: dtype {dtype} not supported by numba_cuda (float32/float16/bfloat16)") from None


def _arr(t: torch.Tensor):
    """A numba view of ``t`` (bf16 as its 16-bit pattern)."""
    if t.dtype == torch.bfloat16:
        t = t.view(torch.int16)
    if t.device.type == "cpu":
        if not simulator():
            raise ValueError("numba_cuda: CPU tensors are accepted only under the CUDA simulator")
        return t.numpy()
    from numba import cuda
    return cuda.as_cuda_array(t)


def _out_arr(t: torch.Tensor):
    if t.dtype == torch.bfloat16:
        t = t.view(torch.uint16)
    if t.device.type == "cpu":
        return t.numpy()
    from numba import cuda
    return cuda.as_cuda_array(t)


def _launch(kern, grid, device: torch.device, *args):
    if device.type == "cpu":
        kern[grid, K.THREADS](*args)
        return
    from numba import cuda
    with torch.cuda.device(device):
        ptr = torch.cuda.current_stream(device).cuda_stream
        key = (device.index, ptr)
        st = _streams.get(key)
        if st is None:
            st = _streams[key] = cuda.external_stream(ptr)
        kern[grid, K.THREADS, st](*args)


def _words(t: torch.Tensor):
    """``t`` as words of its own dtype, or 8-byte words if it is not 16/32-bit: signed on the GPU
    (stores truncate there), unsigned NumPy in the simulator (NumPy wants in-range values)."""
    if t.dtype not in (torch.int16, torch.int32):
        t = t.view(torch.int64)
    if t.device.type != "cpu":
        return __import__("numba").cuda.as_cuda_array(t)
    return t.numpy().view({torch.int16: np.uint16, torch.int32: np.uint32, torch.int64: np.uint64}[t.dtype])


def _fine(codebook, device: torch.device):
    """The codebook's fine table on ``device`` and its kernel arguments, cached; None when the
    codebook's bounds are too dense for a table of FINE_MAX entries (the tree kernel runs then)."""
    cache = codebook.__dict__.setdefault("_numba_cuda_fine", {})
    key = str(device)
    if key not in cache:
        plan = fine_plan(codebook.bounds, codebook.bucket_codes)
        if plan is None:
            cache[key] = None
        else:
            e, m, kp, kn, half = plan
            e64 = np.ascontiguousarray(e).view(np.uint64).ravel()
            if device.type == "cpu":                          # simulator: unsigned NumPy words
                arr, keep = e64, None
            else:
                keep = torch.from_numpy(e64.view(np.int64)).to(device)
                arr = _arr(keep)
            sh = 23 - m
            cache[key] = (keep, arr, len(e64), sh, kp >= 0, max(kp, 0) << sh, max(kn, 0) << sh, -kp, half - kn)
    return cache[key]


def _sms(device: torch.device) -> int:
    if device.type != "cuda":
        return 2
    return torch.cuda.get_device_properties(device).multi_processor_count


def _tree(codebook, levels: int, device: torch.device):
    cache = codebook.__dict__.setdefault("_numba_cuda_tree", {})
    key = (levels, str(device))
    if key not in cache:
        tf, tc = K.eytzinger(codebook.bounds, codebook.bucket_codes, levels)
        tf, tc = torch.from_numpy(tf).to(device), torch.from_numpy(tc).to(device)
        cache[key] = (tf, tc, _arr(tf), _arr(tc))
    return cache[key][2:]


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
    plan = _fine(codebook, A.device)
    if plan is not None:
        _, fine, nfine, sh, clamped, low_p, low_n, off_p, off_n = plan
        epw = 2 if kind == K.F32 else 4                          # elements per 8-byte word
        flat = A.reshape(-1)
        elems = flat if kind == K.F32 else flat.view(torch.int16)
        nbytes = out.numel()    # written as full 8-byte words + the last partial word's bytes (disjoint
        #                         views: the simulator copies each argument in and out)
        ntiles = -(-(-(-n // K.CHUNK)) // K.THREADS)
        pgrid = max(1, min(ntiles, _sms(A.device) * 8))     # persistent CTAs
        vec = A.data_ptr() % 8 == 0                              # else every chunk loads elements
        words = _words(flat[:n // epw * epw] if vec else out[:0])
        _launch(K.kernel("quantize_fine", bits, kind, int(clamped)), pgrid, A.device,
                words, _arr(elems), n, vec, G, G.bit_length() - 1,
                nblocks, nblocks - 1 if n % blocksize else -1, ntiles, fine, nfine, sh, low_p, low_n, off_p,
                off_n, _words(out[:nbytes // 8 * 8]), _out_arr(out[nbytes // 8 * 8:]), _out_arr(absmax))
        return out, absmax
    tf, tc = _tree(codebook, levels, A.device)
    _launch(K.kernel("quantize", bits, kind), grid, A.device,
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
        grid = max(1, min(-(-nout // (K.THREADS * K.UNROLL)), _sms(dev) * 16))
        cw = codes.view(cdt)
        _launch(K.kernel("dequantize_fast", bits, kind), grid, dev,
                _arr(cw) if cdt == torch.uint8 else _words(cw), _arr(absmax), _arr(tab), nout, shift, _words(out))
        return out
    _launch(K.kernel("dequantize", bits, kind), K.dequantize_grid(n), dev,
            _arr(codes), _arr(absmax), _arr(tab), n, shift, _out_arr(out))
    return out


def dequantize_blockwise(codes, absmax, table, blocksize, dtype):
    return _dequantize(codes, absmax, table, blocksize, codes.numel(), dtype, 8)


def dequantize_4bit(packed, absmax, table, blocksize, n, dtype):
    return _dequantize(packed, absmax, table, blocksize, n, dtype, 4)
