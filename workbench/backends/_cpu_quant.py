"""The quantization-family adapter shared by the compiled CPU backends.

numba_kernels/cpu/quant.py and workbench/_native/quant_cpu.pyx expose the same kernel
signatures on NumPy arrays; :func:`bind` wraps either module into the backend contract
(docs/ARCHITECTURE.md): torch tensors in, zero-copy views, outputs allocated here.
"""
from __future__ import annotations

import math
import threading

import numpy as np
import torch

from ..codebook_tables import cpu_ord_lut, cpu_search_plan
from ._cpu_common import alloc, as_numpy, as_numpy_bits, dense_matmul, empty_out, nblocks

# The matmul rows above the fused kernels decode the weight this many bytes at a time into one buffer that stays in
# cache, and multiply each piece as it is decoded. A whole dequantized weight is written to memory and read back, and
# from 32 MiB on (``alloc``) each call faults in fresh pages for it.
CHUNK_BYTES = 4 << 20
_SCRATCH = threading.local()


def _scratch(nbytes: int) -> torch.Tensor:
    """A uint8 buffer of at least ``nbytes``, kept per thread and reused from call to call: a new one of a few MiB
    can come from fresh pages at each call (malloc maps a request above its threshold anew), and on a VM their first
    touch can cost more than the decode."""
    buf = getattr(_SCRATCH, "buf", None)
    if buf is None or buf.numel() < nbytes:
        buf = _SCRATCH.buf = torch.empty(nbytes, dtype=torch.uint8)
    return buf


def _outputs(n: int, blocksize: int, nbytes: int):
    return alloc(nbytes, torch.uint8), torch.empty(nblocks(n, blocksize), dtype=torch.float32)


def block_scales(K, absmax, absmax_8bit=None, absmax_code=None, absmax_offset=None) -> np.ndarray:
    """The float32 block scales as a flat NumPy array: ``absmax``, or the double-quantized absmax decoded by kernel
    module ``K``'s ``resolve_nested`` (rule: workbench/backends/reference/quant.py)."""
    a = absmax.detach().reshape(-1)
    a = (a if a.dtype == torch.float32 else a.float()).contiguous().numpy()
    if absmax_8bit is None:
        return a
    out = np.empty(absmax_8bit.numel(), np.float32)
    K.resolve_nested(absmax_8bit.detach().reshape(-1).contiguous().numpy(), a,
                     absmax_code.detach().reshape(-1).float().contiguous().numpy(),
                     np.float32(absmax_offset.reshape(-1)[0].item()), out)
    return out


def chunk_rows(N: int, K: int, blocksize: int, itemsize: int, chunk_bytes: int) -> int:
    """Weight rows per piece: about ``chunk_bytes`` decoded, a multiple of the rows that hold whole quantization
    blocks (a piece starts on a block, so on a byte)."""
    step = blocksize // math.gcd(K, blocksize)
    return min(N, max(step, chunk_bytes // (K * itemsize) // step * step))


def dequant_matmul(K, A, B, shapeB, scales: np.ndarray, table, blocksize: int, bias,
                   chunk_bytes: int | None = None) -> torch.Tensor:
    """``dense_matmul(A, W, bias)`` for W the 4-bit weight dequantized to A's dtype (rule 2) by kernel module ``K``,
    ``chunk_rows`` rows at a time into one reused buffer. An output column is one weight row's sum: each piece is
    dense_matmul of its rows (torch's order for that width; held to the reference's error_bound like the whole).
    ``scales``: float32 per block (``block_scales``)."""
    N, Kd = int(shapeB[0]), int(shapeB[1])
    if N * Kd == 0:   # nothing to decode: zeros (+ bias), in dense_matmul's dtype rules
        return dense_matmul(A, torch.zeros(N, Kd, dtype=A.dtype), bias)
    rows = chunk_rows(N, Kd, blocksize, A.element_size(), CHUNK_BYTES if chunk_bytes is None else chunk_bytes)
    packed = as_numpy(B.reshape(-1))
    tab = as_numpy(table.float().contiguous())
    buf = _scratch(rows * Kd * A.element_size())[:rows * Kd * A.element_size()].view(A.dtype)
    arr, kind = as_numpy_bits(buf)
    out = None if rows == N else torch.empty(A.shape[0], N, dtype=A.dtype)   # one piece: its own output
    for r0 in range(0, N, rows):
        r1 = min(N, r0 + rows)
        e0, n = r0 * Kd, (r1 - r0) * Kd
        K.dequantize_4bit(packed[e0 // 2:(e0 + n + 1) // 2], scales[e0 // blocksize:nblocks(e0 + n, blocksize)], tab,
                          blocksize, n, kind, arr[:n])
        y = dense_matmul(A, buf[:n].view(r1 - r0, Kd), None if bias is None else bias[r0:r1])
        if out is None:
            return y
        out[:, r0:r1] = y
    return out


def bind(K, module: str) -> dict:
    """The five ops over kernel module ``K``, with ``__module__`` set to the backend's module
    (the registry names a function's backend by its module)."""

    def quantize_blockwise(A, codebook, blocksize):
        x, kind = as_numpy_bits(A)
        p = cpu_search_plan(codebook)
        codes, absmax = _outputs(A.numel(), blocksize, A.numel())
        lut = cpu_ord_lut(codebook)
        if lut is not None:
            K.quantize_blockwise_ordlut(x, kind, blocksize, lut, codes.numpy(), absmax.numpy())
            return codes, absmax
        K.quantize_blockwise(x, kind, blocksize, p.mode, p.bnd15, p.bucket_codes, p.kbound, p.kcode_lo,
                             p.kcode_hi, p.bounds_pad, codes.numpy(), absmax.numpy())
        return codes, absmax

    def quantize_blockwise_stochastic(A, codebook, blocksize, rand):
        """Rounding rule: workbench/backends/reference/quant.py (rand: float32[n] uniform [0, 1))."""
        x, kind = as_numpy_bits(A)
        p = cpu_search_plan(codebook)
        r = rand.detach().reshape(-1).to(torch.float32).contiguous()
        if r.numel() != A.numel():
            raise ValueError(f"rand: expected {A.numel()} uniforms, got {r.numel()}")
        codes, absmax = _outputs(A.numel(), blocksize, A.numel())
        K.quantize_blockwise_stochastic(x, kind, p.bounds_pad, p.bucket_codes, p.values, blocksize,
                                        r.numpy(), codes.numpy(), absmax.numpy())
        return codes, absmax

    def dequantize_blockwise(codes, absmax, table, blocksize, dtype):
        out, arr, kind = empty_out(codes.numel(), dtype)
        K.dequantize_blockwise(as_numpy(codes), as_numpy(absmax), as_numpy(table), blocksize, kind, arr)
        return out

    cells32 = hasattr(K, "SIMD")   # the Cython kernel's AVX-512 path takes the 32-cell plan too

    def quantize_4bit(A, codebook, blocksize):
        x, kind = as_numpy_bits(A)
        p = cpu_search_plan(codebook)
        n = A.numel()
        packed, absmax = _outputs(n, blocksize, (n + 1) // 2)
        args = (x, kind, blocksize, p.bnd15, p.bucket_codes, p.identity, np.uint8(p.zero_code), p.cell_base,
                p.cell_bounds, p.cell_slots, packed.numpy(), absmax.numpy())
        if cells32:
            K.quantize_4bit(*args, p.cells32)
        else:
            K.quantize_4bit(*args)
        return packed, absmax

    def dequantize_4bit(packed, absmax, table, blocksize, n, dtype, absmax_8bit=None, absmax_code=None,
                        absmax_offset=None):
        out, arr, kind = empty_out(n, dtype)
        s = block_scales(K, absmax, absmax_8bit, absmax_code, absmax_offset)
        K.dequantize_4bit(as_numpy(packed), s, as_numpy(table), blocksize, n, kind, arr)
        return out

    ops = {f.__name__: f for f in (quantize_blockwise, quantize_blockwise_stochastic, dequantize_blockwise,
                                   quantize_4bit, dequantize_4bit)}
    for f in ops.values():
        f.__module__ = module
    return ops
