"""Public API: blockwise 8-bit and 4-bit quantization with any codebook, on any backend.

Signatures follow ``bitsandbytes.functional`` so code moves between the two, plus
``codebook=`` (any 2**k-entry :class:`~workbench.codebooks.Codebook`) and ``backend=``
('auto', or a name from ``workbench backends``). Arguments and states are validated here,
from metadata only, before any kernel runs (docs/ARCHITECTURE.md, "The public call path");
the ops are the torch.library custom ops of :mod:`workbench.library`. Inputs are never modified.

Non-finite input: a NaN or Inf makes its block's absmax non-finite (the spec), and that absmax
is the flag. The default ``nan_policy="propagate"`` (bitsandbytes' behaviour) keeps the call free
of host syncs: such blocks decode to NaN/Inf and ``QuantState.has_nonfinite()`` reads the flag when
asked. ``nan_policy="raise"`` reads it before returning (a max over the absmax, not a pass over the
data), which on CUDA is a host sync.
"""
from __future__ import annotations

import torch

from . import codebooks as cbs
from . import library  # noqa: F401  (declares the torch.ops.workbench ops)
from .backends.reference.quant import NESTED_BLOCKSIZE  # bitsandbytes' blocksize of the nested absmax
from .backends.registry import kernel, resolve
from .quant_state import QuantState
from .validation import (FLOAT_DTYPES, QuantInputError, check_blocksize, check_codebook_size, check_dtype,
                         check_nan_policy, check_tensor, raise_if_nonfinite)

__all__ = ["quantize_blockwise", "dequantize_blockwise", "quantize_4bit", "dequantize_4bit",
           "quantize_nf4", "quantize_fp4", "QuantState", "QuantInputError"]

_ops = torch.ops.workbench
# the dtype names the backend ranking is keyed by (quant and int8 ops)
_DTYPE_NAMES = {d: str(d).removeprefix("torch.") for d in (*FLOAT_DTYPES, torch.uint8, torch.int8, torch.int32)}


def _device(t: torch.Tensor) -> str:
    if t.is_cuda:             # two attribute reads: t.device builds a torch.device object (~1 us)
        return "cuda"
    if t.is_cpu:
        return "cpu"
    raise QuantInputError(f"A: device {t.device} not supported; expected cpu or cuda")


def _flat(t: torch.Tensor) -> torch.Tensor:
    if t.requires_grad:
        t = t.detach()  # an nn.Parameter quantizes like its data; the ops never record autograd history
    elif t.dim() == 1 and t.is_contiguous():
        return t        # no tensor call: each costs microseconds of a small call
    return t.reshape(-1) if t.is_contiguous() else t.contiguous().reshape(-1)


_C = torch._C


def _eager(t: torch.Tensor) -> bool:
    """Whether a call on ``t`` may run its backend's kernel itself instead of through ``torch.ops.workbench``:
    a plain CPU or CUDA tensor in eager mode, with nothing that must see the op (a compile trace, a dispatch or
    function mode, a functorch transform, the autograd profiler). The kernel is the function the op dispatches
    to, given the same arguments; the dispatcher's boxing of them costs 4-7 us a call right after a kernel that
    streamed megabytes through the caches, tens of us on a loaded machine (reports/public-api-cpu), and host time
    before a GPU launch (reports/public-api-h200)."""
    return (type(t) is torch.Tensor and (t.is_cpu or t.is_cuda) and not torch.compiler.is_compiling()
            and not _C._len_torch_dispatch_stack() and not _C._is_torch_function_mode_enabled()
            and not _C._are_functorch_transforms_active() and not _C._autograd._profiler_enabled())


def call_op(op: str, name: str, *args):
    """``torch.ops.workbench.<op>(*args, name)``; in plain eager mode on ``args[0]`` (``_eager``) the kernel it would
    dispatch to, with the same arguments. For the ops whose kernels take exactly the op's arguments."""
    if _eager(args[0]):
        return kernel(op, name)(*args)
    return getattr(_ops, op)(*args, name)


def _backend(backend: str, op: str, A: torch.Tensor, dtype: torch.dtype | None = None) -> str:
    """The backend for ``op`` on A's device; 'auto' ranks by ``dtype``: the input's, or a dequantizer's
    output dtype (what its ranking was measured by; its codes are uint8 for every output)."""
    return resolve(backend, op, _device(A), _DTYPE_NAMES.get(dtype or A.dtype))


_codebooks_4bit: dict[tuple, cbs.Codebook] = {}  # (quant_type, name) -> checked codebook, for one registry generation
_codebooks_4bit_generation = -1


def _codebook_for_4bit(quant_type: str | None, codebook) -> cbs.Codebook:
    global _codebooks_4bit_generation
    by_name = codebook is None or isinstance(codebook, str)
    if by_name:
        if _codebooks_4bit_generation != cbs.generation:  # a code was (re)registered: names may mean new codes
            _codebooks_4bit.clear()
            _codebooks_4bit_generation = cbs.generation
        hit = _codebooks_4bit.get((quant_type, codebook))
        if hit is not None:
            return hit
    if codebook is not None:
        cb = cbs.get(codebook)
    elif quant_type in ("nf4", "fp4"):
        cb = cbs.get(quant_type)
    else:
        raise QuantInputError(f"quant_type: expected 'nf4' or 'fp4' (or pass codebook=), got {quant_type!r}")
    check_codebook_size(cb, max_bits=4, exact_bits=4)
    if by_name:
        _codebooks_4bit[(quant_type, codebook)] = cb
    return cb


def _table_256(table: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A blockwise dequant table the kernels may index with any uint8 code: shorter tables (a 4-bit
    codebook used blockwise) are padded with NaN, so a code past the table's end reads NaN, not
    memory past its end."""
    t = table.to(device=device, dtype=torch.float32)
    if t.numel() < 256:
        t = torch.cat([t.reshape(-1), t.new_full((256 - t.numel(),), float("nan"))])
    return t.contiguous()


def _state(quant_state, what: str) -> QuantState:
    """A workbench QuantState; a bitsandbytes one converts through QuantState.from_bnb."""
    if isinstance(quant_state, QuantState):
        return quant_state
    if type(quant_state).__module__.startswith("bitsandbytes") and hasattr(quant_state, "absmax"):
        return QuantState.from_bnb(quant_state)
    raise QuantInputError(f"quant_state: expected a workbench (or bitsandbytes) QuantState for {what}, "
                          f"got {type(quant_state).__name__}")


def _quantize_absmax(absmax: torch.Tensor, backend: str):
    """Double quantization: subtract the mean, 8-bit blockwise-quantize the rest with the signed
    dynamic map (bitsandbytes' scheme; the mean is a torch reduction on the data's device). The caller
    checks absmax for non-finite values itself, once."""
    offset = absmax.mean()
    q, state2 = quantize_blockwise(absmax - offset, blocksize=NESTED_BLOCKSIZE, backend=backend,
                                   nan_policy="propagate")
    return q, offset, state2


def _resolve_absmax(qs: QuantState, backend: str) -> torch.Tensor:
    """The state's float32 block scales, contiguous: its absmax, or the double-quantized absmax decoded here."""
    if not qs.nested:
        return qs.absmax if qs.absmax.is_contiguous() else qs.absmax.contiguous()
    absmax = dequantize_blockwise(qs.absmax, qs.state2, backend=backend)
    return absmax + qs.offset.to(absmax.device, torch.float32)


def _as(t: torch.Tensor, device, dtype=torch.float32) -> torch.Tensor:
    """``t`` on ``device`` as contiguous ``dtype``, without a dispatched call when it already is: on the GEMV path a
    torch call costs tens of microseconds once a large kernel has streamed the caches."""
    if t.dtype != dtype or t.device != device:
        t = t.to(device, dtype)
    return t if t.is_contiguous() else t.contiguous()


def _nested_args(qs: QuantState, backend: str, device=None):
    """(absmax, absmax_8bit, absmax_code, absmax_offset) for an op that decodes a double-quantized absmax in its
    kernel (dequantize_4bit, gemm_4bit), on ``device`` (default: the state's): bitsandbytes' nesting (blocksize
    256, one level) as the state holds it, the code padded to 256 entries; any other nesting resolved here (then
    the last three are None)."""
    dev = qs.absmax.device if device is None else device
    if not qs.nested:
        return _as(qs.absmax, dev, qs.absmax.dtype), None, None, None
    if qs.state2.blocksize != NESTED_BLOCKSIZE or qs.state2.nested:
        return _as(_resolve_absmax(qs, backend), dev), None, None, None
    code = _as(qs.state2.code, dev)
    if code.numel() < 256:   # a uint8 code indexes it
        code = torch.cat([code, code.new_full((256 - code.numel(),), float("nan"))])
    offset = _as(qs.offset, dev)
    return (_as(qs.state2.absmax, dev, qs.state2.absmax.dtype), _as(qs.absmax, dev, qs.absmax.dtype), code,
            offset if offset.dim() == 0 else offset.reshape(()))


def quantize_blockwise(A: torch.Tensor, code=None, blocksize: int = 4096, nested: bool = False, *,
                       codebook=None, backend: str = "auto", nan_policy: str = "propagate",
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
    check_blocksize(blocksize)
    check_nan_policy(nan_policy)
    src = codebook if codebook is not None else code
    if src is None:
        cb = cbs.get("dynamic")
    elif isinstance(src, torch.Tensor):
        if src.dim() != 1 or src.dtype != torch.float32:
            raise QuantInputError(f"code: expected a 1-D float32 table (bitsandbytes' code), got "
                                  f"{str(src.dtype).removeprefix('torch.')} of shape {tuple(src.shape)}")
        from .codebook_tables import codebook_of_table
        cb = codebook_of_table(src)
    else:
        cb = cbs.get(src)
    check_codebook_size(cb, max_bits=8)
    flat = _flat(A)
    eager = _eager(flat)
    if not eager:
        table, bounds, bucket_codes = cb.tensors("cpu")
    if rounding == "stochastic":
        name = _backend(backend, "quantize_blockwise_stochastic", A)
        rand = torch.rand(A.numel(), generator=generator, dtype=torch.float32, device=A.device)
        if eager:
            codes, absmax = kernel("quantize_blockwise_stochastic", name)(flat, cb, blocksize, rand)
        else:
            codes, absmax = _ops.quantize_blockwise_stochastic(flat, table, bounds, bucket_codes, blocksize, rand, name)
    else:
        name = _backend(backend, "quantize_blockwise", A)
        if eager:
            codes, absmax = kernel("quantize_blockwise", name)(flat, cb, blocksize)
        else:
            codes, absmax = _ops.quantize_blockwise(flat, table, bounds, bucket_codes, blocksize, name)
    if nested:
        qabs, offset, state2 = _quantize_absmax(absmax, backend)
        qs = QuantState.with_table_of(cb, A.device, absmax=qabs, shape=A.shape, blocksize=blocksize, dtype=A.dtype,
                                      offset=offset, state2=state2)
    else:
        qs = QuantState.with_table_of(cb, A.device, absmax=absmax, shape=A.shape, blocksize=blocksize, dtype=A.dtype)
    raise_if_nonfinite("A", A, absmax, nan_policy)  # last: a host sync on CUDA, after every launch
    return (codes if flat is A else codes.view(A.shape)), qs


def _memo_key(A: torch.Tensor, qs: QuantState, dtype, backend: str, bits: int):
    """What a dequantizer's validation of (A, state, dtype, backend) depended on, or None when it must not be
    remembered (a state of another type, or tensors that are not; compile traces)."""
    if type(qs) is not QuantState or torch.compiler.is_compiling():
        return None
    am, code = qs.absmax, qs.code
    if not isinstance(am, torch.Tensor) or not isinstance(code, torch.Tensor):
        return None
    key = (bits, A.numel(), A.dtype, A.device, dtype, backend, id(am), am.numel(), am.dtype, am.is_contiguous(),
           id(code), code.numel(), code.dtype, qs.blocksize, qs.shape, qs.dtype, qs.state2 is None, qs.offset is None)
    s2, off = qs.state2, qs.offset
    if s2 is None:
        return key
    if type(s2) is not QuantState or not all(isinstance(t, torch.Tensor) for t in (s2.absmax, s2.code, off)):
        return None
    return key + (id(s2), s2.blocksize, s2.dtype, s2.state2 is None,
                  *((id(t), t.numel(), t.dtype, t.device, t.is_contiguous()) for t in (s2.absmax, s2.code, off)))


def _prepared(A: torch.Tensor, qs: QuantState, dtype, backend: str, bits: int, prepare):
    """``prepare()``'s (absmax, table, ...) for this call, remembered on the state while nothing it was
    checked against has changed (``_memo_key``): a weight dequantized every forward pass is validated
    once."""
    return _remembered(qs, _memo_key(A, qs, dtype, backend, bits), prepare)


def _own(qs: QuantState, got) -> bool:
    """Whether every tensor in ``got`` is one of the state's own: no copy that could go stale when the state's
    tensors change in place. (The memo's references to them also keep their ids from being reused.)"""
    own = {id(qs.absmax), id(qs.code)}
    if qs.state2 is not None:
        own.update((id(qs.offset), id(qs.state2.absmax), id(qs.state2.code)))
    return all(id(t) in own for t in got if isinstance(t, torch.Tensor))


def _remembered(qs: QuantState, key, prepare):
    """``_prepared`` for any ``key`` (None: not remembered); workbench.matmul's GEMV path keys its plan so."""
    memo = qs.memo
    if key is not None and memo is not None and memo[0] == key:
        return memo[1]
    got = prepare()
    if key is not None and _own(qs, got):
        qs.memo = (key, got)
    return got


def dequantize_blockwise(A: torch.Tensor, quant_state: QuantState | None = None, absmax=None, code=None,
                         blocksize: int = 4096, *, dtype: torch.dtype | None = None, backend: str = "auto"):
    """Inverse of :func:`quantize_blockwise`: ``table[code] * absmax`` in float32, cast once to dtype."""
    check_tensor("A", A, dtypes=(torch.uint8,))
    if quant_state is None:
        if absmax is None:
            raise QuantInputError("absmax: required when quant_state is not given")
        if not isinstance(absmax, torch.Tensor):
            raise QuantInputError(f"absmax: expected a float32 torch.Tensor, got {type(absmax).__name__}")
        table = code if code is not None else cbs.get("dynamic").tensors(A.device)[0]
        quant_state = QuantState(absmax=absmax, code=table, blocksize=blocksize, dtype=dtype or torch.float32)
    qs = _state(quant_state, "dequantize_blockwise")

    def prepare():
        qs.validate(A.numel(), bits=8)
        out_dtype = check_dtype("dtype", dtype or qs.dtype, FLOAT_DTYPES)
        name = _backend(backend, "dequantize_blockwise", A, out_dtype)
        absmax = _resolve_absmax(qs, backend).to(A.device).contiguous()
        return absmax, _table_256(qs.code, A.device), out_dtype, name

    absmax, table, out_dtype, name = _prepared(A, qs, dtype, backend, 8, prepare)
    flat = _flat(A)
    if _eager(flat):
        out = kernel("dequantize_blockwise", name)(flat, absmax, table, qs.blocksize, out_dtype)
    else:
        out = _ops.dequantize_blockwise(flat, absmax, table, qs.blocksize, out_dtype, name)
    return out if flat is A else out.view(A.shape)


def quantize_4bit(A: torch.Tensor, absmax=None, out=None, blocksize: int = 64, compress_statistics: bool = False,
                  quant_type: str = "fp4", quant_storage: torch.dtype = torch.uint8, *, codebook=None,
                  backend: str = "auto", nan_policy: str = "propagate"):
    """4-bit blockwise quantization, bitsandbytes packing: ``((n+1)//2, 1)`` bytes, element 2i
    in the high nibble. ``codebook`` (any 16-entry Codebook or registered name) overrides
    ``quant_type``. ``compress_statistics`` double-quantizes absmax (offset + 8-bit, bs 256)."""
    check_tensor("A", A)
    check_blocksize(blocksize)
    check_nan_policy(nan_policy)
    if absmax is not None or out is not None:
        raise QuantInputError("absmax/out: preallocated outputs are not supported (bitsandbytes deprecates them)")
    if not isinstance(quant_storage, torch.dtype) or quant_storage.is_complex:
        raise QuantInputError(f"quant_storage: expected a real torch dtype, got {quant_storage!r}")
    width = quant_storage.itemsize
    if ((A.numel() + 1) // 2) % width:
        raise QuantInputError(f"quant_storage: {str(quant_storage).removeprefix('torch.')} packs {width} bytes per "
                              f"element, but A's {A.numel()} values pack into {(A.numel() + 1) // 2} bytes; "
                              f"use torch.uint8 or a size whose packed bytes divide evenly")
    cb = _codebook_for_4bit(quant_type, codebook)
    name = _backend(backend, "quantize_4bit", A)
    flat = _flat(A)
    if _eager(flat):
        packed, am = kernel("quantize_4bit", name)(flat, cb, blocksize)
    else:
        table, bounds, bucket_codes = cb.tensors("cpu")
        packed, am = _ops.quantize_4bit(flat, table, bounds, bucket_codes, blocksize, name)
    packed = packed.view(-1, 1)
    if quant_storage != torch.uint8:
        packed = packed.squeeze(1).view(quant_storage).unsqueeze(1)
    qtype = quant_type if codebook is None else cb.name
    if compress_statistics:
        qabs, offset, state2 = _quantize_absmax(am, backend)
        qs = QuantState.with_table_of(cb, A.device, absmax=qabs, shape=A.shape, dtype=A.dtype, blocksize=blocksize,
                                      quant_type=qtype, offset=offset, state2=state2)
    else:
        qs = QuantState.with_table_of(cb, A.device, absmax=am, shape=A.shape, dtype=A.dtype, blocksize=blocksize,
                                      quant_type=qtype)
    raise_if_nonfinite("A", A, am, nan_policy)  # last: a host sync on CUDA, after every launch
    return packed, qs


def quantize_nf4(A, blocksize: int = 64, compress_statistics: bool = False, **kw):
    return quantize_4bit(A, blocksize=blocksize, compress_statistics=compress_statistics, quant_type="nf4", **kw)


def quantize_fp4(A, blocksize: int = 64, compress_statistics: bool = False, **kw):
    return quantize_4bit(A, blocksize=blocksize, compress_statistics=compress_statistics, quant_type="fp4", **kw)


def dequantize_4bit(A: torch.Tensor, quant_state: QuantState, *, dtype: torch.dtype | None = None,
                    backend: str = "auto") -> torch.Tensor:
    """Inverse of :func:`quantize_4bit`; returns a tensor of ``quant_state.shape``."""
    qs = _state(quant_state, "dequantize_4bit")
    check_tensor("A", A, dtypes=None)

    def prepare():
        if qs.shape is None:
            raise QuantInputError("quant_state.shape: required to dequantize 4-bit codes (the number of elements)")
        qs.validate(bits=4)
        n = 1
        for s in qs.shape:
            n *= int(s)
        nbytes = A.numel() * A.element_size()
        if nbytes != (n + 1) // 2:
            raise QuantInputError(f"A: {nbytes} packed bytes, but quant_state.shape {tuple(qs.shape)} "
                                  f"needs {(n + 1) // 2}")
        out_dtype = check_dtype("dtype", dtype or qs.dtype, FLOAT_DTYPES)
        name = _backend(backend, "dequantize_4bit", A, out_dtype)
        absmax, absmax_8bit, absmax_code, absmax_offset = _nested_args(qs, backend, A.device)
        return absmax, _as(qs.code, A.device), n, out_dtype, name, absmax_8bit, absmax_code, absmax_offset

    absmax, table, n, out_dtype, name, a8, code2, offset = _prepared(A, qs, dtype, backend, 4, prepare)
    packed = _flat(A)
    if packed.dtype != torch.uint8:
        packed = packed.view(torch.uint8)
    if _eager(packed):
        out = kernel("dequantize_4bit", name)(packed, absmax, table, qs.blocksize, n, out_dtype, a8, code2, offset)
    else:
        out = _ops.dequantize_4bit(packed, absmax, table, qs.blocksize, n, out_dtype, a8, code2, offset, name)
    shape = qs.shape
    return out if len(shape) == 1 and shape[0] == n else out.view(shape)
