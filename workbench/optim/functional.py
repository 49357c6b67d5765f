"""Optimizer update rules: the executable spec (plain torch), plus dispatch to backends.

Signatures mirror bitsandbytes 0.50.2's ops ``optimizer_update_32bit`` and
``optimizer_update_8bit_blockwise``; the arithmetic follows bitsandbytes' CPU backend
(``bitsandbytes/backends/cpu/ops.py``), which is the executable fact we can run here.
Each rule is written with one rounded float32 operation per step (no fused multiply-add,
scalars rounded once to float32) so that every kernel can reproduce it bit for bit:

  g  = float(g) * gnorm_scale                         (then + p*wd for momentum/lars/rmsprop/adagrad)
  32-bit adam/lamb:  s1 = s1*b1 + g*(1-b1);  s2 = s2*b2 + (g*g)*(1-b2)
                     p  = p*(1-lr*wd) [wd>0];  u = s1 / (sqrt(s2) + eps*c2)
                     p  = p + u*(-lr*c2/c1 * scale)        c1 = 1-b1^t, c2 = sqrt(1-b2^t)
  8-bit adam/lamb:   same states;  p = p + (s1 / (sqrt(s2)/c2 + eps)) * (-lr/c1)
  ademamix:          m1 = m1*b1 + g*(1-b1); m2 = m2*b3 + g*(1-b3); nu = nu*b2 + (g*g)*(1-b2)
                     p = p + ((m1/c1 + m2*alpha) / (sqrt(nu)/c2 + eps)) * (-lr)
  momentum/lars:     s1 = g (step 1) else s1*b1 + g;  p = p + s1*(-lr*scale)
  lion:              p = p*(1-lr*wd); p = p + sign(s1*b1 + g*(1-b1))*(-lr);  s1 = s1*b2 + g*(1-b2)
  rmsprop:           s1 = s1*b1 + (g*g)*(1-b1);  p = p + (g/(sqrt(s1)+eps))*(-lr*scale)
  adagrad:           s1 = s1 + g*g;              p = p + (g/(sqrt(s1)+eps))*(-lr)

``scale`` (32-bit only, max_unorm > 0: LAMB/LARS trust ratio) = max_unorm*||p|| / ||u|| when
||u|| > max_unorm*||p||, else 1; bitsandbytes' 8-bit blockwise op has no max_unorm (so
LAMB8bit/LARS8bit are Adam8bit/Momentum8bit there, and here).

8-bit blockwise state: dequantize (table[code]*absmax), update in float32, requantize with a
fresh absmax per 256-block using the workbench quantization spec (reference quant), first state
with the signed dynamic map, second with the unsigned one (whatever qmap1/qmap2 are passed).
AdEMAMix's state1 is (2, n) codes with absmax1 (2, nblocks).

skip_zeros: elements whose gradient is exactly 0 keep their state value and parameter
(bitsandbytes' CUDA semantics; its CPU path ignores the flag).

NaN and Inf -- every backend follows this, bit for bit (NaN payloads aside):

* the update is elementwise IEEE float32: a NaN/Inf gradient element gets whatever the rule's
  float32 operations give for its new state and parameter (NaN, Inf; Lion's sign(NaN) is +0);
* 8-bit state: a block's absmax is max |x| over the block's new state, *propagating NaN* (torch's
  amax; a kernel takes the integer max of the float bit patterns with the sign cleared: NaN patterns
  compare above Inf, Inf above every finite value; fmaxf-style maxima that drop NaN are wrong here).
  The tail block's stored max(absmax, 1e-38) keeps NaN too. So one NaN in a block's new state makes
  the block's absmax NaN and every scaled value of the block NaN; from the next step on every element
  of the block dequantizes to NaN: **the whole 256-block is poisoned, for good** (until its state is
  reset); the other blocks are untouched. An Inf (absmax Inf, no NaN) scales the finite elements to
  +-0 and the Inf ones to NaN; the stored Inf absmax dequantizes to NaN/Inf from the next step on.
* codes of such a block are what torch.bucketize gives the reference's scaled values: a NaN scaled
  value lands after every bound, the last bucket's code (``bucket_codes[-1]``, 255 for the dynamic
  maps); +-0 gets the code of 0.0 (:func:`nonfinite_codes`). The CPU kernels and the GPU kernels'
  general path branch on a non-finite block absmax; the GPU fast path (maps whose bounds are all < 1,
  so the last bucket is +1's) clamps a NaN scaled value to +1 instead, with no branch. The
  quantizers follow the same rule.
* 32-bit state: elementwise, nothing else is touched.

State consistency: :func:`workbench.optim.state_check.validate_state` is the one check of a
parameter's state against the parameter (state1/state2 sizes, absmax per 256-block, qmaps float32[256],
dtypes, device, step). ``load_state_dict`` runs it in full; the dispatch below runs its cheap metadata
form before every update and the compiled backends' adapters again before their kernels, so no kernel
sees an inconsistent state. Parameters and gradients must be float32, float16 or bfloat16: float64 (and
any other dtype) is refused with an error naming the parameter -- the update is float32 arithmetic and
bitsandbytes 0.50.2 refuses them too.
"""
from __future__ import annotations

import math
import weakref

import numpy as np
import torch

from .. import codebooks as _cb

BLOCKSIZE = 256
NAMES = ("adam", "lamb", "ademamix", "momentum", "lars", "lion", "rmsprop", "adagrad")
# The compiled kernels' wire format, defined here once: the rule id of each optimizer (lamb runs the
# adam rule, lars the momentum rule; id = index in KERNEL_RULES) and the order of the float32
# constant vector (KERNEL_SLOTS below). cuda_src/kbit_optim.h (KBIT_OPT_*, KBIT_K_*),
# workbench/_native/optim_cpu.pyx (KO_*, K_*) and numba_kernels/{cpu,cuda}/optim.py follow it;
# tests/test_optim_wire_constants.py parses them and holds them to it.
KERNEL_RULES = ("adam", "ademamix", "momentum", "lion", "rmsprop", "adagrad")
OPTIMIZER_ID = {name: KERNEL_RULES.index({"lamb": "adam", "lars": "momentum"}.get(name, name)) for name in NAMES}
TWO_STATE = ("adam", "lamb", "ademamix")
COUPLED_WD = ("momentum", "lars", "rmsprop", "adagrad")
_f32 = lambda x: float(np.float32(x))  # noqa: E731  python double -> nearest float32 (as torch.tensor would)


# ------------------------------------------------------------------ codebooks / qmaps

_qmap_cache: dict = {}


def qmap(signed: bool, device="cpu") -> torch.Tensor:
    """bitsandbytes' dynamic map (signed for state1, unsigned for state2), float32[256]."""
    key = (signed, str(torch.device(device)))
    if key not in _qmap_cache:
        _qmap_cache[key] = torch.from_numpy(_cb.dynamic(signed=signed).table.copy()).to(device)
    return _qmap_cache[key]


_cb_cache: dict[int, tuple] = {}


def codebook_of(q: torch.Tensor) -> _cb.Codebook:
    """The workbench Codebook (table, bounds, bucket_codes) of a 256-entry qmap tensor.

    Cached per tensor object: keyed by id() and checked through a weak reference (a data_ptr or a
    bare id key could hand a new tensor at a recycled address the old codebook), rebuilt if the
    tensor was written to (its _version moved)."""
    hit = _cb_cache.get(id(q))
    if hit is not None and hit[0]() is q and hit[1] == q._version:
        return hit[2]
    cb = _cb.from_table(q.detach().float().cpu().numpy(), "qmap")
    if len(_cb_cache) > 256:
        for key in [k for k, v in _cb_cache.items() if v[0]() is None]:
            del _cb_cache[key]
    _cb_cache[id(q)] = (weakref.ref(q), q._version, cb)
    return cb


SCALAR_NAMES = ("b1", "b2", "b3", "alpha", "eps", "omb1", "omb2", "omb3", "wd", "decay", "gs", "c1", "c2",
                "eps_c2", "neg_lr", "neg_lr_c1")
# the kernels' constant vector: SCALAR_NAMES, then upd_mul (the 32-bit step multiplier, the LAMB/LARS
# trust ratio folded in: adam32_step * scale for adam/lamb, neg_lr * scale for the others)
KERNEL_SLOTS = SCALAR_NAMES + ("upd_mul",)
NK = len(KERNEL_SLOTS)
_NEG_LR_SLOT = SCALAR_NAMES.index("neg_lr")


def scalar_vector(beta1, beta2, beta3, alpha, eps, weight_decay, step, lr, gnorm_scale) -> tuple[np.ndarray, float]:
    """(the SCALAR_NAMES constants as float32[16], adam32_step in double): each computed in double and
    rounded to float32 once, in one numpy cast (the GPU adapters call this every step)."""
    c1 = 1.0 - beta1 ** step
    c2 = math.sqrt(1.0 - beta2 ** step)
    v = np.array((beta1, beta2, beta3, alpha, eps, 1.0 - beta1, 1.0 - beta2, 1.0 - beta3, weight_decay,
                  1.0 - lr * weight_decay, gnorm_scale, c1, c2, eps * c2, -lr, -lr / c1),
                 dtype=np.float64).astype(np.float32)
    return v, -lr * c2 / c1


def kernel_constants(name, beta1, beta2, beta3, alpha, eps, weight_decay, step, lr, gnorm_scale, eight_bit,
                     scale: float = 1.0) -> np.ndarray:
    """The compiled kernels' constant vector, float32[NK] in KERNEL_SLOTS order, each rounded once."""
    v, adam32_step = scalar_vector(beta1, beta2, beta3, alpha, eps, weight_decay, step, lr, gnorm_scale)
    upd = adam32_step * scale if name in ("adam", "lamb") else float(v[_NEG_LR_SLOT]) * scale
    return np.append(v, np.float32(upd))


def scalars(optimizer_name, beta1, beta2, beta3, alpha, eps, weight_decay, step, lr, gnorm_scale, eight_bit):
    """The float32 constants every implementation uses (computed in double, rounded once), by name."""
    v, adam32_step = scalar_vector(beta1, beta2, beta3, alpha, eps, weight_decay, step, lr, gnorm_scale)
    k = dict(zip(SCALAR_NAMES, v.tolist()))
    k["adam32_step"] = adam32_step
    return k


# ------------------------------------------------------------------ the elementwise rules

def _sqrt(x: torch.Tensor) -> torch.Tensor:
    """Correctly rounded float32 sqrt. torch's vectorized CPU sqrt is not (it misses the
    nearest float32 in ~20% of cases on AVX-512 here); sqrt in double then one rounding is exact."""
    return torch.sqrt(x.double()).float()


def _div(x: torch.Tensor, c: float) -> torch.Tensor:
    """x / c with an IEEE division: torch's CUDA kernels turn division by a Python scalar into a
    multiplication by its reciprocal, so divide by a one-element tensor on x's device instead."""
    return x / torch.full((1,), c, dtype=torch.float32, device=x.device)


def _rule(name, g, p, s1, s2, k, step, eight_bit, scale_fn=None):
    """New (p, s1, s2) in float32 from float32 inputs. ``s1`` is (2, n) for ademamix."""
    g = g * k["gs"]
    if name in COUPLED_WD and k["wd"] > 0.0:
        g = g + p * k["wd"]
    if name in ("adam", "lamb"):
        s1 = s1 * k["b1"] + g * k["omb1"]
        s2 = s2 * k["b2"] + (g * g) * k["omb2"]
        if k["wd"] > 0.0:
            p = p * k["decay"]
        if eight_bit:
            p = p + (s1 / (_div(_sqrt(s2), k["c2"]) + k["eps"])) * k["neg_lr_c1"]
        else:
            u = s1 / (_sqrt(s2) + k["eps_c2"])
            scale = scale_fn(u) if scale_fn else 1.0
            p = p + u * _f32(k["adam32_step"] * scale)
    elif name == "ademamix":
        m1 = s1[0] * k["b1"] + g * k["omb1"]
        m2 = s1[1] * k["b3"] + g * k["omb3"]
        s2 = s2 * k["b2"] + (g * g) * k["omb2"]
        s1 = torch.stack([m1, m2])
        if k["wd"] > 0.0:
            p = p * k["decay"]
        p = p + ((_div(m1, k["c1"]) + m2 * k["alpha"]) / (_div(_sqrt(s2), k["c2"]) + k["eps"])) * k["neg_lr"]
    elif name in ("momentum", "lars"):
        s1 = g.clone() if step == 1 else s1 * k["b1"] + g
        scale = scale_fn(s1) if (scale_fn and not eight_bit) else 1.0
        p = p + s1 * _f32(k["neg_lr"] * scale)
    elif name == "lion":
        if k["wd"] > 0.0:
            p = p * k["decay"]
        p = p + torch.sign(s1 * k["b1"] + g * k["omb1"]) * k["neg_lr"]
        s1 = s1 * k["b2"] + g * k["omb2"]
    elif name == "rmsprop":
        s1 = s1 * k["b1"] + (g * g) * k["omb1"]
        u = g / (_sqrt(s1) + k["eps"])
        scale = scale_fn(u) if (scale_fn and not eight_bit) else 1.0
        p = p + u * _f32(k["neg_lr"] * scale)
    elif name == "adagrad":
        s1 = s1 + g * g
        p = p + (g / (_sqrt(s1) + k["eps"])) * k["neg_lr"]
    else:
        raise ValueError(f"unknown optimizer {name!r}; expected one of {NAMES}")
    return p, s1, s2


def trust_scale(u: torch.Tensor, max_unorm: float, param_norm: float, unorm_vec=None) -> float:
    """LAMB/LARS update scale: max_unorm*||p|| / ||u|| if ||u|| exceeds max_unorm*||p||."""
    return scale_for_unorm(float(torch.norm(u.double())), max_unorm, param_norm, unorm_vec)


def scale_for_unorm(unorm: float, max_unorm: float, param_norm, unorm_vec=None) -> float:
    """:func:`trust_scale` from ||u|| (a kernel's reduction); ||u|| is stored in ``unorm_vec``."""
    if unorm_vec is not None:
        unorm_vec.fill_(unorm)
    lim = max_unorm * float(param_norm)
    return lim / unorm if unorm > lim else 1.0


def _check_name(name):
    if name not in NAMES:
        raise ValueError(f"unknown optimizer {name!r}; expected one of {NAMES}")


@torch.no_grad()
def optimizer_update_32bit(optimizer_name, g, p, state1, state2, unorm_vec, max_unorm, param_norm,
                           beta1, beta2, beta3, alpha, eps, weight_decay, step, lr,
                           gnorm_scale=1.0, skip_zeros=False):
    """Reference 32-bit update, in place on p, state1, state2 (bitsandbytes' op signature)."""
    _check_name(optimizer_name)
    _S.check_update_32bit(optimizer_name, g, p, state1, state2, unorm_vec, step)
    k = scalars(optimizer_name, beta1, beta2, beta3, alpha, eps, weight_decay, step, lr, gnorm_scale, False)
    gf, pf = g.reshape(-1).float(), p.reshape(-1).float()
    n = gf.numel()
    s1 = state1.reshape(2, n) if optimizer_name == "ademamix" else state1.reshape(-1)
    s2 = state2.reshape(-1) if state2 is not None else None
    scale_fn = None
    if max_unorm > 0.0 and optimizer_name in ("adam", "lamb", "momentum", "lars", "rmsprop"):
        scale_fn = lambda u: trust_scale(u, max_unorm, param_norm, unorm_vec)  # noqa: E731
    np_, ns1, ns2 = _rule(optimizer_name, gf, pf, s1, s2, k, step, False, scale_fn)
    if skip_zeros:
        keep = gf == 0
        np_ = torch.where(keep, pf, np_)
        ns1 = torch.where(keep, s1, ns1)
        if ns2 is not None:
            ns2 = torch.where(keep, s2, ns2)
    s1.copy_(ns1)
    if s2 is not None and ns2 is not None:
        s2.copy_(ns2)
    p.copy_(np_.view(p.shape))


def _dq(codes, absmax, q):
    from ..backends.reference.quant import dequantize_blockwise
    return dequantize_blockwise(codes.reshape(-1), absmax.reshape(-1), q, BLOCKSIZE, torch.float32)


def _q(vals, q, codes_out, absmax_out):
    from ..backends.reference.quant import quantize_blockwise
    c, a = quantize_blockwise(vals, codebook_of(q), BLOCKSIZE)
    codes_out.copy_(c.view(codes_out.shape))
    absmax_out.copy_(a.view(absmax_out.shape))


def nonfinite_codes(cb) -> tuple[int, int]:
    """(nan_code, zero_code) of a codebook: the codes the reference gives a block whose absmax is NaN or
    Inf (module doc). torch.bucketize puts NaN after every bound (nan_code = bucket_codes[-1]); a finite
    value scaled by an Inf absmax is +-0 (zero_code = bucket_codes[#{bounds < 0}])."""
    zero = int(np.searchsorted(np.asarray(cb.bounds, np.float32), np.float32(0.0), side="left"))
    return int(cb.bucket_codes[-1]), int(cb.bucket_codes[zero])


@torch.no_grad()
def optimizer_update_8bit_blockwise(optimizer_name, g, p, state1, state2, beta1, beta2, beta3, alpha, eps,
                                    step, lr, qmap1, qmap2, absmax1, absmax2, weight_decay,
                                    gnorm_scale=1.0, skip_zeros=False):
    """Reference 8-bit blockwise update (blocksize 256), in place on p, codes and absmax."""
    _check_name(optimizer_name)
    _S.check_update_8bit(optimizer_name, g, p, state1, state2, step, qmap1, qmap2, absmax1, absmax2)
    k = scalars(optimizer_name, beta1, beta2, beta3, alpha, eps, weight_decay, step, lr, gnorm_scale, True)
    gf, pf = g.reshape(-1).float(), p.reshape(-1).float()
    n = gf.numel()
    if optimizer_name == "ademamix":
        st1 = state1.reshape(2, n)
        am1 = absmax1.reshape(2, -1)
        s1 = torch.stack([_dq(st1[0], am1[0], qmap1), _dq(st1[1], am1[1], qmap1)])
    else:
        s1 = _dq(state1, absmax1, qmap1)
    s2 = _dq(state2, absmax2, qmap2) if state2 is not None else None
    np_, ns1, ns2 = _rule(optimizer_name, gf, pf, s1, s2, k, step, True)
    if skip_zeros:
        keep = gf == 0
        np_ = torch.where(keep, pf, np_)
        ns1 = torch.where(keep, s1, ns1)
        if ns2 is not None:
            ns2 = torch.where(keep, s2, ns2)
    p.copy_(np_.view(p.shape))
    if optimizer_name == "ademamix":
        _q(ns1[0], qmap1, st1[0], am1[0])
        _q(ns1[1], qmap1, st1[1], am1[1])
    else:
        _q(ns1, qmap1, state1, absmax1)
    if state2 is not None and ns2 is not None:
        _q(ns2, qmap2, state2, absmax2)


# ------------------------------------------------------------------ percentile clipping

@torch.no_grad()
def percentile_clipping(grad: torch.Tensor, gnorm_vec: torch.Tensor, step: int, percentile: int = 5):
    """Adaptive gradient clipping of bitsandbytes (<= 0.44; 0.50.2 dropped it): keep the last 100
    squared gradient norms in ``gnorm_vec`` (slot ``step % 100``); clip the gradient norm to the
    ``percentile``-th percentile of that history. Returns (gnorm, clip_value, gnorm_scale), the
    scale to pass as ``gnorm_scale`` to the update ops.

    One deliberate difference: bitsandbytes took the percentile over all 100 slots from the first
    step, so while the history was still zero-filled the clip value was 0 and the first ~95 steps
    made no update; here the percentile is over the norms recorded so far (min(step, 100))."""
    gnorm_vec[step % 100] = torch.sum(grad.float() * grad.float())
    current = torch.sqrt(gnorm_vec[step % 100])
    count = min(int(step), 100)
    hist = gnorm_vec[torch.arange(step - count + 1, step + 1, device=gnorm_vec.device) % 100]
    vals, _ = torch.sort(hist)
    clip = torch.sqrt(vals[min(count - 1, percentile * count // 100)])
    scale = float(clip / current) if current > clip else 1.0
    return current, clip, scale


# ------------------------------------------------------------------ dispatch

def _f(x) -> float:
    return 0.0 if x is None else float(x)


def _backend(backend: str, op: str, p: torch.Tensor) -> str:
    from ..backends.registry import resolve
    return resolve(backend, op, p.device.type, str(p.dtype).removeprefix("torch."))


def update_32bit(optimizer_name, g, p, state1, state2, unorm_vec, max_unorm, param_norm, beta1, beta2, beta3,
                 alpha, eps, weight_decay, step, lr, gnorm_scale=1.0, skip_zeros=False, *, backend: str = "reference"):
    """``workbench::optimizer_update_32bit`` on ``backend`` ('auto' picks by device and dtype), in place."""
    _S.check_update_32bit(optimizer_name, g, p, state1, state2, unorm_vec, step)  # state vs param, before any kernel
    from .. import library  # noqa: F401  (declares the op)
    torch.ops.workbench.optimizer_update_32bit(
        optimizer_name, g, p, state1, state2, unorm_vec, _f(max_unorm), _f(param_norm), _f(beta1), _f(beta2),
        _f(beta3), _f(alpha), _f(eps), _f(weight_decay), int(step), _f(lr), _f(gnorm_scale), bool(skip_zeros),
        _backend(backend, "optimizer_update_32bit", p))


def update_8bit_blockwise(optimizer_name, g, p, state1, state2, beta1, beta2, beta3, alpha, eps, step, lr,
                          qmap1, qmap2, absmax1, absmax2, weight_decay, gnorm_scale=1.0, skip_zeros=False, *,
                          backend: str = "reference"):
    """``workbench::optimizer_update_8bit_blockwise`` on ``backend`` ('auto' picks by device and dtype), in place."""
    _S.check_update_8bit(optimizer_name, g, p, state1, state2, step, qmap1, qmap2, absmax1, absmax2)  # state vs param
    from .. import library  # noqa: F401  (declares the op)
    torch.ops.workbench.optimizer_update_8bit_blockwise(
        optimizer_name, g, p, state1, state2, _f(beta1), _f(beta2), _f(beta3), _f(alpha), _f(eps), int(step), _f(lr),
        qmap1, qmap2, absmax1, absmax2, _f(weight_decay), _f(gnorm_scale), bool(skip_zeros),
        _backend(backend, "optimizer_update_8bit_blockwise", p))


from . import state_check as _S  # noqa: E402  (it imports this module: last)
