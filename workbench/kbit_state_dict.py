"""KbitState <-> a flat dict of tensors and plain values (``KbitState.as_dict`` / ``KbitState.from_dict``).

Unpacked: one item per field (tensors: ``scales``, ``tensor_scale``, ``codebook`` or ``zeros``, and for dq8 the
nested ``nested_absmax`` / ``nested_quant_map``; plain values: ``k``, ``blocksize``, ``shape``, ``dtype`` (a name),
...). Packed (``packed=True``, for a module's state_dict and ``torch.load(weights_only=True)``): the tensors, plus
the plain values as UTF-8 JSON in one uint8 tensor under ``kbit_state`` (bitsandbytes' way of storing its
QuantState). Keys may carry a prefix (``"layer.0.weight.scales"``): the part after the last dot is the key.

``from_dict`` checks every item before building the state -- a missing or unknown key, a wrong type, dtype or
rank, an unknown format version -- then the state's consistency (``KbitState.validate_fields``); each error is a
QuantInputError that names the key (``state_dict['scales']: ...``).
"""
from __future__ import annotations

import json
import numbers
from collections.abc import Mapping

import torch

from .validation import FLOAT_DTYPES, QuantInputError

FORMAT = "kbit-workbench/kbit-state-1"
PACKED_KEY = "kbit_state"
_W = "state_dict"
PLAIN = ("format", "k", "blocksize", "layout", "scale_format", "codes_against", "shape", "dtype", "affine",
         "rotate", "rotate_seed")
TENSORS = ("scales", "tensor_scale", "codebook", "zeros")
NESTED_PLAIN = ("nested_blocksize", "nested_offset", "nested_dtype")
NESTED_TENSORS = ("nested_absmax", "nested_quant_map")
VALID_KEYS = PLAIN + TENSORS + NESTED_PLAIN + NESTED_TENSORS + (PACKED_KEY,)


def _name(dt: torch.dtype) -> str:
    return str(dt).removeprefix("torch.")


def as_dict(state, packed: bool = False) -> dict:
    d = {"format": FORMAT, "k": state.k, "blocksize": state.blocksize, "layout": state.layout,
         "scale_format": state.scale_format, "codes_against": state.codes_against, "shape": list(state.shape),
         "dtype": _name(state.dtype), "affine": state.affine, "rotate": state.rotate,
         "rotate_seed": state.rotate_seed, "scales": state.scales, "tensor_scale": state.tensor_scale}
    if state.affine:
        d["zeros"] = state.zeros
    else:
        d["codebook"] = state.codebook
    if state.state2 is not None:
        s2 = state.state2
        d.update(nested_absmax=s2.absmax, nested_quant_map=s2.code, nested_blocksize=s2.blocksize,
                 nested_offset=float(state.offset), nested_dtype=_name(s2.dtype))
    if not packed:
        return d
    out = {k: v for k, v in d.items() if isinstance(v, torch.Tensor)}
    out[PACKED_KEY] = torch.tensor(list(json.dumps({k: v for k, v in d.items() if k not in out}).encode()),
                                   dtype=torch.uint8)
    return out


# ------------------------------------------------------------------ item checks (each names its key)

def _where(key: str) -> str:
    return f"{_W}[{key!r}]"


def _int(d, key, lo=None) -> int:
    v = d[key]
    if isinstance(v, bool) or not isinstance(v, numbers.Integral) or (lo is not None and v < lo):
        raise QuantInputError(f"{_where(key)}: expected an int{f' >= {lo}' if lo is not None else ''}, got {v!r}")
    return int(v)


def _str(d, key, allow_none=False) -> str | None:
    v = d[key]
    if v is None and allow_none:
        return None
    if not isinstance(v, str):
        raise QuantInputError(f"{_where(key)}: expected a str{' or None' if allow_none else ''}, got {v!r}")
    return v


def _dtype(d, key, allowed=FLOAT_DTYPES) -> torch.dtype:
    v = d[key]
    dt = getattr(torch, v.removeprefix("torch."), None) if isinstance(v, str) else v
    if dt not in allowed:
        raise QuantInputError(f"{_where(key)}: expected one of {[_name(a) for a in allowed]}, got {v!r}")
    return dt


def _shape(d, key) -> torch.Size:
    v = d[key]
    if not isinstance(v, (list, tuple, torch.Size)) or any(
            isinstance(x, bool) or not isinstance(x, numbers.Integral) or x < 0 for x in v):
        raise QuantInputError(f"{_where(key)}: expected a list of non-negative ints, got {v!r}")
    return torch.Size(int(x) for x in v)


def _tensor(d, key, dtypes, device) -> torch.Tensor:
    v = d[key]
    if not isinstance(v, torch.Tensor):
        raise QuantInputError(f"{_where(key)}: expected a 1-D torch.Tensor, got {type(v).__name__}")
    if v.dtype not in dtypes:
        raise QuantInputError(f"{_where(key)}: expected dtype {'/'.join(_name(t) for t in dtypes)}, "
                              f"got {_name(v.dtype)}")
    if v.dim() != 1:
        raise QuantInputError(f"{_where(key)}: expected a 1-D tensor, got shape {tuple(v.shape)}")
    return v.to(device)


def _items(state_dict) -> dict:
    """Prefixes dropped, a packed JSON item unpacked; unknown and duplicate keys refused."""
    if not isinstance(state_dict, Mapping):
        raise QuantInputError(f"{_W}: expected a dict of k-bit state items, got {type(state_dict).__name__}")
    short: dict = {}
    for key, v in state_dict.items():
        if not isinstance(key, str):
            raise QuantInputError(f"{_W}: keys must be str, got {key!r}")
        s = key.rsplit(".", 1)[-1]
        if s in short:
            raise QuantInputError(f"{_W}: two items name {s!r} (after dropping prefixes), one is {key!r}")
        short[s] = v
    unknown = sorted(set(short) - set(VALID_KEYS))
    if unknown:
        raise QuantInputError(f"{_W}: unknown key(s) {unknown}; expected a subset of {list(VALID_KEYS)}")
    if PACKED_KEY in short:
        t = short.pop(PACKED_KEY)
        if not isinstance(t, torch.Tensor) or t.dtype != torch.uint8 or t.dim() != 1:
            raise QuantInputError(f"{_where(PACKED_KEY)}: expected a 1-D uint8 tensor of UTF-8 JSON bytes")
        try:
            plain = json.loads(bytes(t.cpu().numpy()).decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as e:
            raise QuantInputError(f"{_where(PACKED_KEY)}: not JSON ({type(e).__name__}: {e}); truncated?") from None
        if not isinstance(plain, dict):
            raise QuantInputError(f"{_where(PACKED_KEY)}: expected a JSON object, got {type(plain).__name__}")
        for k, v in plain.items():
            if k not in PLAIN + NESTED_PLAIN:
                raise QuantInputError(f"{_where(PACKED_KEY)}: unknown item {k!r}")
            if k in short:
                raise QuantInputError(f"{_W}: {k!r} given both as an item and inside {PACKED_KEY!r}")
            short[k] = v
    return short


def from_dict(state_dict, device="cpu"):
    from .kbit_state import DQ8, KbitState
    from .quant_state import QuantState
    d = _items(state_dict)
    missing = [k for k in PLAIN + ("scales", "tensor_scale") if k not in d]
    if missing:
        raise QuantInputError(f"{_W}: missing key(s) {missing}")
    if d["format"] != FORMAT:
        raise QuantInputError(f"{_where('format')}: expected {FORMAT!r}, got {d['format']!r}")
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError, ValueError) as e:
        raise QuantInputError(f"device: {device!r} is not a torch device ({e})") from None
    affine = _str(d, "affine", allow_none=True)
    fmt = _str(d, "scale_format")
    need = ["zeros"] if affine else ["codebook"]
    need += list(NESTED_PLAIN + NESTED_TENSORS) if fmt == DQ8 else []
    extra = [k for k in (("codebook",) if affine else ("zeros",)) + (() if fmt == DQ8 else NESTED_PLAIN
                                                                       + NESTED_TENSORS) if k in d]
    if [k for k in need if k not in d] or extra:
        raise QuantInputError(f"{_W}: missing key(s) {[k for k in need if k not in d]}, unexpected key(s) {extra} "
                              f"for an {'affine' if affine else 'codebook'} state with scale_format {fmt!r}")
    scale_dtypes = (torch.float32, torch.float16, torch.bfloat16, torch.uint8)
    offset = state2 = None
    if fmt == DQ8:
        off = d["nested_offset"]
        if isinstance(off, bool) or not isinstance(off, numbers.Real):
            raise QuantInputError(f"{_where('nested_offset')}: expected a float, got {off!r}")
        offset = torch.tensor(float(off), dtype=torch.float32, device=device)
        absmax2 = _tensor(d, "nested_absmax", (torch.float32,), device)
        state2 = QuantState(absmax=absmax2, code=_tensor(d, "nested_quant_map", (torch.float32,), device),
                            blocksize=_int(d, "nested_blocksize", 1), dtype=_dtype(d, "nested_dtype", (torch.float32,)))
    state = KbitState(
        k=_int(d, "k"), codebook=None if affine else _tensor(d, "codebook", (torch.float32,), device),
        blocksize=_int(d, "blocksize", 1), layout=_str(d, "layout"), scale_format=fmt,
        codes_against=_str(d, "codes_against"), scales=_tensor(d, "scales", scale_dtypes, device),
        tensor_scale=_tensor(d, "tensor_scale", (torch.float32,), device), shape=_shape(d, "shape"),
        dtype=_dtype(d, "dtype"), offset=offset, state2=state2, affine=affine,
        zeros=_tensor(d, "zeros", (torch.uint8,), device) if affine else None,
        rotate=_int(d, "rotate", 0), rotate_seed=_int(d, "rotate_seed", 0))
    if state2 is not None:
        state2.shape = torch.Size([state.scales.numel()])
    try:
        state.validate_fields()
    except QuantInputError as e:   # name the dict's key, not the attribute
        msg = str(e)
        if msg.startswith("state."):
            key, rest = msg[len("state."):].split(":", 1)
            msg = f"{_where(key)}:{rest}"
        elif msg.split(":", 1)[0] in d:
            key, rest = msg.split(":", 1)
            msg = f"{_where(key)}:{rest}"
        raise QuantInputError(msg) from None
    return state
