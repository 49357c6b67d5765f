"""bitsandbytes' own kernels behind the backend signature (CPU: native/torch; CUDA: its .so)."""
from __future__ import annotations

import numpy as np
import torch

from ...codebook_tables import bnb_table_256
from ...codebooks import Codebook, fp4, nf4

from ..reference.quant import NESTED_BLOCKSIZE
from ..registry import register_kernel


def _ops():
    import bitsandbytes  # noqa: F401  (registers torch.ops.bitsandbytes)
    return torch.ops.bitsandbytes


def quant_type_of(cb: Codebook) -> str:
    for name, ref in (("nf4", nf4()), ("fp4", fp4())):
        if cb.size == 16 and np.array_equal(cb.table, ref.table) and np.array_equal(cb.bounds, ref.bounds) \
                and np.array_equal(cb.bucket_codes, ref.bucket_codes):
            return name
    raise ValueError(f"codebook: bitsandbytes only quantizes 4-bit with nf4 or fp4, not {cb.name!r}")


def _nan_blocks_to_nan(A, absmax, blocksize):
    """bitsandbytes' native CPU 8-bit quantizer takes a NaN-skipping absmax, so a block whose only
    non-finite value is NaN gets a finite one. The backend contract (the reference, and what the
    public API reads as its non-finite flag) is absmax NaN for every block holding a NaN: set it.
    Codes stay bitsandbytes'; finite data is untouched (one isnan pass, on this oracle backend only)."""
    nan = torch.isnan(A.reshape(-1))
    if not bool(nan.any()):
        return absmax
    nb = absmax.numel()
    nan = torch.nn.functional.pad(nan, (0, nb * blocksize - nan.numel()))
    return absmax.masked_fill(nan.view(nb, blocksize).any(dim=1), float("nan"))


def quantize_blockwise(A, codebook, blocksize):
    codes, absmax = _ops().quantize_blockwise(A, bnb_table_256(codebook, A.device), blocksize)
    return codes.reshape(-1), _nan_blocks_to_nan(A, absmax, blocksize)


def dequantize_blockwise(codes, absmax, table, blocksize, dtype):
    _check_out_dtype(dtype)
    return _ops().dequantize_blockwise(codes, absmax, table, blocksize, dtype).reshape(-1)


def quantize_4bit(A, codebook, blocksize):
    packed, absmax = _ops().quantize_4bit(A, blocksize, quant_type_of(codebook), torch.uint8)
    return packed.reshape(-1), absmax


_OUT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def _check_out_dtype(dtype) -> None:
    if dtype not in _OUT_DTYPES:
        raise TypeError(f"dtype: bitsandbytes dequantizes to float32, float16 or bfloat16, not {dtype}")


def bnb_quant_type_of_table(table: torch.Tensor) -> str | None:
    """'nf4' or 'fp4' when ``table`` is bitsandbytes' own code of that name value for value (its
    ``get_4bit_type``), else None: only then may its NF4/FP4 kernels, which carry the table
    built in, decode the bytes."""
    from bitsandbytes.functional import get_4bit_type
    t = table.detach().reshape(-1).to(torch.float32)
    if t.numel() != 16:
        return None
    for qt in ("nf4", "fp4"):
        ref = get_4bit_type(qt, device=t.device).to(torch.float32)
        if torch.equal(t, ref):
            return qt
    return None


def dequantize_4bit(packed, absmax, table, blocksize, n, dtype, absmax_8bit=None, absmax_code=None,
                    absmax_offset=None):
    """NF4/FP4 tables go to bitsandbytes' dequantize_4bit op; any other 16-entry code to
    bitsandbytes' generic 4-bit decode with that table (``_dequantize_4bit_compute``: the same
    unpacking, ``code[nibble] * absmax`` in float32, one rounding), never to a kernel whose
    built-in table differs from the state's. A double-quantized absmax is decoded as
    ``bitsandbytes.functional.dequantize_4bit`` does it: its ``dequantize_blockwise`` (blocksize 256), then
    ``+ offset`` in float32."""
    _check_out_dtype(dtype)
    if absmax_8bit is not None:
        code2 = absmax_code.to(absmax_8bit.device, torch.float32)
        absmax = _ops().dequantize_blockwise(absmax_8bit.reshape(-1), absmax.float(), code2, NESTED_BLOCKSIZE,
                                             torch.float32)
        absmax = absmax.reshape(-1) + absmax_offset.to(absmax.device, torch.float32).reshape(())
    if table.numel() != 16:
        raise ValueError(f"table: a 4-bit code has 16 entries, got {table.numel()}")
    qt = bnb_quant_type_of_table(table)
    if qt is not None:
        return _ops().dequantize_4bit(packed.view(-1, 1), absmax, blocksize, qt, (n,), dtype).reshape(-1)
    _ops()  # bitsandbytes imported and its version checked by the backend
    from bitsandbytes.backends.default.ops import _dequantize_4bit_compute
    code = table.detach().to(device=packed.device, dtype=torch.float32).contiguous()
    flat = packed.reshape(-1)
    if flat.dtype != torch.uint8:
        flat = flat.view(torch.uint8)
    return _dequantize_4bit_compute(flat, absmax.float(), code, blocksize, (n,), dtype).reshape(-1)


# Importing this module registers its kernels against the declarations in workbench/library.py.
register_kernel("workbench::quantize_blockwise", "bnb")(quantize_blockwise)
register_kernel("workbench::dequantize_blockwise", "bnb")(dequantize_blockwise)
register_kernel("workbench::quantize_4bit", "bnb")(quantize_4bit)
register_kernel("workbench::dequantize_4bit", "bnb")(dequantize_4bit)
