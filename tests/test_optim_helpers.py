"""Shared helpers for tests/test_optim*.py (no tests here): one optimizer problem driven through any update op."""
from __future__ import annotations

import torch

from workbench.optim import functional as W

BETAS = {"adam": (0.9, 0.995, 0.0), "lamb": (0.9, 0.995, 0.0), "ademamix": (0.9, 0.995, 0.999),
         "momentum": (0.9, 0.0, 0.0), "lars": (0.9, 0.0, 0.0), "lion": (0.9, 0.99, 0.0),
         "rmsprop": (0.95, 0.0, 0.0), "adagrad": (0.0, 0.0, 0.0)}
LR = {"adam": 1e-3, "lamb": 1e-3, "ademamix": 1e-3, "momentum": 1e-3, "lars": 1e-3, "lion": 1e-4,
      "rmsprop": 1e-3, "adagrad": 1e-2}


def init_state(name, n, bits, device="cpu"):
    two = name in W.TWO_STATE
    shp = (2, n) if name == "ademamix" else (n,)
    if bits == 32:
        return dict(state1=torch.zeros(shp, device=device), state2=torch.zeros(n, device=device) if two else None)
    nb = (n + 255) // 256
    return dict(state1=torch.zeros(shp, dtype=torch.uint8, device=device),
                state2=torch.zeros(n, dtype=torch.uint8, device=device) if two else None,
                absmax1=torch.zeros((2, nb) if name == "ademamix" else (nb,), device=device),
                absmax2=torch.zeros(nb, device=device) if two else None,
                qmap1=W.qmap(True, device), qmap2=W.qmap(False, device) if two else None)


def clone(st):
    return {k: (v.clone() if isinstance(v, torch.Tensor) and not k.startswith("qmap") else v) for k, v in st.items()}


def step(fn, name, bits, g, p, st, t, *, wd=0.01, gnorm_scale=1.0, skip_zeros=False, max_unorm=None):
    b1, b2, b3 = BETAS[name]
    lr = LR[name]
    if bits == 32:
        mu = (1.0 if name == "lamb" else 0.02 if name == "lars" else 0.0) if max_unorm is None else max_unorm
        pn = float(torch.norm(p.float())) if mu > 0 else 0.0
        fn(name, g, p, st["state1"], st["state2"], torch.zeros(1, device=p.device) if mu > 0 else None, mu, pn,
           b1, b2, b3, 0.5, 1e-8, wd, t, lr, gnorm_scale, skip_zeros)
    else:
        fn(name, g, p, st["state1"], st["state2"], b1, b2, b3, 0.5, 1e-8, t, lr, st["qmap1"], st["qmap2"],
           st["absmax1"], st["absmax2"], wd, gnorm_scale, skip_zeros)


def problem(n, gen, device="cpu"):
    """A noisy quadratic: g = (p - target) * curvature + noise; per-element curvature spans 0.1..10."""
    target = torch.randn(n, generator=gen).to(device)
    curv = torch.exp(torch.empty(n).uniform_(-2.3, 2.3, generator=gen)).to(device)
    p0 = torch.randn(n, generator=gen).to(device)
    noise_gen = torch.Generator().manual_seed(int(torch.randint(0, 2 ** 31, (1,), generator=gen)))

    def grad(p):
        return ((p.float() - target) * curv + 0.1 * torch.randn(n, generator=noise_gen).to(device)).to(p.dtype)
    return p0, grad
