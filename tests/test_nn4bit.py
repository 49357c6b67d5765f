"""workbench.nn.Linear4bit and quantize_model (issue 18): forward = matmul_4bit, backward through the dequantized
weight, state_dict round trip (bitsandbytes' keys), conversion to/from bitsandbytes' Linear4bit on CPU."""
from __future__ import annotations

import io
import warnings

import numpy as np
import pytest
import torch
from torch import nn

import workbench as wb
from workbench import codebooks as cbs
from workbench.matmul import matmul_4bit
from workbench.nn import Linear4bit, quantize_model


def _lin(rng, i=64, o=48, dtype=torch.float32):
    lin = nn.Linear(i, o)
    with torch.no_grad():
        lin.weight.copy_(torch.randn(o, i, generator=rng))
        lin.bias.copy_(torch.randn(o, generator=rng))
    return lin.to(dtype)


@pytest.mark.parametrize("codebook", [None, "af4"])
def test_forward_backward_vs_dequantized_weight(rng, codebook):
    lin = _lin(rng)
    q = Linear4bit.from_linear(lin, quant_type="nf4", codebook=codebook, blocksize=32, compress_statistics=True)
    x = torch.randn(3, 5, 64, generator=rng, requires_grad=True)
    y = q(x)
    W = q.dequantize()
    x2 = x.detach().clone().requires_grad_(True)
    b2 = q.bias.detach().clone().requires_grad_(True)
    y2 = torch.nn.functional.linear(x2, W, b2)
    assert torch.allclose(y, y2, rtol=1e-5, atol=1e-4)
    g = torch.randn(y.shape, generator=rng)
    y.backward(g)
    y2.backward(g)
    assert torch.allclose(x.grad, x2.grad, rtol=1e-5, atol=1e-5)
    assert torch.allclose(q.bias.grad, b2.grad, rtol=1e-5, atol=1e-4)
    assert q.weight.grad is None and not q.weight.requires_grad


def test_state_dict_round_trip_custom_codebook(rng):
    cb = cbs.from_values(torch.linspace(-1, 1, 16).numpy(), name="lin16")
    q = Linear4bit.from_linear(_lin(rng), codebook=cb, blocksize=64, compress_statistics=True,
                               compute_dtype=torch.bfloat16)
    buf = io.BytesIO()
    torch.save(q.state_dict(), buf)
    sd = torch.load(io.BytesIO(buf.getvalue()))
    assert "weight.quant_state.bitsandbytes__lin16" in sd and "weight.nested_absmax" in sd
    q2 = Linear4bit(64, 48, compute_dtype=torch.bfloat16, quant_type="fp4", compress_statistics=False)
    q2.load_state_dict(sd)
    x = torch.randn(4, 64, generator=rng)
    assert torch.equal(q(x), q2(x))
    assert torch.equal(q2.quant_state.code, q.quant_state.code)


def test_quantize_model_swaps_linear_layers_with_filter(rng):
    model = nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Sequential(nn.Linear(64, 64), nn.Linear(64, 8)))
    quantize_model(model, filter=lambda name, m: m.out_features != 8, quant_type="nf4", blocksize=32)
    kinds = [type(m).__name__ for m in model.modules() if isinstance(m, (nn.Linear, Linear4bit))]
    assert kinds == ["Linear4bit", "Linear4bit", "Linear"]
    assert model(torch.randn(2, 32, generator=rng)).shape == (2, 8)


@pytest.mark.bnb
@pytest.mark.parametrize("quant_type", ["nf4", "fp4"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_bitsandbytes_linear4bit_both_ways(rng, quant_type, dtype):
    bnb = pytest.importorskip("bitsandbytes")
    lin = _lin(rng, 128, 40, dtype)
    q = Linear4bit.from_linear(lin, quant_type=quant_type, compress_statistics=True, compute_dtype=dtype)
    x = torch.randn(2, 7, 128, generator=rng).to(dtype)
    theirs = q.to_bnb()
    assert isinstance(theirs, bnb.nn.Linear4bit)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        y_b = theirs(x)
        y_w = q(x)
        back = Linear4bit.from_bnb(theirs)
        y_back = back(x)
        # a state dict written by bitsandbytes loads into ours
        q3 = Linear4bit(128, 40, compute_dtype=dtype, quant_type=quant_type)
        q3.load_state_dict(theirs.state_dict())
        y3 = q3(x)
    assert torch.equal(y_back, y_w) and torch.equal(y3, y_w)
    assert torch.equal(back.weight.data, q.weight.data)
    # outputs: bitsandbytes (its float32 order, rule 2) and ours (the CPU kernel's bound: unscaled lookups for bf16
    # where the CPU has AVX512_BF16) each against the spec
    from test_matmul import _check_bound, _cython_bound
    x2 = x.reshape(-1, 128)
    ref = matmul_4bit(x2, q.weight.data, q.quant_state, bias=q.bias, backend="reference")
    _check_bound(y_b.reshape(ref.shape), ref, x2, q.weight.data, q.quant_state, q.bias)
    _cython_bound(y_w.reshape(ref.shape), ref, x2, q.weight.data, q.quant_state, q.bias)


def test_linear8bitlt_forward_backward(rng):
    from workbench.int8 import int8_linear, quantize_weight
    from workbench.nn import Linear8bitLt
    lin = _lin(rng, 64, 24)
    q = Linear8bitLt.from_linear(lin, threshold=2.0)
    x = torch.randn(2, 3, 64, generator=rng)
    x[..., 5] *= 10   # an outlier column: the decomposition path
    x.requires_grad_(True)
    y = q(x)
    want = int8_linear(x.detach(), quantize_weight(lin.weight.data), bias=lin.bias.data, threshold=2.0)
    assert torch.equal(y.detach(), want)
    g = torch.randn(y.shape, generator=rng)
    y.backward(g)
    W = q.SCB.view(-1, 1) * q.weight.float() / 127
    assert torch.allclose(x.grad, g @ W, rtol=1e-5, atol=1e-5)
    assert torch.allclose(q.bias.grad, g.reshape(-1, 24).sum(0), rtol=1e-5, atol=1e-5)
    model = quantize_model(nn.Sequential(nn.Linear(64, 8)), linear_cls=Linear8bitLt, threshold=6.0)
    assert isinstance(model[0], Linear8bitLt) and model(torch.randn(1, 64)).shape == (1, 8)


@pytest.mark.parametrize("kwargs, arg", [({"compute_dtype": torch.int32}, "compute_dtype"),
                                         ({"compute_dtype": "bf16"}, "compute_dtype"),
                                         ({"blocksize": 48}, "blocksize"), ({"quant_type": "nf5"}, "quant_type"),
                                         ({"codebook": "dynamic"}, "codebook")])
def test_bad_construction_names_the_argument(rng, kwargs, arg):
    from workbench.validation import QuantInputError
    with pytest.raises(QuantInputError, match=f"^{arg}:"):
        Linear4bit.from_linear(_lin(rng), **kwargs)


def test_bad_input_names_it(rng):
    from workbench.validation import QuantInputError
    m = Linear4bit.from_linear(_lin(rng))
    for x, match in (([[0.0] * 64], "^input: expected a torch.Tensor"), (torch.ones(2, 64, dtype=torch.int32), "^A: dtype"),
                     (torch.randn(2, 63), "^A: inner dimension 63"), (torch.tensor(1.0), "^A: expected at least one")):
        with pytest.raises(QuantInputError, match=match):
            m(x)
    with pytest.raises(QuantInputError, match="^weight: expected shape"):
        Linear4bit(64, 48, weight=torch.randn(48, 65))


@pytest.mark.parametrize("sizes, arg", [((0, 48), "in_features"), ((64, -1), "out_features"),
                                        ((64.5, 48), "in_features"), ((True, 48), "in_features"),
                                        ((64, "48"), "out_features")])
def test_sizes_are_positive_ints(sizes, arg):
    from workbench.nn import Linear8bitLt
    from workbench.validation import QuantInputError
    for cls in (Linear4bit, Linear8bitLt):
        with pytest.raises(QuantInputError, match=f"^{arg}: expected a positive int"):
            cls(*sizes)
    assert Linear4bit(np.int64(64), 48).in_features == 64


def test_quantize_model_and_linear8bitlt_arguments_named(rng):
    from workbench.nn import Linear8bitLt
    from workbench.validation import QuantInputError
    m = nn.Sequential(_lin(rng), nn.ReLU(), nn.Linear(48, 4))
    for kw, arg in (({"filter": 3}, "filter"), ({"skip": "0"}, "skip"), ({"linear_cls": "Linear4bit"}, "linear_cls")):
        with pytest.raises(QuantInputError, match=f"^{arg}:"):
            quantize_model(m, inplace=False, **kw)
    with pytest.raises(QuantInputError, match="^model:"):
        quantize_model("model")
    assert type(quantize_model(m, skip=["0"], inplace=False)[0]) is nn.Linear
    for bad in ("abc", None, -1.0, float("nan")):
        with pytest.raises(QuantInputError, match="^threshold:"):
            Linear8bitLt.from_linear(_lin(rng), threshold=bad)
