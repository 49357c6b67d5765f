"""Numba CUDA kernels for fused optimizer updates (32-bit state and 8-bit blockwise state).

Same plan as cuda_src/optim.cu: a CTA of 256 threads = 8 warps; in the 8-bit kernel a warp owns one
256-element block per iteration and lane l handles elements 4l..4l+3 and 128+4l..128+4l+3, read and
written as 8-byte words of grad/param and 4-byte words of codes (element views for a tail block and
for misaligned arrays). New states stay in registers; the block absmax is a warp xor-shuffle max (a
shared-memory tree under the simulator, which has no shuffles); requantization is the cell-plan
search of workbench/optim/_gpu_plan.py.

Every float32 operation is an explicitly rounded libdevice call (fmul_rn, fadd_rn, fdiv_rn, fsqrt_rn):
NVVM contracts a*b + c into an FMA by default, and the reference rounds each operation. Under the CUDA
simulator (``NUMBA_ENABLE_CUDASIM=1``) the same kernels run with NumPy float32 scalar arithmetic.
Grad/param are float32 here (the backend routes float16/bfloat16 through float32 copies).
NaN/Inf (workbench/optim/functional.py, "NaN and Inf"): the block absmax is the integer max of the
|x| bit patterns (NaN > Inf > finite; a float max would drop NaN), so a NaN poisons its whole
256-block as in the reference; a block whose absmax is NaN or Inf takes the reference's codes (NaN:
the last bucket's; +-0: the code of 0.0) on a warp-uniform branch. Rule ids and constant slots:
functional.py's KERNEL_RULES / KERNEL_SLOTS (tests/test_optim_wire_constants.py).
Array accesses in the 8-bit kernel index with unsigned values (no negative-index wraparound code;
see numba_kernels/cuda/quant.py): H100 kernel time Adam 1.216 -> 1.094 ms at 2**27 (reports/optim-gpu).
"""
from __future__ import annotations

import os

import numpy as np
from numba import config, cuda, float32, float64, int32, uint8, uint32, uint64

from .quant import _float_as_int, _group_max, _int_as_float

THREADS = 256
WARPS = THREADS // 32
TINY = np.float32(1e-38)
ADAM, ADEMAMIX, MOMENTUM, LION, RMSPROP, ADAGRAD = 0, 1, 2, 3, 4, 5
(B1, B2, B3, ALPHA, EPS, OMB1, OMB2, OMB3, WD, DECAY, GS, C1, C2, EPS_C2, NEG_LR, NEG_LR_C1, UPD_MUL) = range(17)

if config.ENABLE_CUDASIM:
    def _mul(a, b):
        with np.errstate(all="ignore"):   # inf * 0 -> NaN, as on the GPU (NaN semantics tests)
            return np.float32(a) * np.float32(b)

    def _add(a, b):
        with np.errstate(all="ignore"):
            return np.float32(a) + np.float32(b)

    def _div(a, b):
        with np.errstate(all="ignore"):
            return np.float32(a) / np.float32(b)

    def _sqrt(a):
        with np.errstate(all="ignore"):
            return np.sqrt(np.float32(a))
else:
    from numba.cuda import libdevice
    _mul, _add, _div, _sqrt = libdevice.fmul_rn, libdevice.fadd_rn, libdevice.fdiv_rn, libdevice.fsqrt_rn

ONE = np.float32(1.0)
ZERO = np.float32(0.0)
EXPB = 0x7F800000  # |x| bits >= this: Inf or NaN


@cuda.jit(device=True, inline=True)
def _sign(x):
    if x > ZERO:
        return ONE
    if x < ZERO:
        return -ONE
    return ZERO  # +-0 and NaN -> +0, as torch.sign


def _make_rule(opt: int, eight: bool):
    @cuda.jit(device=True, inline=True)
    def rule(first, g, p, a, b, d, k):
        g = _mul(g, k[GS])
        wd = k[WD]
        if opt == MOMENTUM or opt == RMSPROP or opt == ADAGRAD:
            if wd > ZERO:
                g = _add(g, _mul(p, wd))
        if opt == ADAM:
            a = _add(_mul(a, k[B1]), _mul(g, k[OMB1]))
            d = _add(_mul(d, k[B2]), _mul(_mul(g, g), k[OMB2]))
            if wd > ZERO:
                p = _mul(p, k[DECAY])
            if eight:
                p = _add(p, _mul(_div(a, _add(_div(_sqrt(d), k[C2]), k[EPS])), k[NEG_LR_C1]))
            else:
                p = _add(p, _mul(_div(a, _add(_sqrt(d), k[EPS_C2])), k[UPD_MUL]))
        elif opt == ADEMAMIX:
            a = _add(_mul(a, k[B1]), _mul(g, k[OMB1]))
            b = _add(_mul(b, k[B3]), _mul(g, k[OMB3]))
            d = _add(_mul(d, k[B2]), _mul(_mul(g, g), k[OMB2]))
            if wd > ZERO:
                p = _mul(p, k[DECAY])
            num = _add(_div(a, k[C1]), _mul(b, k[ALPHA]))
            p = _add(p, _mul(_div(num, _add(_div(_sqrt(d), k[C2]), k[EPS])), k[NEG_LR]))
        elif opt == MOMENTUM:
            if first:
                a = g
            else:
                a = _add(_mul(a, k[B1]), g)
            p = _add(p, _mul(a, k[UPD_MUL]))
        elif opt == LION:
            if wd > ZERO:
                p = _mul(p, k[DECAY])
            p = _add(p, _mul(_sign(_add(_mul(a, k[B1]), _mul(g, k[OMB1]))), k[NEG_LR]))
            a = _add(_mul(a, k[B2]), _mul(g, k[OMB2]))
        elif opt == RMSPROP:
            a = _add(_mul(a, k[B1]), _mul(_mul(g, g), k[OMB1]))
            p = _add(p, _mul(_div(g, _add(_sqrt(a), k[EPS])), k[UPD_MUL]))
        else:  # ADAGRAD
            a = _add(a, _mul(g, g))
            p = _add(p, _mul(_div(g, _add(_sqrt(a), k[EPS])), k[NEG_LR]))
        return p, a, b, d
    return rule


@cuda.jit(device=True, inline=True)
def _bucket(v, amc, r, tail, shift, S, cell, bnd):
    """Cell-plan search (workbench/optim/_gpu_plan.py): pos = cell[bits(s) >> shift], then S steps.
    Inlined at the IR level, so a constant S (the fast path) unrolls the search."""
    if tail:
        s = _div(v, amc)
    else:
        s = _mul(v, r)
    if not (s >= -ONE):  # also NaN: keeps the key in range
        s = -ONE
    if s > ONE:
        s = ONE
    pos = int32(cell[uint32((_float_as_int(s) & 0xFFFFFFFF) >> shift)])
    for t in range(S):
        step = 1 << (S - 1 - t)
        if s > bnd[uint32(pos + step - 1)]:
            pos += step
    return pos


CELLS = 384 << 4
NB = 256 + 8

@cuda.jit(device=True, inline=True)
def _lo(w):
    return _int_as_float(int32(w & uint64(0xFFFFFFFF)))


@cuda.jit(device=True, inline=True)
def _hi(w):
    return _int_as_float(int32(w >> uint64(32)))


@cuda.jit(device=True, inline=True)
def _pack2(x, y):
    return uint64(_float_as_int(x) & 0xFFFFFFFF) | (uint64(_float_as_int(y) & 0xFFFFFFFF) << uint64(32))


def _bounds() -> dict:
    """Launch bounds for the 8-bit kernel: KBIT_NUMBA_OPTIM_MINBLOCKS CTAs per SM (default 4: 64
    registers; 0 = none). H100, 2**27 params, kernel time with 0 / 3 / 4: Adam 2.13 / 2.16 / 1.70 ms,
    RMSprop 1.45 / 1.02 / 1.02, Momentum 0.92 in all three. Not under the simulator (no launch bounds)."""
    minb = int(os.environ.get("KBIT_NUMBA_OPTIM_MINBLOCKS", "4"))
    return {"launch_bounds": (THREADS, minb)} if minb > 0 and not config.ENABLE_CUDASIM else {}


def _make8(opt: int, fast: bool):
    """fast: identity bucket codes with S1 = 2, S2 = 3 (the adapter checks), as the production kernel's FAST."""
    rule = _make_rule(opt, True)
    HB = opt == ADEMAMIX
    HS2 = opt == ADAM or opt == ADEMAMIX

    @cuda.jit(device=True, inline=True)
    def enc1(v, amc, r, tail, shift, S, cell, bnd, codes):
        if fast:
            return _bucket(v, amc, r, tail, shift, 2, cell, bnd)   # identity codes: code = bucket
        return codes[uint32(_bucket(v, amc, r, tail, shift, S, cell, bnd))]

    @cuda.jit(device=True, inline=True)
    def enc2(v, amc, r, tail, shift, S, cell, bnd, codes):
        if fast:
            return _bucket(v, amc, r, tail, shift, 3, cell, bnd)
        return codes[uint32(_bucket(v, amc, r, tail, shift, S, cell, bnd))]

    @cuda.jit(fastmath=False, **_bounds())
    def k8(first, skip, gw, pw, c1w, c1bw, c2w, ge, pe, c1e, c1be, c2e, nfull, a1, a1b, a2,
           t1, l1, f1, q1, m1, S1, t2, l2, f2, q2, m2, S2, n, nblocks, k):
        """Blocks < nfull: 8-byte words of grad/param (gw, pw) and 4-byte words of codes (c*w), lane l
        owning elements 4l..4l+3 and 128+4l..128+4l+3 (as cuda_src/optim.cu); later blocks (the tail, or
        every block of a misaligned array): the element views g/p/c*e, which start at element 256 nfull."""
        s_t1 = cuda.shared.array(256, float32)
        s_l1 = cuda.shared.array(CELLS, uint8)
        s_f1 = cuda.shared.array(NB, float32)
        s_q1 = cuda.shared.array(257, int32)
        s_t2 = cuda.shared.array(256, float32)
        s_l2 = cuda.shared.array(CELLS, uint8)
        s_f2 = cuda.shared.array(NB, float32)
        s_q2 = cuda.shared.array(257, int32)
        s_m1 = cuda.shared.array(THREADS, int32)   # block absmax as |x| bits (simulator's group max)
        s_mb = cuda.shared.array(THREADS, int32)
        s_m2 = cuda.shared.array(THREADS, int32)
        s_w = cuda.shared.array((2, 1), float32)   # _group_max's cross-warp slots (unused: G = 32)
        tid = cuda.threadIdx.x
        s_t1[tid] = t1[tid]
        if HS2:
            s_t2[tid] = t2[tid]
        i = tid
        while i < NB:
            s_f1[i] = f1[i]
            if HS2:
                s_f2[i] = f2[i]
            if i < 257:
                s_q1[i] = q1[i]
                if HS2:
                    s_q2[i] = q2[i]
            i += THREADS
        i = tid
        while i < (384 << m1):
            s_l1[i] = l1[i]
            i += THREADS
        if HS2:
            i = tid
            while i < (384 << m2):
                s_l2[i] = l2[i]
                i += THREADS
        cuda.syncthreads()
        sh1 = 23 - m1
        sh2 = 23 - m2
        warp = tid // 32
        lane = tid % 32
        plo = ZERO
        va = cuda.local.array(8, float32)
        vb = cuda.local.array(8, float32)
        vd = cuda.local.array(8, float32)
        base = nfull * 256
        per_it = cuda.gridDim.x * WARPS
        nit = (nblocks + per_it - 1) // per_it
        for it in range(nit):
            blk = (it * cuda.gridDim.x + cuda.blockIdx.x) * WARPS + warp
            mx1 = int32(0)                  # block absmax as |x| bits: NaN-propagating integer max
            mxb = int32(0)
            mx2 = int32(0)
            start = blk * 256
            full = blk < nfull
            cnt = 0
            if blk < nblocks:
                cnt = min(256, n - start)
                am1 = a1[uint64(blk)]
                amb = ZERO
                am2 = ZERO
                if HB:
                    amb = a1b[uint64(blk)]
                if HS2:
                    am2 = a2[uint64(blk)]
                for h in range(2):                  # element j = 4h + q is 128h + 4 lane + q
                    w1 = uint64(0)
                    wb = uint64(0)
                    w2 = uint64(0)
                    wg = uint64(0)
                    wp = uint64(0)
                    wi = 0
                    if full:
                        cw = blk * 64 + 32 * h + lane
                        w1 = uint64(c1w[uint64(cw)])
                        if HB:
                            wb = uint64(c1bw[uint64(cw)])
                        if HS2:
                            w2 = uint64(c2w[uint64(cw)])
                    for q in range(4):
                        j = 4 * h + q
                        e = 128 * h + 4 * lane + q
                        if full:
                            if q % 2 == 0:
                                wi = blk * 128 + 64 * h + 2 * lane + q // 2
                                wg = uint64(gw[uint64(wi)])
                                wp = uint64(pw[uint64(wi)])
                                gv = _lo(wg)
                                pv = _lo(wp)
                            else:
                                gv = _hi(wg)
                                pv = _hi(wp)
                            sh = uint64(8 * q)
                            i1 = (w1 >> sh) & uint64(255)
                            ib = (wb >> sh) & uint64(255)
                            i2 = (w2 >> sh) & uint64(255)
                        elif e < cnt:
                            i = uint64(start - base + e)
                            gv = ge[i]
                            pv = pe[i]
                            i1 = uint64(c1e[i])
                            ib = uint64(c1be[i]) if HB else uint64(0)
                            i2 = uint64(c2e[i]) if HS2 else uint64(0)
                        else:
                            continue
                        a = _mul(s_t1[i1], am1)
                        b = ZERO
                        d = ZERO
                        if HB:
                            b = _mul(s_t1[ib], amb)
                        if HS2:
                            d = _mul(s_t2[i2], am2)
                        if not (skip and gv == ZERO):
                            pv, a, b, d = rule(first, gv, pv, a, b, d, k)
                        # the parameter is final here: store it now, not after the block max (registers)
                        if full:
                            if q % 2 == 1:
                                pw[uint64(wi)] = _pack2(plo, pv)
                            else:
                                plo = pv
                        else:
                            pe[uint64(start - base + e)] = pv
                        va[j] = a
                        vb[j] = b
                        vd[j] = d
                        x = int32(_float_as_int(a) & 0x7FFFFFFF)
                        if x > mx1:
                            mx1 = x
                        x = int32(_float_as_int(b) & 0x7FFFFFFF)
                        if x > mxb:
                            mxb = x
                        x = int32(_float_as_int(d) & 0x7FFFFFFF)
                        if x > mx2:
                            mx2 = x
            mx1 = _group_max(mx1, 32, tid, s_m1, s_w, 0)
            if HB:
                mxb = _group_max(mxb, 32, tid, s_mb, s_w, 0)
            if HS2:
                mx2 = _group_max(mx2, 32, tid, s_m2, s_w, 0)
            if blk < nblocks:
                tail = cnt < 256
                f1 = _int_as_float(mx1)
                fb = _int_as_float(mxb)
                f2 = _int_as_float(mx2)
                amc1 = TINY if f1 < TINY else f1   # max(absmax, 1e-38), keeping NaN
                amcb = TINY if fb < TINY else fb
                amc2 = TINY if f2 < TINY else f2
                r1 = _div(ONE, amc1)
                rb = _div(ONE, amcb)
                r2 = _div(ONE, amc2)
                bad1 = mx1 >= EXPB              # NaN or Inf absmax (warp-uniform)
                badb = mxb >= EXPB
                bad2 = mx2 >= EXPB
                zc1 = 0
                nc1 = 0
                zc2 = 0
                nc2 = 0
                if bad1 or badb or bad2:        # the reference's codes: 0.0's, and NaN's (the last bucket's)
                    zc1 = enc1(ZERO, ONE, ONE, False, sh1, S1, s_l1, s_f1, s_q1)
                    nc1 = 255 if fast else s_q1[256]
                    if HS2:
                        zc2 = enc2(ZERO, ONE, ONE, False, sh2, S2, s_l2, s_f2, s_q2)
                        nc2 = 255 if fast else s_q2[256]
                for h in range(2):                  # requantize; full blocks: codes packed into words
                    w1 = uint64(0)
                    wb = uint64(0)
                    w2 = uint64(0)
                    for q in range(4):
                        j = 4 * h + q
                        e = 128 * h + 4 * lane + q
                        if full or e < cnt:
                            if bad1:
                                i1 = nc1 if (mx1 > EXPB or (_float_as_int(va[j]) & 0x7FFFFFFF) >= EXPB) else zc1
                            else:
                                i1 = enc1(va[j], amc1, r1, tail, sh1, S1, s_l1, s_f1, s_q1)
                            ib = int32(0)
                            i2 = int32(0)
                            if HB:
                                if badb:
                                    ib = nc1 if (mxb > EXPB or (_float_as_int(vb[j]) & 0x7FFFFFFF) >= EXPB) else zc1
                                else:
                                    ib = enc1(vb[j], amcb, rb, tail, sh1, S1, s_l1, s_f1, s_q1)
                            if HS2:
                                if bad2:
                                    i2 = nc2 if (mx2 > EXPB or (_float_as_int(vd[j]) & 0x7FFFFFFF) >= EXPB) else zc2
                                else:
                                    i2 = enc2(vd[j], amc2, r2, tail, sh2, S2, s_l2, s_f2, s_q2)
                            if full:
                                sh = uint64(8 * q)
                                w1 |= uint64(i1) << sh
                                wb |= uint64(ib) << sh
                                w2 |= uint64(i2) << sh
                            else:
                                i = uint64(start - base + e)
                                c1e[i] = i1
                                if HB:
                                    c1be[i] = ib
                                if HS2:
                                    c2e[i] = i2
                    if full:
                        cw = blk * 64 + 32 * h + lane
                        c1w[uint64(cw)] = w1
                        if HB:
                            c1bw[uint64(cw)] = wb
                        if HS2:
                            c2w[uint64(cw)] = w2
                if lane == 0:
                    a1[uint64(blk)] = amc1 if tail else f1
                    if HB:
                        a1b[uint64(blk)] = amcb if tail else fb
                    if HS2:
                        a2[uint64(blk)] = amc2 if tail else f2
    return k8


def _make32(opt: int):
    rule = _make_rule(opt, False)
    HB = opt == ADEMAMIX
    HS2 = opt == ADAM or opt == ADEMAMIX

    @cuda.jit(fastmath=False)
    def k32(first, skip, g, p, s1, m2, s2, n, k):
        i = cuda.grid(1)
        stride = cuda.gridsize(1)
        while i < n:
            gv = g[i]
            if not (skip and gv == ZERO):
                b = ZERO
                d = ZERO
                if HB:
                    b = m2[i]
                if HS2:
                    d = s2[i]
                pv, a, b, d = rule(first, gv, p[i], s1[i], b, d, k)
                p[i] = pv
                s1[i] = a
                if HB:
                    m2[i] = b
                if HS2:
                    s2[i] = d
            i += stride
    return k32


def _make_norm(opt: int):
    @cuda.jit(fastmath=False)
    def knorm(first, g, p, s1, s2, n, k, out):
        s_acc = cuda.shared.array(THREADS, float64)
        tid = cuda.threadIdx.x
        i = cuda.grid(1)
        stride = cuda.gridsize(1)
        acc = 0.0
        while i < n:
            gv = _mul(g[i], k[GS])
            if opt == ADAM:
                a = _add(_mul(s1[i], k[B1]), _mul(gv, k[OMB1]))
                d = _add(_mul(s2[i], k[B2]), _mul(_mul(gv, gv), k[OMB2]))
                u = _div(a, _add(_sqrt(d), k[EPS_C2]))
            else:
                if k[WD] > ZERO:
                    gv = _add(gv, _mul(p[i], k[WD]))
                if opt == MOMENTUM:
                    if first:
                        u = gv
                    else:
                        u = _add(_mul(s1[i], k[B1]), gv)
                else:
                    a = _add(_mul(s1[i], k[B1]), _mul(_mul(gv, gv), k[OMB1]))
                    u = _div(gv, _add(_sqrt(a), k[EPS]))
            acc += float64(u) * float64(u)
            i += stride
        s_acc[tid] = acc
        cuda.syncthreads()
        off = THREADS // 2
        while off > 0:
            if tid < off:
                s_acc[tid] += s_acc[tid + off]
            cuda.syncthreads()
            off //= 2
        if tid == 0:
            out[cuda.blockIdx.x] = s_acc[0]
    return knorm


_cache: dict = {}


def kernel(kind: str, opt: int, fast: bool = False):
    """The compiled kernel for kind in '8bit'/'32bit'/'norm' and optimizer ``opt``; fast: the 8-bit
    kernel's identity-code path (see _make8)."""
    key = (kind, opt, fast)
    if key not in _cache:
        _cache[key] = _make8(opt, fast) if kind == "8bit" else {"32bit": _make32, "norm": _make_norm}[kind](opt)
    return _cache[key]
