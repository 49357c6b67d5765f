"""The one consistency check of an optimizer parameter's state against the parameter (issue 17).

The compiled kernels (numba_cpu, cython_cpu, numba_cuda, cuda) index the state with the parameter's
element count and trust every size: a state that does not fit its parameter -- a checkpoint of a
resized model, a truncated ``absmax1``, a 16-entry ``qmap1``, an AdEMAMix state loaded into Adam8bit
-- made them read and write out of bounds (SIGSEGV/SIGABRT, an OpenMP deadlock, corrupted torch
metadata) or run silently on garbage. :func:`validate_state` states what fits, for ``n`` elements of
a parameter ``p`` and ``nb = ceil(n / 256)`` blocks:

=============  ====================================  ==========================================
key            32-bit state                          8-bit blockwise state
=============  ====================================  ==========================================
state1         float32, p.shape (AdEMAMix: (2, *))   uint8 codes, p.shape (AdEMAMix: (2, *p.shape))
state2         float32, p.shape (adam/lamb/ademamix) uint8 codes, p.shape (adam/lamb/ademamix)
absmax1        --                                    float32[nb] (AdEMAMix: [2, nb])
absmax2        --                                    float32[nb] (with state2)
qmap1/qmap2    --                                    float32[256] (qmap2 with state2)
unorm_vec      float32[1] (optional)                 --
gnorm_vec      float32[100] (optional)               float32[100] (optional)
step           int >= 0 in a saved state; >= 1 when an update runs
=============  ====================================  ==========================================

Every tensor lives on the parameter's device; the parameter and its gradient are float32, float16
or bfloat16 (:data:`PARAM_DTYPES`). Two strengths of the same check:

* ``strict=True`` (``Optimizer8bitState.load_state_dict``): exact shapes, the ``step`` entry, keys of
  another optimizer (a ``state2`` for a one-state rule), finite qmaps (a 256-element pass);
* ``strict=False`` (before every update: :func:`check_update_32bit` / :func:`check_update_8bit`, called
  by the functional dispatch and again by the compiled backends' adapters): element counts, dtypes,
  devices, the step argument -- tensor metadata only, no pass over data.

Errors are :class:`OptimizerStateError` (a ValueError) naming where (``who``: the parameter's index and
name when the optimizer knows them), the state key, what was expected and what was found; a parameter
or gradient dtype outside :data:`PARAM_DTYPES` is an :class:`UnsupportedDtypeError` (a TypeError).
"""
from __future__ import annotations

import numbers

import torch

from . import functional as W

PARAM_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
QMAP_SIZE = 256
GNORM_SIZE = 100


class OptimizerStateError(ValueError):
    """An optimizer state that does not fit its parameter (or is malformed)."""


class UnsupportedDtypeError(TypeError):
    """A parameter or gradient dtype the optimizers do not take (float64, integers, ...)."""


def _dt(dtype) -> str:
    return str(dtype).removeprefix("torch.")


def describe(t) -> str:
    """'float32[17] on cpu' for a tensor; what it is otherwise."""
    if t is None:
        return "nothing (None / missing)"
    if isinstance(t, torch.Tensor):
        return f"{_dt(t.dtype)}{list(t.shape)} on {t.device}"
    return f"a {type(t).__name__} ({t!r:.40})"


def _who(who) -> str:
    return who() if callable(who) else who


def _fail(who, key, expected, found):
    raise OptimizerStateError(f"{_who(who)}: state {key!r}: expected {expected}; found {found}")


def check_dtype(who: str, what: str, t) -> None:
    """``t`` (a parameter or gradient: ``what``) has one of :data:`PARAM_DTYPES`."""
    dt = t.dtype
    if dt is not torch.float32 and dt is not torch.bfloat16 and dt is not torch.float16:
        raise UnsupportedDtypeError(
            f"{_who(who)}: {what} ({describe(t)}) has dtype {_dt(t.dtype)}; the optimizers take {', '.join(map(_dt, PARAM_DTYPES))} "
            f"parameters and gradients (convert the model, e.g. model.float(), or keep this parameter out "
            f"of the optimizer)")


def _same_device(t, p) -> bool:
    # cheaper than comparing torch.device objects (a check runs before every update)
    if p.is_cpu:
        return t.is_cpu
    if p.is_cuda:
        return t.is_cuda and t.get_device() == p.get_device()
    return t.device == p.device


def _tensor(who, key, t, dtype, numel, p, shape=None, shape_text=None):
    if not isinstance(t, torch.Tensor):
        _fail(who, key, f"{_dt(dtype)}{shape_text() if shape_text is not None else [numel]} on {p.device}",
              describe(t))
    if t.dtype is not dtype or t.numel() != numel or not _same_device(t, p) or (
            shape is not None and tuple(t.shape) != shape):
        text = shape_text() if shape_text is not None else [numel]
        want = f"{_dt(dtype)}{list(shape) if shape is not None else text} on {p.device}"
        _fail(who, key, want, describe(t))


def step_value(who, step, minimum):
    """An integral step >= minimum (int, numpy integer, integral float, or a one-element tensor)."""
    v = step
    if isinstance(v, torch.Tensor):
        if v.numel() != 1 or v.dtype.is_complex:
            _fail(who, "step", f"an integer >= {minimum}", describe(v))
        v = v.item()
    if type(v) is int and v >= minimum:  # the common case, fast
        return v
    if isinstance(v, bool) or not isinstance(v, numbers.Real) or v != v or v < minimum or int(v) != v:
        _fail(who, "step", f"an integer >= {minimum}", repr(step))
    return int(v)


def validate_state(optimizer_name: str, p: torch.Tensor, state, *, bits: int | None = None, grad=None,
                   strict: bool = False, who: str = "optimizer state") -> int:
    """Check ``state`` (a mapping with the keys above) against parameter ``p`` for ``optimizer_name``;
    raise :class:`OptimizerStateError` / :class:`UnsupportedDtypeError` naming ``who``, the key, what was
    expected and what was found. ``bits``: 8 or 32 (None: from state1's dtype, uint8 -> 8, float32 -> 32).
    ``grad``: also check the gradient. ``strict``: see the module doc. Returns the state's bits.

    A ``step`` key is checked when present (strict: required, >= 0; otherwise >= 1: the update about to
    run uses it, and step 0 would divide by 1 - beta1**0 = 0)."""
    if optimizer_name not in W.OPTIMIZER_ID:
        raise ValueError(f"{_who(who)}: unknown optimizer {optimizer_name!r}; expected one of {W.NAMES}")
    if not isinstance(p, torch.Tensor):
        raise TypeError(f"{_who(who)}: the parameter is {describe(p)}, not a tensor")
    check_dtype(who, "the parameter", p)
    n = p.numel()
    if grad is not None:
        if not isinstance(grad, torch.Tensor):
            raise TypeError(f"{_who(who)}: the gradient is {describe(grad)}, not a tensor")
        check_dtype(who, "the gradient", grad)
        if grad.numel() != n or not _same_device(grad, p):
            raise OptimizerStateError(f"{_who(who)}: the gradient is {describe(grad)}; the parameter is {describe(p)}")
    get = state.get
    s1 = get("state1")
    if bits is None:
        dt = getattr(s1, "dtype", None)
        bits = 8 if dt == torch.uint8 else 32 if dt == torch.float32 else None
        if bits is None:
            _fail(who, "state1", f"uint8 codes (8-bit state) or float32 (32-bit state) of {n * (2 if optimizer_name == 'ademamix' else 1)} "
                  f"elements on {p.device}", describe(s1))
    ade = optimizer_name == "ademamix"
    two = optimizer_name in W.TWO_STATE
    sdt = torch.uint8 if bits == 8 else torch.float32
    pshape = tuple(p.shape)
    _tensor(who, "state1", s1, sdt, 2 * n if ade else n, p, ((2, *pshape) if ade else pshape) if strict else None,
            (lambda: f"[2, {n}] (2 x the parameter's elements)") if ade else None)
    s2 = get("state2")
    if s2 is not None and not two and strict:
        _fail(who, "state2", f"no state2 ({optimizer_name} keeps one state; a checkpoint of another optimizer?)",
              describe(s2))
    if two or s2 is not None:
        _tensor(who, "state2", s2, sdt, n, p, pshape if strict else None)
    if bits == 8:
        nb = (n + W.BLOCKSIZE - 1) // W.BLOCKSIZE
        blocks = "one per 256-block of {} elements"
        _tensor(who, "absmax1", get("absmax1"), torch.float32, 2 * nb if ade else nb, p,
                ((2, nb) if ade else None) if strict else None,
                (lambda: f"[2, {nb}] ({blocks.format(n)}, per EMA)") if ade else (lambda: f"[{nb}] ({blocks.format(n)})"))
        _tensor(who, "qmap1", get("qmap1"), torch.float32, QMAP_SIZE, p, (QMAP_SIZE,) if strict else None)
        if s2 is not None:
            _tensor(who, "absmax2", get("absmax2"), torch.float32, nb, p, None,
                    lambda: f"[{nb}] ({blocks.format(n)})")
            _tensor(who, "qmap2", get("qmap2"), torch.float32, QMAP_SIZE, p, (QMAP_SIZE,) if strict else None)
        if strict:
            for key in ("qmap1", "qmap2") if s2 is not None else ("qmap1",):
                if not bool(torch.isfinite(state[key]).all()):
                    _fail(who, key, "256 finite float32 values", "non-finite values")
    elif strict:
        for key in ("absmax1", "absmax2", "qmap1", "qmap2"):
            if get(key) is not None:
                _fail(who, key, "nothing: state1 is float32 (32-bit state), which has no absmax/qmap",
                      describe(get(key)))
    u = get("unorm_vec")
    if u is not None:
        if not isinstance(u, torch.Tensor) or u.dtype is not torch.float32 or not _same_device(u, p) or (
                u.numel() < 1 or (strict and u.numel() != 1)):
            _fail(who, "unorm_vec", f"float32[1] on {p.device}", describe(u))
    gv = get("gnorm_vec")
    if gv is not None:
        _tensor(who, "gnorm_vec", gv, torch.float32, GNORM_SIZE, p, (GNORM_SIZE,) if strict else None)
    if strict:
        if "step" not in state:
            _fail(who, "step", "an integer >= 0", "no 'step' entry")
        step_value(who, state["step"], 0)
    elif "step" in state:
        step_value(who, state["step"], 1)
    return bits


def check_update_32bit(optimizer_name, g, p, state1, state2, unorm_vec, step, who=None) -> None:
    """The cheap (metadata) :func:`validate_state` of a 32-bit update's arguments."""
    validate_state(optimizer_name, p, {"state1": state1, "state2": state2, "unorm_vec": unorm_vec, "step": step},
                   bits=32, grad=g, who=who or (lambda: f"optimizer_update_32bit({optimizer_name!r})"))


def check_update_8bit(optimizer_name, g, p, state1, state2, step, qmap1, qmap2, absmax1, absmax2, who=None) -> None:
    """The cheap (metadata) :func:`validate_state` of an 8-bit blockwise update's arguments."""
    validate_state(optimizer_name, p, {"state1": state1, "state2": state2, "qmap1": qmap1, "qmap2": qmap2,
                                       "absmax1": absmax1, "absmax2": absmax2, "step": step},
                   bits=8, grad=g, who=who or (lambda: f"optimizer_update_8bit_blockwise({optimizer_name!r})"))


_ARGS32 = ("optimizer_name", "g", "p", "state1", "state2", "unorm_vec", "max_unorm", "param_norm", "beta1", "beta2",
           "beta3", "alpha", "eps", "weight_decay", "step")
_ARGS8 = ("optimizer_name", "g", "p", "state1", "state2", "beta1", "beta2", "beta3", "alpha", "eps", "step", "lr",
          "qmap1", "qmap2", "absmax1", "absmax2")


def check_call(bits: int, args: tuple, kw: dict) -> None:
    """:func:`check_update_32bit` / :func:`check_update_8bit` of a call in bitsandbytes' op signature
    (positional ``args`` and keyword ``kw``)."""
    names = _ARGS32 if bits == 32 else _ARGS8
    a = dict(zip(names, args))
    if kw:
        a.update((k, v) for k, v in kw.items() if k in names)
    missing = [k for k in names if k not in a]
    if missing:
        raise TypeError(f"optimizer update: missing arguments {missing}")
    if bits == 32:
        check_update_32bit(a["optimizer_name"], a["g"], a["p"], a["state1"], a["state2"], a["unorm_vec"], a["step"])
    else:
        check_update_8bit(a["optimizer_name"], a["g"], a["p"], a["state1"], a["state2"], a["step"], a["qmap1"],
                          a["qmap2"], a["absmax1"], a["absmax2"])
