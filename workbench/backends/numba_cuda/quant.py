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


def _words(t: torch.Tensor, bits: int):
    """``t`` reinterpreted as unsigned words of ``bits`` (signed on the GPU: stores truncate there,
    and NumPy in the simulator wants in-range values)."""
    cpu = t.device.type == "cpu"
    dt = {16: (torch.uint16, torch.int16), 32: (torch.uint32, torch.int32)}[bits][0 if cpu else 1]
    t = t.view(dt)
    return t.numpy() if cpu else __import__("numba").cuda.as_cuda_array(t)


def _plan(codebook, bits: int, device: torch.device):
    cache = codebook.__dict__.setdefault("_numba_cuda_plan", {})
    key = (bits, str(device))
    if key not in cache:
        m, S, cell, bnd, codes = K.cell_plan(codebook.bounds, codebook.bucket_codes, bits)
        ts = [torch.from_numpy(a).to(device) for a in (cell, bnd, codes)]
        cache[key] = (m, S, ts, [_arr(t) for t in ts])
    m, S, _, arrs = cache[key]
    return m, S, arrs


def _sms(device: torch.device) -> int:
    if device.type != "cuda":
        return 2
    return torch.cuda.get_device_properties(device).multi_processor_count


def _fast_ok(t: torch.Tensor, multiple: int, align: int) -> bool:
    return t.numel() % multiple == 0 and (t.data_ptr() % align == 0) and t.numel() > 0


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
    if _fast_ok(A, 2, 4):
        m, S, (cell, bnd, codes) = _plan(codebook, bits, A.device)
        a = _arr(A) if kind == K.F32 else _words(A, 32)
        o = _out_arr(out) if bits == 4 else _words(out, 16)
        pgrid = max(1, min(grid, _sms(A.device) * 8))     # persistent CTAs
        _launch(K.kernel("quantize_fast", bits, kind, S), pgrid, A.device,
                a, n, G, nblocks, grid, m, cell, bnd, codes, o, _out_arr(absmax))
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
    epw = 8 if bits == 4 else 4
    if n % epw == 0 and _fast_ok(codes, 4, 4):
        nwords = n // epw
        grid = max(1, min(-(-nwords // K.THREADS), 132 * 16))
        o = _out_arr(out) if kind == K.F32 else _words(out, 32)
        _launch(K.kernel("dequantize_fast", bits, kind), grid, dev,
                _words(codes, 32), _arr(absmax), _arr(tab), nwords, shift, o)
        return out
    _launch(K.kernel("dequantize", bits, kind), K.dequantize_grid(n), dev,
            _arr(codes), _arr(absmax), _arr(tab), n, shift, _out_arr(out))
    return out


def dequantize_blockwise(codes, absmax, table, blocksize, dtype):
    return _dequantize(codes, absmax, table, blocksize, codes.numel(), dtype, 8)


def dequantize_4bit(packed, absmax, table, blocksize, n, dtype):
    return _dequantize(packed, absmax, table, blocksize, n, dtype, 4)
