"""torch.optim.Optimizer classes with 32-bit or 8-bit blockwise state, bitsandbytes 0.50.2 numerics.

Every class takes ``backend=`` ('auto', 'reference', 'numba_cpu', 'cython_cpu', 'numba_cuda',
'cuda'); 'auto' picks the fastest available backend for the parameter's device.

State layout (per parameter, as bitsandbytes): ``step`` (int), ``state1``/``state2`` (float32
like p, or uint8 codes), ``qmap1``/``qmap2`` (float32[256] dynamic maps: signed for state1,
unsigned for state2), ``absmax1``/``absmax2`` (float32 per 256-block; AdEMAMix: state1 is
(2, *p.shape) and absmax1 (2, nblocks)), ``unorm_vec`` (max_unorm > 0), ``gnorm_vec``
(percentile_clipping < 100). Parameters with fewer than ``min_8bit_size`` elements keep
32-bit state.

Per-parameter overrides::

    opt = Adam8bit(model.parameters(), lr=1e-3)
    opt.override_config(model.emb.weight, optim_bits=32)          # any group key or option
    opt.override_config([w1, w2], lr=1e-4, backend="reference")

Overrides apply from the next step (state is created with the config in force at the
parameter's first step) and are saved by ``state_dict()`` (by parameter index).

Safety (issue 17): parameters must be float32, float16 or bfloat16 -- float64 and other dtypes are
refused when the parameter is added (construction, ``add_param_group``) and at every step, with an
:class:`~workbench.optim.state_check.UnsupportedDtypeError` naming the parameter and the supported
dtypes (the update is float32 arithmetic; bitsandbytes refuses them too). ``load_state_dict`` checks
every loaded state against its parameter (:func:`~workbench.optim.state_check.validate_state`, strict)
before it changes anything, and raises :class:`~workbench.optim.state_check.OptimizerStateError`
naming the parameter (index and name), the state key, what was expected and what was found; every
step checks the state's metadata again before any kernel runs.
"""
from __future__ import annotations

import copy
import math

import torch

from . import functional as W
from . import state_check as S

__all__ = ["Optimizer8bitState", "Adam", "Adam32bit", "Adam8bit", "AdamW", "AdamW32bit", "AdamW8bit",
           "Lion", "Lion32bit", "Lion8bit", "SGD", "SGD32bit", "SGD8bit", "Momentum8bit",
           "RMSprop", "RMSprop32bit", "RMSprop8bit", "Adagrad", "Adagrad32bit", "Adagrad8bit",
           "LAMB", "LAMB32bit", "LAMB8bit", "LARS", "LARS32bit", "LARS8bit",
           "AdEMAMix", "AdEMAMix32bit", "AdEMAMix8bit"]

_OPTION_KEYS = ("optim_bits", "min_8bit_size", "max_unorm", "skip_zeros", "percentile_clipping", "backend")


class Optimizer8bitState(torch.optim.Optimizer):
    """Base class: one bitsandbytes update rule (``optimizer_name``), 32- or 8-bit state."""

    optimizer_name = "adam"

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, *, optim_bits=32,
                 min_8bit_size=4096, max_unorm=0.0, skip_zeros=False, percentile_clipping=100,
                 backend="auto", alpha=0.0, t_alpha=None, t_beta3=None):
        if lr < 0.0:
            raise ValueError(f"Invalid learning rate: {lr}")
        if eps < 0.0:
            raise ValueError(f"Invalid epsilon value: {eps}")
        if weight_decay < 0.0:
            raise ValueError(f"Invalid weight_decay value: {weight_decay}")
        for i, b in enumerate(betas):
            if not 0.0 <= b < 1.0:
                raise ValueError(f"Invalid beta parameter at index {i}: {b}")
        if optim_bits not in (8, 32):
            raise ValueError(f"optim_bits must be 8 or 32, got {optim_bits}")
        defaults = dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay, alpha=alpha,
                        t_alpha=t_alpha, t_beta3=t_beta3, optim_bits=optim_bits, min_8bit_size=min_8bit_size,
                        max_unorm=max_unorm, skip_zeros=skip_zeros, percentile_clipping=percentile_clipping,
                        backend=backend)
        super().__init__(params, defaults)
        self._overrides: dict[int, dict] = {}

    def add_param_group(self, param_group):
        """torch's add_param_group; parameters of a dtype the kernels do not take are refused."""
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        for p in group["params"]:
            if p.dtype not in S.PARAM_DTYPES:
                label = self._label(p)
                self.param_groups.pop()
                S.check_dtype(label, "the parameter", p)

    def _label(self, p) -> str:
        """'Adam8bit: parameter 3 ('fc.weight')': the index state_dict() uses, and the name when known."""
        return f"{type(self).__name__}: {self._where(p)}"

    def _where(self, p) -> str:
        idx, name = None, None
        i = 0
        for g in self.param_groups:
            names = g.get("param_names")
            for j, q in enumerate(g["params"]):
                if q is p:
                    idx = i
                    name = names[j] if names and j < len(names) else None
                i += 1
        where = f"parameter {idx}" if idx is not None else "a parameter"
        return where + (f" ({name!r})" if name else "")

    # ---------------------------------------------------------------- config
    def override_config(self, params, key=None, value=None, **cfg):
        """Per-parameter settings (any param-group key, or optim_bits/min_8bit_size/max_unorm/
        skip_zeros/percentile_clipping/backend), overriding the parameter's group.
        ``params``: a tensor or a list of tensors. ``key, value`` is accepted as bitsandbytes does."""
        if key is not None:
            cfg[key] = value
        if isinstance(params, torch.Tensor):
            params = [params]
        known = {id(p) for g in self.param_groups for p in g["params"]}
        for p in params:
            if id(p) not in known:
                raise ValueError("override_config: tensor is not a parameter of this optimizer")
            self._overrides.setdefault(id(p), {}).update(cfg)

    def _config(self, group, p) -> dict:
        cfg = dict(group)
        cfg.pop("params", None)
        cfg.update(self._overrides.get(id(p), {}))
        return cfg

    # ---------------------------------------------------------------- state
    def _init_state(self, p, cfg):
        st = self.state[p]
        st["step"] = 0
        eight = cfg["optim_bits"] == 8 and p.numel() >= cfg["min_8bit_size"]
        two = self.optimizer_name in W.TWO_STATE
        s1_shape = (2, *p.shape) if self.optimizer_name == "ademamix" else p.shape
        if eight:
            n = p.numel()
            nb = (n + W.BLOCKSIZE - 1) // W.BLOCKSIZE
            st["state1"] = torch.zeros(s1_shape, dtype=torch.uint8, device=p.device)
            st["qmap1"] = W.qmap(True, p.device).clone()
            st["absmax1"] = torch.zeros((2, nb) if self.optimizer_name == "ademamix" else (nb,),
                                        dtype=torch.float32, device=p.device)
            if two:
                st["state2"] = torch.zeros(p.shape, dtype=torch.uint8, device=p.device)
                st["qmap2"] = W.qmap(False, p.device).clone()
                st["absmax2"] = torch.zeros((nb,), dtype=torch.float32, device=p.device)
        else:
            st["state1"] = torch.zeros(s1_shape, dtype=torch.float32, device=p.device)
            if two:
                st["state2"] = torch.zeros(p.shape, dtype=torch.float32, device=p.device)
        if cfg["max_unorm"] > 0.0:
            st["unorm_vec"] = torch.zeros((1,), dtype=torch.float32, device=p.device)
        if cfg["percentile_clipping"] < 100:
            st["gnorm_vec"] = torch.zeros((100,), dtype=torch.float32, device=p.device)

    def state_dict(self):
        sd = super().state_dict()
        index = {id(p): i for i, p in enumerate(p for g in self.param_groups for p in g["params"])}
        sd["overrides"] = {index[k]: dict(v) for k, v in self._overrides.items() if k in index}
        return sd

    def load_state_dict(self, state_dict):
        """torch's load_state_dict, keeping the states' own dtypes, after checking every state against its
        parameter (:func:`workbench.optim.state_check.validate_state`, strict): a checkpoint that does not
        fit (a resized model, a truncated absmax, a 16-entry qmap, another optimizer's state) raises
        OptimizerStateError naming the parameter and the key, and leaves this optimizer unchanged."""
        sd = dict(state_dict)
        overrides = sd.pop("overrides", {})
        saved = sd["state"]
        params = [p for g in self.param_groups for p in g["params"]]
        groups = sd["param_groups"]
        if len(groups) != len(self.param_groups) or any(
                len(a["params"]) != len(b["params"]) for a, b in zip(groups, self.param_groups)):
            return super().load_state_dict(sd)  # torch's error: the groups do not match
        # as torch: the checkpoint's parameter ids map, in order, onto this optimizer's parameters
        id_map = dict(zip((i for g in groups for i in g["params"]), params))
        loaded = {}
        for idx, st in saved.items():
            p = id_map.get(idx)
            if p is None:
                raise S.OptimizerStateError(f"{type(self).__name__}.load_state_dict: the checkpoint has state for "
                                            f"parameter id {idx!r}, which none of its param_groups lists")
            if not isinstance(st, dict):
                raise S.OptimizerStateError(f"{self._label(p)}: the checkpoint's state is {S.describe(st)}, not a dict")
            # torch casts floating state to the parameter's dtype; state keeps its own dtype here (contiguous:
            # the kernels take flat views).
            new = {k: (v.detach().to(p.device).clone(memory_format=torch.contiguous_format)
                       if isinstance(v, torch.Tensor) else copy.deepcopy(v)) for k, v in st.items()}
            if new:  # an empty entry is a parameter that has not stepped yet
                who = f"{type(self).__name__}.load_state_dict: {self._where(p)}"
                S.validate_state(self.optimizer_name, p, new, strict=True, who=who)
                new["step"] = S.step_value(who, new["step"], 0)
            loaded[p] = new
        for i in overrides:
            if not 0 <= int(i) < len(params):
                raise S.OptimizerStateError(f"{type(self).__name__}.load_state_dict: the checkpoint has overrides "
                                            f"for parameter {i}; this optimizer has {len(params)} parameters")
        super().load_state_dict(sd)
        for p, new in loaded.items():
            self.state[p] = new
        self._overrides = {id(params[int(i)]): dict(v) for i, v in overrides.items()}

    # ---------------------------------------------------------------- step
    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise RuntimeError(f"{type(self).__name__} does not support sparse gradients")
                cfg = self._config(group, p)
                if len(self.state[p]) == 0:
                    if p.dtype not in S.PARAM_DTYPES:  # e.g. model.double() after construction
                        S.check_dtype(self._label(p), "the parameter", p)
                    self._init_state(p, cfg)
                try:
                    self._update(p, cfg)
                except (S.OptimizerStateError, S.UnsupportedDtypeError) as e:
                    # the dispatch's check knows the tensors, not which parameter they belong to
                    raise type(e)(f"{self._label(p)}: {e}") from None
        return loss

    def _update(self, p, cfg):
        st = self.state[p]
        s1 = st.get("state1")
        bits = {torch.float32: 32, torch.uint8: 8}.get(s1.dtype) if isinstance(s1, torch.Tensor) else None
        if bits is None or (bits == 8 and not all(isinstance(st.get(k), torch.Tensor) for k in ("qmap1", "absmax1"))):
            S.validate_state(self.optimizer_name, p, st, strict=True)   # names the entry missing or of no type
        if "step" not in st:
            raise S.OptimizerStateError("'step': expected an integer >= 0 (the updates done), found no 'step' entry")
        # stored once the update ran (a refused update leaves the state as it was)
        step = S.step_value("optimizer state", st["step"], 0) + 1
        grad = p.grad if p.grad.is_contiguous() else p.grad.contiguous()
        if not p.is_contiguous():
            p.data = p.data.contiguous()
        betas = cfg["betas"]
        beta1 = betas[0]
        beta2 = betas[1] if len(betas) > 1 else 0.0
        beta3 = betas[2] if len(betas) > 2 else 0.0
        alpha = cfg.get("alpha", 0.0) or 0.0
        if self.optimizer_name == "ademamix":
            t_alpha, t_beta3 = cfg.get("t_alpha"), cfg.get("t_beta3")
            if t_alpha:
                alpha = min(step * alpha / t_alpha, alpha)
            if t_beta3:
                ln1, ln3 = math.log(beta1), math.log(beta3)
                sc = step / t_beta3
                beta3 = min(math.exp((ln1 * ln3) / (((1 - sc) * ln3) + (sc * ln1))), beta3)
        gnorm_scale = 1.0
        if cfg["percentile_clipping"] < 100:
            _, _, gnorm_scale = W.percentile_clipping(grad, st["gnorm_vec"], step, cfg["percentile_clipping"])
        backend = cfg["backend"]
        if bits == 32:
            max_unorm = cfg["max_unorm"]
            param_norm = float(torch.norm(p.data.float())) if max_unorm > 0.0 else 0.0
            W.update_32bit(self.optimizer_name, grad, p.data, st["state1"], st.get("state2"),
                           st.get("unorm_vec") if max_unorm > 0.0 else None, max_unorm, param_norm,
                           beta1, beta2, beta3, alpha, cfg["eps"], cfg["weight_decay"], step, cfg["lr"],
                           gnorm_scale, cfg["skip_zeros"], backend=backend)
        else:
            W.update_8bit_blockwise(self.optimizer_name, grad, p.data, st["state1"], st.get("state2"),
                                    beta1, beta2, beta3, alpha, cfg["eps"], step, cfg["lr"],
                                    st["qmap1"], st.get("qmap2"), st["absmax1"], st.get("absmax2"),
                                    cfg["weight_decay"], gnorm_scale, cfg["skip_zeros"], backend=backend)
        st["step"] = step


def _make(name, optimizer_name, bits, lr, betas, eps, wd, doc, **extra_defaults):
    def __init__(self, params, lr=lr, betas=betas, eps=eps, weight_decay=wd, **kw):
        kw.setdefault("optim_bits", bits)
        for k, v in extra_defaults.items():
            kw.setdefault(k, v)
        Optimizer8bitState.__init__(self, params, lr, betas, eps, weight_decay, **kw)
    return type(name, (Optimizer8bitState,), {"optimizer_name": optimizer_name, "__init__": __init__,
                                             "__doc__": f"{doc} ({bits}-bit state; bitsandbytes.optim.{name})"})


Adam32bit = _make("Adam32bit", "adam", 32, 1e-3, (0.9, 0.999), 1e-8, 0.0, "Adam")
Adam8bit = _make("Adam8bit", "adam", 8, 1e-3, (0.9, 0.999), 1e-8, 0.0, "Adam")
AdamW32bit = _make("AdamW32bit", "adam", 32, 1e-3, (0.9, 0.999), 1e-8, 1e-2, "AdamW (decoupled weight decay)")
AdamW8bit = _make("AdamW8bit", "adam", 8, 1e-3, (0.9, 0.999), 1e-8, 1e-2, "AdamW (decoupled weight decay)")
Lion32bit = _make("Lion32bit", "lion", 32, 1e-4, (0.9, 0.99), 0.0, 0.0, "Lion")
Lion8bit = _make("Lion8bit", "lion", 8, 1e-4, (0.9, 0.99), 0.0, 0.0, "Lion")
RMSprop32bit = _make("RMSprop32bit", "rmsprop", 32, 1e-2, (0.99, 0.0), 1e-8, 0.0, "RMSprop (betas[0] = alpha)")
RMSprop8bit = _make("RMSprop8bit", "rmsprop", 8, 1e-2, (0.99, 0.0), 1e-8, 0.0, "RMSprop (betas[0] = alpha)")
Adagrad32bit = _make("Adagrad32bit", "adagrad", 32, 1e-2, (0.0, 0.0), 1e-10, 0.0, "Adagrad")
Adagrad8bit = _make("Adagrad8bit", "adagrad", 8, 1e-2, (0.0, 0.0), 1e-10, 0.0, "Adagrad")
LAMB32bit = _make("LAMB32bit", "lamb", 32, 1e-3, (0.9, 0.999), 1e-8, 0.0, "LAMB (trust ratio via max_unorm)",
                  max_unorm=1.0)
LAMB8bit = _make("LAMB8bit", "lamb", 8, 1e-3, (0.9, 0.999), 1e-8, 0.0,
                 "LAMB (8-bit blockwise state has no trust ratio in bitsandbytes 0.50.2: the Adam8bit rule; "
                 "parameters below min_8bit_size keep 32-bit state and get it, max_unorm=1.0 as there)",
                 max_unorm=1.0)
AdEMAMix32bit = _make("AdEMAMix32bit", "ademamix", 32, 1e-3, (0.9, 0.999, 0.9999), 1e-8, 1e-2, "AdEMAMix",
                      alpha=5.0)
AdEMAMix8bit = _make("AdEMAMix8bit", "ademamix", 8, 1e-3, (0.9, 0.999, 0.9999), 1e-8, 1e-2, "AdEMAMix",
                     alpha=5.0)


def _momentum_cls(name, optimizer_name, bits, max_unorm, doc):
    def __init__(self, params, lr, momentum=0.9, dampening=0.0, weight_decay=0.0, nesterov=False, **kw):
        if momentum == 0:
            raise NotImplementedError(f"{name} without momentum is not supported (as bitsandbytes)")
        if nesterov:
            raise NotImplementedError(f"{name}: nesterov is not supported (as bitsandbytes)")
        kw.setdefault("optim_bits", bits)
        kw.setdefault("max_unorm", max_unorm)
        Optimizer8bitState.__init__(self, params, lr, (momentum, dampening), 0.0, weight_decay, **kw)
    return type(name, (Optimizer8bitState,), {"optimizer_name": optimizer_name, "__init__": __init__,
                                             "__doc__": f"{doc} ({bits}-bit state)"})


SGD32bit = _momentum_cls("SGD32bit", "momentum", 32, 0.0, "SGD with momentum")
SGD8bit = _momentum_cls("SGD8bit", "momentum", 8, 0.0, "SGD with momentum")
LARS32bit = _momentum_cls("LARS32bit", "lars", 32, 0.02, "LARS (trust ratio via max_unorm)")
LARS8bit = _momentum_cls("LARS8bit", "lars", 8, 0.02,
                         "LARS (8-bit blockwise state has no trust ratio in bitsandbytes 0.50.2: the momentum "
                         "rule; parameters below min_8bit_size keep 32-bit state and get it, max_unorm=0.02)")

Adam, AdamW, Lion, RMSprop, Adagrad, LAMB, AdEMAMix = (Adam32bit, AdamW32bit, Lion32bit, RMSprop32bit,
                                                         Adagrad32bit, LAMB32bit, AdEMAMix32bit)
SGD, LARS, Momentum8bit = SGD32bit, LARS32bit, SGD8bit
