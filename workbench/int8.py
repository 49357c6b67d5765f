"""LLM.int8(): row-wise (vector-wise) int8 quantization with outlier columns, int8 matmul with
dequantization, and the mixed-precision decomposition (outlier columns in 16-bit).

Signatures follow ``bitsandbytes.functional``; ``backend=`` picks the implementation
(``workbench backends``). Inputs are validated here and never modified (bitsandbytes' CPU
path zeroes outliers in the caller's tensor and restores them afterwards).
"""
from __future__ import annotations

import numbers

import numpy as np
import torch

from . import library  # noqa: F401  (declares the torch.ops.workbench ops)
from .backends import get_op
from .backends.registry import resolve
from .ops import _DTYPE_NAMES, _device, call_op
from .validation import (FLOAT_DTYPES, QuantInputError, check_bias, check_dtype, check_finite, check_nan_policy,
                         check_on, check_tensor, raise_if_nonfinite)

__all__ = ["int8_vectorwise_quant", "int8_vectorwise_dequant", "int8_double_quant", "int8_linear_matmul",
           "int8_mm_dequant", "outlier_columns", "int8_linear", "Int8Weight", "quantize_weight"]


def _backend(backend: str, op: str, A: torch.Tensor) -> str:
    return resolve(backend, op, _device(A), _DTYPE_NAMES.get(A.dtype) or str(A.dtype).removeprefix("torch."))


def _matrix(name: str, A, dtypes=FLOAT_DTYPES, nan_policy: str | None = None) -> torch.Tensor:
    """A validated 2-D contiguous view; ``nan_policy`` set: also a finiteness pass over A (for the ops
    whose kernels report no row absmax)."""
    check_tensor(name, A, dtypes=dtypes)
    if A.dim() < 2:
        raise QuantInputError(f"{name}: expected a matrix (rows x columns), got shape {tuple(A.shape)}")
    if nan_policy is not None and A.is_floating_point():
        check_finite(name, A, nan_policy)
    if A.dim() == 2 and not A.requires_grad and A.is_contiguous():
        return A          # the common case, with no tensor calls (each costs microseconds of a small call)
    return A.detach().reshape(-1, A.shape[-1]).contiguous()


def check_threshold(threshold) -> float:
    """The outlier threshold as a float: a real number >= 0 (numpy scalars too), not a bool, NaN or string."""
    if not isinstance(threshold, numbers.Real) or isinstance(threshold, (bool, np.bool_)) or threshold != threshold:
        raise QuantInputError(f"threshold: expected a number, got {threshold!r}")
    if threshold < 0:
        raise QuantInputError(f"threshold: must be >= 0 (0 disables outlier decomposition), got {threshold}")
    return float(threshold)


def int8_vectorwise_quant(A: torch.Tensor, threshold: float = 0.0, *, backend: str = "auto", nan_policy="propagate"):
    """-> (int8 codes shaped like A, float32 row stats, int64 outlier columns or None when threshold == 0).

    The row stats are the non-finite flag (a row's absmax is NaN when the row holds a NaN, Inf when it
    holds an Inf that is not an outlier): the default ``nan_policy="propagate"`` returns them as they
    are, with no host sync; ``"raise"`` reads them first (a host sync on CUDA). With ``threshold > 0``
    an Inf is an outlier (|a| >= threshold, bitsandbytes' rule) and is left to the 16-bit path, so only
    NaN raises."""
    t = check_threshold(threshold)
    check_nan_policy(nan_policy)
    a = _matrix("A", A)
    codes, stats, cols = call_op("int8_vectorwise_quant", _backend(backend, "int8_vectorwise_quant", A), a, t)
    raise_if_nonfinite("A", a, stats, nan_policy)
    return (codes if a is A else codes.view(A.shape)), stats, cols


def outlier_columns(A: torch.Tensor, threshold: float = 6.0, *, backend: str = "auto",
                    nan_policy: str = "propagate") -> torch.Tensor:
    """Indices of the columns holding at least one |a| >= threshold (a NaN is never an outlier).
    ``nan_policy="raise"`` adds a pass over A (this op computes no row absmax to read)."""
    t = check_threshold(threshold)
    if t == 0:
        raise QuantInputError("threshold: must be > 0 to define outliers")
    check_nan_policy(nan_policy)
    a = _matrix("A", A, nan_policy=nan_policy)
    return call_op("outlier_columns", _backend(backend, "outlier_columns", A), a, t)


def _stats(name: str, s, like: torch.Tensor, like_name: str, dim: int) -> torch.Tensor:
    """Float stats of ``like``, one per row (dim 0) or column (dim 1), on its device, as float32."""
    check_tensor(name, s, dtypes=FLOAT_DTYPES, allow_empty=True)
    if s.numel() != like.shape[dim]:
        raise QuantInputError(f"{name}: expected {like.shape[dim]} values (one per {like_name} "
                              f"{('row', 'column')[dim]}), got {s.numel()}")
    check_on(name, s, like, like_name)
    return s.float()


def int8_vectorwise_dequant(codes: torch.Tensor, stats: torch.Tensor, *, backend: str = "auto") -> torch.Tensor:
    c = _matrix("codes", codes, dtypes=(torch.int8,))
    s = _stats("stats", stats, c, "codes", 0)
    return call_op("int8_vectorwise_dequant", _backend(backend, "int8_vectorwise_dequant", codes), c,
                   s).view(codes.shape)


def int8_double_quant(A: torch.Tensor, threshold: float = 0.0, *, backend: str = "auto", nan_policy="propagate"):
    """-> (row codes, column codes, row stats, column stats, outlier columns or None); ``nan_policy`` as in
    :func:`int8_vectorwise_quant`."""
    t = check_threshold(threshold)
    check_nan_policy(nan_policy)
    a = _matrix("A", A)
    out = call_op("int8_double_quant", _backend(backend, "int8_double_quant", A), a, t)
    raise_if_nonfinite("A", a, out[2], nan_policy)
    return out


def int8_linear_matmul(A: torch.Tensor, B: torch.Tensor, *, backend: str = "auto") -> torch.Tensor:
    """Exact int32 ``A @ B.T`` for int8 A (m x k) and B (n x k)."""
    a = _matrix("A", A, dtypes=(torch.int8,))
    b = _matrix("B", B, dtypes=(torch.int8,))
    if a.shape[1] != b.shape[1]:
        raise QuantInputError(f"B: inner dimensions differ: A has {a.shape[1]} columns, B has {b.shape[1]}")
    check_on("B", b, a, "A")
    if a.shape[1] * 127 * 127 >= 2 ** 31:
        raise QuantInputError(f"A: inner dimension {a.shape[1]} could overflow the int32 accumulator")
    return call_op("int8_linear_matmul", _backend(backend, "int8_linear_matmul", A), a, b)


def int8_mm_dequant(C: torch.Tensor, row_stats: torch.Tensor, col_stats: torch.Tensor, bias=None,
                    dtype: torch.dtype = torch.float16, *, backend: str = "auto") -> torch.Tensor:
    """``C * row_stats[:, None] * col_stats / 127**2 (+ bias)`` in ``dtype`` for the int32 product C (m x n)."""
    c = _matrix("C", C, dtypes=(torch.int32,))
    rs = _stats("row_stats", row_stats, c, "C", 0)
    cs = _stats("col_stats", col_stats, c, "C", 1)
    b = check_bias(bias, c.shape[1], c, "C")
    check_dtype("dtype", dtype, FLOAT_DTYPES)
    return call_op("int8_mm_dequant", _backend(backend, "int8_mm_dequant", C), c, rs, cs, b, dtype)


class Int8Weight:
    """A weight (out_features x in_features) quantized row-wise to int8, as bitsandbytes' Linear8bitLt stores it."""

    def __init__(self, codes: torch.Tensor, stats: torch.Tensor):
        self.codes, self.stats = codes, stats

    def dequantize(self, dtype=torch.float32) -> torch.Tensor:
        return int8_vectorwise_dequant(self.codes, self.stats).to(dtype)


def quantize_weight(W: torch.Tensor, *, backend: str = "auto") -> Int8Weight:
    codes, stats, _ = int8_vectorwise_quant(W, 0.0, backend=backend)
    return Int8Weight(codes, stats)


def int8_linear(A: torch.Tensor, W: Int8Weight | torch.Tensor, bias=None, threshold: float = 6.0, *,
                backend: str = "auto") -> torch.Tensor:
    """LLM.int8() linear layer: ``A @ W.T`` with int8 codes for the regular columns of A and, when
    ``threshold > 0``, the outlier columns of A multiplied in A's dtype against the dequantized
    weight columns (bitsandbytes' int8_mixed_scaled_mm). Returns A's dtype."""
    if not isinstance(W, Int8Weight):
        W = quantize_weight(W, backend=backend)
    a = _matrix("A", A)
    codes = _matrix("W.codes", W.codes, dtypes=(torch.int8,))
    if a.shape[1] != codes.shape[1]:
        raise QuantInputError(f"W: expects {codes.shape[1]} input features, A has {a.shape[1]}")
    check_on("W.codes", codes, a, "A")
    _stats("W.stats", W.stats, codes, "W.codes", 0)
    check_bias(bias, codes.shape[0], a, "A")
    ca, sa, cols = int8_vectorwise_quant(a, threshold, backend=backend)
    out = int8_mm_dequant(int8_linear_matmul(ca, W.codes, backend=backend), sa, W.stats, bias=bias,
                          dtype=A.dtype, backend=backend)
    if cols is not None and cols.numel():
        sub_a = a[:, cols]
        sub_w = int8_vectorwise_dequant(W.codes[:, cols].contiguous(), W.stats, backend=backend).to(A.dtype)
        out = out.addmm(sub_a, sub_w.t())
    return out.view(*A.shape[:-1], W.codes.shape[0])


def register_parity_cases(register) -> None:
    """Parity cases for :mod:`workbench.parity` (``workbench parity``): every backend's int8 ops vs
    the reference, bit for bit, on fresh activations with planted outlier columns."""

    def _equal(a, b) -> bool:
        return (a is None and b is None) or (a is not None and b is not None and torch.equal(a.cpu(), b.cpu()))

    def make(op: str):
        def case(backend: str, device: str, gen: torch.Generator, quick: bool):
            shapes = [(3, 17), (64, 257)] if quick else [(1, 7), (3, 17), (64, 257), (300, 1030)]
            dtypes = FLOAT_DTYPES
            if backend == "numba_cuda" and device == "cpu":  # the CUDA simulator: a Python thread per GPU thread
                shapes, dtypes = [(3, 17)], (torch.float16,)
            for rows, cols in shapes:
                for dtype in dtypes:
                    for t in (0.0, 6.0):
                        A = torch.randn(rows, cols, generator=gen) * 2
                        A[:, torch.randperm(cols, generator=gen)[:2]] *= 6
                        A = A.to(dtype).to(device)
                        ref = get_op("reference", op, device)(A, t)
                        got = get_op(backend, op, device)(A, t)
                        ok = all(_equal(x, y) for x, y in zip(got, ref))
                        mism = int((got[0].cpu() != ref[0].cpu()).sum()) if got[0].shape == ref[0].shape else -1
                        yield {"op": op, "shape": f"{rows}x{cols}", "dtype": str(dtype).removeprefix("torch."),
                               "threshold": t, "ok": ok, "mismatches": mism}
        case.__name__ = f"case_{op}"
        return case

    for op in ("int8_vectorwise_quant", "int8_double_quant"):
        register("int8", op, make(op), ops=(op,))
