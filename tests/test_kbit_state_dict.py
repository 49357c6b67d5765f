"""KbitState.as_dict / from_dict (workbench/kbit_state_dict.py): round trips for every kind of state (codebook,
each scale format, dq8, affine, rotation, per-row groups), through torch.save / torch.load(weights_only=True)
with prefixed keys, and bad dicts whose errors name the key."""
from __future__ import annotations

import io

import pytest
import torch

from workbench import kbit as K
from workbench.kbit_state import KbitState
from workbench.validation import QuantInputError

STATES = [
    dict(), dict(scale_format="fp32", layout="dense"), dict(scale_format="bf16", blocksize="row"),
    dict(scale_format="e8m0", codebook="nf4", k=4), dict(scale_format="e4m3", blocksize=16),
    dict(scale_format="dq8", blocksize=64), dict(affine="minmax", blocksize=96),
    dict(affine="mse", scale_format="bf16", rotate=256, rotate_seed=9), dict(rotate=64, codes_against="decoded"),
]


def _quantized(**kw):
    kw = dict(kw)
    k = kw.pop("k", 3)
    W = torch.randn(6, 384, generator=torch.Generator().manual_seed(0)).to(torch.bfloat16)
    return K.quantize_kbit(W, k, **kw)


@pytest.mark.parametrize("kw", STATES, ids=lambda kw: ",".join(f"{k}={v}" for k, v in kw.items()) or "default")
@pytest.mark.parametrize("packed", [False, True])
def test_round_trip(kw, packed):
    p, st = _quantized(**kw)
    d = st.as_dict(packed=packed)
    if packed:
        assert all(isinstance(v, torch.Tensor) for v in d.values()) and "kbit_state" in d
    back = KbitState.from_dict(d)
    for f in ("k", "blocksize", "layout", "scale_format", "codes_against", "shape", "dtype", "affine", "rotate",
              "rotate_seed"):
        assert getattr(back, f) == getattr(st, f), f
    assert torch.equal(K.dequantize_kbit(p, back), K.dequantize_kbit(p, st))


def test_state_dict_through_torch_save_with_prefixed_keys():
    p, st = _quantized(affine="mse", rotate=128)
    sd = {"layer.0.weight": p, **{f"layer.0.weight.{k}": v for k, v in st.as_dict(packed=True).items()}}
    buf = io.BytesIO()
    torch.save(sd, buf)
    buf.seek(0)
    loaded = torch.load(buf, weights_only=True)
    items = {k: v for k, v in loaded.items() if k != "layer.0.weight"}
    back = KbitState.from_dict(items)
    assert torch.equal(K.dequantize_kbit(loaded["layer.0.weight"], back), K.dequantize_kbit(p, st))


def _unpacked(**kw):
    return _quantized(**kw)[1].as_dict()


@pytest.mark.parametrize("mutate,key", [
    (lambda d: d.pop("k"), "state_dict"),                                      # missing: names the key list
    (lambda d: d.update(k=9), "state_dict['k']"),
    (lambda d: d.update(k="3"), "state_dict['k']"),
    (lambda d: d.update(blocksize=0), "state_dict['blocksize']"),
    (lambda d: d.update(layout="rows"), "state_dict['layout']"),
    (lambda d: d.update(dtype="int8"), "state_dict['dtype']"),
    (lambda d: d.update(shape=[6, -1]), "state_dict['shape']"),
    (lambda d: d.update(shape=[6, 385]), "state_dict['scales']"),               # counts no longer fit
    (lambda d: d.update(scales=d["scales"].float()), "state_dict['scales']"),  # e4m4 bytes expected
    (lambda d: d.update(scales=d["scales"].view(3, -1)), "state_dict['scales']"),
    (lambda d: d.update(codebook=d["codebook"][:4]), "state_dict['codebook']"),
    (lambda d: d.update(codebook=[0.0] * 8), "state_dict['codebook']"),
    (lambda d: d.update(tensor_scale=torch.ones(1)), "state_dict['tensor_scale']"),
    (lambda d: d.update(format="bnb-4bit"), "state_dict['format']"),
    (lambda d: d.update(rotate=48), "state_dict['rotate']"),
    (lambda d: d.update(scale_format="int8"), "state_dict['scale_format']"),
    (lambda d: d.update(bogus=1), "state_dict"),
    (lambda d: d.update(zeros=torch.zeros(3, dtype=torch.uint8)), "state_dict"),   # zeros on a codebook state
])
def test_bad_codebook_state_dicts_name_the_key(mutate, key):
    d = _unpacked()
    mutate(d)
    with pytest.raises(QuantInputError, match="^" + key.replace("[", r"\[").replace("]", r"\]") + ":"):
        KbitState.from_dict(d)


def test_bad_affine_dq8_and_packed_dicts_name_the_key():
    d = _unpacked(affine="minmax")
    d["zeros"] = d["zeros"].to(torch.int32)
    with pytest.raises(QuantInputError, match=r"^state_dict\['zeros'\]:"):
        KbitState.from_dict(d)
    d = _unpacked(scale_format="dq8", blocksize=64)
    d["nested_absmax"] = d["nested_absmax"][:0]
    with pytest.raises(QuantInputError, match=r"^state_dict\['nested_absmax'\]:"):
        KbitState.from_dict(d)
    d = _unpacked(scale_format="dq8", blocksize=64)
    d.pop("nested_offset")
    with pytest.raises(QuantInputError, match=r"^state_dict: missing key\(s\) \['nested_offset'\]"):
        KbitState.from_dict(d)
    d = _quantized()[1].as_dict(packed=True)
    d["kbit_state"] = d["kbit_state"][:-3]                                      # truncated JSON
    with pytest.raises(QuantInputError, match=r"^state_dict\['kbit_state'\]:"):
        KbitState.from_dict(d)
    with pytest.raises(QuantInputError, match=r"^state_dict:"):
        KbitState.from_dict([("k", 3)])
    with pytest.raises(QuantInputError, match=r"^device:"):
        KbitState.from_dict(_unpacked(), device="gpu9")
