"""Public API: blockwise 8-bit and 4-bit quantization with any codebook, on any backend.

Signatures follow ``bitsandbytes.functional`` so code moves between the two, plus
``codebook=`` (any 2**k-entry :class:`~workbench.codebooks.Codebook`) and ``backend=``
('auto', or a name from ``workbench backends``). Arguments are validated here, once;
inputs are never modified.
"""
from __future__ import annotations

import torch

from . import codebooks as cbs
from .backends import get_op
from .quant_state import QuantState
from .validation import (QuantInputError, check_blocksize, check_codebook_size, check_finite,
                         check_tensor)

__all__ = ["quantize_blockwise", "dequantize_blockwise", "quantize_4bit", "dequantize_4bit",
           "quantize_nf4", "quantize_fp4", "QuantState", "QuantInputError"]

NESTED_BLOCKSIZE = 256  # bitsandbytes' blocksize for double-quantized absmax


def _device(t: torch.Tensor) -> str:
    if t.device.type not in ("cpu", "cuda"):
        raise QuantInputError(f"A: device {t.device} not supported; expected cpu or cuda")
    return t.device.type


def _flat(t: torch.Tensor) -> torch.Tensor:
    return t.reshape(-1) if t.is_contiguous() else t.contiguous().reshape(-1)


def _codebook_for_4bit(quant_type: str | None, codebook) -> cbs.Codebook:
    if codebook is not None:
        cb = cbs.get(codebook)
    elif quant_type in ("nf4", "fp4"):
        cb = cbs.get(quant_type)
    else:
        raise QuantInputError(f"quant_type: expected 'nf4' or 'fp4' (or pass codebook=), got {quant_type!r}")
    return check_codebook_size(cb, max_bits=4, exact_bits=4)


def _quantize_absmax(absmax: torch.Tensor, backend: str, blocksize: int) -> tuple[torch.Tensor, torch.Tensor, QuantState]:
    """Double quantization: subtract the mean, 8-bit blockwise-quantize the rest with the signed
    dynamic map (bitsandbytes' scheme; the mean is a torch reduction on the data's device)."""
    offset = absmax.mean()
    q, state2 = quantize_blockwise(absmax - offset, blocksize=blocksize, backend=backend)
    return q, offset, state2


def _resolve_absmax(qs: QuantState, backend: str) -> torch.Tensor:
    if not qs.nested:
        return qs.absmax.float()
    absmax = dequantize_blockwise(qs.absmax, qs.state2, backend=backend)
    absmax += qs.offset
    return absmax.float()


def quantize_blockwise(A: torch.Tensor, code=None, blocksize: int = 4096, nested: bool = False, *,
                       codebook=None, backend: str = "auto", nan_policy: str = "raise",
                       rounding: str = "nearest", generator: torch.Generator | None = None):
    """Blockwise absmax quantization to codes of any codebook of at most 256 entries.

    Returns ``(codes, QuantState)``: uint8 codes of A's shape, absmax float32 per block
    (uint8 codes plus offset/state2 when ``nested``). ``code`` may be a float32 table
    (as in bitsandbytes; must be sorted) or a Codebook; default: signed dynamic map.
    ``rounding="stochastic"`` rounds to one of the two bracketing values with probability
    proportional to proximity (unbiased), drawing uniforms from ``generator``.
    """
    if rounding not in ("nearest", "stochastic"):
        raise QuantInputError(f"rounding: expected 'nearest' or 'stochastic', got {rounding!r}")
    check_tensor("A", A)
    dev = _device(A)
    check_blocksize(blocksize)
    check_finite("A", A, nan_policy)
    src = codebook if codebook is not None else code
    if src is None:
        cb = cbs.get("dynamic")
    elif isinstance(src, torch.Tensor):
        cb = cbs.from_values(src.detach().float().cpu().numpy(), "custom")
    else:
        cb = cbs.get(src)
    check_codebook_size(cb, max_bits=8)
    if rounding == "stochastic":
        fn = get_op(backend, "quantize_blockwise_stochastic", dev)
        rand = torch.rand(A.numel(), generator=generator, dtype=torch.float32, device=A.device)
        codes, absmax = fn(_flat(A), cb, blocksize, rand)
    else:
        fn = get_op(backend, "quantize_blockwise", dev)
        codes, absmax = fn(_flat(A), cb, blocksize)
    table = cb.tensors(A.device)[0].clone()
    if nested:
        qabs, offset, state2 = _quantize_absmax(absmax, backend, blocksize)
        qs = QuantState(absmax=qabs, code=table, blocksize=blocksize, dtype=A.dtype, offset=offset, state2=state2)
    else:
        qs = QuantState(absmax=absmax, code=table, blocksize=blocksize, dtype=A.dtype)
    qs.shape = A.shape
    qs.quant_type = None
    return codes.view(A.shape), qs


def dequantize_blockwise(A: torch.Tensor, quant_state: QuantState | None = None, absmax=None, code=None,
                         blocksize: int = 4096, *, dtype: torch.dtype | None = None, backend: str = "auto"):
    """Inverse of :func:`quantize_blockwise`: ``table[code] * absmax`` in float32, cast once to dtype."""
    check_tensor("A", A, dtypes=(torch.uint8,))
    dev = _device(A)
    if quant_state is None:
        if absmax is None:
            raise QuantInputError("absmax: required when quant_state is not given")
        table = code if code is not None else cbs.get("dynamic").tensors(A.device)[0]
        quant_state = QuantState(absmax=absmax, code=table, blocksize=blocksize, dtype=dtype or torch.float32)
    check_blocksize(quant_state.blocksize)
    absmax = _resolve_absmax(quant_state, backend)
    nblocks = -(-A.numel() // quant_state.blocksize)
    if absmax.numel() != nblocks:
        raise QuantInputError(f"absmax: {absmax.numel()} values for {A.numel()} codes at blocksize "
                              f"{quant_state.blocksize}; expected {nblocks}")
    out_dtype = dtype or quant_state.dtype
    table = quant_state.code.to(A.device, torch.float32)
    fn = get_op(backend, "dequantize_blockwise", dev)
    return fn(_flat(A), absmax.to(A.device).contiguous(), table.contiguous(), quant_state.blocksize,
              out_dtype).view(A.shape)


def quantize_4bit(A: torch.Tensor, absmax=None, out=None, blocksize: int = 64, compress_statistics: bool = False,
                  quant_type: str = "fp4", quant_storage: torch.dtype = torch.uint8, *, codebook=None,
                  backend: str = "auto", nan_policy: str = "raise"):
    """4-bit blockwise quantization, bitsandbytes packing: ``((n+1)//2, 1)`` bytes, element 2i
    in the high nibble. ``codebook`` (any 16-entry Codebook or registered name) overrides
    ``quant_type``. ``compress_statistics`` double-quantizes absmax (offset + 8-bit, bs 256)."""
    check_tensor("A", A)
    dev = _device(A)
    check_blocksize(blocksize)
    check_finite("A", A, nan_policy)
    if absmax is not None or out is not None:
        raise QuantInputError("absmax/out: preallocated outputs are not supported (bitsandbytes deprecates them)")
    cb = _codebook_for_4bit(quant_type, codebook)
    fn = get_op(backend, "quantize_4bit", dev)
    packed, am = fn(_flat(A), cb, blocksize)
    packed = packed.view(-1, 1)
    if quant_storage != torch.uint8:
        packed = packed.squeeze(1).view(quant_storage).unsqueeze(1)
    qtype = quant_type if codebook is None else cb.name
    table = cb.tensors(A.device)[0].clone()
    if compress_statistics:
        qabs, offset, state2 = _quantize_absmax(am, backend, NESTED_BLOCKSIZE)
        qs = QuantState(absmax=qabs, shape=A.shape, dtype=A.dtype, blocksize=blocksize, code=table,
                        quant_type=qtype, offset=offset, state2=state2)
    else:
        qs = QuantState(absmax=am, shape=A.shape, dtype=A.dtype, blocksize=blocksize, code=table, quant_type=qtype)
    return packed, qs


def quantize_nf4(A, blocksize: int = 64, compress_statistics: bool = False, **kw):
    return quantize_4bit(A, blocksize=blocksize, compress_statistics=compress_statistics, quant_type="nf4", **kw)


def quantize_fp4(A, blocksize: int = 64, compress_statistics: bool = False, **kw):
    return quantize_4bit(A, blocksize=blocksize, compress_statistics=compress_statistics, quant_type="fp4", **kw)


def dequantize_4bit(A: torch.Tensor, quant_state: QuantState, *, dtype: torch.dtype | None = None,
                    backend: str = "auto") -> torch.Tensor:
    """Inverse of :func:`quantize_4bit`; returns a tensor of ``quant_state.shape``."""
    if not isinstance(quant_state, QuantState):
        raise QuantInputError(f"quant_state: expected a workbench QuantState, got {type(quant_state).__name__}"
                              " (use QuantState.from_bnb for bitsandbytes states)")
    check_tensor("A", A, dtypes=None)
    dev = _device(A)
    packed = A.reshape(-1).view(torch.uint8) if A.dtype != torch.uint8 else A.reshape(-1)
    n = 1
    for s in quant_state.shape:
        n *= int(s)
    if packed.numel() != (n + 1) // 2:
        raise QuantInputError(f"A: {packed.numel()} packed bytes, but quant_state.shape {tuple(quant_state.shape)} "
                              f"needs {(n + 1) // 2}")
    check_blocksize(quant_state.blocksize)
    if quant_state.code is None or quant_state.code.numel() != 16:
        raise QuantInputError("quant_state.code: expected a 16-entry table")
    absmax = _resolve_absmax(quant_state, backend)
    fn = get_op(backend, "dequantize_4bit", dev)
    out = fn(packed.contiguous(), absmax.to(A.device).contiguous(),
             quant_state.code.to(A.device, torch.float32).contiguous(), quant_state.blocksize, n,
             dtype or quant_state.dtype)
    return out.view(quant_state.shape)
