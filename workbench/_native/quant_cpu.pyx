# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""Cython/OpenMP CPU kernels for blockwise 8-bit and 4-bit quantization with any codebook.

``prange`` hands one quantization block at a time to each OpenMP thread; the per-block
work is plain C (below) written so GCC vectorizes it: the block is widened into a float32
stack buffer, reduced to its absmax, scaled, and encoded while it sits in L1. Rounding is
the spec's (docs/ARCHITECTURE.md): float32, no FMA contraction (setup.py passes
-ffp-contract=off), reciprocal-multiply for full blocks, division in the tail block.
Search plans come from workbench/codebook_tables.py (cpu_search_plan).

``quantize_4bit`` instead hands out chunks of ~64K values (dynamically: a VM core taken away
mid-call leaves little behind) to AVX-512 or AVX2 paths that read the input itself, with no
staging buffer (``kb_q4_range512`` / ``kb_q4_range256``); the staged per-block path is their
fallback for the tail block and non-finite blocks, and the whole kernel without AVX2.

Non-finite inputs follow the reference exactly: the block absmax is the integer max of the
|x| bit patterns (NaN anywhere -> NaN, else Inf -> Inf; a float max would skip NaN), never
clamped away, and a block with a non-finite absmax is encoded by ``kb_nonfinite_codes`` (what
torch.bucketize gives the reference's scaled values: NaN -> bucket_codes[-1], +-0 -> the code of
0.0) instead of the vectorized path.
"""
from cython.parallel cimport prange
from libc.math cimport NAN
from libc.stdint cimport uint8_t, uint16_t, uint32_t, int32_t, int64_t

cdef extern from *:
    """
    #include <stdint.h>
    #include <string.h>
    #include <math.h>
    #if defined(__AVX2__) || defined(__SSSE3__)
    #include <immintrin.h>
    #endif
    #ifdef _OPENMP
    #include <omp.h>
    #endif
    #define KB_MAXBLOCK 4096
    static const float KB_TINY = 1e-38f;
    #define KB_EXP 0x7F800000u   /* |x| bits >= this: Inf or NaN */

    static inline int kb_max_threads(void) {
    #ifdef _OPENMP
        return omp_get_max_threads();
    #else
        return 1;
    #endif
    }
    #include "kb_convert.h"

    /* widen x[start:end) into buf (kind 0 float32, 1 bf16 bits, 2 fp16 bits) */
    static inline void kb_load(const void* x, int kind, int64_t start, int64_t len, float* buf) {
        if (kind == 0) { memcpy(buf, (const float*)x + start, (size_t)len * 4); return; }
        const uint16_t* u = (const uint16_t*)x + start;
        if (kind == 1) { for (int64_t i = 0; i < len; i++) buf[i] = kb_bits_f32((uint32_t)u[i] << 16); }
        else { for (int64_t i = 0; i < len; i++) buf[i] = kb_f16_to_f32(u[i]); }
    }

    /* absmax as float32 bits: the integer max of |x| bits, exact and NaN-propagating (NaN bits >
       Inf bits > any finite); an unsigned max loop vectorizes without fast-math */
    static inline uint32_t kb_absmax_bits(const float* buf, int64_t len) {
        uint32_t m = 0;
        for (int64_t i = 0; i < len; i++) { uint32_t u = kb_f32_bits(buf[i]) & 0x7FFFFFFFu; m = u > m ? u : m; }
        return m;
    }

    /* absmax stored; if finite, scaled values in place. Returns the absmax bits (>= KB_EXP:
       a non-finite block, left unscaled; the 1e-38 clamp keeps NaN and Inf as torch.clamp does) */
    static inline uint32_t kb_scale(float* buf, int64_t len, int is_tail, float* absmax_b) {
        uint32_t m = kb_absmax_bits(buf, len);
        float am = kb_bits_f32(m);
        if (m >= KB_EXP) { *absmax_b = am; return m; }
        float amc = am > KB_TINY ? am : KB_TINY;
        if (is_tail) {
            for (int64_t i = 0; i < len; i++) { float s = buf[i] / amc; buf[i] = s > 1.0f ? 1.0f : (s < -1.0f ? -1.0f : s); }
            *absmax_b = amc;
            return m;
        }
        float r = 1.0f / amc;
        for (int64_t i = 0; i < len; i++) { float s = buf[i] * r; buf[i] = s > 1.0f ? 1.0f : (s < -1.0f ? -1.0f : s); }
        *absmax_b = am;
        return m;
    }

    /* codes of a block whose absmax (bits m) is NaN or Inf, as the reference computes them: NaN
       absmax -> every scaled value NaN; Inf absmax -> x * (1/Inf) or x / Inf is +-0 for finite x,
       NaN for +-Inf. torch.bucketize puts NaN after every bound (its search tests
       !(bound >= s)): nan_code = bucket_codes[-1]; +-0 -> zero_code, the code of 0.0 */
    static inline void kb_nonfinite_codes(const float* buf, int64_t len, uint32_t m, uint8_t nan_code,
                                          uint8_t zero_code, uint8_t* out) {
        if (m > KB_EXP) { memset(out, nan_code, (size_t)len); return; }
        for (int64_t i = 0; i < len; i++)
            out[i] = (kb_f32_bits(buf[i]) & 0x7FFFFFFFu) >= KB_EXP ? nan_code : zero_code;
    }

    /* count of the 15 (+inf padded) bounds below each s: branch-free, vectorizes over i */
    static inline void kb_count15(const float* buf, int64_t len, const float* bnd, uint8_t* cnt) {
        float b0=bnd[0],b1=bnd[1],b2=bnd[2],b3=bnd[3],b4=bnd[4],b5=bnd[5],b6=bnd[6],b7=bnd[7],
              b8=bnd[8],b9=bnd[9],b10=bnd[10],b11=bnd[11],b12=bnd[12],b13=bnd[13],b14=bnd[14];
        for (int64_t i = 0; i < len; i++) {
            float s = buf[i];
            cnt[i] = (uint8_t)((b0<s)+(b1<s)+(b2<s)+(b3<s)+(b4<s)+(b5<s)+(b6<s)+(b7<s)
                              +(b8<s)+(b9<s)+(b10<s)+(b11<s)+(b12<s)+(b13<s)+(b14<s));
        }
    }

    /* 4-bit codes by the cell plan (workbench/codebook_tables.py: _cell_plan): s in cell c = min(floor(4 s) + 4, 7)
       has cell_base[c] bounds below it plus one per bound of its NS slots that is below it -- the count of
       kb_count15, exactly. AVX2: each 8-entry table is one register, looked up by vpermd/vpermps. NS is a
       constant at each call. */
    static inline __attribute__((always_inline)) void kb_cells_ns(const float* buf, int64_t len, const int32_t* base,
                                                                  const float* slot, int ns, uint8_t* cnt) {
        int64_t i = 0;
    #if defined(__AVX2__)
        const __m256i basev = _mm256_loadu_si256((const __m256i*)base);
        const __m256 t0 = _mm256_loadu_ps(slot), t1 = _mm256_loadu_ps(slot + 8), t2 = _mm256_loadu_ps(slot + 16),
                     t3 = _mm256_loadu_ps(slot + 24), four = _mm256_set1_ps(4.0f);
        const __m256i off = _mm256_set1_epi32(4), top = _mm256_set1_epi32(7);
        for (; i + 8 <= len; i += 8) {
            __m256 s = _mm256_loadu_ps(buf + i);
            __m256i c = _mm256_min_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(_mm256_floor_ps(_mm256_mul_ps(s, four))),
                                                          off), top);
            __m256i k = _mm256_permutevar8x32_epi32(basev, c);   /* only c's low 3 bits are read */
            if (ns > 0) k = _mm256_sub_epi32(k, _mm256_castps_si256(_mm256_cmp_ps(_mm256_permutevar8x32_ps(t0, c), s, _CMP_LT_OQ)));
            if (ns > 1) k = _mm256_sub_epi32(k, _mm256_castps_si256(_mm256_cmp_ps(_mm256_permutevar8x32_ps(t1, c), s, _CMP_LT_OQ)));
            if (ns > 2) k = _mm256_sub_epi32(k, _mm256_castps_si256(_mm256_cmp_ps(_mm256_permutevar8x32_ps(t2, c), s, _CMP_LT_OQ)));
            if (ns > 3) k = _mm256_sub_epi32(k, _mm256_castps_si256(_mm256_cmp_ps(_mm256_permutevar8x32_ps(t3, c), s, _CMP_LT_OQ)));
            __m128i w = _mm_packs_epi32(_mm256_castsi256_si128(k), _mm256_extracti128_si256(k, 1));
            _mm_storel_epi64((__m128i*)(cnt + i), _mm_packus_epi16(w, w));
        }
    #endif
        for (; i < len; i++) {
            float s = buf[i];
            int c = (int)floorf(s * 4.0f) + 4;
            c = c < 0 ? 0 : (c > 7 ? 7 : c);
            int k = base[c];
            for (int j = 0; j < ns; j++) k += slot[8 * j + c] < s;
            cnt[i] = (uint8_t)k;
        }
    }
    #if defined(__AVX2__)
    #define KB_HAS_CELLS 1
    #else
    #define KB_HAS_CELLS 0
    #endif
    /* the 4-bit codes of a finite, scaled block: by the cell plan where it applies (0 <= ns <= 4), else kb_count15 */
    static inline void kb_codes4(const float* buf, int64_t len, const float* bnd, const int32_t* base,
                                 const float* slot, int ns, uint8_t* cnt) {
        switch (ns) {
            case 0: kb_cells_ns(buf, len, base, slot, 0, cnt); break;
            case 1: kb_cells_ns(buf, len, base, slot, 1, cnt); break;
            case 2: kb_cells_ns(buf, len, base, slot, 2, cnt); break;
            case 3: kb_cells_ns(buf, len, base, slot, 3, cnt); break;
            case 4: kb_cells_ns(buf, len, base, slot, 4, cnt); break;
            default: kb_count15(buf, len, bnd, cnt);
        }
    }

    static inline uint8_t kb_bsearch(float s, const float* bounds_pad, int64_t npad) {
        int64_t pos = 0;
        for (int64_t step = (npad + 1) / 2; step > 0; step >>= 1)
            if (bounds_pad[pos + step - 1] < s) pos += step;
        return (uint8_t)pos;
    }

    /* the code of one value under a search plan (used for 0.0: non-finite blocks) */
    static inline uint8_t kb_code_of(float s, int mode, const float* bnd15, const uint8_t* bcodes,
            const float* kbound, const uint8_t* klo, const uint8_t* khi, const float* bounds_pad, int64_t npad) {
        if (mode == 0) { int c = 0; for (int j = 0; j < 15; j++) c += bnd15[j] < s; return bcodes[c]; }
        if (mode == 1) { uint32_t key = kb_f32_bits(s) >> 16; return s > kbound[key] ? khi[key] : klo[key]; }
        return bcodes[kb_bsearch(s, bounds_pad, npad)];
    }

    /* one 8-bit block: mode 0 linear (<=16 buckets), 1 key-LUT, 2 binary search */
    static inline void kb_quant8_block(const void* x, int kind, int64_t start, int64_t end, int is_tail, int mode,
            const float* bnd15, const uint8_t* bcodes, const float* kbound, const uint8_t* klo, const uint8_t* khi,
            const float* bounds_pad, int64_t npad, uint8_t nan_code, uint8_t zero_code, uint8_t* codes,
            float* absmax_b) {
        float buf[KB_MAXBLOCK];
        int64_t len = end - start;
        kb_load(x, kind, start, len, buf);
        uint32_t m = kb_scale(buf, len, is_tail, absmax_b);
        uint8_t* out = codes + start;
        if (m >= KB_EXP) {
            kb_nonfinite_codes(buf, len, m, nan_code, zero_code, out);
        } else if (mode == 0) {
            kb_count15(buf, len, bnd15, out);
            for (int64_t i = 0; i < len; i++) out[i] = bcodes[out[i]];
        } else if (mode == 1) {
            for (int64_t i = 0; i < len; i++) {
                float s = buf[i];
                uint32_t key = kb_f32_bits(s) >> 16;
                out[i] = s > kbound[key] ? khi[key] : klo[key];
            }
        } else {
            for (int64_t i = 0; i < len; i++) out[i] = bcodes[kb_bsearch(buf[i], bounds_pad, npad)];
        }
    }

    /* one 4-bit block, staged in stack buffers: the tail block, a block with a non-finite absmax, a codebook or
       blocksize without a fast path below */
    static inline void kb_quant4_block(const void* x, int kind, int64_t start, int64_t end, int is_tail,
            const float* bnd15, const uint8_t* bcodes, int identity, uint8_t zero_code, uint8_t nan_code,
            const int32_t* cell_base, const float* cell_bounds, int cell_slots, uint8_t* packed, float* absmax_b) {
        float buf[KB_MAXBLOCK];
        uint8_t cnt[KB_MAXBLOCK + 1];
        int64_t len = end - start;
        if (len <= 0 || len > KB_MAXBLOCK) return;   /* never: the entry points check the blocksize */
        kb_load(x, kind, start, len, buf);
        uint8_t* out = packed + (start >> 1);
        uint32_t m = kb_scale(buf, len, is_tail, absmax_b);
        if (m >= KB_EXP) {
            kb_nonfinite_codes(buf, len, m, nan_code, zero_code, cnt);
        } else {
            kb_codes4(buf, len, bnd15, cell_base, cell_bounds, cell_slots, cnt);
            if (!identity) for (int64_t i = 0; i < len; i++) cnt[i] = bcodes[cnt[i]];
        }
        if (len & 1) cnt[len] = zero_code;   /* bitsandbytes pads an odd tail with 0.0 */
        int64_t nb = (len + 1) >> 1;
        for (int64_t j = 0; j < nb; j++) out[j] = (uint8_t)((cnt[2 * j] << 4) | cnt[2 * j + 1]);
    }

    /* ---- the 4-bit fast paths, for full blocks of a length that is a multiple of 32. Blocks go in groups
       (kb_group): first every block's absmax, the integer max of the |x| bit patterns of the input itself (for bf16
       and fp16 the max of the 16-bit patterns, widened after: both widenings are monotone in the bits, so this is
       kb_absmax_bits' result), and its reciprocal; then the codes, a second read of the block from L1. A block's
       reduction and division form a long dependency chain; done for the group first, the chains of different
       blocks overlap instead of each stalling its block's codes.
       The codes: kb_scale's scaling (1 / absmax clamped, then a multiply) and clamp to [-1, 1] (by min/max, the
       values being finite), the cell plan's count, the bucket codes looked up with pshufb when they are not the
       identity, and the nibbles packed: codes as bytes in element order, pmaddubsw pairs them (16 * even + odd),
       and the words narrow to bytes. A block whose absmax is NaN or Inf, or the tail block, goes to
       kb_quant4_block.
       The clamp is skipped where it cannot change a value: in round-to-nearest, x * fl(1 / x) <= 1 whenever
       1 / x is a normal float (absmax < 2**126), so |x_i| * r <= 1 for every x_i of the block; above that the
       subnormal reciprocal loses precision and absmax * r can round to past 1. */
    #define KB_GROUP 32
    /* blocks per group: up to KB_GROUP, as many as fit in 8 KiB of input (still in L1 for the second read) */
    static inline int64_t kb_group(int64_t bs, int kind) {
        int64_t g = 8192 / (bs * (kind == 0 ? 4 : 2));
        return g < 1 ? 1 : (g > KB_GROUP ? KB_GROUP : g);
    }
    #define KB_NOCLAMP_BELOW 0x7E800000u   /* 2**126: a smaller absmax has a normal reciprocal */

    #if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VL__) && defined(__AVX512VBMI__)
    #define KB_HAS_512 1
    /* the 32-cell plan in registers. Index i = floor(min(16 s, 15.5)) is in [-16, 15]: vpermt2d/ps read its low 5
       bits, i & 31, which is cell i + 16 rotated by 16, so the register pair is (cells 16-31, cells 0-15).
       perm64/perm32: where vpermb finds element e's count (byte k of dword d of the k-th register's counts, the
       registers' counts or-ed together shifted by 8 k); bc: the bucket codes in every 16-byte lane. */
    typedef struct { __m512i base0, base1; __m512 bnd0[4], bnd1[4]; __m512i bc, perm64, perm32; } kb_t512;

    static inline __attribute__((always_inline)) uint32_t kb_absmax512(const void* x, int kind, int64_t start, int64_t len) {
        int64_t i;
        if (kind == 0) {
            const float* xf = (const float*)x + start;
            __m512i acc = _mm512_setzero_si512();
            const __m512i mask = _mm512_set1_epi32(0x7FFFFFFF);
            for (i = 0; i < len; i += 16) acc = _mm512_max_epu32(acc, _mm512_and_si512(_mm512_loadu_si512(xf + i), mask));
            return _mm512_reduce_max_epu32(acc);
        }
        const uint16_t* u = (const uint16_t*)x + start;
        __m512i acc = _mm512_setzero_si512();
        const __m512i mask = _mm512_set1_epi16(0x7FFF);
        for (i = 0; i < len; i += 32) acc = _mm512_max_epu16(acc, _mm512_and_si512(_mm512_loadu_si512(u + i), mask));
        __m256i a = _mm256_max_epu16(_mm512_castsi512_si256(acc), _mm512_extracti64x4_epi64(acc, 1));
        __m128i b = _mm_max_epu16(_mm256_castsi256_si128(a), _mm256_extracti128_si256(a, 1));
        /* phminposuw: the min of 8 words; of the complements, so the max */
        uint32_t h = 0xFFFFu - ((uint32_t)_mm_cvtsi128_si32(_mm_minpos_epu16(_mm_xor_si128(b, _mm_set1_epi32(-1)))) & 0xFFFFu);
        return kind == 1 ? h << 16 : kb_f32_bits(kb_f16_to_f32((uint16_t)h));
    }

    static inline __attribute__((always_inline)) __m512i kb_count16_512(__m512 f, __m512 rv, const kb_t512* T, int ns,
                                                                        int clamp) {
        __m512 s = _mm512_mul_ps(f, rv);
        if (clamp) s = _mm512_min_ps(_mm512_max_ps(s, _mm512_set1_ps(-1.0f)), _mm512_set1_ps(1.0f));
        __m512i i = _mm512_cvt_roundps_epi32(_mm512_min_ps(_mm512_mul_ps(s, _mm512_set1_ps(16.0f)), _mm512_set1_ps(15.5f)),
                                             _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC);
        __m512i k = _mm512_permutex2var_epi32(T->base0, i, T->base1);
        const __m512i one = _mm512_set1_epi32(1);
        for (int j = 0; j < ns; j++)   /* ns is a constant: unrolled */
            k = _mm512_mask_add_epi32(k, _mm512_cmp_ps_mask(_mm512_permutex2var_ps(T->bnd0[j], i, T->bnd1[j]), s,
                                                            _CMP_LT_OQ), k, one);
        return k;
    }

    /* 16 values from p: bf16 (kind 1) unpacked in lanes, elements 8L..8L+3 in lane L of the low half (hi = 0) and
       8L+4..8L+7 in the high half's (hi = 1) of the 32 values at p; fp16 and fp32 in order */
    static inline __attribute__((always_inline)) void kb_load32_512(const void* p, int kind, __m512* f0, __m512* f1) {
        if (kind == 1) {
            __m512i v = _mm512_loadu_si512(p);
            *f0 = _mm512_castsi512_ps(_mm512_unpacklo_epi16(_mm512_setzero_si512(), v));
            *f1 = _mm512_castsi512_ps(_mm512_unpackhi_epi16(_mm512_setzero_si512(), v));
        } else if (kind == 2) {
            *f0 = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i*)p));
            *f1 = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i*)p + 1));
        } else {
            *f0 = _mm512_loadu_ps((const float*)p);
            *f1 = _mm512_loadu_ps((const float*)p + 16);
        }
    }

    static inline __attribute__((always_inline)) void kb_codes512(const void* x, int kind, int64_t start, int64_t len,
            const kb_t512* T, int ns, int clamp, int identity, float r, uint8_t* out) {
        const char* p = (const char*)x + start * (kind == 0 ? 4 : 2);
        const int64_t w = kind == 0 ? 4 : 2;
        const __m512 rv = _mm512_set1_ps(r);
        const __m512i pair = _mm512_set1_epi16(0x0110);
        int64_t i = 0;
        for (; i + 64 <= len; i += 64) {
            __m512 f0, f1, f2, f3;
            kb_load32_512(p + i * w, kind, &f0, &f1);
            kb_load32_512(p + (i + 32) * w, kind, &f2, &f3);
            __m512i k0 = kb_count16_512(f0, rv, T, ns, clamp), k1 = kb_count16_512(f1, rv, T, ns, clamp);
            __m512i k2 = kb_count16_512(f2, rv, T, ns, clamp), k3 = kb_count16_512(f3, rv, T, ns, clamp);
            __m512i k = _mm512_or_si512(_mm512_or_si512(k0, _mm512_slli_epi32(k1, 8)),
                                        _mm512_or_si512(_mm512_slli_epi32(k2, 16), _mm512_slli_epi32(k3, 24)));
            __m512i b = _mm512_permutexvar_epi8(T->perm64, k);
            if (!identity) b = _mm512_shuffle_epi8(T->bc, b);
            _mm256_storeu_si256((__m256i*)(out + (i >> 1)), _mm512_cvtepi16_epi8(_mm512_maddubs_epi16(b, pair)));
        }
        if (i < len) {   /* blocksize 32 */
            __m512 f0, f1;
            kb_load32_512(p + i * w, kind, &f0, &f1);
            __m512i k = _mm512_or_si512(kb_count16_512(f0, rv, T, ns, clamp),
                                        _mm512_slli_epi32(kb_count16_512(f1, rv, T, ns, clamp), 8));
            __m512i b = _mm512_permutexvar_epi8(T->perm32, k);
            if (!identity) b = _mm512_shuffle_epi8(T->bc, b);
            __m512i wd = _mm512_maddubs_epi16(b, pair);
            _mm_storeu_si128((__m128i*)(out + (i >> 1)), _mm256_cvtepi16_epi8(_mm512_castsi512_si256(wd)));
        }
    }

    /* The group loop, once for both vector widths W (kb_t##W, kb_absmax##W, kb_codes##W): a group's maxima, then its
       reciprocals, then its codes, so the blocks' max -> divide chains overlap. Defined as a macro because each width's
       helpers carry their own target attributes. */
    #define KB_Q4_LOOP(W) \\
    static inline __attribute__((always_inline)) void kb_q4_loop##W(const void* x, int kind, int64_t n, int64_t bs,      \\
            int64_t b0, int64_t b1, const kb_t##W* T, int ns, int identity, const float* bnd15, const uint8_t* bcodes,   \\
            uint8_t zero_code, uint8_t nan_code, const int32_t* cell_base, const float* cell_bounds, int cell_slots,     \\
            uint8_t* packed, float* absmax) {                                                                            \\
        uint32_t mb[KB_GROUP];                                                                                           \\
        float rr[KB_GROUP];                                                                                              \\
        const int64_t gmax = kb_group(bs, kind);                                                                         \\
        for (int64_t g0 = b0; g0 < b1; g0 += gmax) {                                                                     \\
            int64_t g = b1 - g0 < gmax ? b1 - g0 : gmax, j;                                                              \\
            for (j = 0; j < g; j++) {                                                                                    \\
                int64_t start = (g0 + j) * bs;                                                                           \\
                mb[j] = start + bs <= n ? kb_absmax##W(x, kind, start, bs) : 0xFFFFFFFFu;   /* the tail: staged */       \\
            }                                                                                                            \\
            for (j = 0; j < g; j++) { float am = kb_bits_f32(mb[j]); rr[j] = 1.0f / (am > KB_TINY ? am : KB_TINY); }     \\
            for (j = 0; j < g; j++) {                                                                                    \\
                int64_t b = g0 + j, start = b * bs, end = start + bs < n ? start + bs : n;                               \\
                uint32_t m = mb[j];                                                                                      \\
                if (m < KB_NOCLAMP_BELOW) {                                                                              \\
                    absmax[b] = kb_bits_f32(m);                                                                          \\
                    kb_codes##W(x, kind, start, bs, T, ns, 0, identity, rr[j], packed + (start >> 1));                   \\
                } else if (m < KB_EXP) {                                                                                 \\
                    absmax[b] = kb_bits_f32(m);                                                                          \\
                    kb_codes##W(x, kind, start, bs, T, ns, 1, identity, rr[j], packed + (start >> 1));                   \\
                } else {                                                                                                 \\
                    kb_quant4_block(x, kind, start, end, end - start < bs, bnd15, bcodes, identity, zero_code, nan_code, \\
                                    cell_base, cell_bounds, cell_slots, packed, absmax + b);                             \\
                }                                                                                                        \\
            }                                                                                                            \\
        }                                                                                                                \\
    }
    KB_Q4_LOOP(512)

    /* blocks [b0, b1) with the 32-cell plan (base32: 32 counts, bnd32: 4 x 32 slots, ns32 compares); bs % 32 == 0 */
    static void kb_q4_range512(const void* x, int kind, int64_t n, int64_t bs, int64_t b0, int64_t b1,
            const int32_t* base32, const float* bnd32, int ns32, const float* bnd15, const uint8_t* bcodes, int nbc,
            int identity, uint8_t zero_code, uint8_t nan_code, const int32_t* cell_base, const float* cell_bounds,
            int cell_slots, uint8_t* packed, float* absmax) {
        kb_t512 T;
        uint8_t perm64[64], perm32[64], bc[64];
        T.base0 = _mm512_loadu_si512(base32 + 16);
        T.base1 = _mm512_loadu_si512(base32);
        for (int j = 0; j < 4; j++) {
            T.bnd0[j] = _mm512_loadu_ps(bnd32 + 32 * j + 16);
            T.bnd1[j] = _mm512_loadu_ps(bnd32 + 32 * j);
        }
        for (int e = 0; e < 64; e++) {
            /* element e of 64: register k (0-3) and its dword d, as kb_load32_512 and kb_codes512 lay them out */
            int k, d;
            if (kind == 1) { int q = e & 31, r = q & 7; k = 2 * (e >> 5) + (r >= 4); d = 4 * (q >> 3) + (r & 3); }
            else { k = e >> 4; d = e & 15; }
            perm64[e] = (uint8_t)(4 * d + k);
            perm32[e] = (uint8_t)(e < 32 ? 4 * d + k : 0);   /* bytes 32-63 are not stored */
            bc[e] = (e & 15) < nbc ? bcodes[e & 15] : 0;      /* counts are < nbc */
        }
        T.perm64 = _mm512_loadu_si512(perm64);
        T.perm32 = _mm512_loadu_si512(perm32);
        T.bc = _mm512_loadu_si512(bc);
        switch (ns32) {
            case 0: kb_q4_loop512(x, kind, n, bs, b0, b1, &T, 0, identity, bnd15, bcodes, zero_code, nan_code, cell_base, cell_bounds, cell_slots, packed, absmax); break;
            case 1: kb_q4_loop512(x, kind, n, bs, b0, b1, &T, 1, identity, bnd15, bcodes, zero_code, nan_code, cell_base, cell_bounds, cell_slots, packed, absmax); break;
            case 2: kb_q4_loop512(x, kind, n, bs, b0, b1, &T, 2, identity, bnd15, bcodes, zero_code, nan_code, cell_base, cell_bounds, cell_slots, packed, absmax); break;
            case 3: kb_q4_loop512(x, kind, n, bs, b0, b1, &T, 3, identity, bnd15, bcodes, zero_code, nan_code, cell_base, cell_bounds, cell_slots, packed, absmax); break;
            default: kb_q4_loop512(x, kind, n, bs, b0, b1, &T, 4, identity, bnd15, bcodes, zero_code, nan_code, cell_base, cell_bounds, cell_slots, packed, absmax);
        }
    }
    #else
    #define KB_HAS_512 0
    static void kb_q4_range512(const void* x, int kind, int64_t n, int64_t bs, int64_t b0, int64_t b1,
            const int32_t* base32, const float* bnd32, int ns32, const float* bnd15, const uint8_t* bcodes, int nbc,
            int identity, uint8_t zero_code, uint8_t nan_code, const int32_t* cell_base, const float* cell_bounds,
            int cell_slots, uint8_t* packed, float* absmax) {}
    #endif

    #if defined(__AVX2__) && defined(__F16C__)
    #define KB_HAS_256 1
    /* the 8-cell plan in registers. Index i = floor(min(4 s, 3.5)) is in [-4, 3]: vpermd/vpermps read its low 3 bits,
       i & 7, which is cell i + 4 rotated by 4, so each register holds cells 4-7, then 0-3. */
    typedef struct { __m256i base; __m256 bnd[4]; __m256i bc; } kb_t256;

    static inline __attribute__((always_inline)) uint32_t kb_absmax256(const void* x, int kind, int64_t start, int64_t len) {
        int64_t i;
        if (kind == 0) {
            const float* xf = (const float*)x + start;
            __m256i acc = _mm256_setzero_si256();
            const __m256i mask = _mm256_set1_epi32(0x7FFFFFFF);
            for (i = 0; i < len; i += 8)
                acc = _mm256_max_epu32(acc, _mm256_and_si256(_mm256_loadu_si256((const __m256i*)(xf + i)), mask));
            __m128i a = _mm_max_epu32(_mm256_castsi256_si128(acc), _mm256_extracti128_si256(acc, 1));
            a = _mm_max_epu32(a, _mm_shuffle_epi32(a, 0x4E));
            a = _mm_max_epu32(a, _mm_shuffle_epi32(a, 0xB1));
            return (uint32_t)_mm_cvtsi128_si32(a);
        }
        const uint16_t* u = (const uint16_t*)x + start;
        __m256i acc = _mm256_setzero_si256();
        const __m256i mask = _mm256_set1_epi16(0x7FFF);
        for (i = 0; i < len; i += 16)
            acc = _mm256_max_epu16(acc, _mm256_and_si256(_mm256_loadu_si256((const __m256i*)(u + i)), mask));
        __m128i b = _mm_max_epu16(_mm256_castsi256_si128(acc), _mm256_extracti128_si256(acc, 1));
        uint32_t h = 0xFFFFu - ((uint32_t)_mm_cvtsi128_si32(_mm_minpos_epu16(_mm_xor_si128(b, _mm_set1_epi32(-1)))) & 0xFFFFu);
        return kind == 1 ? h << 16 : kb_f32_bits(kb_f16_to_f32((uint16_t)h));
    }

    static inline __attribute__((always_inline)) __m256i kb_count8_256(__m256 f, __m256 rv, const kb_t256* T, int ns,
                                                                       int clamp) {
        __m256 s = _mm256_mul_ps(f, rv);
        if (clamp) s = _mm256_min_ps(_mm256_max_ps(s, _mm256_set1_ps(-1.0f)), _mm256_set1_ps(1.0f));
        __m256i i = _mm256_cvtps_epi32(_mm256_floor_ps(_mm256_min_ps(_mm256_mul_ps(s, _mm256_set1_ps(4.0f)),
                                                                     _mm256_set1_ps(3.5f))));
        __m256i k = _mm256_permutevar8x32_epi32(T->base, i);
        for (int j = 0; j < ns; j++)   /* ns is a constant: unrolled */
            k = _mm256_sub_epi32(k, _mm256_castps_si256(_mm256_cmp_ps(_mm256_permutevar8x32_ps(T->bnd[j], i), s, _CMP_LT_OQ)));
        return k;
    }

    static inline __attribute__((always_inline)) void kb_codes256(const void* x, int kind, int64_t start, int64_t len,
            const kb_t256* T, int ns, int clamp, int identity, float r, uint8_t* out) {
        const uint16_t* u = (const uint16_t*)x + start;
        const float* xf = (const float*)x + start;
        const __m256 rv = _mm256_set1_ps(r);
        const __m256i pair = _mm256_set1_epi16(0x0110), zero = _mm256_setzero_si256();
        for (int64_t i = 0; i < len; i += 32) {
            __m256 f0, f1, f2, f3;
            if (kind == 1) {   /* unpacked in lanes: f0 = elements 0-3 | 8-11, f1 = 4-7 | 12-15, f2, f3 the next 16 */
                __m256i v0 = _mm256_loadu_si256((const __m256i*)(u + i)), v1 = _mm256_loadu_si256((const __m256i*)(u + i + 16));
                f0 = _mm256_castsi256_ps(_mm256_unpacklo_epi16(zero, v0));
                f1 = _mm256_castsi256_ps(_mm256_unpackhi_epi16(zero, v0));
                f2 = _mm256_castsi256_ps(_mm256_unpacklo_epi16(zero, v1));
                f3 = _mm256_castsi256_ps(_mm256_unpackhi_epi16(zero, v1));
            } else if (kind == 2) {
                f0 = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i*)(u + i)));
                f1 = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i*)(u + i + 8)));
                f2 = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i*)(u + i + 16)));
                f3 = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i*)(u + i + 24)));
            } else {
                f0 = _mm256_loadu_ps(xf + i);
                f1 = _mm256_loadu_ps(xf + i + 8);
                f2 = _mm256_loadu_ps(xf + i + 16);
                f3 = _mm256_loadu_ps(xf + i + 24);
            }
            __m256i k0 = kb_count8_256(f0, rv, T, ns, clamp), k1 = kb_count8_256(f1, rv, T, ns, clamp);
            __m256i k2 = kb_count8_256(f2, rv, T, ns, clamp), k3 = kb_count8_256(f3, rv, T, ns, clamp);
            /* in-lane packs: pairs (2j, 2j+1) stay adjacent; the halves of each 16-byte result are ordered by a
               final word (fp32/fp16) or dword (bf16, unpacked in lanes) interleave */
            __m256i b = _mm256_packus_epi16(_mm256_packus_epi32(k0, k1), _mm256_packus_epi32(k2, k3));
            if (!identity) b = _mm256_shuffle_epi8(T->bc, b);
            __m256i p = _mm256_maddubs_epi16(b, pair);
            p = _mm256_packus_epi16(p, p);
            __m128i lo = _mm256_castsi256_si128(p), hi = _mm256_extracti128_si256(p, 1);
            _mm_storeu_si128((__m128i*)(out + (i >> 1)), kind == 1 ? _mm_unpacklo_epi32(lo, hi) : _mm_unpacklo_epi16(lo, hi));
        }
    }

    KB_Q4_LOOP(256)

    /* blocks [b0, b1) with the 8-cell plan (0 <= cell_slots <= 4); bs % 32 == 0 */
    static void kb_q4_range256(const void* x, int kind, int64_t n, int64_t bs, int64_t b0, int64_t b1,
            const float* bnd15, const uint8_t* bcodes, int nbc, int identity, uint8_t zero_code, uint8_t nan_code,
            const int32_t* cell_base, const float* cell_bounds, int cell_slots, uint8_t* packed, float* absmax) {
        kb_t256 T;
        int32_t base[8];
        float bnd[8];
        uint8_t bc[32];
        for (int c = 0; c < 8; c++) base[c] = cell_base[(c + 4) & 7];
        T.base = _mm256_loadu_si256((const __m256i*)base);
        for (int j = 0; j < 4; j++) {
            for (int c = 0; c < 8; c++) bnd[c] = cell_bounds[8 * j + ((c + 4) & 7)];
            T.bnd[j] = _mm256_loadu_ps(bnd);
        }
        for (int e = 0; e < 32; e++) bc[e] = (e & 15) < nbc ? bcodes[e & 15] : 0;   /* counts are < nbc */
        T.bc = _mm256_loadu_si256((const __m256i*)bc);
        switch (cell_slots) {
            case 0: kb_q4_loop256(x, kind, n, bs, b0, b1, &T, 0, identity, bnd15, bcodes, zero_code, nan_code, cell_base, cell_bounds, cell_slots, packed, absmax); break;
            case 1: kb_q4_loop256(x, kind, n, bs, b0, b1, &T, 1, identity, bnd15, bcodes, zero_code, nan_code, cell_base, cell_bounds, cell_slots, packed, absmax); break;
            case 2: kb_q4_loop256(x, kind, n, bs, b0, b1, &T, 2, identity, bnd15, bcodes, zero_code, nan_code, cell_base, cell_bounds, cell_slots, packed, absmax); break;
            case 3: kb_q4_loop256(x, kind, n, bs, b0, b1, &T, 3, identity, bnd15, bcodes, zero_code, nan_code, cell_base, cell_bounds, cell_slots, packed, absmax); break;
            default: kb_q4_loop256(x, kind, n, bs, b0, b1, &T, 4, identity, bnd15, bcodes, zero_code, nan_code, cell_base, cell_bounds, cell_slots, packed, absmax);
        }
    }
    #else
    #define KB_HAS_256 0
    static void kb_q4_range256(const void* x, int kind, int64_t n, int64_t bs, int64_t b0, int64_t b1,
            const float* bnd15, const uint8_t* bcodes, int nbc, int identity, uint8_t zero_code, uint8_t nan_code,
            const int32_t* cell_base, const float* cell_bounds, int cell_slots, uint8_t* packed, float* absmax) {}
    #endif
    /* the widest fast path compiled: 2 AVX-512, 1 AVX2, 0 none (every block by kb_quant4_block) */
    #define KB_SIMD (KB_HAS_512 ? 2 : (KB_HAS_256 ? 1 : 0))

    static inline void kb_store(float* vals, int64_t len, int kind, void* out, int64_t start) {
        if (kind == 0) { memcpy((float*)out + start, vals, (size_t)len * 4); return; }
        uint16_t* o = (uint16_t*)out + start;
        if (kind == 1) { for (int64_t i = 0; i < len; i++) o[i] = kb_f32_to_bf16(vals[i]); }
        else { for (int64_t i = 0; i < len; i++) o[i] = kb_f32_to_f16(vals[i]); }
    }

    static inline void kb_dequant8_block(const uint8_t* codes, float am, const float* table, int64_t start,
            int64_t end, int kind, void* out) {
        float vals[KB_MAXBLOCK];
        int64_t len = end - start;
        const uint8_t* c = codes + start;
        if (kind == 0) {
            float* o = (float*)out + start;
            for (int64_t i = 0; i < len; i++) o[i] = table[c[i]] * am;
            return;
        }
        if (len >= 1024) {   /* 16-bit output of a large block: round each of the 256 products once, then look up */
            uint16_t v[256];
            for (int k = 0; k < 256; k++) { float f = table[k] * am; v[k] = kind == 1 ? kb_f32_to_bf16(f) : kb_f32_to_f16(f); }
            uint16_t* o = (uint16_t*)out + start;
            for (int64_t i = 0; i < len; i++) o[i] = v[c[i]];
            return;
        }
        for (int64_t i = 0; i < len; i++) vals[i] = table[c[i]] * am;
        kb_store(vals, len, kind, out, start);
    }

    /* 16-bit outputs: the block's 16 possible values rounded once each (the same rounding of the same float32
       product as element by element), then a byte -> two 16-bit values lookup. SSSE3: pshufb looks up 16
       codes at a time in the values' low-byte and high-byte tables, and byte/word unpacks put each value's two
       bytes together and the high-nibble (even) and low-nibble (odd) elements in order. */
    static inline void kb_dequant4_block16(const uint8_t* p, const float* t, float am, int64_t len, int kind,
                                           uint16_t* o) {
        uint16_t v[16];
        int64_t j = 0, npairs = len >> 1;
    #if defined(__AVX2__) && defined(__F16C__)
        uint32_t ab = kb_f32_bits(am);
        if ((ab & 0x7F800000u) != 0x7F800000u) {
            /* a finite absmax: the 16 products rounded 8 at a time (bf16: the integer round-half-even
               of kb_f32_to_bf16; fp16: F16C, the same IEEE rounding as kb_f32_to_f16 for finite values) */
            __m256 q0 = _mm256_loadu_ps(t), q1 = _mm256_loadu_ps(t + 8);   /* t: the float32 products */
            __m256i w;
            if (kind == 1) {
                const __m256i bias = _mm256_set1_epi32(0x7FFF), one = _mm256_set1_epi32(1);
                __m256i u0 = _mm256_castps_si256(q0), u1 = _mm256_castps_si256(q1);
                u0 = _mm256_srli_epi32(_mm256_add_epi32(_mm256_add_epi32(u0, bias), _mm256_and_si256(_mm256_srli_epi32(u0, 16), one)), 16);
                u1 = _mm256_srli_epi32(_mm256_add_epi32(_mm256_add_epi32(u1, bias), _mm256_and_si256(_mm256_srli_epi32(u1, 16), one)), 16);
                w = _mm256_permute4x64_epi64(_mm256_packus_epi32(u0, u1), 0xD8);     /* v0..v15 in order */
            } else {
                w = _mm256_set_m128i(_mm256_cvtps_ph(q1, _MM_FROUND_TO_NEAREST_INT),
                                     _mm256_cvtps_ph(q0, _MM_FROUND_TO_NEAREST_INT));
            }
            _mm256_storeu_si256((__m256i*)v, w);
        } else {
            for (int k = 0; k < 16; k++) v[k] = kind == 1 ? kb_f32_to_bf16(t[k]) : kb_f32_to_f16(t[k]);
        }
    #else
        for (int k = 0; k < 16; k++) v[k] = kind == 1 ? kb_f32_to_bf16(t[k]) : kb_f32_to_f16(t[k]);
    #endif
    #if KB_HAS_512
        /* AVX-512 (VBMI machines; vpermw is AVX512BW): 32 bytes -> 64 values per step. Each byte widened to a word,
           its high nibble (even element) and low nibble (odd element) looked up among the 16 values by vpermw, and
           the two vectors interleaved by vpermt2w (index bit 5 picks the second source). */
        {
            const __m512i tab = _mm512_castsi256_si512(_mm256_loadu_si256((const __m256i*)v));
            const __m512i m0f = _mm512_set1_epi16(0x0F);
            const __m512i even_odd0 = _mm512_set_epi16(47, 15, 46, 14, 45, 13, 44, 12, 43, 11, 42, 10, 41, 9, 40, 8,
                                                       39, 7, 38, 6, 37, 5, 36, 4, 35, 3, 34, 2, 33, 1, 32, 0);
            const __m512i even_odd1 = _mm512_add_epi16(even_odd0, _mm512_set1_epi16(16));
            for (; j + 32 <= npairs; j += 32) {
                __m512i w = _mm512_cvtepu8_epi16(_mm256_loadu_si256((const __m256i*)(p + j)));
                __m512i ve = _mm512_permutexvar_epi16(_mm512_srli_epi16(w, 4), tab);
                __m512i vo = _mm512_permutexvar_epi16(_mm512_and_si512(w, m0f), tab);
                _mm512_storeu_si512((void*)(o + 2 * j), _mm512_permutex2var_epi16(ve, even_odd0, vo));
                _mm512_storeu_si512((void*)(o + 2 * j + 32), _mm512_permutex2var_epi16(ve, even_odd1, vo));
            }
        }
    #endif
    #if defined(__SSSE3__)
        const __m128i split = _mm_setr_epi8(0, 2, 4, 6, 8, 10, 12, 14, 1, 3, 5, 7, 9, 11, 13, 15);
        __m128i a = _mm_shuffle_epi8(_mm_loadu_si128((const __m128i*)v), split),         /* lo0-7 | hi0-7 */
                b = _mm_shuffle_epi8(_mm_loadu_si128((const __m128i*)(v + 8)), split);   /* lo8-15 | hi8-15 */
        const __m128i tlo = _mm_unpacklo_epi64(a, b), thi = _mm_unpackhi_epi64(a, b);
        const __m128i m0f = _mm_set1_epi8(0x0F);
        for (; j + 16 <= npairs; j += 16) {
            __m128i b = _mm_loadu_si128((const __m128i*)(p + j));
            __m128i hn = _mm_and_si128(_mm_srli_epi16(b, 4), m0f), ln = _mm_and_si128(b, m0f);
            __m128i even_l = _mm_shuffle_epi8(tlo, hn), even_h = _mm_shuffle_epi8(thi, hn);
            __m128i odd_l = _mm_shuffle_epi8(tlo, ln), odd_h = _mm_shuffle_epi8(thi, ln);
            __m128i e0 = _mm_unpacklo_epi8(even_l, even_h), e1 = _mm_unpackhi_epi8(even_l, even_h);  /* elements 0, 2, .. */
            __m128i d0 = _mm_unpacklo_epi8(odd_l, odd_h), d1 = _mm_unpackhi_epi8(odd_l, odd_h);      /* elements 1, 3, .. */
            __m128i* q = (__m128i*)(o + 2 * j);
            _mm_storeu_si128(q, _mm_unpacklo_epi16(e0, d0));
            _mm_storeu_si128(q + 1, _mm_unpackhi_epi16(e0, d0));
            _mm_storeu_si128(q + 2, _mm_unpacklo_epi16(e1, d1));
            _mm_storeu_si128(q + 3, _mm_unpackhi_epi16(e1, d1));
        }
    #endif
        for (; j < npairs; j++) { uint8_t b = p[j]; o[2 * j] = v[b >> 4]; o[2 * j + 1] = v[b & 15]; }
        if (len & 1) o[len - 1] = v[p[npairs] >> 4];
    }

    static inline void kb_dequant4_block(const uint8_t* packed, float am, const float* table, int64_t start,
            int64_t end, int kind, void* out) {
        float vals[KB_MAXBLOCK + 1];
        float t[16];
        int64_t len = end - start, nb = (len + 1) >> 1;
        for (int k = 0; k < 16; k++) t[k] = table[k] * am;   /* same float32 product per code */
        const uint8_t* p = packed + (start >> 1);
        if (kind != 0) { kb_dequant4_block16(p, t, am, len, kind, (uint16_t*)out + start); return; }
        float* dst = (float*)out + start;
        if (len & 1) dst = vals;
        int64_t j = 0;
    #if KB_HAS_512
        {   /* 16 bytes -> 32 floats per step: the 16-bit path's lookup (above) with vpermps and vpermt2ps */
            const __m512 tf = _mm512_loadu_ps(t);
            const __m512i m0f = _mm512_set1_epi32(0x0F);
            const __m512i even_odd0 = _mm512_set_epi32(23, 7, 22, 6, 21, 5, 20, 4, 19, 3, 18, 2, 17, 1, 16, 0);
            const __m512i even_odd1 = _mm512_add_epi32(even_odd0, _mm512_set1_epi32(8));
            for (; j + 16 <= nb; j += 16) {
                __m512i w = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i*)(p + j)));
                __m512 ve = _mm512_permutexvar_ps(_mm512_srli_epi32(w, 4), tf);
                __m512 vo = _mm512_permutexvar_ps(_mm512_and_si512(w, m0f), tf);
                _mm512_storeu_ps(dst + 2 * j, _mm512_permutex2var_ps(ve, even_odd0, vo));
                _mm512_storeu_ps(dst + 2 * j + 16, _mm512_permutex2var_ps(ve, even_odd1, vo));
            }
        }
    #endif
        for (; j < nb; j++) { uint8_t b = p[j]; dst[2 * j] = t[b >> 4]; dst[2 * j + 1] = t[b & 15]; }
        if (len & 1) kb_store(vals, len, kind, out, start);
    }

    /* stochastic rounding (see workbench/backends/reference/quant.py): with lo <= s < hi the
       representable values bracketing s in bucket order, round up iff rand < (s-lo)/(hi-lo).
       Non-finite block: s by the same IEEE rule, unclamped (NaN, or +-0 under an Inf absmax); a NaN
       s gets what the reference's formula gives it: bucketize -> k = m-1, s >= values[k] false ->
       lo = m-2, p = NaN, rand < NaN false -> bucket_codes[m-2] */
    static inline void kb_quant8_stoch_block(const void* x, int kind, int64_t start, int64_t end, int is_tail,
            const float* bounds_pad, int64_t npad, const uint8_t* bcodes, const float* values, int64_t nvalues,
            const float* rnd, uint8_t* codes, float* absmax_b) {
        float buf[KB_MAXBLOCK];
        int64_t len = end - start, last = nvalues - 1;
        uint8_t nan_code = bcodes[last > 0 ? last - 1 : 0];
        kb_load(x, kind, start, len, buf);
        uint32_t m = kb_scale(buf, len, is_tail, absmax_b);
        if (m >= KB_EXP) {
            float am = kb_bits_f32(m), rc = 1.0f / am;   /* NaN, or 0 for Inf */
            for (int64_t i = 0; i < len; i++) buf[i] = is_tail ? buf[i] / am : buf[i] * rc;
        }
        uint8_t* out = codes + start;
        const float* r = rnd + start;
        for (int64_t i = 0; i < len; i++) {
            float s = buf[i];
            if (s != s) { out[i] = nan_code; continue; }
            int64_t k = kb_bsearch(s, bounds_pad, npad);
            int64_t lo = s >= values[k] ? k : k - 1;
            if (lo < 0 || lo >= last) { out[i] = bcodes[k]; continue; }
            float p = (s - values[lo]) / (values[lo + 1] - values[lo]);
            out[i] = r[i] < p ? bcodes[lo + 1] : bcodes[lo];
        }
    }

    /* 8-bit search on the monotone integer image of float32 (numba_kernels.cpu.quant.ord_lut):
       entry = thr << 16 | hi << 8 | lo; one 4-byte load and an integer compare per value */
    static inline uint8_t kb_ordlut_code(const uint32_t* lut, float s) {
        uint32_t u = kb_f32_bits(s + 0.0f);   /* -0.0 -> +0.0 */
        uint32_t o = u ^ ((uint32_t)((int32_t)u >> 31) | 0x80000000u);
        uint32_t e = lut[o >> 16];
        return (uint8_t)(e >> (((o & 0xFFFFu) >= (e >> 16)) ? 8 : 0));
    }
    static inline void kb_quant8_ordlut_block(const void* x, int kind, int64_t start, int64_t end, int is_tail,
            const uint32_t* lut, uint8_t nan_code, uint8_t zero_code, uint8_t* codes, float* absmax_b) {
        float buf[KB_MAXBLOCK];
        int64_t len = end - start;
        kb_load(x, kind, start, len, buf);
        uint32_t m = kb_scale(buf, len, is_tail, absmax_b);
        uint8_t* out = codes + start;
        if (m >= KB_EXP) { kb_nonfinite_codes(buf, len, m, nan_code, zero_code, out); return; }
        for (int64_t i = 0; i < len; i++) out[i] = kb_ordlut_code(lut, buf[i]);
    }
    """
    int kb_max_threads() nogil
    uint8_t kb_code_of(float s, int mode, const float* bnd15, const uint8_t* bcodes, const float* kbound,
                       const uint8_t* klo, const uint8_t* khi, const float* bounds_pad, int64_t npad) nogil
    uint8_t kb_ordlut_code(const uint32_t* lut, float s) nogil
    void kb_quant8_ordlut_block(const void* x, int kind, int64_t start, int64_t end, int is_tail,
                                const uint32_t* lut, uint8_t nan_code, uint8_t zero_code, uint8_t* codes,
                                float* absmax_b) nogil
    void kb_quant8_block(const void* x, int kind, int64_t start, int64_t end, int is_tail, int mode,
                         const float* bnd15, const uint8_t* bcodes, const float* kbound, const uint8_t* klo,
                         const uint8_t* khi, const float* bounds_pad, int64_t npad, uint8_t nan_code,
                         uint8_t zero_code, uint8_t* codes, float* absmax_b) nogil
    void kb_quant4_block(const void* x, int kind, int64_t start, int64_t end, int is_tail, const float* bnd15,
                         const uint8_t* bcodes, int identity, uint8_t zero_code, uint8_t nan_code,
                         const int32_t* cell_base, const float* cell_bounds, int cell_slots,
                         uint8_t* packed, float* absmax_b) nogil
    int KB_HAS_CELLS
    int KB_SIMD
    void kb_q4_range512(const void* x, int kind, int64_t n, int64_t bs, int64_t b0, int64_t b1,
                        const int32_t* base32, const float* bnd32, int ns32, const float* bnd15, const uint8_t* bcodes,
                        int nbc, int identity, uint8_t zero_code, uint8_t nan_code, const int32_t* cell_base,
                        const float* cell_bounds, int cell_slots, uint8_t* packed, float* absmax) nogil
    void kb_q4_range256(const void* x, int kind, int64_t n, int64_t bs, int64_t b0, int64_t b1,
                        const float* bnd15, const uint8_t* bcodes, int nbc, int identity, uint8_t zero_code,
                        uint8_t nan_code, const int32_t* cell_base, const float* cell_bounds, int cell_slots,
                        uint8_t* packed, float* absmax) nogil
    void kb_quant8_stoch_block(const void* x, int kind, int64_t start, int64_t end, int is_tail,
                               const float* bounds_pad, int64_t npad, const uint8_t* bcodes, const float* values,
                               int64_t nvalues, const float* rnd, uint8_t* codes, float* absmax_b) nogil
    void kb_dequant8_block(const uint8_t* codes, float am, const float* table, int64_t start, int64_t end,
                           int kind, void* out) nogil
    void kb_dequant4_block(const uint8_t* packed, float am, const float* table, int64_t start, int64_t end,
                           int kind, void* out) nogil


cdef int64_t _nblocks(int64_t n, int64_t blocksize) except -1:
    """The block count; the per-block kernels work in stack buffers of KB_MAXBLOCK values."""
    if blocksize < 1 or blocksize > 4096:
        raise ValueError(f"blocksize: expected 1..4096 (the kernels' block buffers), got {blocksize}")
    return (n + blocksize - 1) // blocksize


def max_threads():
    return kb_max_threads()


cdef inline const void* _addr(object arr):
    return <const void*><size_t>arr.ctypes.data


def quantize_blockwise(x, int kind, int64_t blocksize, int mode, const float[::1] bnd15,
                       const uint8_t[::1] bcodes, const float[::1] kbound, const uint8_t[::1] klo,
                       const uint8_t[::1] khi, const float[::1] bounds_pad, uint8_t[::1] codes, float[::1] absmax):
    cdef int64_t n = x.shape[0]
    # non-finite blocks: NaN -> bucket_codes[-1], +-0 -> the code of 0.0
    cdef uint8_t nan_code = bcodes[bcodes.shape[0] - 1]
    cdef uint8_t zero_code = kb_code_of(0.0, mode, &bnd15[0], &bcodes[0], &kbound[0], &klo[0], &khi[0],
                                        &bounds_pad[0], bounds_pad.shape[0])
    cdef int64_t nblocks = _nblocks(n, blocksize)
    cdef const void* px = _addr(x)
    cdef int64_t b, start, end
    for b in prange(nblocks, nogil=True, schedule="static"):
        start = b * blocksize
        end = start + blocksize if start + blocksize < n else n
        kb_quant8_block(px, kind, start, end, end - start < blocksize, mode, &bnd15[0], &bcodes[0], &kbound[0],
                        &klo[0], &khi[0], &bounds_pad[0], bounds_pad.shape[0], nan_code, zero_code, &codes[0],
                        &absmax[b])


def quantize_blockwise_stochastic(x, int kind, const float[::1] bounds_pad, const uint8_t[::1] bcodes,
                                  const float[::1] values, int64_t blocksize, const float[::1] rand,
                                  uint8_t[::1] codes, float[::1] absmax):
    cdef int64_t n = x.shape[0]
    cdef int64_t nblocks = _nblocks(n, blocksize)
    cdef const void* px = _addr(x)
    cdef int64_t b, start, end
    if rand.shape[0] < n:
        raise ValueError("rand must hold one uniform per element")
    for b in prange(nblocks, nogil=True, schedule="static"):
        start = b * blocksize
        end = start + blocksize if start + blocksize < n else n
        kb_quant8_stoch_block(px, kind, start, end, end - start < blocksize, &bounds_pad[0], bounds_pad.shape[0],
                              &bcodes[0], &values[0], values.shape[0], &rand[0], &codes[0], &absmax[b])


def quantize_blockwise_ordlut(x, int kind, int64_t blocksize, const uint32_t[::1] lut, uint8_t[::1] codes,
                              float[::1] absmax):
    cdef int64_t n = x.shape[0]
    cdef int64_t nblocks = _nblocks(n, blocksize)
    cdef const void* px = _addr(x)
    cdef int64_t b, start, end
    if lut.shape[0] != 65536:
        raise ValueError("lut must have 65536 entries")
    # non-finite blocks: the last cell (above +inf) holds bucket_codes[-1]; 0.0's code from the table
    cdef uint8_t nan_code = <uint8_t>(lut[0xFFFF] & 0xFF)
    cdef uint8_t zero_code = kb_ordlut_code(&lut[0], 0.0)
    for b in prange(nblocks, nogil=True, schedule="static"):
        start = b * blocksize
        end = start + blocksize if start + blocksize < n else n
        kb_quant8_ordlut_block(px, kind, start, end, end - start < blocksize, &lut[0], nan_code, zero_code, &codes[0],
                               &absmax[b])


HAS_CELLS = bool(KB_HAS_CELLS)   # the AVX2 cell-plan count of staged blocks (else the 15-bound count)
SIMD = KB_SIMD   # quantize_4bit's widest fast path: 2 AVX-512 (32 cells), 1 AVX2 (8 cells), 0 none
# blocks per scheduled chunk: about 64K values, so a core that the VM takes away mid-call leaves a little
# of the work behind, which the other thread picks up, instead of half of it
cdef int64_t _CHUNK_VALUES = 1 << 16


def quantize_4bit(x, int kind, int64_t blocksize, const float[::1] bnd15, const uint8_t[::1] bcodes,
                  bint identity, uint8_t zero_code, const int32_t[::1] cell_base, const float[::1] cell_bounds,
                  int cell_slots, uint8_t[::1] packed, float[::1] absmax, cells32=None, int simd=2):
    """Codes by the cell plan (cell_base: 8 counts, cell_bounds: 4 x 8 slots, cell_slots compares; -1: the
    15-bound count instead), the same codes either way. ``cells32``: the 32-cell plan (base int32[32], bounds
    float32[128], slots) of the AVX-512 path. ``simd`` caps the fast path (see SIMD; lower values let the tests
    compare every path on one machine)."""
    cdef int64_t n = x.shape[0]
    cdef uint8_t nan_code
    cdef int64_t nblocks = _nblocks(n, blocksize)
    cdef const void* px = _addr(x)
    cdef int64_t b, start, end, c, nchunks, per
    cdef int level = simd if simd < KB_SIMD else KB_SIMD
    cdef int nbc = bcodes.shape[0]
    cdef const int32_t[::1] base32
    cdef const float[::1] bnd32
    cdef int ns32 = -1
    if bnd15.shape[0] != 15 or cell_base.shape[0] != 8 or cell_bounds.shape[0] != 32:
        raise ValueError("quantize_4bit: expected 15 bounds, 8 cell counts and 32 cell bounds "
                         f"(got {bnd15.shape[0]}, {cell_base.shape[0]}, {cell_bounds.shape[0]})")
    if nbc < 1 or nbc > 16 or packed.shape[0] < (n + 1) // 2 or absmax.shape[0] < nblocks:
        raise ValueError(f"quantize_4bit: expected 1..16 bucket codes, {(n + 1) // 2} packed bytes and {nblocks} "
                         f"absmax values (got {nbc}, {packed.shape[0]}, {absmax.shape[0]})")
    if x.itemsize != (4 if kind == 0 else 2) or kind < 0 or kind > 2:
        raise ValueError(f"quantize_4bit: kind {kind} does not match {x.itemsize}-byte elements")
    nan_code = bcodes[nbc - 1]  # non-finite blocks
    if cells32 is not None:
        base32, bnd32, ns32 = cells32
        if base32.shape[0] != 32 or bnd32.shape[0] != 128 or ns32 > 4:
            raise ValueError(f"quantize_4bit: expected a 32-cell plan of 32 counts, 128 bounds and <= 4 slots "
                             f"(got {base32.shape[0]}, {bnd32.shape[0]}, {ns32})")
    if n == 0:
        return
    if blocksize % 32 or not (level == 2 and ns32 >= 0 or level >= 1 and cell_slots >= 0):
        for b in prange(nblocks, nogil=True, schedule="static"):
            start = b * blocksize
            end = start + blocksize if start + blocksize < n else n
            kb_quant4_block(px, kind, start, end, end - start < blocksize, &bnd15[0], &bcodes[0], identity, zero_code,
                            nan_code, &cell_base[0], &cell_bounds[0], cell_slots, &packed[0], &absmax[b])
        return
    per = _CHUNK_VALUES // blocksize if _CHUNK_VALUES > blocksize else 1
    nchunks = (nblocks + per - 1) // per
    if level == 2 and ns32 >= 0:
        for c in prange(nchunks, nogil=True, schedule="dynamic"):
            kb_q4_range512(px, kind, n, blocksize, c * per, min(c * per + per, nblocks), &base32[0], &bnd32[0], ns32,
                           &bnd15[0], &bcodes[0], nbc, identity, zero_code, nan_code, &cell_base[0], &cell_bounds[0],
                           cell_slots, &packed[0], &absmax[0])
    else:
        for c in prange(nchunks, nogil=True, schedule="dynamic"):
            kb_q4_range256(px, kind, n, blocksize, c * per, min(c * per + per, nblocks), &bnd15[0], &bcodes[0], nbc,
                           identity, zero_code, nan_code, &cell_base[0], &cell_bounds[0], cell_slots, &packed[0],
                           &absmax[0])


def dequantize_blockwise(const uint8_t[::1] codes, const float[::1] absmax, const float[::1] table,
                         int64_t blocksize, int kind, out):
    cdef int64_t n = codes.shape[0]
    cdef int64_t nblocks = _nblocks(n, blocksize)
    cdef float tab[256]   # the table padded with NaN: every uint8 code reads inside it
    cdef int k
    if absmax.shape[0] < nblocks:
        raise ValueError(f"dequantize_blockwise: expected {nblocks} absmax values, got {absmax.shape[0]}")
    for k in range(256):
        tab[k] = table[k] if k < table.shape[0] else NAN
    cdef void* po = <void*><size_t>out.ctypes.data
    cdef int64_t b, start, end
    for b in prange(nblocks, nogil=True, schedule="static"):
        start = b * blocksize
        end = start + blocksize if start + blocksize < n else n
        kb_dequant8_block(&codes[0], absmax[b], tab, start, end, kind, po)


def dequantize_4bit(const uint8_t[::1] packed, const float[::1] absmax, const float[::1] table, int64_t blocksize,
                    int64_t n, int kind, out):
    cdef int64_t nblocks = _nblocks(n, blocksize)
    cdef void* po = <void*><size_t>out.ctypes.data
    cdef int64_t b, start, end
    cdef float tab[16]    # the table padded with NaN: every 4-bit code reads inside it
    cdef int k
    if absmax.shape[0] < nblocks or packed.shape[0] < (n + 1) // 2:
        raise ValueError(f"dequantize_4bit: expected {nblocks} absmax values and {(n + 1) // 2} packed bytes "
                         f"(got {absmax.shape[0]}, {packed.shape[0]})")
    for k in range(16):
        tab[k] = table[k] if k < table.shape[0] else NAN
    for b in prange(nblocks, nogil=True, schedule="static"):
        start = b * blocksize
        end = start + blocksize if start + blocksize < n else n
        kb_dequant4_block(&packed[0], absmax[b], tab, start, end, kind, po)


def resolve_nested(const uint8_t[::1] absmax_8bit, const float[::1] absmax2, const float[::1] code, float offset,
                   float[::1] out):
    """The double-quantized absmax decoded (rule: workbench/backends/reference/quant.py):
    out[b] = float32(code[q[b]] * absmax2[b // 256]) + offset (two roundings, no FMA)."""
    cdef int64_t b, nb = absmax_8bit.shape[0]
    cdef float p
    for b in prange(nb, nogil=True, schedule="static"):
        p = code[absmax_8bit[b]] * absmax2[b >> 8]
        out[b] = p + offset
