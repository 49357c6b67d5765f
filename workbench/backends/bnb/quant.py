"""bitsandbytes' own kernels behind the backend signature (CPU: native/torch; CUDA: its .so)."""
from __future__ import annotations

import numpy as np
import torch

from ...codebooks import Codebook, fp4, nf4

OPS = ("quantize_blockwise", "dequantize_blockwise", "quantize_4bit", "dequantize_4bit")


def _ops():
    import bitsandbytes  # noqa: F401  (registers torch.ops.bitsandbytes)
    return torch.ops.bitsandbytes


def quant_type_of(cb: Codebook) -> str:
    for name, ref in (("nf4", nf4()), ("fp4", fp4())):
        if cb.size == 16 and np.array_equal(cb.table, ref.table) and np.array_equal(cb.bounds, ref.bounds) \
                and np.array_equal(cb.bucket_codes, ref.bucket_codes):
            return name
    raise ValueError(f"codebook: bitsandbytes only quantizes 4-bit with nf4 or fp4, not {cb.name!r}")


def _table_256(cb: Codebook, device) -> torch.Tensor:
    if cb.size != 256 or not np.array_equal(cb.bucket_codes, np.arange(256)):
        raise ValueError(f"codebook: bitsandbytes' 8-bit kernels need a sorted 256-entry table, not {cb.name!r}")
    return cb.tensors(device)[0]


def quantize_blockwise(A, codebook, blocksize):
    codes, absmax = _ops().quantize_blockwise(A, _table_256(codebook, A.device), blocksize)
    return codes.reshape(-1), absmax


def dequantize_blockwise(codes, absmax, table, blocksize, dtype):
    return _ops().dequantize_blockwise(codes, absmax, table, blocksize, dtype).reshape(-1)


def quantize_4bit(A, codebook, blocksize):
    packed, absmax = _ops().quantize_4bit(A, blocksize, quant_type_of(codebook), torch.uint8)
    return packed.reshape(-1), absmax


def dequantize_4bit(packed, absmax, table, blocksize, n, dtype):
    qt = "fp4" if float(table[1]) > 0 else "nf4"  # bnb identifies the code the same way
    return _ops().dequantize_4bit(packed.view(-1, 1), absmax, blocksize, qt, (n,), dtype).reshape(-1)
