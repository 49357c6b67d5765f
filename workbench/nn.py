"""Quantized Linear modules on the workbench ops: ``Linear4bit`` (any 16-entry codebook) and ``quantize_model``.

``Linear4bit`` holds the packed weight (a frozen uint8 Parameter of bitsandbytes' shape ``((n+1)//2, 1)``), its
:class:`~workbench.QuantState` and an optional float bias; ``forward`` is bitsandbytes' Linear4bit.forward:
cast x to ``compute_dtype`` (default: x's dtype), ``matmul_4bit(x, W, bias)`` on ``backend``, cast back.
Gradients flow to x and bias through the dequantized weight (the QLoRA use); the packed weight is frozen.

The state dict uses bitsandbytes' keys (``weight``, ``weight.absmax``, ``weight.quant_map``,
``weight.nested_*``, ``weight.quant_state.bitsandbytes__<type>``, ``bias``), so a workbench checkpoint of an
NF4/FP4 layer loads into ``bitsandbytes.nn.Linear4bit`` and back; :meth:`Linear4bit.to_bnb` /
:meth:`Linear4bit.from_bnb` convert modules directly.
"""
from __future__ import annotations

import numbers
from typing import Callable

import torch
from torch import nn

from .matmul import matmul_4bit
from .ops import dequantize_4bit, quantize_4bit
from .quant_state import QuantState
from .validation import FLOAT_DTYPES, QuantInputError, check_dtype

__all__ = ["Linear4bit", "Linear8bitLt", "quantize_model"]


def _features(in_features, out_features) -> tuple[int, int]:
    """Both sizes positive ints (an empty weight has nothing to quantize; 3.5 features is a typo, not 3)."""
    for name, v in (("in_features", in_features), ("out_features", out_features)):
        if isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < 1:
            raise QuantInputError(f"{name}: expected a positive int, got {v!r}")
    return int(in_features), int(out_features)


class Linear4bit(nn.Module):
    def __init__(self, in_features: int, out_features: int, bias: bool = True, compute_dtype: torch.dtype | None = None,
                 compress_statistics: bool = True, quant_type: str = "fp4", quant_storage: torch.dtype = torch.uint8,
                 device=None, *, codebook=None, blocksize: int = 64, backend: str = "auto",
                 weight: torch.Tensor | None = None):
        super().__init__()
        self.in_features, self.out_features = _features(in_features, out_features)
        if compute_dtype is not None:
            check_dtype("compute_dtype", compute_dtype, FLOAT_DTYPES)
        self.compute_dtype = compute_dtype
        self.compress_statistics = compress_statistics
        self.quant_type = quant_type
        self.quant_storage = quant_storage
        self.codebook = codebook
        self.blocksize = blocksize
        self.backend = backend
        if weight is None:
            init = nn.Linear(in_features, out_features, bias=False)
            weight = init.weight.data
        if tuple(weight.shape) != (self.out_features, self.in_features):
            raise QuantInputError(f"weight: expected shape {(self.out_features, self.in_features)} "
                                  f"(out_features, in_features), got {tuple(weight.shape)}")
        self._set_weight(weight.to(device) if device is not None else weight)
        self.bias = nn.Parameter(torch.zeros(out_features, device=self.weight.device)) if bias else None

    def _set_weight(self, W: torch.Tensor) -> None:
        packed, qs = quantize_4bit(W.detach(), blocksize=self.blocksize, compress_statistics=self.compress_statistics,
                                   quant_type=self.quant_type, quant_storage=self.quant_storage,
                                   codebook=self.codebook, backend=self.backend)
        self.weight = nn.Parameter(packed, requires_grad=False)
        self.quant_state = qs

    # ------------------------------------------------------------------ construction / conversion
    @classmethod
    def from_linear(cls, linear: nn.Linear, **kw) -> "Linear4bit":
        """Quantize an nn.Linear (its weight's dtype becomes the state's dtype; the bias is kept as is)."""
        m = cls(linear.in_features, linear.out_features, bias=linear.bias is not None, weight=linear.weight.data, **kw)
        if linear.bias is not None:
            m.bias = nn.Parameter(linear.bias.data.clone(), requires_grad=linear.bias.requires_grad)
        return m

    def dequantize(self, dtype: torch.dtype | None = None) -> torch.Tensor:
        W = dequantize_4bit(self.weight, self.quant_state, backend=self.backend)
        return W if dtype is None else W.to(dtype)

    def to_bnb(self):
        """An equivalent ``bitsandbytes.nn.Linear4bit`` (NF4/FP4 tables only), sharing no storage."""
        import bitsandbytes as bnb
        qt = self.quant_state.quant_type
        if qt not in ("nf4", "fp4"):
            raise QuantInputError(f"quant_state.quant_type: bitsandbytes' Linear4bit takes 'nf4' or 'fp4', not {qt!r}")
        dev = self.weight.device
        m = bnb.nn.Linear4bit(self.in_features, self.out_features, bias=self.bias is not None,
                              compute_dtype=self.compute_dtype, compress_statistics=self.quant_state.nested,
                              quant_type=qt, quant_storage=self.weight.dtype, device="meta")
        m.weight = bnb.nn.Params4bit(self.weight.data.clone(), requires_grad=False,
                                     quant_state=self.quant_state.to_bnb(), blocksize=self.quant_state.blocksize,
                                     compress_statistics=self.quant_state.nested, quant_type=qt,
                                     quant_storage=self.weight.dtype, module=m, bnb_quantized=True)
        m.bias = None if self.bias is None else nn.Parameter(self.bias.data.clone().to(dev))
        return m

    @classmethod
    def from_bnb(cls, m, *, backend: str = "auto") -> "Linear4bit":
        """A workbench Linear4bit from a quantized ``bitsandbytes.nn.Linear4bit`` (same bytes, same state)."""
        qs = QuantState.from_bnb(m.weight.quant_state)
        self = cls.__new__(cls)
        nn.Module.__init__(self)
        self.in_features, self.out_features = m.in_features, m.out_features
        self.compute_dtype = m.compute_dtype
        self.compress_statistics = qs.nested
        self.quant_type = qs.quant_type
        self.quant_storage = m.weight.dtype
        self.codebook, self.blocksize, self.backend = None, qs.blocksize, backend
        self.weight = nn.Parameter(torch.Tensor(m.weight.data).clone(), requires_grad=False)
        self.quant_state = qs
        self.bias = None if m.bias is None else nn.Parameter(m.bias.data.clone())
        return self

    # ------------------------------------------------------------------ forward
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not isinstance(x, torch.Tensor):
            raise QuantInputError(f"input: expected a torch.Tensor, got {type(x).__name__}")
        inp_dtype = x.dtype
        cdt = self.compute_dtype or x.dtype
        # Tensor.to returns self for the same dtype, but costs a dispatched call (tens of us on the CPU GEMV path)
        if x.dtype != cdt:
            x = x.to(cdt)
        bias = self.bias
        if bias is not None and bias.dtype != cdt:
            bias = bias.to(cdt)
        y = matmul_4bit(x, self.weight, self.quant_state, bias=bias, backend=self.backend)
        return y if y.dtype == inp_dtype else y.to(inp_dtype)

    def extra_repr(self) -> str:
        qs = self.quant_state
        return (f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, "
                f"quant_type={qs.quant_type}, blocksize={qs.blocksize}, nested={qs.nested}, "
                f"compute_dtype={self.compute_dtype}, backend={self.backend!r}")

    # ------------------------------------------------------------------ devices and state dicts
    def _apply(self, fn, recurse=True):
        super()._apply(fn, recurse)
        if self.quant_state.absmax.device != self.weight.device:
            self.quant_state.to(self.weight.device)
        return self

    def _save_to_state_dict(self, destination, prefix, keep_vars):
        super()._save_to_state_dict(destination, prefix, keep_vars)
        for k, v in self.quant_state.as_dict(packed=True).items():
            destination[prefix + "weight." + k] = v if keep_vars else v.detach()

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        wp = prefix + "weight."
        qkeys = [k for k in state_dict if k.startswith(wp)]
        if qkeys:
            qs = QuantState.from_dict({k[len(wp):]: state_dict[k] for k in qkeys}, device=self.weight.device)
            w = state_dict.get(prefix + "weight")
            if w is not None:
                self.weight = nn.Parameter(w.detach().clone().to(self.weight.device), requires_grad=False)
            self.quant_state = qs
        rest = {k: v for k, v in state_dict.items() if k not in qkeys and k != prefix + "weight"}
        super()._load_from_state_dict(rest, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs)
        if prefix + "weight" in missing_keys and prefix + "weight" in state_dict:
            missing_keys.remove(prefix + "weight")


class _Int8Linear(torch.autograd.Function):
    """Forward: LLM.int8() (workbench.int8.int8_linear); backward: grad_A = grad_out @ W_hat, W_hat = codes * SCB / 127
    in grad_out's dtype (bitsandbytes' MatMul8bitLt.backward), grad_bias = the sum over leading dimensions."""

    @staticmethod
    def forward(ctx, A, codes, scb, bias, threshold, backend):
        from .int8 import Int8Weight, int8_linear
        ctx.save_for_backward(codes, scb)
        ctx.backend = backend
        ctx.bias_dtype = None if bias is None else bias.dtype
        b = None if bias is None else bias.detach()
        return int8_linear(A.detach(), Int8Weight(codes, scb), bias=b, threshold=threshold, backend=backend)

    @staticmethod
    def backward(ctx, grad_out):
        from .int8 import int8_vectorwise_dequant
        codes, scb = ctx.saved_tensors
        grad_A = grad_bias = None
        if ctx.needs_input_grad[0]:
            W = int8_vectorwise_dequant(codes, scb, backend=ctx.backend).to(grad_out.dtype)
            grad_A = torch.matmul(grad_out, W)
        if ctx.needs_input_grad[3]:
            grad_bias = grad_out.reshape(-1, grad_out.shape[-1]).sum(0, dtype=ctx.bias_dtype)
        return grad_A, None, None, grad_bias, None, None


class Linear8bitLt(nn.Module):
    """LLM.int8() linear layer on the workbench int8 ops (bitsandbytes' Linear8bitLt for inference and QLoRA-style
    training of everything but the weight): the weight row-wise int8 (``weight`` int8 codes, ``SCB`` float32 row
    absmax, bitsandbytes' state-dict names), activations quantized per row with ``threshold`` decomposition (outlier
    columns in the activation's dtype)."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, threshold: float = 6.0, device=None,
                 *, backend: str = "auto", weight: torch.Tensor | None = None):
        super().__init__()
        from .int8 import check_threshold, quantize_weight
        self.in_features, self.out_features = _features(in_features, out_features)
        self.threshold, self.backend = check_threshold(threshold), backend
        if weight is None:
            weight = nn.Linear(in_features, out_features, bias=False).weight.data
        if tuple(weight.shape) != (self.out_features, self.in_features):
            raise QuantInputError(f"weight: expected shape {(self.out_features, self.in_features)}, "
                                  f"got {tuple(weight.shape)}")
        w = weight.detach().to(device) if device is not None else weight.detach()
        q = quantize_weight(w if w.dtype in (torch.float16, torch.bfloat16, torch.float32) else w.float(),
                            backend=backend)
        self.weight = nn.Parameter(q.codes, requires_grad=False)
        self.register_buffer("SCB", q.stats)
        self.bias = nn.Parameter(torch.zeros(out_features, device=w.device)) if bias else None

    @classmethod
    def from_linear(cls, linear: nn.Linear, **kw) -> "Linear8bitLt":
        m = cls(linear.in_features, linear.out_features, bias=linear.bias is not None, weight=linear.weight.data, **kw)
        if linear.bias is not None:
            m.bias = nn.Parameter(linear.bias.data.clone(), requires_grad=linear.bias.requires_grad)
        return m

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bias = None if self.bias is None else self.bias.to(x.dtype)
        return _Int8Linear.apply(x, self.weight, self.SCB, bias, self.threshold, self.backend)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, "
                f"threshold={self.threshold}, backend={self.backend!r}")


def quantize_model(model: nn.Module, *, filter: Callable[[str, nn.Linear], bool] | None = None,
                   skip: tuple[str, ...] = (), inplace: bool = True, linear_cls: type = Linear4bit,
                   **linear4bit_kw) -> nn.Module:
    """Swap every ``nn.Linear`` of ``model`` (for which ``filter(name, module)`` is true and whose qualified
    name is not in ``skip``) for a ``linear_cls`` (:class:`Linear4bit`, or :class:`Linear8bitLt`) built from it with
    ``linear4bit_kw`` (Linear4bit: codebook=, quant_type=, blocksize=, compress_statistics=, compute_dtype=,
    backend=; Linear8bitLt: threshold=, backend=). Returns the model."""
    if not isinstance(model, nn.Module):
        raise QuantInputError(f"model: expected a torch.nn.Module, got {type(model).__name__}")
    if filter is not None and not callable(filter):
        raise QuantInputError(f"filter: expected a callable (name, module) -> bool, got {type(filter).__name__}")
    if isinstance(skip, str) or not all(isinstance(n, str) for n in skip):
        raise QuantInputError(f"skip: expected a collection of qualified module names, got {skip!r}")
    if not (isinstance(linear_cls, type) and callable(getattr(linear_cls, "from_linear", None))):
        raise QuantInputError(f"linear_cls: expected a class with from_linear (Linear4bit, Linear8bitLt), got "
                              f"{linear_cls!r}")
    if not inplace:
        import copy
        model = copy.deepcopy(model)
    for name, child in list(model.named_modules()):
        for cname, sub in list(child.named_children()):
            full = f"{name}.{cname}" if name else cname
            if type(sub) is nn.Linear and full not in skip and (filter is None or filter(full, sub)):
                setattr(child, cname, linear_cls.from_linear(sub, **linear4bit_kw))
    return model
