"""QuantState: the bookkeeping that undoes a quantization, field- and key-compatible with
bitsandbytes 0.50.2 (``as_dict``/``from_dict``), so state dicts move both ways."""
from __future__ import annotations

import json
from typing import Any

import torch

VALID_QS_KEYS = ("absmax", "quant_map", "nested_absmax", "nested_quant_map", "quant_state", "quant_type",
                 "blocksize", "dtype", "shape", "nested_blocksize", "nested_dtype", "nested_offset")


def pack_dict_to_tensor(d: dict) -> torch.Tensor:
    """JSON -> uint8 tensor, the format bitsandbytes stores non-tensor quant-state items in."""
    return torch.tensor(list(json.dumps(d).encode("utf-8")), dtype=torch.uint8)


def unpack_tensor_to_dict(t: torch.Tensor) -> dict:
    return json.loads(bytes(t.cpu().numpy()).decode("utf-8"))


def _dtype_name(dt: torch.dtype) -> str:
    return str(dt).removeprefix("torch.")


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
        qs_dict = dict(qs_dict)
        packed_keys = [k for k, v in qs_dict.items() if "quant_state" in k and isinstance(v, torch.Tensor)]
        if "quant_type" not in qs_dict:
            if len(packed_keys) != 1 or "bitsandbytes__" not in packed_keys[0]:
                raise ValueError(f"qs_dict: expected exactly one 'quant_state.bitsandbytes__<type>' item or unpacked "
                                 f"items; found {packed_keys or 'neither'}")
            qs_dict.update(unpack_tensor_to_dict(qs_dict.pop(packed_keys[0])))
        qs_dict = {k.split(".")[-1]: v for k, v in qs_dict.items()}
        unknown = set(qs_dict) - set(VALID_QS_KEYS)
        if unknown:
            raise ValueError(f"qs_dict: unknown keys {sorted(unknown)}; expected a subset of {VALID_QS_KEYS}")
        offset = state2 = None
        if "nested_absmax" in qs_dict:
            offset = torch.tensor(float(qs_dict["nested_offset"])).to(device)
            state2 = cls(absmax=qs_dict["nested_absmax"].to(device), blocksize=qs_dict["nested_blocksize"],
                         code=qs_dict["nested_quant_map"].to(device), dtype=getattr(torch, qs_dict["nested_dtype"]))
        return cls(quant_type=qs_dict["quant_type"], absmax=qs_dict["absmax"].to(device),
                   blocksize=qs_dict["blocksize"], code=qs_dict["quant_map"].to(device),
                   dtype=getattr(torch, qs_dict["dtype"]),
                   shape=torch.Size(qs_dict["shape"]) if qs_dict["shape"] is not None else None,
                   offset=offset, state2=state2)

    def to(self, device) -> "QuantState":
        self.code = self.code.to(device)
        self.absmax = self.absmax.to(device)
        if self.nested:
            self.offset = self.offset.to(device)
            self.state2.to(device)
        return self

    def to_bnb(self):
        """The same state as a ``bitsandbytes.functional.QuantState`` (needs bitsandbytes)."""
        from bitsandbytes.functional import QuantState as BnbQuantState
        return BnbQuantState.from_dict(self.as_dict(packed=True), device=self.absmax.device)

    @classmethod
    def from_bnb(cls, qs) -> "QuantState":
        return cls.from_dict(qs.as_dict(packed=True), device=qs.absmax.device)

    def __repr__(self) -> str:
        return (f"QuantState(quant_type={self.quant_type!r}, shape={tuple(self.shape) if self.shape else None}, "
                f"dtype={self.dtype}, blocksize={self.blocksize}, nested={self.nested})")
