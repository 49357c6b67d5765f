"""Shared adapter for the compiled CPU optimizer kernels (Numba and Cython take the same arguments).

Arguments arrive with bitsandbytes' op signatures; tensors are contiguous CPU tensors. Grad and
param may be float32/bfloat16/float16 (bit patterns); states are float32 or uint8 codes.

This is the lowest Python level before the compiled kernels, which trust every size: each call runs
the state check (:mod:`workbench.optim.state_check`, metadata only) and then asserts the sizes of the
very arrays handed to the kernel, so a direct caller cannot make a kernel index out of bounds.
"""
from __future__ import annotations

import os
import weakref

import numpy as np
import torch

from ..backends._cpu_common import as_numpy_bits
from ..codebook_tables import cpu_search_plan
from . import functional as W
from . import state_check as S

ID = W.OPTIMIZER_ID   # the kernels' rule ids (defined once, in functional.py)
CHUNK = 1 << 14       # 32-bit kernels: elements per parallel task
BLOCKS_PER_TASK = 32  # 8-bit kernels: 256-blocks per parallel task (one scratch buffer each)
_EMPTY_F = np.zeros(1, np.float32)
_EMPTY_U = np.zeros(1, np.uint8)


consts = W.kernel_constants  # float32[NK] in W.KERNEL_SLOTS order


_nf_cache: dict = {}


def _nonfinite(cb) -> tuple[int, int]:
    """functional.nonfinite_codes(cb), cached per codebook object (codebook_of caches those per qmap)."""
    hit = _nf_cache.get(id(cb))
    if hit is not None and hit[0]() is cb:
        return hit[1]
    if len(_nf_cache) > 256:
        _nf_cache.clear()
    r = W.nonfinite_codes(cb)
    _nf_cache[id(cb)] = (weakref.ref(cb), r)
    return r


def _sizes(**arrays):
    """name=(array, expected size): the arrays handed to a kernel have exactly the sizes it indexes."""
    for name, (a, size) in arrays.items():
        if a.size != size:
            raise S.OptimizerStateError(f"CPU optimizer kernel: {name} has {a.size} elements, expected {size}")


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
        S.check_update_32bit(optimizer_name, g, p, state1, state2, unorm_vec, step)
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
        _sizes(grad=(gx, n), param=(px, n), state1=(s1, n), m2=(m2, n if optimizer_name == "ademamix" else m2.size),
               state2=(s2, n if state2 is not None else s2.size))
        if s1.dtype != np.float32 or s2.dtype != np.float32 or m2.dtype != np.float32 or (
                optimizer_name in W.TWO_STATE and state2 is None):
            raise S.OptimizerStateError("CPU optimizer kernel: float32 states (and state2 for adam/lamb/ademamix)")
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
        S.check_update_8bit(optimizer_name, g, p, state1, state2, step, qmap1, qmap2, absmax1, absmax2)
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
        cb1 = W.codebook_of(qmap1)
        pl1, nz1 = cpu_search_plan(cb1), _nonfinite(cb1)
        t1 = np.ascontiguousarray(qmap1.detach().float().cpu().numpy().reshape(-1))
        two = state2 is not None
        if two:
            c2, a2 = state2.reshape(-1).numpy(), absmax2.reshape(-1).numpy()
            cb2 = W.codebook_of(qmap2)
            pl2, nz2 = cpu_search_plan(cb2), _nonfinite(cb2)
            t2 = np.ascontiguousarray(qmap2.detach().float().cpu().numpy().reshape(-1))
        else:
            c2, a2, pl2, t2, nz2 = _EMPTY_U, _EMPTY_F, pl1, t1, nz1
        nb = (n + W.BLOCKSIZE - 1) // W.BLOCKSIZE
        ade = optimizer_name == "ademamix"
        _sizes(grad=(gx, n), param=(px, n), state1=(c1, n), absmax1=(a1, nb), state1_ema2=(c1b, n if ade else c1b.size),
               absmax1_ema2=(a1b, nb if ade else a1b.size), state2=(c2, n if two else c2.size),
               absmax2=(a2, nb if two else a2.size), qmap1=(t1, 256), qmap2=(t2, 256))
        if c1.dtype != np.uint8 or c1b.dtype != np.uint8 or c2.dtype != np.uint8 or a1.dtype != np.float32 or (
                a1b.dtype != np.float32 or a2.dtype != np.float32 or (optimizer_name in W.TWO_STATE and not two)):
            raise S.OptimizerStateError("CPU optimizer kernel: uint8 codes, float32 absmax (and state2 for "
                                        "adam/lamb/ademamix)")
        k = consts(optimizer_name, beta1, beta2, beta3, alpha, eps, weight_decay, step, lr, gnorm_scale, True)
        K.update_8bit_blockwise(opt, step == 1, bool(skip_zeros), gx, gk, px, pk, c1, a1, c1b, a1b, c2, a2,
                                t1, t2, k, BLOCKS_PER_TASK,
                                pl1.mode, pl1.bnd15, pl1.bucket_codes, pl1.kbound, pl1.kcode_lo, pl1.kcode_hi,
                                pl1.bounds_pad,
                                pl2.mode, pl2.bnd15, pl2.bucket_codes, pl2.kbound, pl2.kcode_lo, pl2.kcode_hi,
                                pl2.bounds_pad, nz1[0], nz1[1], nz2[0], nz2[1])

    return optimizer_update_32bit, optimizer_update_8bit_blockwise
