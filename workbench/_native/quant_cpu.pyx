# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""Cython/OpenMP CPU kernels for blockwise 8-bit and 4-bit quantization with any codebook.

``prange`` hands one quantization block at a time to each OpenMP thread; the per-block
work is plain C (below) written so GCC vectorizes it: the block is widened into a float32
stack buffer, reduced to its absmax, scaled, and encoded while it sits in L1. Rounding is
the spec's (docs/ARCHITECTURE.md): float32, no FMA contraction (setup.py passes
-ffp-contract=off), reciprocal-multiply for full blocks, division in the tail block.
Search plans come from workbench/codebook_tables.py (cpu_search_plan).

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
       kb_count15, exactly. AVX2: each 8-entry table is one register, looked up by vpermd/vpermps, so 8 values
       cost ~15 vector instructions (NF4: 3 slots) instead of 15 compares and 15 adds. NS is a constant at each
       call.
       SC: buf already scaled (0), or scaled here as kb_scale would (1: times r, a full block; 2: divided by r,
       the tail block; then clamped to [-1, 1]), which saves kb_scale's store and reload of the block. */
    static inline __attribute__((always_inline)) float kb_scaled(float v, int sc, float r) {
        if (sc == 0) return v;
        float s = sc == 1 ? v * r : v / r;
        return s > 1.0f ? 1.0f : (s < -1.0f ? -1.0f : s);
    }
    static inline __attribute__((always_inline)) void kb_cells_ns(const float* buf, int64_t len, const int32_t* base,
                                                                  const float* slot, int ns, uint8_t* cnt,
                                                                  uint8_t* packed, int sc, float r) {
        int64_t i = 0;
    #if defined(__AVX2__)
        const __m256i basev = _mm256_loadu_si256((const __m256i*)base);
        const __m256 t0 = _mm256_loadu_ps(slot), t1 = _mm256_loadu_ps(slot + 8), t2 = _mm256_loadu_ps(slot + 16),
                     t3 = _mm256_loadu_ps(slot + 24), four = _mm256_set1_ps(4.0f);
        const __m256i off = _mm256_set1_epi32(4), top = _mm256_set1_epi32(7);
        const __m256 rv = _mm256_set1_ps(r), one = _mm256_set1_ps(1.0f), mone = _mm256_set1_ps(-1.0f);
        for (; i + 8 <= len; i += 8) {
            __m256 s = _mm256_loadu_ps(buf + i);
            if (sc) {   /* the values are finite here: min/max clamp as the ternaries of kb_scale do */
                s = sc == 1 ? _mm256_mul_ps(s, rv) : _mm256_div_ps(s, rv);
                s = _mm256_min_ps(_mm256_max_ps(s, mone), one);
            }
            __m256i c = _mm256_min_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(_mm256_floor_ps(_mm256_mul_ps(s, four))),
                                                          off), top);
            __m256i k = _mm256_permutevar8x32_epi32(basev, c);   /* only c's low 3 bits are read */
            if (ns > 0) k = _mm256_sub_epi32(k, _mm256_castps_si256(_mm256_cmp_ps(_mm256_permutevar8x32_ps(t0, c), s, _CMP_LT_OQ)));
            if (ns > 1) k = _mm256_sub_epi32(k, _mm256_castps_si256(_mm256_cmp_ps(_mm256_permutevar8x32_ps(t1, c), s, _CMP_LT_OQ)));
            if (ns > 2) k = _mm256_sub_epi32(k, _mm256_castps_si256(_mm256_cmp_ps(_mm256_permutevar8x32_ps(t2, c), s, _CMP_LT_OQ)));
            if (ns > 3) k = _mm256_sub_epi32(k, _mm256_castps_si256(_mm256_cmp_ps(_mm256_permutevar8x32_ps(t3, c), s, _CMP_LT_OQ)));
            if (packed) {   /* byte j = code 2j << 4 | code 2j+1: one 64-bit lane per byte, then gathered */
                __m256i v = _mm256_or_si256(_mm256_slli_epi64(k, 4), _mm256_srli_epi64(k, 32));
                v = _mm256_shuffle_epi8(v, _mm256_setr_epi8(0, 8, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1,
                                                            0, 8, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1));
                uint32_t bytes4 = (uint32_t)(uint16_t)_mm256_extract_epi16(v, 0)
                                  | ((uint32_t)(uint16_t)_mm256_extract_epi16(v, 8) << 16);
                memcpy(packed + (i >> 1), &bytes4, 4);
            } else {
                __m128i w = _mm_packs_epi32(_mm256_castsi256_si128(k), _mm256_extracti128_si256(k, 1));
                _mm_storel_epi64((__m128i*)(cnt + i), _mm_packus_epi16(w, w));
            }
        }
    #endif
        if (packed) return;   /* passed only with AVX2 and len % 8 == 0: every value is coded above */
        for (; i < len; i++) {
            float s = kb_scaled(buf[i], sc, r);
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
    /* the 4-bit codes of a finite block: by the cell plan where it applies (0 <= ns <= 4), else kb_count15 */
    static inline void kb_codes4(const float* buf, int64_t len, const float* bnd, const int32_t* base,
                                 const float* slot, int ns, uint8_t* cnt) {
        switch (ns) {
            case 0: kb_cells_ns(buf, len, base, slot, 0, cnt, NULL, 0, 1.0f); break;
            case 1: kb_cells_ns(buf, len, base, slot, 1, cnt, NULL, 0, 1.0f); break;
            case 2: kb_cells_ns(buf, len, base, slot, 2, cnt, NULL, 0, 1.0f); break;
            case 3: kb_cells_ns(buf, len, base, slot, 3, cnt, NULL, 0, 1.0f); break;
            case 4: kb_cells_ns(buf, len, base, slot, 4, cnt, NULL, 0, 1.0f); break;
            default: kb_count15(buf, len, bnd, cnt);
        }
    }
    /* the fast path of a block: unscaled values in, scaled (SC 1 or 2, by r) and packed in one pass */
    static inline void kb_codes4_packed(const float* buf, int64_t len, const int32_t* base, const float* slot, int ns,
                                        int sc, float r, uint8_t* packed) {
        if (sc == 1) {
            switch (ns) {
                case 0: kb_cells_ns(buf, len, base, slot, 0, NULL, packed, 1, r); break;
                case 1: kb_cells_ns(buf, len, base, slot, 1, NULL, packed, 1, r); break;
                case 2: kb_cells_ns(buf, len, base, slot, 2, NULL, packed, 1, r); break;
                case 3: kb_cells_ns(buf, len, base, slot, 3, NULL, packed, 1, r); break;
                default: kb_cells_ns(buf, len, base, slot, 4, NULL, packed, 1, r);
            }
        } else {
            kb_cells_ns(buf, len, base, slot, ns, NULL, packed, 2, r);   /* one tail block per call */
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

    static inline void kb_quant4_block(const void* x, int kind, int64_t start, int64_t end, int is_tail,
            const float* bnd15, const uint8_t* bcodes, int identity, uint8_t zero_code, uint8_t nan_code,
            const int32_t* cell_base, const float* cell_bounds, int cell_slots, uint8_t* packed, float* absmax_b) {
        float buf[KB_MAXBLOCK];
        uint8_t cnt[KB_MAXBLOCK + 1];
        int64_t len = end - start;
        if (len <= 0 || len > KB_MAXBLOCK) return;   /* never: the entry points check the blocksize */
        kb_load(x, kind, start, len, buf);
        uint8_t* out = packed + (start >> 1);
        uint32_t m;
        if (KB_HAS_CELLS && identity && (len & 7) == 0 && cell_slots >= 0 && cell_slots <= 4) {
            /* kb_scale's rule, its scaling fused into the code pass, the codes packed straight out */
            m = kb_absmax_bits(buf, len);
            float am = kb_bits_f32(m);
            if (m < KB_EXP) {
                float amc = am > KB_TINY ? am : KB_TINY;
                *absmax_b = is_tail ? amc : am;
                kb_codes4_packed(buf, len, cell_base, cell_bounds, cell_slots, is_tail ? 2 : 1,
                                 is_tail ? amc : 1.0f / amc, out);
                return;
            }
            *absmax_b = am;
        } else {
            m = kb_scale(buf, len, is_tail, absmax_b);
        }
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
        for (int64_t j = 0; j < nb; j++) { uint8_t b = p[j]; dst[2 * j] = t[b >> 4]; dst[2 * j + 1] = t[b & 15]; }
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


HAS_CELLS = bool(KB_HAS_CELLS)   # the AVX2 cell-plan path of quantize_4bit (else the 15-bound count)


def quantize_4bit(x, int kind, int64_t blocksize, const float[::1] bnd15, const uint8_t[::1] bcodes,
                  bint identity, uint8_t zero_code, const int32_t[::1] cell_base, const float[::1] cell_bounds,
                  int cell_slots, uint8_t[::1] packed, float[::1] absmax):
    """Codes by the cell plan (cell_base: 8 counts, cell_bounds: 4 x 8 slots, cell_slots compares; -1: the
    15-bound count instead), the same codes either way."""
    cdef int64_t n = x.shape[0]
    cdef uint8_t nan_code = bcodes[bcodes.shape[0] - 1]  # non-finite blocks
    cdef int64_t nblocks = _nblocks(n, blocksize)
    cdef const void* px = _addr(x)
    cdef int64_t b, start, end
    if bnd15.shape[0] != 15 or cell_base.shape[0] != 8 or cell_bounds.shape[0] != 32:
        raise ValueError("quantize_4bit: expected 15 bounds, 8 cell counts and 32 cell bounds "
                         f"(got {bnd15.shape[0]}, {cell_base.shape[0]}, {cell_bounds.shape[0]})")
    for b in prange(nblocks, nogil=True, schedule="static"):
        start = b * blocksize
        end = start + blocksize if start + blocksize < n else n
        kb_quant4_block(px, kind, start, end, end - start < blocksize, &bnd15[0], &bcodes[0], identity, zero_code,
                        nan_code, &cell_base[0], &cell_bounds[0], cell_slots, &packed[0], &absmax[b])


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
