"""Shared adapter for the compiled CPU optimizer kernels (Numba and Cython take the same arguments).

Arguments arrive with bitsandbytes' op signatures; tensors are contiguous CPU tensors. Grad and
param may be float32/bfloat16/float16 (bit patterns); states are float32 or uint8 codes.
"""
from __future__ import annotations

import os

import numpy as np
import torch

from ..backends._cpu_common import as_numpy_bits, search_plan
from . import functional as W

ID = {"adam": 0, "lamb": 0, "ademamix": 1, "momentum": 2, "lars": 2, "lion": 3, "rmsprop": 4, "adagrad": 5}
CHUNK = 1 << 14       # 32-bit kernels: elements per parallel task
BLOCKS_PER_TASK = 32  # 8-bit kernels: 256-blocks per parallel task (one scratch buffer each)
_EMPTY_F = np.zeros(1, np.float32)
_EMPTY_U = np.zeros(1, np.uint8)


def consts(name, beta1, beta2, beta3, alpha, eps, weight_decay, step, lr, gnorm_scale, eight_bit, scale=1.0):
    k = W.scalars(name, beta1, beta2, beta3, alpha, eps, weight_decay, step, lr, gnorm_scale, eight_bit)
    if name in ("adam", "lamb"):
        upd = W._f32(k["adam32_step"] * scale)
    else:
        upd = W._f32(k["neg_lr"] * scale)
    order = ("b1", "b2", "b3", "alpha", "eps", "omb1", "omb2", "omb3", "wd", "decay", "gs", "c1", "c2",
             "eps_c2", "neg_lr", "neg_lr_c1")
    return np.array([k[o] for o in order] + [upd], dtype=np.float32)


def _check(p, g, *ts):
    for t in (p, g, *ts):
        if t is not None and (t.device.type != "cpu" or not t.is_contiguous()):
            raise ValueError("CPU optimizer kernels need contiguous CPU tensors")
    if p.numel() != g.numel():
        raise ValueError(f"grad has {g.numel()} elements, param {p.numel()}")


def make(K):
    """(optimizer_update_32bit, optimizer_update_8bit_blockwise) over kernel module K."""

    def optimizer_update_32bit(optimizer_name, g, p, state1, state2, unorm_vec, max_unorm, param_norm,
                               beta1, beta2, beta3, alpha, eps, weight_decay, step, lr,
                               gnorm_scale=1.0, skip_zeros=False):
        if optimizer_name not in ID:
            raise ValueError(f"unknown optimizer {optimizer_name!r}")
        _check(p, g, state1, state2)
        opt = ID[optimizer_name]
        n = p.numel()
        gx, gk = as_numpy_bits(g.reshape(-1))
        px, pk = as_numpy_bits(p.reshape(-1))
        if optimizer_name == "ademamix":
            st = state1.reshape(2, n)
            s1, m2 = st[0].numpy(), st[1].numpy()
        else:
            s1, m2 = state1.reshape(-1).numpy(), _EMPTY_F
        s2 = state2.reshape(-1).numpy() if state2 is not None else _EMPTY_F
        scale = 1.0
        if max_unorm > 0.0 and optimizer_name in ("adam", "lamb", "momentum", "lars", "rmsprop"):
            k0 = consts(optimizer_name, beta1, beta2, beta3, alpha, eps, weight_decay, step, lr, gnorm_scale, False)
            unorm = float(np.sqrt(K.update_norm_sq(opt, step == 1, gx, gk, px, pk, s1, s2, k0, CHUNK)))
            if unorm_vec is not None:
                unorm_vec.fill_(unorm)
            lim = max_unorm * float(param_norm)
            scale = lim / unorm if unorm > lim else 1.0
        k = consts(optimizer_name, beta1, beta2, beta3, alpha, eps, weight_decay, step, lr, gnorm_scale, False,
                   scale)
        K.update_32bit(opt, step == 1, bool(skip_zeros), gx, gk, px, pk, s1, m2, s2, k, CHUNK)

    def optimizer_update_8bit_blockwise(optimizer_name, g, p, state1, state2, beta1, beta2, beta3, alpha, eps,
                                        step, lr, qmap1, qmap2, absmax1, absmax2, weight_decay,
                                        gnorm_scale=1.0, skip_zeros=False):
        if optimizer_name not in ID:
            raise ValueError(f"unknown optimizer {optimizer_name!r}")
        _check(p, g, state1, state2, absmax1, absmax2)
        opt = ID[optimizer_name]
        n = p.numel()
        gx, gk = as_numpy_bits(g.reshape(-1))
        px, pk = as_numpy_bits(p.reshape(-1))
        if optimizer_name == "ademamix":
            c = state1.reshape(2, n)
            a = absmax1.reshape(2, -1)
            c1, c1b, a1, a1b = c[0].numpy(), c[1].numpy(), a[0].numpy(), a[1].numpy()
        else:
            c1, a1 = state1.reshape(-1).numpy(), absmax1.reshape(-1).numpy()
            c1b, a1b = _EMPTY_U, _EMPTY_F
        pl1 = search_plan(W.codebook_of(qmap1))
        t1 = qmap1.detach().float().cpu().numpy()
        two = state2 is not None
        if two:
            c2, a2 = state2.reshape(-1).numpy(), absmax2.reshape(-1).numpy()
            pl2 = search_plan(W.codebook_of(qmap2))
            t2 = qmap2.detach().float().cpu().numpy()
        else:
            c2, a2, pl2, t2 = _EMPTY_U, _EMPTY_F, pl1, t1
        k = consts(optimizer_name, beta1, beta2, beta3, alpha, eps, weight_decay, step, lr, gnorm_scale, True)
        K.update_8bit_blockwise(opt, step == 1, bool(skip_zeros), gx, gk, px, pk, c1, a1, c1b, a1b, c2, a2,
                                t1, t2, k, BLOCKS_PER_TASK,
                                pl1.mode, pl1.bnd15, pl1.bucket_codes, pl1.kbound, pl1.kcode_lo, pl1.kcode_hi,
                                pl1.bounds_pad,
                                pl2.mode, pl2.bnd15, pl2.bucket_codes, pl2.kbound, pl2.kcode_lo, pl2.kcode_hi,
                                pl2.bounds_pad)

    return optimizer_update_32bit, optimizer_update_8bit_blockwise
