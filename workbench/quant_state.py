"""QuantState: the bookkeeping that undoes a quantization, field- and key-compatible with
bitsandbytes 0.50.2 (``as_dict``/``from_dict``), so state dicts move both ways."""
from __future__ import annotations

import json
import math
import numbers
from collections.abc import Mapping
from typing import Any

import torch

from .validation import BLOCKSIZES, FLOAT_DTYPES, QuantInputError, check_shape

VALID_QS_KEYS = ("absmax", "quant_map", "nested_absmax", "nested_quant_map", "quant_state", "quant_type",
                 "blocksize", "dtype", "shape", "nested_blocksize", "nested_dtype", "nested_offset")


def pack_dict_to_tensor(d: dict) -> torch.Tensor:
    """JSON -> uint8 tensor, the format bitsandbytes stores non-tensor quant-state items in."""
    return torch.tensor(list(json.dumps(d).encode("utf-8")), dtype=torch.uint8)


def unpack_tensor_to_dict(t: torch.Tensor) -> dict:
    return json.loads(bytes(t.cpu().numpy()).decode("utf-8"))


def _dtype_name(dt: torch.dtype) -> str:
    return str(dt).removeprefix("torch.")


def _names(dtypes) -> str:
    return "/".join(_dtype_name(d) for d in dtypes)


def _unpack_item(key: str, t: torch.Tensor) -> dict:
    """The JSON item of a packed state; errors name the key."""
    if t.dtype != torch.uint8 or t.dim() != 1:
        raise QuantInputError(f"qs_dict[{key!r}]: expected a 1-D uint8 tensor of UTF-8 JSON bytes, got "
                              f"{_dtype_name(t.dtype)} of shape {tuple(t.shape)}")
    try:
        d = json.loads(bytes(t.cpu().numpy()).decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        raise QuantInputError(f"qs_dict[{key!r}]: not a JSON object ({type(e).__name__}: {e}); truncated or "
                              f"corrupted?") from None
    if not isinstance(d, dict):
        raise QuantInputError(f"qs_dict[{key!r}]: expected a JSON object of quant-state items, got {type(d).__name__}")
    return d


def _tensor(where: str, t, dtype: torch.dtype, what: str) -> torch.Tensor:
    if not isinstance(t, torch.Tensor):
        raise QuantInputError(f"{where}: expected a 1-D {what} torch.Tensor, got {type(t).__name__}")
    if t.dtype != dtype:
        raise QuantInputError(f"{where}: expected dtype {_dtype_name(dtype)} ({what}), got {_dtype_name(t.dtype)}")
    if t.dim() != 1:
        raise QuantInputError(f"{where}: expected a 1-D tensor, got shape {tuple(t.shape)}")
    return t


def _table(where: str, t, *, exact: int | None) -> torch.Tensor:
    _tensor(where, t, torch.float32, "float32 code table")
    n = t.numel()
    if exact is not None and n != exact:
        raise QuantInputError(f"{where}: expected a {exact}-entry table (4-bit codes), got {n} entries")
    if n < 2 or n > 256 or n & (n - 1):
        raise QuantInputError(f"{where}: expected 2**k entries with 1 <= k <= 8, got {n}")
    return t


def _blocksize(where: str, bs) -> int:
    if isinstance(bs, bool) or not isinstance(bs, numbers.Integral):
        raise QuantInputError(f"{where}: expected an int, got {bs!r} ({type(bs).__name__})")
    bs = int(bs)
    if bs not in BLOCKSIZES:
        raise QuantInputError(f"{where}: {bs} not supported; expected a power of two in {BLOCKSIZES[0]}..{BLOCKSIZES[-1]}")
    return bs


def _dict_tensor(d: dict, key: str, dtype: torch.dtype) -> torch.Tensor:
    return _tensor(f"qs_dict[{key!r}]", d[key], dtype, _dtype_name(dtype))


def _dict_blocksize(d: dict, key: str) -> int:
    return _blocksize(f"qs_dict[{key!r}]", d[key])


def _dict_dtype(d: dict, key: str, allowed) -> torch.dtype:
    v = d[key]
    if isinstance(v, torch.dtype):
        dt = v
    elif isinstance(v, str):
        dt = getattr(torch, v.removeprefix("torch."), None)
    else:
        dt = None
    if dt not in allowed:
        raise QuantInputError(f"qs_dict[{key!r}]: expected one of {[_dtype_name(a) for a in allowed]}, got {v!r}")
    return dt


def bnb_incompatibility(quant_type, code) -> str | None:
    """Why bitsandbytes 0.50.2 cannot run a 4-bit state of this ``quant_type`` and table (None: it can).
    Its 4-bit kernels (torch, native CPU and CUDA) hard-code NF4 and FP4 and choose by ``quant_type``;
    ``quant_map`` is never read when dequantizing."""
    from .codebooks import get
    if quant_type not in ("nf4", "fp4"):
        return (f"bitsandbytes 0.50.2 runs only its NF4 and FP4 4-bit tables (chosen by quant_type, quant_map "
                f"is ignored); this state's code is {quant_type!r}. Dequantize it with workbench."
                f"dequantize_4bit, or re-quantize with quant_type='nf4'/'fp4' for bitsandbytes")
    t = code.detach().float().cpu().reshape(-1) if isinstance(code, torch.Tensor) else torch.as_tensor(code).float()
    ref = torch.from_numpy(get(quant_type).table.copy())
    if t.numel() != ref.numel() or not torch.equal(t, ref):
        return (f"quant_type {quant_type!r} with a quant_map that is not bitsandbytes' {quant_type.upper()} table: "
                f"bitsandbytes would dequantize it with its own {quant_type.upper()} values and ignore the table")
    return None


class QuantState:
    """absmax (float32, or uint8 codes when nested), shape, code (the dequant table), blocksize,
    quant_type ('nf4', 'fp4', or a custom codebook's name), dtype, and for double quantization
    offset (scalar tensor) + state2 (the QuantState of the absmax codes)."""

    def __init__(self, absmax, shape=None, code=None, blocksize=None, quant_type=None, dtype=None,
                 offset=None, state2=None):
        self.absmax = absmax
        self.shape = shape
        self.code = code
        self.dtype = dtype
        self.blocksize = blocksize
        self.quant_type = quant_type
        self.offset = offset
        self.state2 = state2
        self.nested = state2 is not None
        self.memo = None  # the public dequantizers' validated inputs, see workbench.ops._prepared

    @classmethod
    def with_table_of(cls, codebook, device, **fields) -> "QuantState":
        """A state whose ``code`` is a private copy of ``codebook``'s table on ``device``, made when first
        read: a quantizer then launches no copy of it (a dequantizer reads it once, on its first call)."""
        if torch.compiler.is_compiling():  # a traced graph gets the copy as an op; dynamo keeps no lazy state
            return cls(code=codebook.tensors(device)[0].clone(), **fields)
        qs = cls(code=None, **fields)
        qs._code_of = (codebook, device)
        return qs

    @property
    def code(self):
        if self._code is None and self._code_of is not None:
            cb, device = self._code_of
            self._code = cb.tensors(device)[0].clone()  # private: an in-place edit must not reach the cache
            self._code_of = None
        return self._code

    @code.setter
    def code(self, value) -> None:
        self._code, self._code_of = value, None

    def as_dict(self, packed: bool = False) -> dict[str, Any]:
        d: dict[str, Any] = {
            "quant_type": self.quant_type,
            "absmax": self.absmax,
            "blocksize": self.blocksize,
            "quant_map": self.code,
            "dtype": _dtype_name(self.dtype),
            "shape": tuple(self.shape) if self.shape is not None else None,
        }
        if self.nested:
            d.update({
                "nested_absmax": self.state2.absmax,
                "nested_blocksize": self.state2.blocksize,
                "nested_quant_map": self.state2.code.clone(),
                "nested_dtype": _dtype_name(self.state2.dtype),
                "nested_offset": self.offset.item(),
            })
        if not packed or self.quant_type is None:
            return d
        out = {k: v for k, v in d.items() if isinstance(v, torch.Tensor)}
        out["quant_state.bitsandbytes__" + self.quant_type] = pack_dict_to_tensor(
            {k: v for k, v in d.items() if not isinstance(v, torch.Tensor)})
        return out

    @classmethod
    def from_dict(cls, qs_dict: dict[str, Any], device="cpu") -> "QuantState":
        """The state of ``as_dict()`` (packed or not; bitsandbytes' ``QuantState.as_dict`` too).

        Every item is checked: a missing key, an unparsable packed item, a wrong type, dtype or
        rank raises :class:`~workbench.validation.QuantInputError` naming the key and what was
        expected; then the state's internal consistency (:meth:`validate`)."""
        if not isinstance(qs_dict, Mapping):
            raise QuantInputError(f"qs_dict: expected a dict of quant-state items, got {type(qs_dict).__name__}")
        qs_dict = dict(qs_dict)
        for k in qs_dict:
            if not isinstance(k, str):
                raise QuantInputError(f"qs_dict: keys must be str, got {k!r} ({type(k).__name__})")
        packed_keys = [k for k, v in qs_dict.items() if "quant_state" in k and isinstance(v, torch.Tensor)]
        if not any(k.split(".")[-1] == "quant_type" for k in qs_dict):  # packed (keys may carry a prefix)
            if len(packed_keys) != 1 or "bitsandbytes__" not in packed_keys[0]:
                raise QuantInputError(f"qs_dict: expected exactly one 'quant_state.bitsandbytes__<type>' item or "
                                      f"unpacked items with 'quant_type'; found {packed_keys or 'neither'}")
            key = packed_keys[0]
            qs_dict.update(_unpack_item(key, qs_dict.pop(key)))
        short: dict[str, Any] = {}
        for k, v in qs_dict.items():
            s = k.split(".")[-1]
            if s in short:
                raise QuantInputError(f"qs_dict: two items name {s!r} (after dropping prefixes): {k!r} and another")
            short[s] = v
        unknown = set(short) - set(VALID_QS_KEYS)
        if unknown:
            raise QuantInputError(f"qs_dict: unknown keys {sorted(unknown)}; expected a subset of {VALID_QS_KEYS}")
        required = ("quant_type", "absmax", "blocksize", "quant_map", "dtype", "shape")
        nested_keys = ("nested_absmax", "nested_blocksize", "nested_quant_map", "nested_dtype", "nested_offset")
        nested = any(k in short for k in nested_keys)
        missing = [k for k in required + (nested_keys if nested else ()) if k not in short]
        if missing:
            raise QuantInputError(f"qs_dict: missing key(s) {missing}; a{' nested' if nested else ''} state needs "
                                  f"{list(required + (nested_keys if nested else ()))}")
        try:
            device = torch.device(device)
        except (RuntimeError, TypeError, ValueError) as e:
            raise QuantInputError(f"device: {device!r} is not a torch device ({e})") from None
        qt = short["quant_type"]
        if qt is not None and not isinstance(qt, str):
            raise QuantInputError(f"qs_dict['quant_type']: expected a str or None, got {type(qt).__name__}")
        absmax = _dict_tensor(short, "absmax", torch.uint8 if nested else torch.float32)
        code = _dict_tensor(short, "quant_map", torch.float32)
        offset = state2 = None
        if nested:
            off = short["nested_offset"]
            if isinstance(off, torch.Tensor) and off.numel() == 1 and off.is_floating_point():
                off = off.detach().reshape(()).to(device, torch.float32)
            elif isinstance(off, (int, float)) and not isinstance(off, bool) and math.isfinite(off):
                off = torch.tensor(float(off), dtype=torch.float32, device=device)
            else:
                raise QuantInputError(f"qs_dict['nested_offset']: expected a finite number, got {off!r}")
            offset = off
            state2 = cls(absmax=_dict_tensor(short, "nested_absmax", torch.float32).to(device),
                         blocksize=_dict_blocksize(short, "nested_blocksize"),
                         code=_dict_tensor(short, "nested_quant_map", torch.float32).to(device),
                         dtype=_dict_dtype(short, "nested_dtype", (torch.float32,)))
        qs = cls(quant_type=qt, absmax=absmax.to(device), blocksize=_dict_blocksize(short, "blocksize"),
                 code=code.to(device), dtype=_dict_dtype(short, "dtype", FLOAT_DTYPES),
                 shape=check_shape("qs_dict['shape']", short["shape"], allow_none=True), offset=offset,
                 state2=state2)
        return qs.validate()

    def validate(self, n_or_shape=None, *, bits: int | None = None) -> "QuantState":
        """Check this state's internal consistency; returns ``self``, raises QuantInputError naming the field.

        Pure metadata (types, dtypes, ranks, element counts): no pass over the data and no host
        sync, so the public ops call it on CUDA states before any kernel. Checks: ``dtype`` one of
        float32/float16/bfloat16; ``shape`` None or non-negative ints; ``blocksize`` a supported
        power of two (32..4096); ``code`` a 1-D float32 table with 16 entries (``bits=4``) or a power
        of two 2..256 (``bits=8`` or None); ``absmax`` 1-D float32, or uint8 codes when nested with
        ``offset`` a one-element float tensor and ``state2`` holding ceil(len(absmax) /
        state2.blocksize) float32 absmax and a float32 code of a power of two <= 256 entries.

        ``n_or_shape``: the number of quantized elements (an int) or their shape; the number of
        absmax must be ceil(n / blocksize). Default: ``self.shape`` (no count check when both are None).
        ``bits``: 4 for packed 4-bit states (dequantize_4bit), 8 for blockwise codes
        (dequantize_blockwise), None for either.
        """
        w = "quant_state"
        if bits not in (None, 4, 8):
            raise QuantInputError(f"bits: expected 4, 8 or None, got {bits!r}")
        if self.dtype not in FLOAT_DTYPES:
            raise QuantInputError(f"{w}.dtype: expected one of {_names(FLOAT_DTYPES)}, got {self.dtype!r}")
        shape = check_shape(f"{w}.shape", self.shape, allow_none=True)
        if n_or_shape is None:
            n = None if shape is None else math.prod(shape)
        elif isinstance(n_or_shape, numbers.Integral) and not isinstance(n_or_shape, bool):
            if n_or_shape < 0:
                raise QuantInputError(f"n_or_shape: expected a non-negative element count, got {n_or_shape}")
            n = int(n_or_shape)
        else:
            n = math.prod(check_shape("n_or_shape", n_or_shape))
        bs = _blocksize(f"{w}.blocksize", self.blocksize)
        _table(f"{w}.code", self.code, exact=16 if bits == 4 else None)
        nested = self.state2 is not None
        if bool(getattr(self, "nested", nested)) != nested:
            raise QuantInputError(f"{w}.nested: is {self.nested} but state2 is {'set' if nested else 'None'}")
        absmax = _tensor(f"{w}.absmax", self.absmax, torch.uint8 if nested else torch.float32,
                         "uint8 codes (nested)" if nested else "float32")
        if n is not None and absmax.numel() != -(-n // bs):
            raise QuantInputError(f"{w}.absmax: {absmax.numel()} values for {n} elements at blocksize {bs}; "
                                  f"expected ceil({n} / {bs}) = {-(-n // bs)}")
        if nested:
            s2 = self.state2
            if not isinstance(s2, QuantState):
                raise QuantInputError(f"{w}.state2: expected a QuantState, got {type(s2).__name__}")
            off = self.offset
            if not isinstance(off, torch.Tensor) or off.numel() != 1 or not off.is_floating_point():
                raise QuantInputError(f"{w}.offset: expected a one-element float tensor (the mean of absmax), "
                                      f"got {off if not isinstance(off, torch.Tensor) else f'{off.dtype} tensor of shape {tuple(off.shape)}'!r}")
            if s2.state2 is not None:
                raise QuantInputError(f"{w}.state2: must not be nested itself")
            if s2.dtype != torch.float32:
                raise QuantInputError(f"{w}.state2.dtype: expected float32 (absmax are float32), got {s2.dtype!r}")
            bs2 = _blocksize(f"{w}.state2.blocksize", s2.blocksize)
            _table(f"{w}.state2.code", s2.code, exact=None)
            a2 = _tensor(f"{w}.state2.absmax", s2.absmax, torch.float32, "float32")
            if a2.numel() != -(-absmax.numel() // bs2):
                raise QuantInputError(f"{w}.state2.absmax: {a2.numel()} values for {absmax.numel()} absmax codes at "
                                      f"nested blocksize {bs2}; expected {-(-absmax.numel() // bs2)}")
        return self

    def to(self, device) -> "QuantState":
        self.code = self.code.to(device)
        self.absmax = self.absmax.to(device)
        if self.nested:
            self.offset = self.offset.to(device)
            self.state2.to(device)
        return self

    def to_bnb(self):
        """The same state as a ``bitsandbytes.functional.QuantState`` (needs bitsandbytes), for
        ``bitsandbytes.functional.dequantize_4bit`` or ``bitsandbytes.nn.Linear4bit``/``Params4bit``.

        bitsandbytes 0.50.2 runs only its own two 4-bit tables: its kernels pick NF4 or FP4 from
        ``quant_type`` and ignore ``quant_map``. A 4-bit state of any other code (af4, a Lloyd-Max code,
        a 3-bit code padded to 16, ...) raises :class:`~workbench.codebooks.CodebookError` saying so, rather
        than becoming a state that bitsandbytes would silently dequantize with NF4 values. 8-bit blockwise
        states carry their table to bitsandbytes' ``dequantize_blockwise``, which reads it: any code converts."""
        why = bnb_incompatibility(self.quant_type, self.code) if self.quant_type is not None else None
        if why:
            from .codebooks import CodebookError
            raise CodebookError(f"to_bnb: {why}")
        from bitsandbytes.functional import QuantState as BnbQuantState
        return BnbQuantState.from_dict(self.as_dict(packed=True), device=self.absmax.device)

    @classmethod
    def from_bnb(cls, qs) -> "QuantState":
        """A bitsandbytes state (4-bit or blockwise, nested or not), taken field by field: its layout is
        ours. Refused (CodebookError) when its ``quant_map`` is not the table bitsandbytes itself
        dequantizes it with (a hand-built NF4/FP4 state with a custom table)."""
        if qs.quant_type is not None and qs.code is not None:
            why = bnb_incompatibility(qs.quant_type, qs.code)
            if why:
                from .codebooks import CodebookError
                raise CodebookError(f"from_bnb: {why}")
        nested = bool(getattr(qs, "nested", False)) and qs.state2 is not None
        return cls(absmax=qs.absmax, shape=qs.shape, code=qs.code, blocksize=qs.blocksize, quant_type=qs.quant_type,
                   dtype=qs.dtype, offset=qs.offset if nested else None,
                   state2=cls.from_bnb(qs.state2) if nested else None).validate()

    def has_nonfinite(self) -> bool:
        """Whether the quantized data held a NaN or Inf: by the spec a block's absmax is non-finite
        exactly when its block holds one (with double quantization the offset, their mean, is then
        non-finite). This is the flag of ``nan_policy="propagate"``; reading it is a host sync on CUDA."""
        flag = self.offset if self.nested else self.absmax
        return bool(not torch.isfinite(flag).all()) if flag.numel() else False

    def __repr__(self) -> str:
        return (f"QuantState(quant_type={self.quant_type!r}, shape={tuple(self.shape) if self.shape else None}, "
                f"dtype={self.dtype}, blocksize={self.blocksize}, nested={self.nested})")
