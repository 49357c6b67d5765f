"""Numba CUDA optimizer updates: the kernels of numba_kernels/cuda/optim.py on torch tensors.

On a GPU: zero-copy device arrays, launched on torch's current stream. Under the simulator
(``NUMBA_ENABLE_CUDASIM=1``): CPU tensors seen as NumPy views; use small inputs there.
The kernels take float32 grad/param; float16/bfloat16 go through float32 copies (not fused).
"""
from __future__ import annotations

import numpy as np
import torch

from numba_kernels.cuda import optim as K

from ...optim import _gpu_plan as G
from ...optim import functional as W
from ._launch import array_values, as_array, ctas_per_sm, launch, launch_values

from ..registry import register_kernel


def _arr(t):
    return None if t is None else as_array(t)


def _words(t: torch.Tensor, dtype):
    """``t`` seen as int32/int64 words: signed on the GPU (stores truncate there), unsigned NumPy in
    the simulator (NumPy wants in-range values)."""
    t = t.view(dtype)
    if t.device.type == "cpu":
        return _arr(t).view(np.uint32 if dtype == torch.int32 else np.uint64)
    return _arr(t)


_dummies: dict = {}


def _dummy(like: torch.Tensor, dtype):
    """A one-element placeholder for an unused kernel argument, cached per (device, dtype)."""
    key = (str(like.device), dtype)
    if key not in _dummies:
        _dummies[key] = torch.zeros(1, dtype=dtype, device=like.device)
    return _dummies[key]


def _flat(*ts):
    """1-D views of contiguous tensors (a weight matrix's grad, param and states; writes land in them)."""
    return tuple(None if t is None else t.view(-1) for t in ts)


def _sms(device) -> int:
    return 2 if device.type != "cuda" else torch.cuda.get_device_properties(device).multi_processor_count


def _launch(kern, grid, device, *args):
    launch(kern, grid, K.THREADS, device, *args)


def _k(vec: np.ndarray) -> tuple:
    """The constants as a float32 tuple: passed by value (no device array, no copy per step)."""
    return tuple(np.asarray(vec, np.float32))


@torch.no_grad()
def optimizer_update_32bit(optimizer_name, g, p, state1, state2, unorm_vec, max_unorm, param_norm,
                           beta1, beta2, beta3, alpha, eps, weight_decay, step, lr,
                           gnorm_scale=1.0, skip_zeros=False):
    opt = G.check_name(optimizer_name)
    G.check_update_32bit("numba_cuda", optimizer_name, g, p, state1, state2, unorm_vec, step, cuda=False)
    if p.dtype != torch.float32 or g.dtype != torch.float32:
        return G.run_in_float32(optimizer_update_32bit, optimizer_name, g, p, state1, state2, unorm_vec, max_unorm,
                                param_norm, beta1, beta2, beta3, alpha, eps, weight_decay, step, lr, gnorm_scale,
                                skip_zeros)
    g, p, state1, state2 = _flat(g, p, state1, state2)   # the kernels index 1-D arrays
    n = p.numel()
    if n == 0:
        return
    dev = p.device
    if optimizer_name == "ademamix":
        st = state1.view(2, n)
        s1, m2 = st[0], st[1]
    else:
        s1, m2 = state1, _dummy(p, torch.float32)
    s2 = state2 if state2 is not None else _dummy(p, torch.float32)
    first = step == 1
    scale = 1.0
    kern = K.kernel("32bit", opt)
    grid = max(1, min((n + K.THREADS - 1) // K.THREADS, _sms(dev) * ctas_per_sm(kern, dev, 8)))  # one wave
    if max_unorm > 0.0 and optimizer_name in G.NORM_OK:
        k0 = G.consts(optimizer_name, beta1, beta2, beta3, alpha, eps, weight_decay, step, lr, gnorm_scale, False)
        parts = torch.zeros(grid, dtype=torch.float64, device=dev)
        _launch(K.kernel("norm", opt), grid, dev, first, _arr(g), _arr(p), _arr(s1), _arr(s2), n, _k(k0),
                _arr(parts))
        unorm = float(parts.sum().sqrt())
        scale = W.scale_for_unorm(unorm, max_unorm, param_norm, unorm_vec)
    k = G.consts(optimizer_name, beta1, beta2, beta3, alpha, eps, weight_decay, step, lr, gnorm_scale, False, scale)
    _launch(kern, grid, dev, first, bool(skip_zeros), _arr(g), _arr(p), _arr(s1), _arr(m2),
            _arr(s2), n, _k(k))


@torch.no_grad()
def optimizer_update_8bit_blockwise(optimizer_name, g, p, state1, state2, beta1, beta2, beta3, alpha, eps,
                                    step, lr, qmap1, qmap2, absmax1, absmax2, weight_decay,
                                    gnorm_scale=1.0, skip_zeros=False):
    opt = G.check_name(optimizer_name)
    G.check_update_8bit("numba_cuda", optimizer_name, g, p, state1, state2, step, qmap1, qmap2, absmax1, absmax2,
                        cuda=False)
    if p.dtype != torch.float32 or g.dtype != torch.float32:
        return G.run_in_float32(optimizer_update_8bit_blockwise, optimizer_name, g, p, state1, state2, beta1, beta2,
                                beta3, alpha, eps, step, lr, qmap1, qmap2, absmax1, absmax2, weight_decay,
                                gnorm_scale, skip_zeros)
    g, p, state1, state2, absmax1, absmax2 = _flat(g, p, state1, state2, absmax1, absmax2)
    n = p.numel()
    if n == 0:
        return
    dev = p.device
    nb = (n + 255) // 256
    if optimizer_name == "ademamix":
        c = state1.view(2, n)
        a = absmax1.view(2, nb)
        c1, c1b, a1, a1b = c[0], c[1], a[0], a[1]
    else:
        c1, a1 = state1, absmax1
        c1b, a1b = _dummy(p, torch.uint8), _dummy(p, torch.float32)
    P1 = G.plan(qmap1)
    if state2 is not None:
        P2 = G.plan(qmap2)
        c2, a2 = state2, absmax2
    else:
        P2 = P1
        c2, a2 = _dummy(p, torch.uint8), _dummy(p, torch.float32)
    k = G.consts(optimizer_name, beta1, beta2, beta3, alpha, eps, weight_decay, step, lr, gnorm_scale, True)
    # identity bucket codes with the standard search depths: the kernel's unrolled fast path
    fast = P1.identity and P1.S == 2 and (state2 is None or (P2.identity and P2.S == 3))
    kern = K.kernel("8bit", opt, fast)
    grid = max(1, min((nb + K.WARPS - 1) // K.WARPS, _sms(dev) * ctas_per_sm(kern, dev, 4)))  # one wave
    parts = (g, p, c1, c1b if optimizer_name == "ademamix" else None, c2 if state2 is not None else None,
             a1, a1b, a2, P1, P2)
    head = (step == 1, bool(skip_zeros))
    kinds = _launch_kinds.get(kern)
    if kinds is not None and g.is_contiguous() and p.is_contiguous():
        if launch_values(kern, grid, K.THREADS, dev, kinds, _values8(head, parts, n, nb, _k(k))):
            return
    kinds = launch(kern, grid, K.THREADS, dev, *_args8(head, parts, n, nb, _k(k)))
    if kinds is not None:
        _launch_kinds[kern] = kinds


_launch_kinds: dict = {}   # 8-bit kernel -> the argument kinds of its launch (launch_values)


def _cut(parts) -> int:
    """Elements handled as words (whole 256-blocks, every array aligned), the rest as elements."""
    g, p, c1, c1b, c2 = parts[:5]
    aligned = g.data_ptr() % 8 == 0 and p.data_ptr() % 8 == 0 and all(
        c.data_ptr() % 4 == 0 for c in (c1, c1b, c2) if c is not None)
    return g.numel() // 256 * 256 if aligned else 0


def _args8(head, parts, n, nb, k) -> list:
    """The 8-bit kernel's arguments: full blocks as words (8-byte grad/param, 4-byte codes), the rest as
    elements -- disjoint views (the simulator copies every argument in and back) -- absmax, the two
    rounding plans' tables, sizes and the constants. States/absmax absent for an optimizer are 1-element
    placeholders."""
    g, p, c1, c1b, c2, a1, a1b, a2, P1, P2 = parts
    cut = _cut(parts)
    c1b_e = c1b if c1b is not None else _dummy(p, torch.uint8)
    c2_e = c2 if c2 is not None else _dummy(p, torch.uint8)

    def words(t, dtype):
        return _words(t[:cut] if t is not None and cut else _dummy(p, dtype), dtype)

    def tables(P):
        return [_arr(t) for t in (P.table, P.cell, P.bounds, P.codes_i32)] + [P.m, P.S]

    return [*head, words(g, torch.int64), words(p, torch.int64), *(words(c, torch.int32) for c in (c1, c1b, c2)),
            _arr(g[cut:]), _arr(p[cut:]), _arr(c1[cut:]), _arr(c1b_e[cut:]), _arr(c2_e[cut:]), cut // 256,
            _arr(a1), _arr(a1b), _arr(a2), *tables(P1), *tables(P2), n, nb, k]


def _tvals(t: torch.Tensor, count: int | None = None, offset: int = 0) -> list:
    """Launch values of the 1-D view t[offset:offset + count] of a contiguous tensor."""
    isz = t.element_size()
    count = t.numel() - offset if count is None else count
    return array_values(t.data_ptr() + offset * isz, count, isz)


def _plan_values(P) -> list:
    vals = P.__dict__.get("_numba_launch_values")
    if vals is None:
        vals = P.__dict__["_numba_launch_values"] = (
            [x for t in (P.table, P.cell, P.bounds, P.codes_i32) for x in _tvals(t)] + [P.m, P.S])
    return vals


def _values8(head, parts, n, nb, k) -> list:
    """``_launch._flatten(_args8(...))[1]`` computed from the pointers (grad and param contiguous): the
    ~20 views cost the host tens of us per step (tests/test_numba_launch_layout.py holds the two equal)."""
    g, p, c1, c1b, c2, a1, a1b, a2, P1, P2 = parts
    cut = _cut(parts)
    d8, d32 = _dummy(p, torch.uint8), _dummy(p, torch.int32)
    vals = list(head)
    for t in (g, p):                         # 8-byte words of the full blocks
        vals += array_values(t.data_ptr(), cut // 2, 8) if cut else _tvals(_dummy(p, torch.int64))
    for c in (c1, c1b, c2):                  # 4-byte words of their codes
        vals += array_values(c.data_ptr(), cut // 4, 4) if c is not None and cut else _tvals(d32)
    for t in (g, p, c1, c1b if c1b is not None else d8, c2 if c2 is not None else d8):
        vals += _tvals(t, None, cut) if t.numel() > cut else _tvals(t, 0)
    vals.append(cut // 256)
    for t in (a1, a1b, a2):
        vals += _tvals(t)
    return vals + _plan_values(P1) + _plan_values(P2) + [n, nb, *k]


# Importing this module registers its kernels against the declarations in workbench/library.py.
register_kernel("workbench::optimizer_update_32bit", "numba_cuda")(optimizer_update_32bit)
register_kernel("workbench::optimizer_update_8bit_blockwise", "numba_cuda")(optimizer_update_8bit_blockwise)
