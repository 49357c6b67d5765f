"""Warp collectives and memory accesses Numba does not emit by itself, for the Numba CUDA kernels, with their
simulator twins.

The simulator has no warp shuffles, ballots or warp barriers: their twins go through a shared (2, THREADS) int32
buffer with a barrier each (``_syncwarp``: a CTA barrier), so every thread of the CTA must make the same calls
(no early exits around them). The 16-byte loads and stores are single vector accesses on the GPU, ``_ld_byte`` a
float32 load at a byte offset (no index scaling: the offset can come straight from a byte permute), ``_ld8_mad`` a
uint64 load at a 32-bit multiply-add's byte offset, ``_prefetch_l2`` an L2 prefetch of an element's line; plain
element accesses (and no prefetch) in the simulator. ``_prmt`` is the byte permute (``prmt.b32``, selector nibbles
0..7), ``_vmax_u16x2`` the per-halfword unsigned max (``max.u16x2``).
"""
from __future__ import annotations

from numba import config, cuda, int32, uint32

FULL = 0xFFFFFFFF

if config.ENABLE_CUDASIM:
    # Twins of the warp collectives: one barrier each, on a shared (2, THREADS) buffer used alternately (ph),
    # so no thread overwrites a slot another may still read (between two uses of one half lies a barrier).
    @cuda.jit(device=True)
    def _ballot(pred, s2, ph, tid):
        s2[ph, tid] = 1 if pred else 0
        cuda.syncthreads()
        base = tid & ~31
        r = 0
        for j in range(32):
            r |= int(s2[ph, base + j]) << j
        return r

    @cuda.jit(device=True)
    def _shfl(v, src, s2, ph, tid):
        s2[ph, tid] = v
        cuda.syncthreads()
        return s2[ph, (tid & ~31) + src]

    @cuda.jit(device=True)
    def _xor(v, off, s2, ph, tid):
        s2[ph, tid] = v
        cuda.syncthreads()
        return s2[ph, tid ^ off]

    @cuda.jit(device=True)
    def _seg_max(v, G, s2, ph, tid):
        """max of v over the G consecutive lanes (G = 16 or 32) holding tid."""
        s2[ph, tid] = v
        cuda.syncthreads()
        base = tid & ~(G - 1)
        r = s2[ph, base]
        for j in range(1, G):
            r = max(r, s2[ph, base + j])
        return r

    @cuda.jit(device=True)
    def _warp_atomic_max(v, gmax, tid):
        if v > 0:
            cuda.atomic.max(gmax, 0, v)
else:
    @cuda.jit(device=True, inline=True)
    def _ballot(pred, s2, ph, tid):
        return cuda.ballot_sync(FULL, pred)

    @cuda.jit(device=True, inline=True)
    def _shfl(v, src, s2, ph, tid):
        return cuda.shfl_sync(FULL, v, src)

    @cuda.jit(device=True, inline=True)
    def _xor(v, off, s2, ph, tid):
        return cuda.shfl_xor_sync(FULL, v, off)

    @cuda.jit(device=True, inline=True)
    def _seg_max(v, G, s2, ph, tid):
        off = 1
        while off < G:
            o = cuda.shfl_xor_sync(FULL, v, off)
            if o > v:
                v = o
            off *= 2
        return v

    @cuda.jit(device=True, inline=True)
    def _warp_atomic_max(v, gmax, tid):
        v = _seg_max(v, 32, v, 0, tid)
        if (tid & 31) == 0 and v > 0:
            cuda.atomic.max(gmax, 0, v)


if config.ENABLE_CUDASIM:
    def _st16(a, i, lo, hi):
        a[i] = lo
        a[i + 1] = hi

    def _ld16(a, i):
        return int(a[i]) & 0xFFFFFFFFFFFFFFFF, int(a[i + 1]) & 0xFFFFFFFFFFFFFFFF

    def _ld16f(a, i):
        return a[i], a[i + 1], a[i + 2], a[i + 3]

    def _ld_byte(a, off):
        return a[int(off) >> 2]

    def _prefetch_l2(a, i):
        pass

    def _ld8_mad(a, x, m, c):
        return a[((int(x) * int(m) + int(c)) & 0xFFFFFFFF) >> 3]

    def _vmax_u16x2(a, b):
        a, b = int(a) & 0xFFFFFFFF, int(b) & 0xFFFFFFFF
        return max(a & 0xFFFF, b & 0xFFFF) | max(a >> 16, b >> 16) << 16

    def _prmt(a, b, sel):
        x = (int(a) & 0xFFFFFFFF) | (int(b) & 0xFFFFFFFF) << 32
        return sum(((x >> (8 * ((int(sel) >> (4 * i)) & 7))) & 0xFF) << (8 * i) for i in range(4))

    @cuda.jit(device=True)
    def _syncwarp():
        cuda.syncthreads()
else:
    from llvmlite import ir as _ir
    from numba.cuda import libdevice
    from numba.core import types as _types
    from numba.core.extending import intrinsic as _intrinsic

    @_intrinsic
    def _st16(typingctx, a, i, lo, hi):
        """a[i], a[i + 1] = lo, hi as one 16-byte store (a: uint64 array, &a[i] 16-byte aligned)."""
        sig = _types.void(a, i, lo, hi)

        def codegen(context, builder, sig, args):
            aty = sig.args[0]
            ary = context.make_array(aty)(context, builder, args[0])
            idx = context.cast(builder, args[1], sig.args[1], _types.intp)
            ptr = builder.gep(ary.data, [idx])
            vt = _ir.VectorType(_ir.IntType(64), 2)
            v = _ir.Constant(vt, _ir.Undefined)
            v = builder.insert_element(v, context.cast(builder, args[2], sig.args[2], _types.uint64),
                                       _ir.Constant(_ir.IntType(32), 0))
            v = builder.insert_element(v, context.cast(builder, args[3], sig.args[3], _types.uint64),
                                       _ir.Constant(_ir.IntType(32), 1))
            st = builder.store(v, builder.bitcast(ptr, vt.as_pointer()))
            st.align = 16
            return context.get_dummy_value()

        return sig, codegen

    def _load16(elem, ir_elem, lanes: int, doc: str):
        """An intrinsic (a, i) -> the ``lanes`` elements from a[i] on as one 16-byte load, typed ``elem``."""
        @_intrinsic
        def load(typingctx, a, i):
            rt = _types.UniTuple(elem, lanes)
            sig = rt(a, i)

            def codegen(context, builder, sig, args):
                ary = context.make_array(sig.args[0])(context, builder, args[0])
                idx = context.cast(builder, args[1], sig.args[1], _types.intp)
                vt = _ir.VectorType(ir_elem, lanes)
                v = builder.load(builder.bitcast(builder.gep(ary.data, [idx]), vt.as_pointer()), align=16)
                parts = [builder.extract_element(v, _ir.Constant(_ir.IntType(32), j)) for j in range(lanes)]
                return context.make_tuple(builder, rt, parts)

            return sig, codegen
        load.__doc__ = doc
        return load

    @_intrinsic
    def _prefetch_l2(typingctx, a, i):
        """``prefetch.global.L2`` of the line holding a[i]: asks L2 for it, no register waits on it."""
        sig = _types.void(a, i)

        def codegen(context, builder, sig, args):
            ary = context.make_array(sig.args[0])(context, builder, args[0])
            idx = context.cast(builder, args[1], sig.args[1], _types.intp)
            addr = builder.ptrtoint(builder.gep(ary.data, [idx]), _ir.IntType(64))
            asm = _ir.InlineAsm(_ir.FunctionType(_ir.VoidType(), [_ir.IntType(64)]), "prefetch.global.L2 [$0];",
                                "l", side_effect=True)
            builder.call(asm, [addr])
            return context.get_dummy_value()

        return sig, codegen

    _ld16 = _load16(_types.uint64, _ir.IntType(64), 2,
                    "(a[i], a[i + 1]) as uint64 (a: int64/uint64 array, &a[i] 16-byte aligned)")
    _ld16f = _load16(_types.float32, _ir.FloatType(), 4,
                     "(a[i], ..., a[i + 3]) (a: float32 array, &a[i] 16-byte aligned)")

    @_intrinsic
    def _ld_byte(typingctx, a, off):
        """The float32 at byte offset ``off`` (unsigned 32-bit, a multiple of 4) of float32 array a."""
        sig = _types.float32(a, off)

        def codegen(context, builder, sig, args):
            ary = context.make_array(sig.args[0])(context, builder, args[0])
            o = builder.zext(builder.trunc(args[1], _ir.IntType(32)), _ir.IntType(64)) \
                if args[1].type.width > 32 else builder.zext(args[1], _ir.IntType(64))
            p = builder.gep(builder.bitcast(ary.data, _ir.IntType(8).as_pointer()), [o])
            return builder.load(builder.bitcast(p, _ir.FloatType().as_pointer()), align=4)

        return sig, codegen

    @_intrinsic
    def _ld8_mad(typingctx, a, x, m, c):
        """The uint64 at byte offset x m + c (32-bit unsigned arithmetic, wrapping; a multiple of 8) of uint64
        array a: one multiply-add in 32 bits (Numba's own integer arithmetic would widen it to 64)."""
        sig = _types.uint64(a, x, m, c)

        def codegen(context, builder, sig, args):
            ary = context.make_array(sig.args[0])(context, builder, args[0])
            i32 = _ir.IntType(32)
            x32, m32, c32 = (builder.trunc(v, i32) if v.type.width > 32 else v for v in args[1:])
            o = builder.zext(builder.add(builder.mul(x32, m32), c32), _ir.IntType(64))
            p = builder.gep(builder.bitcast(ary.data, _ir.IntType(8).as_pointer()), [o])
            return builder.load(builder.bitcast(p, _ir.IntType(64).as_pointer()), align=8)

        return sig, codegen

    @_intrinsic
    def _vmax_u16x2(typingctx, a, b):
        """The two 16-bit halves' unsigned maxima, as uint32 (``max.u16x2``: one instruction, where Numba's own
        code takes two ANDs and two maxima)."""
        sig = _types.uint32(a, b)

        def codegen(context, builder, sig, args):
            i32 = _ir.IntType(32)
            a32, b32 = (builder.trunc(v, i32) if v.type.width > 32 else builder.zext(v, i32) if v.type.width < 32
                        else v for v in args)
            return builder.asm(_ir.FunctionType(i32, [i32, i32]), "max.u16x2 $0, $1, $2;", "=r,r,r", [a32, b32],
                               side_effect=False)

        return sig, codegen

    @cuda.jit(device=True, inline=True)
    def _prmt(a, b, sel):
        """Byte i of the result: byte (sel >> 4i) & 7 of b:a (a the low word), as uint32."""
        return uint32(libdevice.byte_perm(int32(a), int32(b), int32(sel)))

    @cuda.jit(device=True, inline=True)
    def _syncwarp():
        cuda.syncwarp(FULL)
