"""Numba CUDA quant family: torch tensors in, the kernels of numba_kernels/cuda/quant.py, torch out.

On a GPU: device arrays via ``numba.cuda.as_cuda_array`` (zero copy), launches on
``numba.cuda.external_stream(torch.cuda.current_stream())``, outputs allocated by torch. The
codebook's Eytzinger tree is uploaded once per (codebook, device) and cached. Under the
simulator: CPU tensors, seen by the kernels as NumPy views (writes land in the torch outputs).
"""
from __future__ import annotations

import torch

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
    tf, tc = _tree(codebook, levels, A.device)
    grid, G, nblocks = K.quantize_grid(n, blocksize)
    _launch(K.kernel("quantize", bits, _kind(A.dtype)), grid, A.device,
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
    _launch(K.kernel("dequantize", bits, _kind(dtype)), K.dequantize_grid(n), dev,
            _arr(codes), _arr(absmax), _arr(tab), n, shift, _out_arr(out))
    return out


def dequantize_blockwise(codes, absmax, table, blocksize, dtype):
    return _dequantize(codes, absmax, table, blocksize, codes.numel(), dtype, 8)


def dequantize_4bit(packed, absmax, table, blocksize, n, dtype):
    return _dequantize(packed, absmax, table, blocksize, n, dtype, 4)
