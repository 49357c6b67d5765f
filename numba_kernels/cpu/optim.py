"""Numba CPU kernels for fused optimizer updates (32-bit state and 8-bit blockwise state).

One pass over memory: each parallel task owns a run of 256-element blocks; per block it reads
grad, param and the state codes once, dequantizes, applies the update rule in float32 (the
exact operation order of workbench/optim/functional.py, no FMA, fastmath off), writes the
param, keeps the new state in a 256-float scratch buffer to take the block's absmax, and
writes the requantized codes and absmax. Grad/param may be float32, bfloat16 or float16
(uint16 bit patterns, see numba_kernels/cpu/quant.py).

Constants arrive as one float32 vector ``k`` (indices below), rounded once in Python.

NaN/Inf (workbench/optim/functional.py, "NaN and Inf"): a block's absmax is the integer max of its
|x| bit patterns (NaN > Inf > every finite value: a NaN poisons the whole block, as the reference's
amax); a block whose absmax is NaN or Inf takes the reference's codes (nan_code / zero_code) on a
block-level branch, so the finite path never sees a NaN.
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange

from .quant import F32, KEYLUT, TINY, encode, load, scaled, store

# error_model="numpy": IEEE division (x/0 -> inf/nan as torch) with no zero-check branch in the loops
_OPTS = dict(cache=True, fastmath=False, nogil=True, error_model="numpy")

# optimizer (rule) ids and constant indices: workbench/optim/functional.py's KERNEL_RULES / KERNEL_SLOTS
# (tests/test_optim_wire_constants.py holds them equal)
ADAM, ADEMAMIX, MOMENTUM, LION, RMSPROP, ADAGRAD = 0, 1, 2, 3, 4, 5
ID = {"adam": ADAM, "lamb": ADAM, "ademamix": ADEMAMIX, "momentum": MOMENTUM, "lars": MOMENTUM,
      "lion": LION, "rmsprop": RMSPROP, "adagrad": ADAGRAD}
# constant indices
(B1, B2, B3, ALPHA, EPS, OMB1, OMB2, OMB3, WD, DECAY, GS, C1, C2, EPS_C2, NEG_LR, NEG_LR_C1, UPD_MUL) = range(17)
NK = 17


@njit(inline="always", **_OPTS)
def _sign(x):
    if x > 0:
        return np.float32(1.0)
    if x < 0:
        return np.float32(-1.0)
    return np.float32(0.0)  # +-0 and NaN -> +0, as torch.sign


@njit(inline="always", **_OPTS)
def rule(opt, eight, first, g0, p, s1, m2, s2, k):
    """New (p, s1, m2, s2) for one element; mirrors functional._rule operation by operation."""
    g = g0 * k[GS]
    wd = k[WD]
    if opt >= MOMENTUM and opt != LION and wd > 0:
        g = g + p * wd
    if opt == ADAM:
        s1 = s1 * k[B1] + g * k[OMB1]
        s2 = s2 * k[B2] + (g * g) * k[OMB2]
        if wd > 0:
            p = p * k[DECAY]
        if eight:
            p = p + (s1 / (np.sqrt(s2) / k[C2] + k[EPS])) * k[NEG_LR_C1]
        else:
            p = p + (s1 / (np.sqrt(s2) + k[EPS_C2])) * k[UPD_MUL]
    elif opt == ADEMAMIX:
        s1 = s1 * k[B1] + g * k[OMB1]
        m2 = m2 * k[B3] + g * k[OMB3]
        s2 = s2 * k[B2] + (g * g) * k[OMB2]
        if wd > 0:
            p = p * k[DECAY]
        p = p + ((s1 / k[C1] + m2 * k[ALPHA]) / (np.sqrt(s2) / k[C2] + k[EPS])) * k[NEG_LR]
    elif opt == MOMENTUM:
        s1 = g if first else s1 * k[B1] + g
        p = p + s1 * k[UPD_MUL]
    elif opt == LION:
        if wd > 0:
            p = p * k[DECAY]
        p = p + _sign(s1 * k[B1] + g * k[OMB1]) * k[NEG_LR]
        s1 = s1 * k[B2] + g * k[OMB2]
    elif opt == RMSPROP:
        s1 = s1 * k[B1] + (g * g) * k[OMB1]
        p = p + (g / (np.sqrt(s1) + k[EPS])) * k[UPD_MUL]
    else:  # ADAGRAD
        s1 = s1 + g * g
        p = p + (g / (np.sqrt(s1) + k[EPS])) * k[NEG_LR]
    return p, s1, m2, s2


@njit(parallel=True, **_OPTS)
def update_32bit(opt, first, skip_zeros, g, gkind, p, pkind, s1, m2, s2, k, chunk):
    """In place on p, s1 (and m2 for ademamix = state1[1], s2 for 2-state optimizers)."""
    n = p.shape[0]
    nch = (n + chunk - 1) // chunk
    has_m2 = opt == ADEMAMIX
    has_s2 = opt == ADAM or opt == ADEMAMIX
    for c in prange(nch):
        for i in range(c * chunk, min(n, (c + 1) * chunk)):
            g0 = load(g, i, gkind)
            if skip_zeros and g0 == 0:
                continue
            pv = load(p, i, pkind)
            a = s1[i]
            b = m2[i] if has_m2 else np.float32(0.0)
            d = s2[i] if has_s2 else np.float32(0.0)
            pv, a, b, d = rule(opt, False, first, g0, pv, a, b, d, k)
            store(p, i, pv, pkind)
            s1[i] = a
            if has_m2:
                m2[i] = b
            if has_s2:
                s2[i] = d


@njit(parallel=True, **_OPTS)
def update_norm_sq(opt, first, g, gkind, p, pkind, s1, s2, k, chunk):
    """sum(u*u) of the 32-bit update direction u (LAMB/LARS/max_unorm), float64 partial sums."""
    n = p.shape[0]
    nch = (n + chunk - 1) // chunk
    parts = np.zeros(nch, np.float64)
    for c in prange(nch):
        acc = 0.0
        for i in range(c * chunk, min(n, (c + 1) * chunk)):
            gv = load(g, i, gkind) * k[GS]
            pv = load(p, i, pkind)
            if opt != ADAM and k[WD] > 0:
                gv = gv + pv * k[WD]
            if opt == ADAM:
                a = s1[i] * k[B1] + gv * k[OMB1]
                d = s2[i] * k[B2] + (gv * gv) * k[OMB2]
                u = a / (np.sqrt(d) + k[EPS_C2])
            elif opt == MOMENTUM:
                u = gv if first else s1[i] * k[B1] + gv
            else:  # RMSPROP
                a = s1[i] * k[B1] + (gv * gv) * k[OMB1]
                u = gv / (np.sqrt(a) + k[EPS])
            acc += np.float64(u) * np.float64(u)
        parts[c] = acc
    return parts.sum()


EXP_BITS = np.uint32(0x7F800000)  # |x| bits >= this: Inf or NaN


@njit(inline="always", **_OPTS)
def _absmax_bits(buf, m):
    """max |buf[:m]| as float32 bits: the integer max of the bit patterns with the sign cleared
    (propagates NaN, unlike a float max; vectorizes)."""
    u = np.uint32(0)
    for j in range(m):
        v = np.float32(buf[j]).view(np.uint32) & np.uint32(0x7FFFFFFF)
        u = v if v > u else u
    return u


@njit(inline="always", **_OPTS)
def _requant(buf, mbits, start, end, is_tail, codes, absmax, blk, nan_code, zero_code,
             mode, bnd, bc, kb, klo, khi, bp):
    mx = np.uint32(mbits).view(np.float32)
    if mbits >= EXP_BITS:
        # NaN or Inf absmax: stored as is (the tail's 1e-38 clamp keeps it); the reference's codes:
        # every scaled value NaN (NaN absmax), or +-0 / NaN for finite / Inf values (Inf absmax)
        absmax[blk] = mx
        out = codes[start:end]
        for j in range(end - start):
            a = np.float32(buf[j]).view(np.uint32) & np.uint32(0x7FFFFFFF)
            out[j] = nan_code if (mbits > EXP_BITS or a >= EXP_BITS) else zero_code
        return
    amc = mx if mx > TINY else TINY
    r = np.float32(1.0) / amc
    absmax[blk] = amc if is_tail else mx
    if mode == KEYLUT and not is_tail:
        out = codes[start:end]
        for j in range(end - start):  # the common case: one key lookup, one compare
            s = min(max(buf[j] * r, np.float32(-1.0)), np.float32(1.0))
            key = np.float32(s).view(np.uint32) >> np.uint32(16)
            out[j] = khi[key] if s > kb[key] else klo[key]
    else:
        for i in range(start, end):
            codes[i] = encode(scaled(buf[i - start], amc, r, is_tail), mode, bnd, bc, kb, klo, khi, bp)


@njit(parallel=True, **_OPTS)
def update_8bit_blockwise(opt, first, skip_zeros, g, gkind, p, pkind,
                          c1, a1, c1b, a1b, c2, a2, t1, t2, k, bpt,
                          m1, n1, bc1, kb1, klo1, khi1, bp1, m2_, n2, bc2, kb2, klo2, khi2, bp2,
                          nan1, zero1, nan2, zero2):
    """8-bit blockwise update, blocksize 256. c1/a1: state1 codes/absmax (c1b/a1b: AdEMAMix's
    second EMA), c2/a2: state2; t1/t2 the tables; (m, n, bc, kb, klo, khi, bp): search plans
    (mode, bnd15, bucket_codes, kbound, kcode_lo, kcode_hi, bounds_pad of codebook_tables.cpu_search_plan);
    nan*/zero*: each map's codes for a non-finite block (functional.nonfinite_codes).
    Per block: dequantize into scratch, update (a branch-free loop for float32 params without
    skip_zeros), absmax, requantize."""
    BS = 256
    n = p.shape[0]
    nb = (n + BS - 1) // BS
    ntask = (nb + bpt - 1) // bpt
    has_b = opt == ADEMAMIX
    has_s2 = opt == ADAM or opt == ADEMAMIX
    fast = gkind == F32 and pkind == F32 and not skip_zeros
    for t in prange(ntask):
        buf1 = np.empty(BS, np.float32)
        bufb = np.empty(BS, np.float32)
        buf2 = np.empty(BS, np.float32)
        for blk in range(t * bpt, min(nb, (t + 1) * bpt)):
            start = blk * BS
            end = min(start + BS, n)
            is_tail = end - start < BS
            m = end - start
            am1 = a1[blk]
            q1 = c1[start:end]
            for j in range(m):
                buf1[j] = t1[q1[j]] * am1
            if has_b:
                amb = a1b[blk]
                qb = c1b[start:end]
                for j in range(m):
                    bufb[j] = t1[qb[j]] * amb
            if has_s2:
                am2 = a2[blk]
                q2 = c2[start:end]
                for j in range(m):
                    buf2[j] = t2[q2[j]] * am2
            if fast and opt == ADAM:
                gb = g[start:end]
                pb = p[start:end]
                for j in range(end - start):
                    pv, a, b, d = rule(ADAM, True, first, np.float32(gb[j]), np.float32(pb[j]), buf1[j],
                                       np.float32(0.0), buf2[j], k)
                    pb[j] = pv
                    buf1[j] = a
                    buf2[j] = d
            else:
                for i in range(start, end):
                    j = i - start
                    g0 = load(g, i, gkind)
                    if not (skip_zeros and g0 == 0):
                        pv, a, b, d = rule(opt, True, first, g0, load(p, i, pkind), buf1[j],
                                           bufb[j] if has_b else np.float32(0.0),
                                           buf2[j] if has_s2 else np.float32(0.0), k)
                        store(p, i, pv, pkind)
                        buf1[j] = a
                        if has_b:
                            bufb[j] = b
                        if has_s2:
                            buf2[j] = d
            _requant(buf1, _absmax_bits(buf1, m), start, end, is_tail, c1, a1, blk, nan1, zero1,
                     m1, n1, bc1, kb1, klo1, khi1, bp1)
            if has_b:
                _requant(bufb, _absmax_bits(bufb, m), start, end, is_tail, c1b, a1b, blk, nan1, zero1,
                         m1, n1, bc1, kb1, klo1, khi1, bp1)
            if has_s2:
                _requant(buf2, _absmax_bits(buf2, m), start, end, is_tail, c2, a2, blk, nan2, zero2,
                         m2_, n2, bc2, kb2, klo2, khi2, bp2)
