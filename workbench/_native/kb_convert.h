/* Exact float32 <-> bfloat16/float16 conversions shared by the Cython CPU kernels
   (quant_cpu.pyx, optim_cpu.pyx): round-to-nearest-even like torch's casts, NaN kept quiet. */
#ifndef KB_CONVERT_H
#define KB_CONVERT_H
#include <stdint.h>
#include <string.h>

static inline float kb_bits_f32(uint32_t u) { float f; memcpy(&f, &u, 4); return f; }
static inline uint32_t kb_f32_bits(float f) { uint32_t u; memcpy(&u, &f, 4); return u; }

static inline float kb_f16_to_f32(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16, exp = (h >> 10) & 0x1Fu, mant = h & 0x3FFu;
    if (exp == 0) { float v = (float)mant * 5.960464477539063e-08f; return sign ? -v : v; }
    if (exp == 31) return kb_bits_f32(sign | 0x7F800000u | (mant << 13));
    return kb_bits_f32(sign | ((exp + 112u) << 23) | (mant << 13));
}
static inline uint16_t kb_f32_to_bf16(float f) {
    uint32_t x = kb_f32_bits(f);
    if ((x & 0x7FFFFFFFu) > 0x7F800000u) return (uint16_t)((x >> 16) | 0x40u);
    return (uint16_t)((x + 0x7FFFu + ((x >> 16) & 1u)) >> 16);
}
static inline uint16_t kb_f32_to_f16(float f) {
    uint32_t x = kb_f32_bits(f), sign = (x >> 16) & 0x8000u, r, rem;
    x &= 0x7FFFFFFFu;
    if (x >= 0x7F800000u) return (uint16_t)(sign | (x > 0x7F800000u ? 0x7E00u : 0x7C00u));
    if (x >= 0x477FF000u) return (uint16_t)(sign | 0x7C00u);
    if (x < 0x38800000u) {
        if (x <= 0x33000000u) return (uint16_t)sign;
        uint32_t e = x >> 23, m = (x & 0x7FFFFFu) | 0x800000u, shift = 126u - e, half = 1u << (shift - 1u);
        r = m >> shift; rem = m & ((1u << shift) - 1u);
        if (rem > half || (rem == half && (r & 1u))) r += 1u;
        return (uint16_t)(sign | r);
    }
    r = (((x >> 23) - 112u) << 10) | ((x & 0x7FFFFFu) >> 13);
    rem = x & 0x1FFFu;
    if (rem > 0x1000u || (rem == 0x1000u && (r & 1u))) r += 1u;
    return (uint16_t)(sign | r);
}

#endif
