"""CUDA production optimizer updates: cuda_src/optim.cu (libkbit_optim.so) launched through cuda_launch, on
the current torch stream. One fused kernel per call: grad/param/state read once, written once.

Signatures are bitsandbytes 0.50.2's ops (and workbench.optim.functional's). Grad and param must
share a dtype (float32/float16/bfloat16; otherwise they are routed through float32 copies).
LAMB/LARS (max_unorm > 0, 32-bit) run one extra reduction kernel for ||u|| and one host sync to
fold the trust ratio into the step exactly as the reference does. No torch.no_grad() context: the
kernels see only pointers (a context per call costs a few us of a call's ~30 us host time).
"""
from __future__ import annotations

import numpy as np
import torch

from ...optim import _gpu_plan as G
from ...optim import functional as W
from . import check, kernels, ptr, stream

from ..registry import register_kernel

def _kptr(k: np.ndarray) -> int:
    return k.ctypes.data


def optimizer_update_32bit(optimizer_name, g, p, state1, state2, unorm_vec, max_unorm, param_norm,
                           beta1, beta2, beta3, alpha, eps, weight_decay, step, lr,
                           gnorm_scale=1.0, skip_zeros=False):
    opt = G.check_name(optimizer_name)
    G.check_update_32bit("cuda", optimizer_name, g, p, state1, state2, unorm_vec, step)  # sizes vs p (issue 17)
    if not G.same_dtype(g, p):
        return G.run_in_float32(optimizer_update_32bit, optimizer_name, g, p, state1, state2, unorm_vec, max_unorm,
                                param_norm, beta1, beta2, beta3, alpha, eps, weight_decay, step, lr, gnorm_scale,
                                skip_zeros)
    run = kernels("optim")
    n = p.numel()
    dt = G.DTYPE[p.dtype]
    if optimizer_name == "ademamix":
        st = state1.view(2, n)
        s1, m2 = st[0], st[1]
    else:
        s1, m2 = state1, None
    first = int(step == 1)
    scale = 1.0
    if max_unorm > 0.0 and optimizer_name in G.NORM_OK:
        k0 = G.consts(optimizer_name, beta1, beta2, beta3, alpha, eps, weight_decay, step, lr, gnorm_scale, False)
        acc = torch.zeros(1, dtype=torch.float64, device=p.device)
        check(run.kbit_optimizer_update_norm_sq(opt, first, ptr(g), dt, ptr(p), dt, ptr(s1), ptr(state2), n,
                                                _kptr(k0), ptr(acc), stream()), "kbit_optimizer_update_norm_sq")
        unorm = float(acc.sqrt())  # host sync (LAMB/LARS only)
        scale = W.scale_for_unorm(unorm, max_unorm, param_norm, unorm_vec)
    k = G.consts(optimizer_name, beta1, beta2, beta3, alpha, eps, weight_decay, step, lr, gnorm_scale, False, scale)
    check(run.kbit_optimizer_update_32bit(opt, first, int(bool(skip_zeros)), ptr(g), dt, ptr(p), dt, ptr(s1), ptr(m2),
                                          ptr(state2), n, _kptr(k), stream()), "kbit_optimizer_update_32bit")


def optimizer_update_8bit_blockwise(optimizer_name, g, p, state1, state2, beta1, beta2, beta3, alpha, eps,
                                    step, lr, qmap1, qmap2, absmax1, absmax2, weight_decay,
                                    gnorm_scale=1.0, skip_zeros=False):
    opt = G.check_name(optimizer_name)
    G.check_update_8bit("cuda", optimizer_name, g, p, state1, state2, step, qmap1, qmap2, absmax1, absmax2)
    if not G.same_dtype(g, p):
        return G.run_in_float32(optimizer_update_8bit_blockwise, optimizer_name, g, p, state1, state2, beta1, beta2,
                                beta3, alpha, eps, step, lr, qmap1, qmap2, absmax1, absmax2, weight_decay,
                                gnorm_scale, skip_zeros)
    run = kernels("optim")
    n = p.numel()
    nb = (n + 255) // 256
    dt = G.DTYPE[p.dtype]
    if optimizer_name == "ademamix":
        c = state1.view(2, n)
        a = absmax1.view(2, nb)
        c1, c1b, a1, a1b = c[0], c[1], a[0], a[1]
    else:
        c1, a1, c1b, a1b = state1, absmax1, None, None
    P1 = G.plan(qmap1)
    P2 = G.plan(qmap2) if state2 is not None else None
    # identity bucket codes are passed as NULL: the kernel then emits the bucket index (fast path)
    ident = P1.identity and P1.S == 2 and (P2 is None or (P2.identity and P2.S == 3))
    codes1 = ptr(None) if ident else ptr(P1.codes)
    pl2 = ((ptr(P2.table), ptr(P2.cell), ptr(P2.bounds), ptr(None) if ident else ptr(P2.codes), P2.m, P2.S) if P2
           else (ptr(None),) * 4 + (0, 0))
    k = G.consts(optimizer_name, beta1, beta2, beta3, alpha, eps, weight_decay, step, lr, gnorm_scale, True)
    check(run.kbit_optimizer_update_8bit_blockwise(
        opt, int(step == 1), int(bool(skip_zeros)), ptr(g), dt, ptr(p), dt, ptr(c1), ptr(a1), ptr(c1b), ptr(a1b),
        ptr(state2), ptr(absmax2), ptr(P1.table), ptr(P1.cell), ptr(P1.bounds), codes1, P1.m, P1.S, *pl2,
        n, _kptr(k), stream()),
        "kbit_optimizer_update_8bit_blockwise")


# Importing this module registers its kernels against the declarations in workbench/library.py.
register_kernel("workbench::optimizer_update_32bit", "cuda")(optimizer_update_32bit)
register_kernel("workbench::optimizer_update_8bit_blockwise", "cuda")(optimizer_update_8bit_blockwise)
