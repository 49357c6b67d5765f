# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""Cython/OpenMP CPU kernels: fused 4-bit dequantize + GEMV/small GEMM (any 16-entry codebook).

Two kernels exact on the weights (rule 2 of workbench/backends/reference/matmul.py: per quantization block the 16
values table[j] * s rounded to A's dtype), each with its own float32 order, and for bf16 an unscaled-lookup loop
(``matmul_cpu_unscaled.h``, included below: the codebook rounded to bf16, the block scale on each partial sum,
vdpbf16ps; held to error_bound_unscaled; ``set_unscaled``, ``KBIT_CPU_UNSCALED=0`` at import keeps rule 2):

* **byte planes** (``gemv_4bit_planes``; bf16/fp16 activations, M <= 32, K % 64 == 0, blocksize % 64 == 0,
  AVX2 + F16C + FMA): a 16-bit weight value is two bytes, so a block's 16 values become two 16-byte tables (low
  bytes, high bytes) and ``vpshufb`` looks up 32 codes per table per instruction; two byte unpacks and a shift or
  mask give 8 float32 weights per vector, about 28 vector instructions per 64 weights plus ~16 per block for the
  tables (the bf16 rounding is integer adds). The activations are permuted once per call into the order the
  weights come out (``unit_permutation``). Order: weight vector v (0..7) of each 64-element unit goes into
  accumulator v % 4 by fused multiply-add, units in increasing k; then (acc0 + acc1) + (acc2 + acc3) and the 8
  lanes ((l0 + l4) + (l2 + l6)) + ((l1 + l5) + (l3 + l7)). The FMA rounds like a multiply and an add: the product
  of two bf16 (8 + 8 significant bits) or two fp16 (11 + 11) values is exact in float32 (only products below
  2**-126, bf16 operands, differ, covered by the bound). M > 1 decodes each weight row once into a per-thread
  buffer and runs the same FMA sequence per activation row, so every output row equals the one-row call's (batch
  invariant). Held to the reference's ``error_bound`` (any float32 order). ~1.6x the lane kernel per core.
  **512-bit loop** (AVX-512 F/BW/VL/VBMI, K % 128 == 0): the same decoding on zmm vectors, two 64-weight units
  per step (the first unit's block table in 128-bit lanes 0-1, the second's in lanes 2-3, each plane built from
  the two blocks' rounded values by one two-source byte permute). Its own order: decoded vector v (0..7) of each
  128-weight pair into accumulator v by FMA, pairs in increasing k; then ((a0 + a1) + (a2 + a3)) + ((a4 + a5) +
  (a6 + a7)), lane l + lane l + 8, and the 8 lanes as above; the activations permuted per pair
  (``unit_permutation(kind, wide=True)``). ~1.45x the 256-bit loop per core (Zen 5, blocksize 64, L2-resident).
  Where the CPU has AVX512_BF16 it rounds a pair of bf16 tables with one vcvtne2ps2bf16 and builds the planes by
  one-source byte permutes (the same values; blocks whose products could be subnormal keep the integer adds):
  9-12 % off the call on an Intel Xeon at blocksize 64 (``set_bf16_round``). At blocksize 64 a chunk of blocks
  whose scales all take that rounding (fp16: always) runs with no test per step: 5-18 % off the kernel on a Zen 4
  (reports/matmul-cpu/gemv_bs64_chunks_ab_zen4/). With AVX512_BF16 and bf16 activations this loop's place is
  taken by the unscaled-lookup loop (its header has its order and guards): 1.3-1.5x at M = 1, 2.1x at M = 4 and
  2.5x at M = 16 on a Zen 4 (reports/matmul-cpu/unscaled_zen4/).
* **8 lanes** (``gemm_4bit_fused`` / ``gemv_4bit_nested``): the order of numba_kernels/cpu/matmul.py, element k of
  a row into lane k % 8 of 8 float32 partial sums (increasing k per lane, separate multiply and add), lanes
  combined as above, bias added in float32. Output float32 (the adapter rounds it once to A's dtype), so this
  kernel and the Numba one are equal bit for bit. Its AVX2 path (M = 1, K % 8 == 0): 8 codes per step from one
  32-bit word (broadcast, per-lane variable shift, mask), the 16-entry table in registers (two vpermps + a blend
  on bit 3), one ymm accumulator holding the 8 lanes. Otherwise a scalar path with the same lanes.

Rows are spread over OpenMP threads; the plane path hands them out in dynamic chunks so that a thread preempted
on a shared machine does not hold the others up.
"""
from cython.parallel cimport prange, parallel
from libc.stdint cimport uint8_t, uint16_t, int64_t
from libc.stdlib cimport malloc, free

import os

cdef extern from *:
    """
    #include <stdint.h>
    #include <string.h>
    #include <math.h>
    #include <float.h>
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
    /* 16-bit patterns <-> float32 for the byte-plane path (kind 1 bf16, 2 fp16; F16C's conversions are exact
       and round half to even) */
    static inline float kbm_widen(uint16_t h, int kind) {
        if (kind == 1) { uint32_t u = (uint32_t)h << 16; float r; memcpy(&r, &u, 4); return r; }
    #if KBM_X86
        return _cvtsh_ss(h);
    #else
        return 0.0f;
    #endif
    }
    static inline uint16_t kbm_narrow(float v, int kind) {
        if (kind == 1) { float r = kbm_round_bf16(v); uint32_t u; memcpy(&u, &r, 4); return (uint16_t)(u >> 16); }
    #if KBM_X86
        return _cvtss_sh(v, _MM_FROUND_TO_NEAREST_INT);
    #else
        return 0;
    #endif
    }
    static inline void* kbm_align64(void* p) { return (void*)(((uintptr_t)p + 63) & ~(uintptr_t)63); }
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
    /* ---- the byte-plane path: bf16/fp16 activations, M = 1, K % 64 == 0, blocksize % 64 == 0 ----
       A 16-bit weight value is two bytes, so a block's 16 values (rule 2, rounded to A's dtype) become two
       16-byte tables, its low bytes and its high bytes; vpshufb looks up 32 codes per table per instruction. */
    #define KBM_UNIT 64
    /* fp32 element e (0..7) of decoded vector v (0..7) of a 64-weight unit -> the weight's index in the unit */
    static int kbm_unit_index(int kind, int v, int e) {
        int odd = v >> 2, half = (v >> 1) & 1, w = v & 1;         /* lo/hi nibble; unpacklo/hi; word parity */
        if (kind == 1) {                                           /* bf16: slli (even words) / and (odd words) */
            int lane = e >> 2, d = e & 3;
            return 2 * (16 * lane + 8 * half + 2 * d + w) + odd;
        }
        /* fp16: cvtph2ps of the ymm's low / high 128-bit lane */
        return 2 * (16 * w + 8 * half + e) + odd;
    }
    /* the block's two byte planes, each in both 128-bit lanes: plo[j] = low byte of W(code j), phi[j] = high */
    __attribute__((target("avx2,f16c,fma"), always_inline))
    static inline void kbm_planes(__m256 t_lo, __m256 t_hi, float s, int kind, const float* table,
                                  __m256i* plo, __m256i* phi) {
        const __m256 sb = _mm256_set1_ps(s);
        __m256 p0 = _mm256_mul_ps(t_lo, sb), p1 = _mm256_mul_ps(t_hi, sb);
        const __m256i split = _mm256_setr_epi8(0, 2, 4, 6, 8, 10, 12, 14, 1, 3, 5, 7, 9, 11, 13, 15,
                                               0, 2, 4, 6, 8, 10, 12, 14, 1, 3, 5, 7, 9, 11, 13, 15);
        if (kind == 2) {
            /* codes 0-7 | 8-15 as fp16 words; per lane 8 low bytes then 8 high bytes; gather the lanes' halves */
            __m256i words = _mm256_set_m128i(_mm256_cvtps_ph(p1, _MM_FROUND_TO_NEAREST_INT),
                                             _mm256_cvtps_ph(p0, _MM_FROUND_TO_NEAREST_INT));
            __m256i sp = _mm256_shuffle_epi8(words, split);
            *plo = _mm256_permute4x64_epi64(sp, 0x88);
            *phi = _mm256_permute4x64_epi64(sp, 0xDD);
            return;
        }
        uint32_t bits; memcpy(&bits, &s, 4);
        __m256i r0, r1;                                             /* bf16 in the high half of each dword */
        if ((bits & 0x7f800000u) != 0x7f800000u) {                  /* finite scale: round half to even by adding */
            __m256i u0 = _mm256_castps_si256(p0), u1 = _mm256_castps_si256(p1);
            const __m256i one = _mm256_set1_epi32(1), bias = _mm256_set1_epi32(0x7fff);
            r0 = _mm256_add_epi32(_mm256_add_epi32(u0, bias), _mm256_and_si256(_mm256_srli_epi32(u0, 16), one));
            r1 = _mm256_add_epi32(_mm256_add_epi32(u1, bias), _mm256_and_si256(_mm256_srli_epi32(u1, 16), one));
        } else {                                                    /* NaN / Inf scale: the scalar rule */
            float l[16];
            kbm_block_lut(table, s, 1, l);
            r0 = _mm256_castps_si256(_mm256_loadu_ps(l));
            r1 = _mm256_castps_si256(_mm256_loadu_ps(l + 8));
        }
        /* r0 lanes hold codes 0-3 | 4-7, r1 codes 8-11 | 12-15: bytes 2 (low) and 3 (high) of each dword to
           dwords lane0 [lo0-3, lo8-11, hi0-3, hi8-11], lane1 [lo4-7, lo12-15, hi4-7, hi12-15], then gathered */
        const __m256i pick0 = _mm256_setr_epi8(2, 6, 10, 14, -1, -1, -1, -1, 3, 7, 11, 15, -1, -1, -1, -1,
                                               2, 6, 10, 14, -1, -1, -1, -1, 3, 7, 11, 15, -1, -1, -1, -1);
        const __m256i pick1 = _mm256_setr_epi8(-1, -1, -1, -1, 2, 6, 10, 14, -1, -1, -1, -1, 3, 7, 11, 15,
                                               -1, -1, -1, -1, 2, 6, 10, 14, -1, -1, -1, -1, 3, 7, 11, 15);
        __m256i d = _mm256_or_si256(_mm256_shuffle_epi8(r0, pick0), _mm256_shuffle_epi8(r1, pick1));
        *plo = _mm256_permutevar8x32_epi32(d, _mm256_setr_epi32(0, 4, 1, 5, 0, 4, 1, 5));
        *phi = _mm256_permutevar8x32_epi32(d, _mm256_setr_epi32(2, 6, 3, 7, 2, 6, 3, 7));
    }
    __attribute__((target("avx2,f16c,fma"), always_inline))
    static inline __m256 kbm_f32(__m256i words, int kind, int which) {
        /* bf16: which 0 = even words (shift up), 1 = odd words (mask); fp16: which = 128-bit lane */
        if (kind == 1)
            return _mm256_castsi256_ps(which ? _mm256_and_si256(words, _mm256_set1_epi32((int)0xffff0000u))
                                             : _mm256_slli_epi32(words, 16));
        return _mm256_cvtph_ps(which ? _mm256_extracti128_si256(words, 1) : _mm256_castsi256_si128(words));
    }
    /* rule 1 for blocks b .. b + n - 1 into sc: 8 at a time (a gather of the 8-bit codes' values, the second-level
       absmax gathered too when the 8 blocks straddle a 256-block group), a float32 multiply then add (no FMA) */
    #define KBM_SCALES 64
    __attribute__((target("avx2,f16c,fma"), always_inline))
    static inline void kbm_scales8(const float* s, const uint8_t* a8, const float* code2, float off, int64_t b,
                                   int n, float* sc) {
        int j = 0;
        const __m256 offv = _mm256_set1_ps(off);
        for (; j + 8 <= n; j += 8) {
            int64_t b0 = b + j;
            __m256i q = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i*)(a8 + b0)));
            __m256 c = _mm256_i32gather_ps(code2, q, 4);
            __m256 s2;
            if ((b0 >> 8) == ((b0 + 7) >> 8)) s2 = _mm256_set1_ps(s[b0 >> 8]);
            else {
                float t[8];
                for (int l = 0; l < 8; ++l) t[l] = s[(b0 + l) >> 8];
                s2 = _mm256_loadu_ps(t);
            }
            _mm256_storeu_ps(sc + j, _mm256_add_ps(_mm256_mul_ps(c, s2), offv));
        }
        for (; j < n; ++j) sc[j] = kbm_scale(s, a8, code2, off, b + j);
    }
    /* one output row: sum over units of 8 products per decoded vector, 4 accumulators (vector v -> v % 4);
       FMA is exact here: a product of two bf16 (or two fp16) values has <= 22 significant bits */
    __attribute__((target("avx2,f16c,fma"), always_inline))
    static inline float kbm_row_planes_k(const float* xp, int64_t K, const uint8_t* packed, const float* s, const uint8_t* a8,
                                const float* code2, float off, const float* table, int64_t bs, int kind, int64_t n,
                                float* wbuf) {
        /* wbuf == NULL: the dot product with xp; else the row's decoded weights go to wbuf (permuted order) */
        const __m256 t_lo = _mm256_loadu_ps(table), t_hi = _mm256_loadu_ps(table + 8);
        const __m256i m0f = _mm256_set1_epi8(0x0f);
        __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps(), acc2 = _mm256_setzero_ps(),
               acc3 = _mm256_setzero_ps();
        __m256i plo = _mm256_setzero_si256(), phi = _mm256_setzero_si256();
        const int64_t i0 = n * K;
        const uint8_t* row = packed + (i0 >> 1);
        /* blocksize: a power of two >= 64; the row's block segments, one table each */
        int64_t b = i0 / bs, u = 0;
        float sc[KBM_SCALES];                                      /* nested scales, decoded 8 at a time */
        int isc = 0, nsc = 0;
        while (u < K) {
            int64_t seg = (b + 1) * bs - i0;
            if (seg > K) seg = K;
            float sb;
            if (a8 == NULL) sb = s[b];
            else {
                if (isc == nsc) {
                    int64_t left = (i0 + K - 1) / bs - b + 1;
                    nsc = left < KBM_SCALES ? (int)left : KBM_SCALES;
                    kbm_scales8(s, a8, code2, off, b, nsc, sc);
                    isc = 0;
                }
                sb = sc[isc++];
            }
            kbm_planes(t_lo, t_hi, sb, kind, table, &plo, &phi);
            ++b;
            for (; u < seg; u += KBM_UNIT) {
            __m256i v = _mm256_loadu_si256((const __m256i*)(row + (u >> 1)));
            __m256i hi = _mm256_and_si256(_mm256_srli_epi16(v, 4), m0f), lo = _mm256_and_si256(v, m0f);
            __m256i h_l = _mm256_shuffle_epi8(plo, hi), h_h = _mm256_shuffle_epi8(phi, hi);
            __m256i l_l = _mm256_shuffle_epi8(plo, lo), l_h = _mm256_shuffle_epi8(phi, lo);
            __m256i e0 = _mm256_unpacklo_epi8(h_l, h_h), e1 = _mm256_unpackhi_epi8(h_l, h_h);
            __m256i o0 = _mm256_unpacklo_epi8(l_l, l_h), o1 = _mm256_unpackhi_epi8(l_l, l_h);
            if (wbuf) {
                float* w = wbuf + u;
                _mm256_storeu_ps(w, kbm_f32(e0, kind, 0));      _mm256_storeu_ps(w + 8, kbm_f32(e0, kind, 1));
                _mm256_storeu_ps(w + 16, kbm_f32(e1, kind, 0)); _mm256_storeu_ps(w + 24, kbm_f32(e1, kind, 1));
                _mm256_storeu_ps(w + 32, kbm_f32(o0, kind, 0)); _mm256_storeu_ps(w + 40, kbm_f32(o0, kind, 1));
                _mm256_storeu_ps(w + 48, kbm_f32(o1, kind, 0)); _mm256_storeu_ps(w + 56, kbm_f32(o1, kind, 1));
                continue;
            }
            const float* x = xp + u;
            acc0 = _mm256_fmadd_ps(kbm_f32(e0, kind, 0), _mm256_loadu_ps(x), acc0);
            acc1 = _mm256_fmadd_ps(kbm_f32(e0, kind, 1), _mm256_loadu_ps(x + 8), acc1);
            acc2 = _mm256_fmadd_ps(kbm_f32(e1, kind, 0), _mm256_loadu_ps(x + 16), acc2);
            acc3 = _mm256_fmadd_ps(kbm_f32(e1, kind, 1), _mm256_loadu_ps(x + 24), acc3);
            acc0 = _mm256_fmadd_ps(kbm_f32(o0, kind, 0), _mm256_loadu_ps(x + 32), acc0);
            acc1 = _mm256_fmadd_ps(kbm_f32(o0, kind, 1), _mm256_loadu_ps(x + 40), acc1);
            acc2 = _mm256_fmadd_ps(kbm_f32(o1, kind, 0), _mm256_loadu_ps(x + 48), acc2);
            acc3 = _mm256_fmadd_ps(kbm_f32(o1, kind, 1), _mm256_loadu_ps(x + 56), acc3);
            }
        }
        float l[8]; _mm256_storeu_ps(l, _mm256_add_ps(_mm256_add_ps(acc0, acc1), _mm256_add_ps(acc2, acc3)));
        return kbm_combine(l);
    }
    /* one compiled loop per kind (the kind tests fold away) */
    __attribute__((target("avx2,f16c,fma")))
    static float kbm_row_planes(const float* xp, int64_t K, const uint8_t* packed, const float* s, const uint8_t* a8,
                                const float* code2, float off, const float* table, int64_t bs, int kind, int64_t n) {
        if (kind == 1) return kbm_row_planes_k(xp, K, packed, s, a8, code2, off, table, bs, 1, n, NULL);
        return kbm_row_planes_k(xp, K, packed, s, a8, code2, off, table, bs, 2, n, NULL);
    }
    /* M > 1: decode the row once into wbuf, then per activation row the same products in the same order as the
       M = 1 loop (so each output equals the one-row call's, bit for bit) */
    __attribute__((target("avx2,f16c,fma")))
    static void kbm_rows_planes(const float* xp, int64_t M, int64_t N, int64_t K, const uint8_t* packed, const float* s,
                                const uint8_t* a8, const float* code2, float off, const float* table, int64_t bs,
                                int kind, int64_t n, float* wbuf, float* y) {
        if (kind == 1) kbm_row_planes_k(xp, K, packed, s, a8, code2, off, table, bs, 1, n, wbuf);
        else kbm_row_planes_k(xp, K, packed, s, a8, code2, off, table, bs, 2, n, wbuf);
        for (int64_t m = 0; m < M; ++m) {
            const float* x = xp + m * K;
            __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps(), acc2 = _mm256_setzero_ps(),
                   acc3 = _mm256_setzero_ps();
            for (int64_t u = 0; u < K; u += KBM_UNIT) {
                const float* w = wbuf + u; const float* xu = x + u;
                acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(w), _mm256_loadu_ps(xu), acc0);
                acc1 = _mm256_fmadd_ps(_mm256_loadu_ps(w + 8), _mm256_loadu_ps(xu + 8), acc1);
                acc2 = _mm256_fmadd_ps(_mm256_loadu_ps(w + 16), _mm256_loadu_ps(xu + 16), acc2);
                acc3 = _mm256_fmadd_ps(_mm256_loadu_ps(w + 24), _mm256_loadu_ps(xu + 24), acc3);
                acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(w + 32), _mm256_loadu_ps(xu + 32), acc0);
                acc1 = _mm256_fmadd_ps(_mm256_loadu_ps(w + 40), _mm256_loadu_ps(xu + 40), acc1);
                acc2 = _mm256_fmadd_ps(_mm256_loadu_ps(w + 48), _mm256_loadu_ps(xu + 48), acc2);
                acc3 = _mm256_fmadd_ps(_mm256_loadu_ps(w + 56), _mm256_loadu_ps(xu + 56), acc3);
            }
            float l[8]; _mm256_storeu_ps(l, _mm256_add_ps(_mm256_add_ps(acc0, acc1), _mm256_add_ps(acc2, acc3)));
            y[m * N + n] = kbm_combine(l);
        }
    }
    static int kbm_planes_ok(void) { __builtin_cpu_init(); return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("f16c") && __builtin_cpu_supports("fma"); }

    /* ---- the byte-plane path on 512-bit vectors (AVX-512 F/BW/VL/VBMI; K % 128 == 0) ----
       Two 64-weight units per step: a zmm of 64 code bytes holds unit u in its 128-bit lanes 0-1 and unit u + 64
       in lanes 2-3, so the tables carry the first unit's block in lanes 0-1 and the second's in lanes 2-3 (one
       two-source byte permute builds each plane from the two blocks' rounded values). */
    #define KBM_PF 2048
    /* avx512bf16 is in the target list for one instruction, vcvtne2ps2bf16, which runs only where the CPU has it
       (kbm_bf16_round, set at import) */
    #define KBM_T512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512vbmi,avx512bf16,avx2,f16c,fma")))
    static int kbm_bf16_round = 0;
    /* fp32 element e (0..15) of decoded vector v (0..7) of a 128-weight pair -> the weight's index in the pair */
    static int kbm_pair_index(int kind, int v, int e) {
        int X = v >> 1, which = v & 1, odd = X >> 1, half = X & 1, L, w;
        if (kind == 1) { L = e >> 2; w = 2 * (e & 3) + which; }                 /* bf16: slli / and per dword */
        else { L = (e >> 3) + 2 * which; w = e & 7; }                            /* fp16: cvtph of a 256-bit half */
        return 2 * (16 * L + 8 * half + w) + odd;
    }
    /* rule 1 for blocks b .. b + n - 1 (n <= 64) into sc, without gathers: the 256 float32 code values are four
       byte planes (c2p: plane i, bytes 256 i .. 256 i + 255, byte i of each value), looked up for 64 codes at a time
       by two 128-entry byte permutes and a blend per plane, then interleaved back into float32 values (gathers ran
       at about a quarter of the unscaled loop's time on a Zen 4). The same two roundings as kbm_scales8: a float32
       multiply, then the add. */
    KBM_T512 __attribute__((always_inline))
    static inline void kbm_scales64(const float* s, const uint8_t* a8, const uint8_t* c2p, float off, int64_t b, int n,
                                    float* sc) {
        /* position 16 L + 4 v + d of the permuted codes is code 16 v + 4 L + d: after the unpacks below, vector v holds
           blocks 16 v .. 16 v + 15 in order */
        const __m512i order = _mm512_set_epi8(
            63, 62, 61, 60, 47, 46, 45, 44, 31, 30, 29, 28, 15, 14, 13, 12,
            59, 58, 57, 56, 43, 42, 41, 40, 27, 26, 25, 24, 11, 10, 9, 8,
            55, 54, 53, 52, 39, 38, 37, 36, 23, 22, 21, 20, 7, 6, 5, 4,
            51, 50, 49, 48, 35, 34, 33, 32, 19, 18, 17, 16, 3, 2, 1, 0);
        const __mmask64 live = n >= 64 ? ~(__mmask64)0 : (((__mmask64)1 << n) - 1);
        const __m512i q = _mm512_permutexvar_epi8(order, _mm512_maskz_loadu_epi8(live, (const void*)(a8 + b)));
        const __mmask64 upper = _mm512_movepi8_mask(q);               /* codes 128..255 */
        __m512i p[4];
        for (int i = 0; i < 4; ++i) {
            const uint8_t* t = c2p + 256 * i;
            __m512i lo = _mm512_permutex2var_epi8(_mm512_loadu_si512((const void*)t), q,
                                                  _mm512_loadu_si512((const void*)(t + 64)));
            __m512i hi = _mm512_permutex2var_epi8(_mm512_loadu_si512((const void*)(t + 128)), q,
                                                  _mm512_loadu_si512((const void*)(t + 192)));
            p[i] = _mm512_mask_blend_epi8(upper, lo, hi);
        }
        const __m512i w01l = _mm512_unpacklo_epi8(p[0], p[1]), w01h = _mm512_unpackhi_epi8(p[0], p[1]);
        const __m512i w23l = _mm512_unpacklo_epi8(p[2], p[3]), w23h = _mm512_unpackhi_epi8(p[2], p[3]);
        __m512 c[4];
        c[0] = _mm512_castsi512_ps(_mm512_unpacklo_epi16(w01l, w23l));
        c[1] = _mm512_castsi512_ps(_mm512_unpackhi_epi16(w01l, w23l));
        c[2] = _mm512_castsi512_ps(_mm512_unpacklo_epi16(w01h, w23h));
        c[3] = _mm512_castsi512_ps(_mm512_unpackhi_epi16(w01h, w23h));
        /* the second-level absmax: one per 256 blocks, so at most one boundary among 64 */
        const int64_t g = b >> 8, edge = (g + 1) << 8;
        const __m512 lo2 = _mm512_set1_ps(s[g]);
        const __m512 hi2 = b + n > edge ? _mm512_set1_ps(s[g + 1]) : lo2;
        const __m512 offv = _mm512_set1_ps(off);
        for (int v = 0; v < 4; ++v) {
            const int64_t k = edge - (b + 16 * v);                  /* blocks of this vector before the boundary */
            const __mmask16 past = k >= 16 ? 0 : k <= 0 ? (__mmask16)0xffff : (__mmask16)(0xffffu << k);
            const __m512 s2 = _mm512_mask_blend_ps(past, lo2, hi2);
            _mm512_storeu_ps(sc + 16 * v, _mm512_add_ps(_mm512_mul_ps(c[v], s2), offv));
        }
    }

    KBM_T512 __attribute__((always_inline))
    static inline __m512i kbm_rbf16_512(__m512 p, float s, const float* table) {
        uint32_t bits; memcpy(&bits, &s, 4);
        if ((bits & 0x7f800000u) != 0x7f800000u) {                 /* finite scale: round half to even by adding */
            __m512i u = _mm512_castps_si512(p);
            return _mm512_add_epi32(_mm512_add_epi32(u, _mm512_set1_epi32(0x7fff)),
                                    _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1)));
        }
        float l[16];                                                /* NaN / Inf scale: the scalar rule */
        kbm_block_lut(table, s, 1, l);
        return _mm512_castps_si512(_mm512_loadu_ps(l));
    }
    /* the planes of blocks s0 (lanes 0-1) and s1 (lanes 2-3): plo[j] = low byte of W(code j), phi[j] = high.
       cvt (bf16, both blocks' products normal, zero or infinite): one vcvtne2ps2bf16 rounds both blocks' 32 values
       to bf16, as the integer adds do (round half to even; it flushes subnormals, which cvt excludes); on cores
       where two-source byte permutes are slow (Intel) the rounding and planes cost about a third of the loop at
       blocksize 64 */
    KBM_T512 __attribute__((always_inline))
    static inline void kbm_planes512(__m512 t16, float s0, float s1, int same, int kind, int cvt, const float* table,
                                     __m512i* plo, __m512i* phi) {
        __m512 p0 = _mm512_mul_ps(t16, _mm512_set1_ps(s0));
        __m512 p1 = same ? p0 : _mm512_mul_ps(t16, _mm512_set1_ps(s1));
        /* byte k of a plane: lane k >> 4 (block 0 for lanes 0-1, 1 for 2-3), code k & 15 -> H byte 2 * code */
        const __m512i lo16 = _mm512_set_epi8(
            62, 60, 58, 56, 54, 52, 50, 48, 46, 44, 42, 40, 38, 36, 34, 32,
            62, 60, 58, 56, 54, 52, 50, 48, 46, 44, 42, 40, 38, 36, 34, 32,
            30, 28, 26, 24, 22, 20, 18, 16, 14, 12, 10, 8, 6, 4, 2, 0,
            30, 28, 26, 24, 22, 20, 18, 16, 14, 12, 10, 8, 6, 4, 2, 0);
        if (kind == 2 || cvt) {
            __m512i H;
            if (kind == 2) {
                __m256i h0 = _mm512_cvtps_ph(p0, _MM_FROUND_TO_NEAREST_INT);
                __m256i h1 = same ? h0 : _mm512_cvtps_ph(p1, _MM_FROUND_TO_NEAREST_INT);
                H = _mm512_inserti64x4(_mm512_castsi256_si512(h0), h1, 1);
            } else {
                H = (__m512i)_mm512_cvtne2ps_pbh(p1, p0);            /* bf16 0-15: block 0, 16-31: block 1 */
            }
            *plo = _mm512_permutexvar_epi8(lo16, H);
            *phi = _mm512_permutexvar_epi8(_mm512_add_epi8(lo16, _mm512_set1_epi8(1)), H);
            return;
        }
        __m512i r0 = kbm_rbf16_512(p0, s0, table);
        __m512i r1 = same ? r0 : kbm_rbf16_512(p1, s1, table);
        /* bf16 in the high half of each dword: code j's low byte is byte 4j + 2 (+ 64: the second source) */
        const __m512i lo = _mm512_set_epi8(
            126, 122, 118, 114, 110, 106, 102, 98, 94, 90, 86, 82, 78, 74, 70, 66,
            126, 122, 118, 114, 110, 106, 102, 98, 94, 90, 86, 82, 78, 74, 70, 66,
            62, 58, 54, 50, 46, 42, 38, 34, 30, 26, 22, 18, 14, 10, 6, 2,
            62, 58, 54, 50, 46, 42, 38, 34, 30, 26, 22, 18, 14, 10, 6, 2);
        *plo = _mm512_permutex2var_epi8(r0, lo, r1);
        *phi = _mm512_permutex2var_epi8(r0, _mm512_add_epi8(lo, _mm512_set1_epi8(1)), r1);
    }
    KBM_T512 __attribute__((always_inline))
    static inline __m512 kbm_f32_512(__m512i words, int kind, int which) {
        if (kind == 1)
            return _mm512_castsi512_ps(which ? _mm512_and_si512(words, _mm512_set1_epi32((int)0xffff0000u))
                                             : _mm512_slli_epi32(words, 16));
        return _mm512_cvtph_ps(which ? _mm512_extracti64x4_epi64(words, 1) : _mm512_castsi512_si256(words));
    }
    KBM_T512 __attribute__((always_inline))
    static inline float kbm_reduce512(__m512 a0, __m512 a1, __m512 a2, __m512 a3, __m512 a4, __m512 a5, __m512 a6,
                                      __m512 a7) {
        __m512 t = _mm512_add_ps(_mm512_add_ps(_mm512_add_ps(a0, a1), _mm512_add_ps(a2, a3)),
                                 _mm512_add_ps(_mm512_add_ps(a4, a5), _mm512_add_ps(a6, a7)));
        float l[16], h[8];
        _mm512_storeu_ps(l, t);
        for (int i = 0; i < 8; ++i) h[i] = l[i] + l[i + 8];
        return kbm_combine(h);
    }
    /* the 128 weights of pair step u (packed bytes row[u / 2 ..]) through the planes: e0, e1, o0, o1 hold their 16-bit
       values (kbm_f32_512 widens each to two fp32 vectors, in kbm_pair_index's order) */
    KBM_T512 __attribute__((always_inline))
    static inline void kbm_decode512(const uint8_t* row, int64_t u, __m512i plo, __m512i phi, __m512i* e0,
                                     __m512i* e1, __m512i* o0, __m512i* o1) {
        const __m512i m0f = _mm512_set1_epi8(0x0f);
        /* 2 KB ahead (one line per step): 20 % off a call whose weights come from DRAM, none off one from L3 */
        _mm_prefetch((const char*)(row + (u >> 1) + KBM_PF), _MM_HINT_T0);
        __m512i v = _mm512_loadu_si512((const void*)(row + (u >> 1)));
        __m512i hi = _mm512_and_si512(_mm512_srli_epi16(v, 4), m0f), lo = _mm512_and_si512(v, m0f);
        __m512i h_l = _mm512_shuffle_epi8(plo, hi), h_h = _mm512_shuffle_epi8(phi, hi);
        __m512i l_l = _mm512_shuffle_epi8(plo, lo), l_h = _mm512_shuffle_epi8(phi, lo);
        *e0 = _mm512_unpacklo_epi8(h_l, h_h); *e1 = _mm512_unpackhi_epi8(h_l, h_h);
        *o0 = _mm512_unpacklo_epi8(l_l, l_h); *o1 = _mm512_unpackhi_epi8(l_l, l_h);
    }
    /* decoded vector v times activations x[16 v ..] into accumulator v */
    KBM_T512 __attribute__((always_inline))
    static inline void kbm_fma512(const float* x, __m512i e0, __m512i e1, __m512i o0, __m512i o1, int kind,
                                  __m512* acc) {
        acc[0] = _mm512_fmadd_ps(kbm_f32_512(e0, kind, 0), _mm512_loadu_ps(x), acc[0]);
        acc[1] = _mm512_fmadd_ps(kbm_f32_512(e0, kind, 1), _mm512_loadu_ps(x + 16), acc[1]);
        acc[2] = _mm512_fmadd_ps(kbm_f32_512(e1, kind, 0), _mm512_loadu_ps(x + 32), acc[2]);
        acc[3] = _mm512_fmadd_ps(kbm_f32_512(e1, kind, 1), _mm512_loadu_ps(x + 48), acc[3]);
        acc[4] = _mm512_fmadd_ps(kbm_f32_512(o0, kind, 0), _mm512_loadu_ps(x + 64), acc[4]);
        acc[5] = _mm512_fmadd_ps(kbm_f32_512(o0, kind, 1), _mm512_loadu_ps(x + 80), acc[5]);
        acc[6] = _mm512_fmadd_ps(kbm_f32_512(o1, kind, 0), _mm512_loadu_ps(x + 96), acc[6]);
        acc[7] = _mm512_fmadd_ps(kbm_f32_512(o1, kind, 1), _mm512_loadu_ps(x + 112), acc[7]);
    }
    /* one output row, 8 accumulators (decoded vector v -> accumulator v), pairs in increasing k; wbuf != NULL: the
       row's decoded weights go to wbuf instead (permuted order), for kbm_rows_planes512 */
    KBM_T512 __attribute__((always_inline))
    static inline float kbm_row512_k(const float* xp, int64_t K, const uint8_t* packed, const float* s,
                                     const uint8_t* a8, const float* code2, const uint8_t* c2p, float off,
                                     const float* table, int64_t bs, int kind, int64_t n, float* wbuf) {
        const __m512 t16 = _mm512_loadu_ps(table);
        /* scales from cmin on make every nonzero product t * s normal (1 + 2^-20: room for the division's rounding) */
        float tmin = 0.0f;
        for (int j = 0; j < 16; ++j) {
            float a = fabsf(table[j]);
            if (a > 0.0f && (tmin == 0.0f || a < tmin)) tmin = a;
        }
        const float cmin = tmin > 0.0f ? (float)((double)FLT_MIN / (double)tmin * (1.0 + 0x1p-20)) : 0.0f;
        const int cvt_on = kind == 1 && kbm_bf16_round && cmin <= FLT_MAX;
        __m512 acc[8];
        for (int i = 0; i < 8; ++i) acc[i] = _mm512_setzero_ps();
        __m512i plo = _mm512_setzero_si512(), phi = plo;
        const int64_t i0 = n * K;
        const uint8_t* row = packed + (i0 >> 1);
        const int lg = __builtin_ctzll((unsigned long long)bs);
        const int64_t blast = (i0 + K - 1) >> lg;
        float sc[KBM_SCALES];                                      /* nested scales of blocks sbase .. + scount */
        int64_t sbase = 0, scount = 0, pb0 = -1, pb1 = -1, u = 0;
        /* blocksize 64 (the default): both tables change at every step. A chunk of up to KBM_SCALES blocks whose
           scales all take the one-instruction rounding (fp16 always) runs with no test per step, so the next
           step's table build overlaps this step's products; the general loop below takes any other chunk on */
        if (lg == 6 && wbuf == NULL && (kind == 2 || cvt_on)) {
            while (u < K) {
                const int64_t b0 = (i0 + u) >> 6;
                int64_t nb = (K - u) >> 6;                         /* even: K % 128 == 0 */
                if (nb > KBM_SCALES) nb = KBM_SCALES;
                const float* sp = s + b0;
                if (a8 != NULL) { kbm_scales64(s, a8, c2p, off, b0, (int)nb, sc); sp = sc; }
                int ok = 1;
                if (kind == 1)
                    for (int64_t j = 0; j < nb; ++j) ok &= (sp[j] >= cmin) & (sp[j] <= FLT_MAX);
                if (!ok) break;
                for (int64_t j = 0; j < nb; j += 2, u += 2 * KBM_UNIT) {
                    kbm_planes512(t16, sp[j], sp[j + 1], 0, kind, 1, table, &plo, &phi);
                    __m512i e0, e1, o0, o1;
                    kbm_decode512(row, u, plo, phi, &e0, &e1, &o0, &o1);
                    kbm_fma512(xp + u, e0, e1, o0, o1, kind, acc);
                }
            }
        }
        for (; u < K; u += 2 * KBM_UNIT) {
            const int64_t b0 = (i0 + u) >> lg, b1 = (i0 + u + KBM_UNIT) >> lg;
            if (b0 != pb0 || b1 != pb1) {
                float s0, s1;
                if (a8 == NULL) { s0 = s[b0]; s1 = s[b1]; }
                else {
                    if (scount == 0 || b1 >= sbase + scount) {
                        int64_t left = blast - b0 + 1;
                        sbase = b0;
                        scount = left < KBM_SCALES ? left : KBM_SCALES;
                        kbm_scales64(s, a8, c2p, off, b0, (int)scount, sc);
                    }
                    s0 = sc[b0 - sbase]; s1 = sc[b1 - sbase];
                }
                const int cvt = cvt_on && s0 >= cmin && s0 <= FLT_MAX && s1 >= cmin && s1 <= FLT_MAX;
                /* NaN and Inf scales: the scalar rule */
                kbm_planes512(t16, s0, s1, b0 == b1, kind, cvt, table, &plo, &phi);
                pb0 = b0; pb1 = b1;
            }
            __m512i e0, e1, o0, o1;
            kbm_decode512(row, u, plo, phi, &e0, &e1, &o0, &o1);
            if (wbuf) {
                float* w = wbuf + u;
                _mm512_storeu_ps(w, kbm_f32_512(e0, kind, 0));       _mm512_storeu_ps(w + 16, kbm_f32_512(e0, kind, 1));
                _mm512_storeu_ps(w + 32, kbm_f32_512(e1, kind, 0));  _mm512_storeu_ps(w + 48, kbm_f32_512(e1, kind, 1));
                _mm512_storeu_ps(w + 64, kbm_f32_512(o0, kind, 0));  _mm512_storeu_ps(w + 80, kbm_f32_512(o0, kind, 1));
                _mm512_storeu_ps(w + 96, kbm_f32_512(o1, kind, 0));  _mm512_storeu_ps(w + 112, kbm_f32_512(o1, kind, 1));
                continue;
            }
            kbm_fma512(xp + u, e0, e1, o0, o1, kind, acc);
        }
        return kbm_reduce512(acc[0], acc[1], acc[2], acc[3], acc[4], acc[5], acc[6], acc[7]);
    }
    KBM_T512
    static float kbm_row_planes512(const float* xp, int64_t K, const uint8_t* packed, const float* s, const uint8_t* a8,
                                   const float* code2, const uint8_t* c2p, float off, const float* table, int64_t bs,
                                   int kind, int64_t n) {
        if (kind == 1) return kbm_row512_k(xp, K, packed, s, a8, code2, c2p, off, table, bs, 1, n, NULL);
        return kbm_row512_k(xp, K, packed, s, a8, code2, c2p, off, table, bs, 2, n, NULL);
    }
    /* one activation row against a row decoded into wbuf: the M = 1 loop's products, accumulators and order */
    KBM_T512 __attribute__((always_inline))
    static inline float kbm_replay512(const float* x, int64_t K, const float* wbuf) {
        __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0, a4 = a0, a5 = a0, a6 = a0, a7 = a0;
        for (int64_t u = 0; u < K; u += 2 * KBM_UNIT) {
            const float* w = wbuf + u; const float* xu = x + u;
            a0 = _mm512_fmadd_ps(_mm512_loadu_ps(w), _mm512_loadu_ps(xu), a0);
            a1 = _mm512_fmadd_ps(_mm512_loadu_ps(w + 16), _mm512_loadu_ps(xu + 16), a1);
            a2 = _mm512_fmadd_ps(_mm512_loadu_ps(w + 32), _mm512_loadu_ps(xu + 32), a2);
            a3 = _mm512_fmadd_ps(_mm512_loadu_ps(w + 48), _mm512_loadu_ps(xu + 48), a3);
            a4 = _mm512_fmadd_ps(_mm512_loadu_ps(w + 64), _mm512_loadu_ps(xu + 64), a4);
            a5 = _mm512_fmadd_ps(_mm512_loadu_ps(w + 80), _mm512_loadu_ps(xu + 80), a5);
            a6 = _mm512_fmadd_ps(_mm512_loadu_ps(w + 96), _mm512_loadu_ps(xu + 96), a6);
            a7 = _mm512_fmadd_ps(_mm512_loadu_ps(w + 112), _mm512_loadu_ps(xu + 112), a7);
        }
        return kbm_reduce512(a0, a1, a2, a3, a4, a5, a6, a7);
    }
    /* M > 1: the row decoded once into wbuf, then per activation row the M = 1 products and order */
    KBM_T512
    static void kbm_rows_planes512(const float* xp, int64_t M, int64_t N, int64_t K, const uint8_t* packed,
                                   const float* s, const uint8_t* a8, const float* code2, const uint8_t* c2p,
                                   float off, const float* table, int64_t bs, int kind, int64_t n, float* wbuf,
                                   float* y) {
        if (kind == 1) kbm_row512_k(xp, K, packed, s, a8, code2, c2p, off, table, bs, 1, n, wbuf);
        else kbm_row512_k(xp, K, packed, s, a8, code2, c2p, off, table, bs, 2, n, wbuf);
        for (int64_t m = 0; m < M; ++m) y[m * N + n] = kbm_replay512(xp + m * K, K, wbuf);
    }
    static int kbm_planes512_ok(void) {
        __builtin_cpu_init();
        return kbm_planes_ok() && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw")
               && __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512vbmi");
    }
    static int kbm_bf16_round_ok(void) { __builtin_cpu_init(); return kbm_planes512_ok() && __builtin_cpu_supports("avx512bf16"); }
    static int kbm_set_bf16_round(int on) {
        int old = kbm_bf16_round;
        kbm_bf16_round = on && kbm_bf16_round_ok();
        return old;
    }
    #include "matmul_cpu_unscaled.h"

    #else
    static float kbm_row_avx2(const float* a, int64_t K, const uint8_t* packed, const float* s, const uint8_t* a8,
                              const float* code2, float off, const float* table, int64_t bs, int kind, int64_t n) { return 0.0f; }
    static int kbm_has_avx2(void) { return 0; }
    static int kbm_unit_index(int kind, int v, int e) { return 0; }
    static float kbm_row_planes(const float* xp, int64_t K, const uint8_t* packed, const float* s, const uint8_t* a8,
                                const float* code2, float off, const float* table, int64_t bs, int kind, int64_t n) { return 0.0f; }
    static int kbm_planes_ok(void) { return 0; }
    static int kbm_pair_index(int kind, int v, int e) { return 0; }
    static float kbm_row_planes512(const float* xp, int64_t K, const uint8_t* packed, const float* s, const uint8_t* a8,
                                   const float* code2, const uint8_t* c2p, float off, const float* table, int64_t bs,
                                   int kind, int64_t n) { return 0.0f; }
    static void kbm_rows_planes512(const float* xp, int64_t M, int64_t N, int64_t K, const uint8_t* packed,
                                   const float* s, const uint8_t* a8, const float* code2, const uint8_t* c2p,
                                   float off, const float* table, int64_t bs, int kind, int64_t n, float* wbuf,
                                   float* y) {}
    static int kbm_planes512_ok(void) { return 0; }
    static int kbm_bf16_round_ok(void) { return 0; }
    static int kbm_set_bf16_round(int on) { return 0; }
    static int kbm_dp_index(int X, int q) { return 0; }
    #define KBM_DP_MAX_M 32
    static float kbm_row_dp512(const float* xp, const uint16_t* xb, int64_t K, const uint8_t* packed, const float* s,
                               const uint8_t* a8, const float* code2, const uint8_t* c2p, float off, const float* table,
                               const uint8_t* planes, int64_t bs, int64_t n) { return 0.0f; }
    static void kbm_rows_dp512(const float* xp, const uint16_t* xb, const uint8_t* dp, int64_t M, int64_t N, int64_t K,
                               const uint8_t* packed, const float* s, const uint8_t* a8, const float* code2,
                               const uint8_t* c2p, float off, const float* table, const uint8_t* planes, int64_t bs,
                               int64_t n0, int64_t n1, float* wbuf, uint16_t* w16, float* sc, float* y) {}
    static void kbm_rows_planes(const float* xp, int64_t M, int64_t N, int64_t K, const uint8_t* packed, const float* s,
                                const uint8_t* a8, const float* code2, float off, const float* table, int64_t bs,
                                int kind, int64_t n, float* wbuf, float* y) {}
    #endif
    """
    void kbm_row_scalar(const float* a, int64_t M, int64_t N, int64_t K, const uint8_t* packed, const float* s,
                        const float* table, int64_t bs, int kind, const float* bias, int has_bias, int64_t n,
                        float* out) nogil
    float kbm_row_avx2(const float* a, int64_t K, const uint8_t* packed, const float* s, const uint8_t* a8,
                       const float* code2, float off, const float* table, int64_t bs, int kind, int64_t n) nogil
    int kbm_has_avx2() nogil
    int kbm_unit_index(int kind, int v, int e) nogil
    float kbm_row_planes(const float* xp, int64_t K, const uint8_t* packed, const float* s, const uint8_t* a8,
                         const float* code2, float off, const float* table, int64_t bs, int kind, int64_t n) nogil
    int kbm_planes_ok() nogil
    void kbm_rows_planes(const float* xp, int64_t M, int64_t N, int64_t K, const uint8_t* packed, const float* s,
                         const uint8_t* a8, const float* code2, float off, const float* table, int64_t bs,
                         int kind, int64_t n, float* wbuf, float* y) nogil
    int kbm_pair_index(int kind, int v, int e) nogil
    float kbm_row_planes512(const float* xp, int64_t K, const uint8_t* packed, const float* s, const uint8_t* a8,
                            const float* code2, const uint8_t* c2p, float off, const float* table, int64_t bs,
                            int kind, int64_t n) nogil
    void kbm_rows_planes512(const float* xp, int64_t M, int64_t N, int64_t K, const uint8_t* packed, const float* s,
                            const uint8_t* a8, const float* code2, const uint8_t* c2p, float off, const float* table,
                            int64_t bs, int kind, int64_t n, float* wbuf, float* y) nogil
    int kbm_planes512_ok() nogil
    int kbm_bf16_round_ok() nogil
    int kbm_set_bf16_round(int on) nogil
    int kbm_dp_index(int X, int q) nogil
    enum: KBM_DP_MAX_M
    float kbm_row_dp512(const float* xp, const uint16_t* xb, int64_t K, const uint8_t* packed, const float* s,
                        const uint8_t* a8, const float* code2, const uint8_t* c2p, float off, const float* table,
                        const uint8_t* planes, int64_t bs, int64_t n) nogil
    void kbm_rows_dp512(const float* xp, const uint16_t* xb, const uint8_t* dp, int64_t M, int64_t N, int64_t K,
                        const uint8_t* packed, const float* s, const uint8_t* a8, const float* code2,
                        const uint8_t* c2p, float off, const float* table, const uint8_t* planes, int64_t bs,
                        int64_t n0, int64_t n1, float* wbuf, uint16_t* w16, float* sc, float* y) nogil
    float kbm_widen(uint16_t h, int kind) nogil
    uint16_t kbm_narrow(float v, int kind) nogil
    void* kbm_align64(void* p) nogil

HAS_AVX2 = bool(kbm_has_avx2())
HAS_PLANES = bool(kbm_planes_ok())
HAS_PLANES512 = bool(kbm_planes512_ok())   # the 512-bit byte-plane loop, taken when K % WIDE_UNIT == 0
UNIT = 64
WIDE_UNIT = 128
_wide = HAS_PLANES512   # tests switch it off to run the 256-bit loop on the same machine
HAS_BF16_ROUND = bool(kbm_bf16_round_ok())   # the 512-bit loop rounds bf16 tables by vcvtne2ps2bf16 (AVX512_BF16)
kbm_set_bf16_round(HAS_BF16_ROUND)
HAS_UNSCALED = HAS_BF16_ROUND   # the unscaled-lookup loop (matmul_cpu_unscaled.h) needs vdpbf16ps, also AVX512_BF16
# KBIT_CPU_UNSCALED=0: bf16 activations keep the rule-2 loop (weights exact) at the cost of speed
_unscaled = HAS_UNSCALED and os.environ.get("KBIT_CPU_UNSCALED", "1") != "0"


def unit_permutation(int kind, bint wide=False):
    """perm[64] (wide: perm[128], the 512-bit loop's pair of units): position p of the permuted activations holds
    element perm[p] (the order in which the kernel decodes the weights)."""
    cdef int v, e
    if wide:
        return [kbm_pair_index(kind, v, e) for v in range(8) for e in range(16)]
    return [kbm_unit_index(kind, v, e) for v in range(8) for e in range(8)]


def set_wide(bint on):
    """Use the 512-bit loop where the CPU has it (default) or always the 256-bit one; returns the previous setting."""
    global _wide
    old = _wide
    _wide = on and HAS_PLANES512
    return old


def set_bf16_round(bint on):
    """Round the 512-bit loop's bf16 tables by vcvtne2ps2bf16 where the CPU has AVX512_BF16 (default) or always by
    integer adds (the same values); returns the previous setting."""
    return bool(kbm_set_bf16_round(on))


def set_unscaled(bint on):
    """bf16 activations by the unscaled-lookup loop where the CPU has AVX512_BF16 (default; KBIT_CPU_UNSCALED=0 at
    import turns it off) or by the rule-2 loop (weights exact); returns the previous setting."""
    global _unscaled
    old = _unscaled
    _unscaled = on and HAS_UNSCALED
    return old


def unscaled_on():
    """Whether the byte-plane kernel runs bf16 activations by the unscaled-lookup loop (where K % 128 == 0)."""
    return _unscaled and _wide


def gemv_4bit_planes(const uint16_t[::1] a, int64_t M, int64_t N, int64_t K, const uint8_t[::1] packed,
                     const float[::1] absmax, const uint8_t[::1] absmax_8bit, const float[::1] code2, float offset,
                     bint nested, const float[::1] table, int64_t blocksize, int kind, const uint16_t[::1] bias,
                     bint has_bias, uint16_t[::1] out, int64_t chunk=16):
    """The byte-plane path (check HAS_PLANES; kind 1 bf16 or 2 fp16, K % 64 == 0, blocksize % 64 == 0, a finite
    table): ``a`` (M * K) and ``bias`` the activations' and bias' 16-bit patterns, ``out`` (M * N) receives the
    result's (rule 4: float32 sum + float32 bias, one rounding). The activations are widened and permuted per
    64-element unit into the order the kernel decodes weights (unit_permutation). M > 1 decodes each weight row
    once into a per-thread buffer and takes every activation row's products in the M = 1 order, so each output
    row equals the one-row call's. Returns False, computing nothing, for a table with NaN or Inf. Rows go out in
    chunks handed out dynamically, so a thread that the shared machine preempts does not hold up the others."""
    return _planes(&a[0], M, N, K, &packed[0], &absmax[0], &absmax_8bit[0] if nested else NULL, &code2[0], offset,
                   &table[0], blocksize, kind, &bias[0] if has_bias else NULL, &out[0], chunk)


def gemv_4bit_planes_at(size_t a, int64_t M, int64_t N, int64_t K, size_t packed, size_t absmax, size_t absmax_8bit,
                        size_t code2, size_t offset, size_t table, int64_t blocksize, int kind, size_t bias, size_t out,
                        int64_t chunk=16):
    """``gemv_4bit_planes`` on addresses (``Tensor.data_ptr()``), for a caller that has checked every size already
    (workbench.matmul's GEMV path): it skips building a NumPy view and a memoryview per argument. ``absmax_8bit``
    0: not nested (``absmax`` per block); else ``code2`` holds 256 float32 values and ``offset`` one. ``bias`` 0:
    none. Nothing here can check an address: a wrong size reads or writes out of bounds."""
    if M < 1 or N < 1 or K < 1 or not (a and packed and absmax and table and out):
        raise ValueError("gemv_4bit_planes_at: null address or empty shape")
    if absmax_8bit and not (code2 and offset):
        raise ValueError("gemv_4bit_planes_at: nested absmax needs code2 and offset")
    return _planes(<const uint16_t*>a, M, N, K, <const uint8_t*>packed, <const float*>absmax,
                   <const uint8_t*>absmax_8bit, <const float*>code2 if absmax_8bit else <const float*>absmax,
                   (<const float*>offset)[0] if absmax_8bit else 0.0, <const float*>table, blocksize, kind,
                   <const uint16_t*>bias, <uint16_t*>out, chunk)


cdef bint _planes(const uint16_t* a, int64_t M, int64_t N, int64_t K, const uint8_t* packed, const float* absmax,
                  const uint8_t* a8, const float* code2, float offset, const float* table, int64_t blocksize, int kind,
                  const uint16_t* bias, uint16_t* out, int64_t chunk) except -1:
    cdef int64_t n, u, p, m
    cdef float yv
    cdef float* wbuf
    cdef uint16_t* wbuf16
    cdef float* sbuf
    cdef void* wraw
    cdef bint has_bias = bias != NULL
    cdef int perm[128]
    cdef int dperm[128]
    cdef uint8_t planes[128]
    cdef uint8_t c2p[1024]              # the nested code values' byte planes (kbm_scales64, the 512-bit loops)
    cdef const uint8_t* c2b = <const uint8_t*>code2
    cdef uint16_t h
    cdef bint wide = _wide and K % 128 == 0
    cdef bint dp = wide and kind == 1 and _unscaled and M <= KBM_DP_MAX_M
    cdef int span = 128 if wide else 64
    for p in range(16):
        if not (table[p] - table[p] == 0.0):          # NaN or Inf: the bf16 rounding by addition needs finite values
            return False
        h = kbm_narrow(table[p], 1)
        # vdpbf16ps reads a subnormal bf16 as zero; a finite entry can round to Inf: both take the rule-2 loop
        if (h & 0x7f80) == 0x7f80 or ((h & 0x7f80) == 0 and (h & 0x7f) != 0):
            dp = False
        planes[p] = planes[p + 16] = planes[p + 32] = planes[p + 48] = h & 0xff
        planes[p + 64] = planes[p + 80] = planes[p + 96] = planes[p + 112] = h >> 8
    if wide and a8 != NULL:
        for p in range(1024):
            c2p[p] = c2b[4 * (p & 255) + (p >> 8)]     # little-endian: plane i holds byte i of each value
    for p in range(span):
        perm[p] = kbm_pair_index(kind, p >> 4, p & 15) if wide else kbm_unit_index(kind, p >> 3, p & 7)
        if dp:
            dperm[p] = kbm_dp_index(p >> 5, p & 31)
    # activations 64-byte aligned: a 32-byte load that straddles a cache line costs a second access (the kernel
    # ran ~10 % slower or faster from call to call with malloc's 16-byte alignment)
    cdef void* xraw = malloc((M * K + 16) * sizeof(float))
    cdef float* xp = <float*>kbm_align64(xraw)
    cdef float* y = <float*>malloc((M * N + 1) * sizeof(float)) if M > 1 else NULL
    cdef void* braw = malloc(M * K * sizeof(uint16_t) + 64) if dp else NULL
    cdef uint16_t* xb = <uint16_t*>kbm_align64(braw)
    cdef uint8_t* rowdp = <uint8_t*>malloc(M) if dp else NULL
    cdef bint any_dp = False
    cdef int64_t nloop
    if xraw == NULL or (M > 1 and y == NULL) or (dp and (braw == NULL or rowdp == NULL)):
        free(xraw); free(y); free(braw); free(rowdp)
        raise MemoryError()
    try:
        for m in range(M):
            for u in range(0, K, span):
                for p in range(span):
                    xp[m * K + u + p] = kbm_widen(a[m * K + u + perm[p]], kind)
            if dp:
                # a row with a subnormal activation (vdpbf16ps would read it as zero) takes the rule-2 loop
                rowdp[m] = 1
                for p in range(K):
                    h = a[m * K + p]
                    if (h & 0x7f80) == 0 and (h & 0x7f) != 0:
                        rowdp[m] = 0
                        break
                any_dp = any_dp or rowdp[m]
                for u in range(0, K, 128):
                    for p in range(128):
                        xb[m * K + u + p] = a[m * K + u + dperm[p]]
        if M == 1:
            for n in prange(N, nogil=True, schedule="dynamic", chunksize=chunk):
                if any_dp:
                    yv = kbm_row_dp512(xp, xb, K, packed, absmax, a8, code2, c2p, offset, table, planes, blocksize,
                                       n)
                elif wide:
                    yv = kbm_row_planes512(xp, K, packed, absmax, a8, code2, c2p, offset, table, blocksize, kind,
                                           n)
                else:
                    yv = kbm_row_planes(xp, K, packed, absmax, a8, code2, offset, table, blocksize, kind, n)
                if has_bias:
                    yv = yv + kbm_widen(bias[n], kind)
                out[n] = kbm_narrow(yv, kind)
        else:
            nloop = (N + 1) // 2 if any_dp else N          # the unscaled loop takes weight rows in pairs
            with nogil, parallel():
                # per thread: a decoded row (float32), and for the unscaled loop two rows' words and step scales;
                # NULL only if memory is gone
                wraw = malloc((K + 16) * sizeof(float) + ((2 * K + 32) * sizeof(uint16_t)
                                                          + (2 * (K // 64) + 2) * sizeof(float) if any_dp else 0))
                wbuf = <float*>kbm_align64(wraw)
                wbuf16 = <uint16_t*>kbm_align64(wbuf + K)
                sbuf = <float*>(wbuf16 + 2 * K)
                for n in prange(nloop, schedule="dynamic", chunksize=chunk):
                    if any_dp:
                        kbm_rows_dp512(xp, xb, rowdp, M, N, K, packed, absmax, a8, code2, c2p, offset, table,
                                       planes, blocksize, 2 * n, 2 * n + 1 if 2 * n + 1 < N else 2 * n, wbuf, wbuf16,
                                       sbuf, y)
                    elif wide:
                        kbm_rows_planes512(xp, M, N, K, packed, absmax, a8, code2, c2p, offset, table, blocksize,
                                           kind, n, wbuf, y)
                    else:
                        kbm_rows_planes(xp, M, N, K, packed, absmax, a8, code2, offset, table, blocksize, kind, n,
                                        wbuf, y)
                free(wraw)
            for m in range(M * N):
                yv = y[m]
                if has_bias:
                    yv = yv + kbm_widen(bias[m % N], kind)
                out[m] = kbm_narrow(yv, kind)
    finally:
        free(xraw)
        free(y)
        free(braw)
        free(rowdp)
    return True


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
