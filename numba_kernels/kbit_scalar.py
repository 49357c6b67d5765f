"""The k-bit scale formats' scalar helpers, one source for numba_kernels/cpu/kbit.py (njit) and
numba_kernels/cuda/kbit.py (CUDA device functions, also under the simulator).

:func:`scale_helpers` compiles them with the backend's decorator over its four primitives (the
float32's bit pattern, the float32 of a bit pattern, the bit length of an integer below 2**31, round
half to even). Exact float32, as workbench/backends/reference/kbit.py: floor(log2) from the float's
bits (subnormals included), scaling by powers of two only, saturation at the largest pattern (Inf
too). Scale format ids: 0 fp32, 1 fp16, 2 bf16, 3 e4m4, 4 e8m0, 5 e4m3.
"""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
from numba import float32, int64

EPS = np.float32(1e-8)     # the smallest divisor (reference.kbit.divisors)


def scale_helpers(jit, float_bits, bits_float, bit_length, rint) -> SimpleNamespace:
    """floor_log2, pow2f, encode_one, decode_one, divisor compiled with ``jit``."""

    @jit
    def floor_log2(a):
        """floor(log2 a) for a float32 a > 0, from its bits (subnormals included)."""
        u = float_bits(a) & 0x7FFFFFFF
        ex = int64(u >> 23)
        if ex > 0:
            return ex - 127
        return int64(bit_length(u)) - 150

    @jit
    def pow2f(e):
        """2**e as float32, e in -149..128 (subnormal below -126; 128 gives Inf)."""
        if e >= -126:
            return bits_float((e + 127) << 23)
        return bits_float(1 << (e + 149))

    @jit
    def minifloat_bits(a, M, bias, emin, maxbits):
        """a >= 0 rounded to nearest even in a format with M mantissa bits, exponent bias ``bias``, smallest
        normal exponent ``emin``; saturates at bit pattern ``maxbits`` (Inf too)."""
        if a == 0:
            return int64(0)
        if not (a <= float32(3.4028234663852886e38)):
            return int64(maxbits)
        e = floor_log2(a)
        eq = e if e > emin else int64(emin)
        r = rint(float32(a) / pow2f(eq - M))     # exact: a scaled by a power of two, < 2**(M+1)
        ni = int64(r)
        bits = (((eq + bias - 1) << M) + ni) if e >= emin else ni
        return bits if bits < maxbits else int64(maxbits)

    @jit
    def minifloat_value(bits, M, bias, emin):
        ex = bits >> M
        mant = bits & ((1 << M) - 1)
        if ex == 0:
            return float32(mant) * pow2f(emin - M)
        return float32(mant + (1 << M)) * pow2f(ex - bias - M)

    @jit
    def e4m4_bits(a):
        """bitsandbytes' encode_absmax_e4m4 (bias 11, no mantissa carry), saturating at 0xFF."""
        if a == 0:
            return int64(0)
        if not (a <= float32(3.4028234663852886e38)):
            return int64(0xFF)
        e = floor_log2(a)
        if e + 11 <= 0:
            m = int64(rint(float32(a) * float32(16384.0)))
            return m if m < 15 else int64(15)
        if e + 11 > 15:
            return int64(0xFF)
        m = int64(rint((float32(a) / pow2f(e) - float32(1.0)) * float32(16.0)))
        m = m if m < 15 else int64(15)
        return ((e + 11) << 4) | m

    @jit
    def e4m4_value(b):
        e = b >> 4
        m = b & 15
        if e == 0:
            return float32(m) * pow2f(-14)
        return float32(16 + m) * pow2f(e - 15)

    @jit
    def encode_one(a, fmt, emax, ts):
        """The stored scale's bit pattern for absmax a >= 0 (emax: e8m0's element emax; ts: e4m3's tensor scale)."""
        if fmt == 0:
            return int64(float_bits(a))
        if fmt == 1:
            return minifloat_bits(a, 10, 15, -14, 0x7BFF)
        if fmt == 2:
            return minifloat_bits(a, 7, 127, -126, 0x7F7F)
        if fmt == 3:
            return e4m4_bits(a)
        if fmt == 4:
            if a == 0:
                return int64(0)
            if not (a <= float32(3.4028234663852886e38)):
                return int64(254)
            E = floor_log2(a) - emax + 127
            return int64(0) if E < 0 else (int64(254) if E > 254 else E)
        return minifloat_bits(float32(a) / ts, 3, 7, -6, 0x7E)

    @jit
    def decode_one(bits, fmt, ts):
        """The float32 value D of a stored scale's bit pattern."""
        if fmt == 0:
            return bits_float(bits)
        if fmt == 1:
            return minifloat_value(bits, 10, 15, -14)
        if fmt == 2:
            return minifloat_value(bits, 7, 127, -126)
        if fmt == 3:
            return e4m4_value(bits)
        if fmt == 4:
            return pow2f(bits - 127)
        return minifloat_value(bits, 3, 7, -6) * ts

    @jit
    def divisor(a, d, fmt, codes_decoded):
        """The codes' divisor q of a block with absmax a and decoded scale d: d for e8m0, else
        max(d if codes_decoded else a, EPS)."""
        if fmt == 4:
            return d
        base = d if codes_decoded else a
        return base if base > EPS else EPS

    return SimpleNamespace(floor_log2=floor_log2, pow2f=pow2f, encode_one=encode_one, decode_one=decode_one,
                           divisor=divisor)
