"""Host-side helpers shared by the GPU optimizer backends (cuda, numba_cuda).

* :func:`consts` -- the 17 float32 constants of an update (the order of ``KBIT_K_*`` in
  cuda_src/kbit_optim.h), each computed in double and rounded once, from
  :func:`workbench.optim.functional.scalars`; the LAMB/LARS trust ratio is folded into UPD_MUL.
* :func:`plan` -- a 256-entry qmap's rounding plan on its device: (table f32[256], Eytzinger tree
  f32[256] of the sorted bounds (+inf padded, node i at index i, 1..255), bucket codes u8[256]),
  cached per qmap tensor (pointer, version).
"""
from __future__ import annotations

import numpy as np
import torch

from . import functional as W

ID = {"adam": 0, "lamb": 0, "ademamix": 1, "momentum": 2, "lars": 2, "lion": 3, "rmsprop": 4, "adagrad": 5}
NORM_OK = ("adam", "lamb", "momentum", "lars", "rmsprop")  # optimizers with a max_unorm trust ratio (32-bit)
DTYPE = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2}
_ORDER = ("b1", "b2", "b3", "alpha", "eps", "omb1", "omb2", "omb3", "wd", "decay", "gs", "c1", "c2",
          "eps_c2", "neg_lr", "neg_lr_c1")


def check_name(name: str) -> int:
    if name not in ID:
        raise ValueError(f"unknown optimizer {name!r}; expected one of {tuple(ID)}")
    return ID[name]


def consts(name, beta1, beta2, beta3, alpha, eps, weight_decay, step, lr, gnorm_scale, eight_bit,
           scale: float = 1.0) -> np.ndarray:
    k = W.scalars(name, beta1, beta2, beta3, alpha, eps, weight_decay, step, lr, gnorm_scale, eight_bit)
    upd = W._f32(k["adam32_step"] * scale) if name in ("adam", "lamb") else W._f32(k["neg_lr"] * scale)
    return np.array([k[o] for o in _ORDER] + [upd], dtype=np.float32)


def eytzinger(bounds: np.ndarray) -> np.ndarray:
    """float32[256]: the (<= 255) sorted bounds in Eytzinger order at 1..255, +inf padded; [0] unused."""
    b = np.full(255, np.inf, np.float32)
    b[:len(bounds)] = bounds
    tree = np.zeros(256, np.float32)
    it = iter(b)

    def fill(i):
        if i < 256:
            fill(2 * i)
            tree[i] = next(it)
            fill(2 * i + 1)

    fill(1)
    return tree


_plans: dict = {}


def plan(qmap: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(table, tree, codes) on qmap's device for a 256-entry qmap (see module doc)."""
    if qmap.numel() != 256:
        raise ValueError(f"qmap: expected 256 values, got {qmap.numel()}")
    key = (qmap.data_ptr(), str(qmap.device), qmap._version)
    hit = _plans.get(key)
    if hit is not None:
        return hit
    cb = W.codebook_of(qmap)
    codes = np.full(256, cb.bucket_codes[-1], np.uint8)
    codes[:len(cb.bucket_codes)] = cb.bucket_codes
    dev = qmap.device
    out = (qmap.detach().reshape(-1).float().contiguous(), torch.from_numpy(eytzinger(cb.bounds)).to(dev),
           torch.from_numpy(codes).to(dev))
    if len(_plans) > 256:
        _plans.clear()
    _plans[key] = out
    return out


def same_dtype(g: torch.Tensor, p: torch.Tensor) -> bool:
    return g.dtype == p.dtype and g.dtype in DTYPE
