# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""Cython/OpenMP CPU kernel: fused 4-bit dequantize + GEMV/small GEMM (any 16-entry codebook).

Same rules and the same accumulation order as numba_kernels/cpu/matmul.py (workbench/backends/reference/matmul.py):
per quantization block the 16 weight values table[j] * s rounded to A's dtype; element k of a row into lane
k % 8 of 8 float32 partial sums (increasing k per lane, separate multiply and add: -ffp-contract=off); lanes
combined ((l0 + l4) + (l2 + l6)) + ((l1 + l5) + (l3 + l7)); bias added in float32. Output float32 (the adapter
rounds it once to A's dtype), so this kernel and the Numba one are equal bit for bit.

Hot path (AVX2, chosen at run time; M = 1, K % 8 == 0): 8 codes per step from one 32-bit word (broadcast,
per-lane variable shift, mask), the 16-entry table looked up in registers (two vpermps + a blend on bit 3),
one ymm accumulator holding the 8 lanes. Otherwise a scalar path with the same lanes.
"""
from cython.parallel cimport prange
from libc.stdint cimport uint8_t, int64_t

cdef extern from *:
    """
    #include <stdint.h>
    #include <string.h>
    #ifdef _OPENMP
    #include <omp.h>
    #endif
    #if defined(__x86_64__) || defined(__i386__)
    #include <immintrin.h>
    #define KBM_X86 1
    #else
    #define KBM_X86 0
    #endif

    static inline float kbm_round_bf16(float v) {
        uint32_t u; memcpy(&u, &v, 4);
        if ((u & 0x7fffffffu) > 0x7f800000u) { u |= 0x00400000u; }          /* NaN stays NaN (quiet) */
        else { u += 0x7fffu + ((u >> 16) & 1u); }                              /* round to nearest even */
        u &= 0xffff0000u;
        float r; memcpy(&r, &u, 4); return r;
    }
    #if KBM_X86
    __attribute__((target("f16c")))
    static inline float kbm_round_f16_hw(float v) {
        __m128 x = _mm_set_ss(v);
        return _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtps_ph(x, _MM_FROUND_TO_NEAREST_INT)));
    }
    #endif
    /* kind: 0 float32, 1 bfloat16, 2 float16 */
    static inline void kbm_block_lut(const float* table, float s, int kind, float* lut) {
        for (int j = 0; j < 16; ++j) {
            float v = table[j] * s;
            if (kind == 1) v = kbm_round_bf16(v);
    #if KBM_X86
            else if (kind == 2) v = kbm_round_f16_hw(v);
    #endif
            lut[j] = v;
        }
    }
    /* rule 1 in the kernel: the block's scale, nested (a8 != NULL) or plain */
    static inline float kbm_scale(const float* s, const uint8_t* a8, const float* code2, float off, int64_t b) {
        if (a8 == NULL) return s[b];
        float p = code2[a8[b]] * s[b >> 8];
        return p + off;
    }
    static inline float kbm_combine(const float* l) {
        return ((l[0] + l[4]) + (l[2] + l[6])) + ((l[1] + l[5]) + (l[3] + l[7]));
    }

    /* generic: any M, K, alignment, bias */
    static void kbm_row_scalar(const float* a, int64_t M, int64_t N, int64_t K, const uint8_t* packed,
                               const float* s, const float* table, int64_t bs, int kind, const float* bias,
                               int has_bias, int64_t n, float* out) {
        float lut[16];
        float acc[8 * 8];
        for (int64_t m0 = 0; m0 < M; m0 += 8) {
            int64_t mm = M - m0 < 8 ? M - m0 : 8;
            memset(acc, 0, sizeof(acc));
            int64_t i0 = n * K, i = i0, end = i0 + K;
            while (i < end) {
                int64_t b = i / bs;
                int64_t seg = (b + 1) * bs < end ? (b + 1) * bs : end;
                kbm_block_lut(table, s[b], kind, lut);
                for (int64_t j = i; j < seg; ++j) {
                    uint8_t byte = packed[j >> 1];
                    float w = lut[(j & 1) ? (byte & 15) : (byte >> 4)];
                    int64_t k = j - i0;
                    for (int64_t m = 0; m < mm; ++m) {
                        float p = w * a[(m0 + m) * K + k];
                        acc[m * 8 + (k & 7)] = acc[m * 8 + (k & 7)] + p;
                    }
                }
                i = seg;
            }
            for (int64_t m = 0; m < mm; ++m) {
                float y = kbm_combine(acc + m * 8);
                if (has_bias) y = y + bias[n];
                out[(m0 + m) * N + n] = y;
            }
        }
    }

    #if KBM_X86
    /* the 8 products rounded to the kind's precision, exactly as kbm_round_bf16 / F16C do one at a time */
    __attribute__((target("avx2,f16c")))
    static inline __m256 kbm_round8(__m256 v, int kind) {
        if (kind == 1) {
            __m256i u = _mm256_castps_si256(v);
            __m256i abs = _mm256_and_si256(u, _mm256_set1_epi32(0x7fffffff));
            __m256i isnan = _mm256_cmpgt_epi32(abs, _mm256_set1_epi32(0x7f800000));
            __m256i r = _mm256_add_epi32(u, _mm256_add_epi32(_mm256_set1_epi32(0x7fff),
                                         _mm256_and_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(1))));
            __m256i q = _mm256_or_si256(u, _mm256_set1_epi32(0x00400000));
            r = _mm256_blendv_epi8(r, q, isnan);
            return _mm256_castsi256_ps(_mm256_and_si256(r, _mm256_set1_epi32((int)0xffff0000u)));
        }
        if (kind == 2) return _mm256_cvtph_ps(_mm256_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT));
        return v;
    }
    __attribute__((target("avx2,f16c")))
    static float kbm_row_avx2(const float* a, int64_t K, const uint8_t* packed, const float* s, const uint8_t* a8,
                              const float* code2, float off, const float* table, int64_t bs, int kind, int64_t n) {
        const __m256 t_lo = _mm256_loadu_ps(table), t_hi = _mm256_loadu_ps(table + 8);
        const __m256i shifts = _mm256_setr_epi32(4, 0, 12, 8, 20, 16, 28, 24);
        const __m256i nib = _mm256_set1_epi32(15);
        __m256 acc = _mm256_setzero_ps();
        int64_t i0 = n * K, i = i0, end = i0 + K;
        while (i < end) {
            int64_t b = i / bs;
            int64_t seg = (b + 1) * bs < end ? (b + 1) * bs : end;
            const __m256 sb = _mm256_set1_ps(kbm_scale(s, a8, code2, off, b));
            __m256 lo = kbm_round8(_mm256_mul_ps(t_lo, sb), kind);
            __m256 hi = kbm_round8(_mm256_mul_ps(t_hi, sb), kind);
            for (int64_t j = i; j < seg; j += 8) {
                uint32_t word; memcpy(&word, packed + (j >> 1), 4);
                __m256i idx = _mm256_and_si256(_mm256_srlv_epi32(_mm256_set1_epi32((int)word), shifts), nib);
                __m256 w = _mm256_blendv_ps(_mm256_permutevar8x32_ps(lo, idx), _mm256_permutevar8x32_ps(hi, idx),
                                            _mm256_castsi256_ps(_mm256_slli_epi32(idx, 28)));
                acc = _mm256_add_ps(acc, _mm256_mul_ps(w, _mm256_loadu_ps(a + (j - i0))));
            }
            i = seg;
        }
        float l[8]; _mm256_storeu_ps(l, acc);
        return kbm_combine(l);
    }
    static int kbm_has_avx2(void) { __builtin_cpu_init(); return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("f16c"); }
    #else
    static float kbm_row_avx2(const float* a, int64_t K, const uint8_t* packed, const float* s, const uint8_t* a8,
                              const float* code2, float off, const float* table, int64_t bs, int kind, int64_t n) { return 0.0f; }
    static int kbm_has_avx2(void) { return 0; }
    #endif
    """
    void kbm_row_scalar(const float* a, int64_t M, int64_t N, int64_t K, const uint8_t* packed, const float* s,
                        const float* table, int64_t bs, int kind, const float* bias, int has_bias, int64_t n,
                        float* out) nogil
    float kbm_row_avx2(const float* a, int64_t K, const uint8_t* packed, const float* s, const uint8_t* a8,
                       const float* code2, float off, const float* table, int64_t bs, int kind, int64_t n) nogil
    int kbm_has_avx2() nogil

HAS_AVX2 = bool(kbm_has_avx2())


def gemv_4bit_nested(const float[::1] a, int64_t N, int64_t K, const uint8_t[::1] packed,
                     const float[::1] absmax, const uint8_t[::1] absmax_8bit, const float[::1] code2, float offset,
                     bint nested, const float[::1] table, int64_t blocksize, int kind, const float[::1] bias,
                     bint has_bias, float[::1] out):
    """M = 1, K % 8 == 0, AVX2 (check HAS_AVX2): the hot path with the nested absmax decoded per block in the
    kernel (absmax = the nested float32 absmax when ``nested``); same order and result as gemm_4bit_fused."""
    cdef int64_t n
    cdef float y
    cdef const uint8_t* a8 = &absmax_8bit[0] if nested else NULL
    for n in prange(N, nogil=True, schedule="static"):
        y = kbm_row_avx2(&a[0], K, &packed[0], &absmax[0], a8, &code2[0], offset, &table[0], blocksize, kind, n)
        if has_bias:
            y = y + bias[n]
        out[n] = y


def gemm_4bit_fused(const float[::1] a, int64_t M, int64_t N, int64_t K, const uint8_t[::1] packed,
                    const float[::1] absmax, const float[::1] table, int64_t blocksize, int kind,
                    const float[::1] bias, bint has_bias, float[::1] out, bint allow_simd=True):
    """out[m * N + n] = float32(sum) (+ bias[n]); a: float32[M * K]; the caller rounds out to A's dtype."""
    cdef int64_t n
    cdef bint simd = allow_simd and HAS_AVX2 and M == 1 and K % 8 == 0
    cdef float y
    if simd:
        for n in prange(N, nogil=True, schedule="static"):
            y = kbm_row_avx2(&a[0], K, &packed[0], &absmax[0], NULL, &table[0], 0.0, &table[0], blocksize, kind, n)
            if has_bias:
                y = y + bias[n]
            out[n] = y
    else:
        for n in prange(N, nogil=True, schedule="static"):
            kbm_row_scalar(&a[0], M, N, K, &packed[0], &absmax[0], &table[0], blocksize, kind, &bias[0], has_bias,
                           n, &out[0])


def resolve_nested(const uint8_t[::1] absmax_8bit, const float[::1] absmax2, const float[::1] code, float offset,
                   float[::1] out):
    """Rule 1: out[b] = float32(code[q[b]] * absmax2[b // 256]) + offset (two roundings, no FMA)."""
    cdef int64_t b, nb = absmax_8bit.shape[0]
    cdef float p
    for b in prange(nb, nogil=True, schedule="static"):
        p = code[absmax_8bit[b]] * absmax2[b >> 8]
        out[b] = p + offset
