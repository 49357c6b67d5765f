# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""Cython/OpenMP CPU kernels of the k-bit family: the same functions, arguments and passes as
numba_kernels/cpu/kbit.py (its docstring has the plan), in C. Rules: workbench/backends/reference/kbit.py,
bit for bit -- float32 arithmetic without FMA contraction (setup.py: -ffp-contract=off), rintf for round
half to even, exact floor(log2) from the float's bits. Inputs must be finite."""
from cython.parallel cimport prange
from libc.stdint cimport uint8_t, uint32_t, int64_t

cdef extern from *:
    """
    #include <stdint.h>
    #include <string.h>
    #include <math.h>
    #include "kb_convert.h"
    #define KK_GROUPS_PER_TASK 64

    static inline int64_t kk_floor_log2(float a) {
        uint32_t u = kb_f32_bits(a);
        int64_t ex = (int64_t)(u >> 23);
        if (ex > 0) return ex - 127;
        int64_t len = 0;
        while (u) { u >>= 1; len++; }
        return len - 150;
    }
    static inline float kk_pow2f(int64_t e) {
        return e >= -126 ? kb_bits_f32((uint32_t)(e + 127) << 23) : kb_bits_f32(1u << (e + 149));
    }
    static inline int64_t kk_minifloat_bits(float a, int64_t M, int64_t bias, int64_t emin, int64_t maxbits) {
        if (a == 0.0f) return 0;
        int64_t e = kk_floor_log2(a), eq = e > emin ? e : emin;
        int64_t ni = (int64_t)rintf(a / kk_pow2f(eq - M));
        int64_t bits = e >= emin ? (((eq + bias - 1) << M) + ni) : ni;
        return bits < maxbits ? bits : maxbits;
    }
    static inline float kk_minifloat_value(int64_t bits, int64_t M, int64_t bias, int64_t emin) {
        int64_t ex = bits >> M, mant = bits & ((1 << M) - 1);
        if (ex == 0) return (float)mant * kk_pow2f(emin - M);
        return (float)(mant + (1 << M)) * kk_pow2f(ex - bias - M);
    }
    static inline int64_t kk_e4m4_bits(float a) {
        if (a == 0.0f) return 0;
        int64_t e = kk_floor_log2(a), m;
        if (e + 11 <= 0) { m = (int64_t)rintf(a * 16384.0f); return m < 15 ? m : 15; }
        if (e + 11 > 15) return 0xFF;
        m = (int64_t)rintf((a / kk_pow2f(e) - 1.0f) * 16.0f);
        m = m < 15 ? m : 15;
        return ((e + 11) << 4) | m;
    }
    static inline float kk_e4m4_value(int64_t b) {
        int64_t e = b >> 4, m = b & 15;
        return e == 0 ? (float)m * kk_pow2f(-14) : (float)(16 + m) * kk_pow2f(e - 15);
    }
    static inline int64_t kk_encode(float a, int fmt, int64_t emax, float ts) {
        switch (fmt) {
        case 0: return (int64_t)kb_f32_bits(a);
        case 1: return kk_minifloat_bits(a, 10, 15, -14, 0x7BFF);
        case 2: return kk_minifloat_bits(a, 7, 127, -126, 0x7F7F);
        case 3: return kk_e4m4_bits(a);
        case 4: {
            if (a == 0.0f) return 0;
            int64_t E = kk_floor_log2(a) - emax + 127;
            return E < 0 ? 0 : (E > 254 ? 254 : E);
        }
        default: return kk_minifloat_bits(a / ts, 3, 7, -6, 0x7E);
        }
    }
    static inline float kk_decode(int64_t bits, int fmt, float ts) {
        switch (fmt) {
        case 0: return kb_bits_f32((uint32_t)bits);
        case 1: return kk_minifloat_value(bits, 10, 15, -14);
        case 2: return kk_minifloat_value(bits, 7, 127, -126);
        case 3: return kk_e4m4_value(bits);
        case 4: return kk_pow2f(bits - 127);
        default: return kk_minifloat_value(bits, 3, 7, -6) * ts;
        }
    }
    static inline float kk_load(const void* x, int kind, int64_t i) {
        if (kind == 0) return ((const float*)x)[i];
        uint16_t u = ((const uint16_t*)x)[i];
        return kind == 1 ? kb_bits_f32((uint32_t)u << 16) : kb_f16_to_f32(u);
    }
    static inline void kk_store(void* out, int kind, int64_t i, float v) {
        if (kind == 0) ((float*)out)[i] = v;
        else if (kind == 1) ((uint16_t*)out)[i] = kb_f32_to_bf16(v);
        else ((uint16_t*)out)[i] = kb_f32_to_f16(v);
    }
    static inline void kk_absmax_block(const void* x, int kind, int64_t n, int64_t bs, int64_t b, float* absmax) {
        int64_t start = b * bs, end = start + bs < n ? start + bs : n;
        float am = 0.0f;
        for (int64_t i = start; i < end; i++) { float v = fabsf(kk_load(x, kind, i)); am = v > am ? v : am; }
        absmax[b] = am;
    }
    /* argmin_j fl(|s - c[j]|), the lowest j on ties (see numba_kernels/cpu/kbit.py); m = 2**k. The count of
       entries <= s by a branch-free binary search (a data-dependent branch per step mispredicts half the time) */
    static inline int64_t kk_nearest(float s, const float* cb, int64_t m) {
        int64_t lo = 0;
        for (int64_t half = m >> 1; half > 0; half >>= 1) lo += cb[lo + half - 1] <= s ? half : 0;
        /* the upper neighbour only when strictly closer; selects, not branches (the choice is a coin toss) */
        int64_t up = lo < m ? lo : m - 1, dn = lo > 0 ? lo - 1 : 0;
        float du = fabsf(cb[up] - s), dd = fabsf(s - cb[dn]);
        int take = (lo < m) & (du < dd);
        int64_t j = take ? lo : dn;
        float tie = take ? NAN : dd;       /* NaN equals nothing: no walk after taking the upper neighbour */
        while (j > 0 && fabsf(s - cb[j - 1]) == tie) j--;
        return j;
    }
    /* The codebook's search table (numba_kernels/cell_plan.py:kbit_plan; entries e[2i] = bound bits, e[2i + 1] =
       code below | above << 8): the spec's code for |s| < safe in one lookup and one compare; other s, and
       codebooks without a table (safe = 0), take the full search. */
    static inline int64_t kk_code_table(float s, const uint32_t* e, int64_t sh, int64_t kbase, int64_t half,
                                        float safe, const float* cb, int64_t m) {
        if (!(fabsf(s) < safe)) return kk_nearest(s, cb, m);
        uint32_t bits = kb_f32_bits(s);
        int64_t c = (int64_t)((bits & 0x7FFFFFFFu) >> sh), top = kbase + half - 1;
        c = c < kbase ? kbase : (c > top ? top : c);
        const uint32_t* en = e + 2 * (c - kbase + (int64_t)(bits >> 31) * half);
        return s > kb_bits_f32(en[0]) ? (int64_t)(en[1] >> 8) : (int64_t)(en[1] & 0xFFu);
    }
    static inline __attribute__((always_inline)) void kk_bitplane(const int64_t* codes, int64_t k, uint64_t* words) {
        for (int64_t j = 0; j < 32; j++)
            for (int64_t b = 0; b < k; b++) words[b] |= (uint64_t)((codes[j] >> b) & 1) << j;
    }
    /* the 32 codes of group g packed into its k words (bit-plane, or the dense stream's words below nw) */
    static inline void kk_pack_store(const int64_t* codes, int64_t k, int layout, int64_t g, uint32_t* out,
                                     int64_t nw) {
        uint64_t words[9];
        for (int64_t b = 0; b <= k; b++) words[b] = 0;
        if (layout == 0) {
            switch (k) {                       /* a constant k per case: the inlined loops unroll */
            case 2: kk_bitplane(codes, 2, words); break;
            case 3: kk_bitplane(codes, 3, words); break;
            case 4: kk_bitplane(codes, 4, words); break;
            default: kk_bitplane(codes, k, words);
            }
        } else {
            for (int64_t j = 0; j < 32; j++) {
                int64_t p = j * k, wi = p >> 5;
                uint64_t v = (uint64_t)codes[j] << (p & 31);
                words[wi] |= v & 0xFFFFFFFFull;
                words[wi + 1] |= v >> 32;
            }
        }
        for (int64_t b = 0; b < k; b++) { int64_t w = g * k + b; if (w < nw) out[w] = (uint32_t)words[b]; }
    }
    static inline void kk_load_group(const uint32_t* words, int64_t nw, int64_t g, int64_t k, uint64_t* w) {
        for (int64_t b = 0; b <= k; b++) { int64_t idx = g * k + b; w[b] = (b < k && idx < nw) ? words[idx] : 0; }
    }
    /* all 32 codes of a group from its words (w[k] = 0): bit-plane plane by plane (the j loop vectorizes), dense
       from the stream; a constant k per case unrolls */
    static inline __attribute__((always_inline)) void kk_codes_k(const uint64_t* w, int64_t k, int layout,
                                                                 uint32_t* codes) {
        if (layout == 0) {
            for (int64_t j = 0; j < 32; j++) codes[j] = 0;
            for (int64_t b = 0; b < k; b++)
                for (int64_t j = 0; j < 32; j++) codes[j] |= (uint32_t)((w[b] >> j) & 1) << b;
        } else {
            const uint64_t mask = (1ull << k) - 1;
            for (int64_t j = 0; j < 32; j++) {
                int64_t p = j * k, wi = p >> 5;
                codes[j] = (uint32_t)(((w[wi] | (w[wi + 1] << 32)) >> (p & 31)) & mask);
            }
        }
    }
    static inline void kk_group_codes(const uint64_t* w, int64_t k, int layout, uint32_t* codes) {
        switch (k) {
        case 2: kk_codes_k(w, 2, layout, codes); break;
        case 3: kk_codes_k(w, 3, layout, codes); break;
        case 4: kk_codes_k(w, 4, layout, codes); break;
        default: kk_codes_k(w, k, layout, codes);
        }
    }
    static inline int64_t kk_code_at(const uint64_t* w, int64_t j, int64_t k, int layout) {
        if (layout == 0) {
            int64_t c = 0;
            for (int64_t b = 0; b < k; b++) c |= (int64_t)((w[b] >> j) & 1) << b;
            return c;
        }
        int64_t p = j * k, wi = p >> 5;
        return (int64_t)(((w[wi] | (w[wi + 1] << 32)) >> (p & 31)) & ((1ull << k) - 1));
    }
    static void kk_quantize_task(const void* x, int kind, int64_t n, int64_t bs, const float* q, const float* cb,
                                 int64_t m, const uint32_t* tab, int64_t sh, int64_t kbase, int64_t half, float safe,
                                 int64_t k, int layout, uint32_t* out, int64_t nw, int64_t t) {
        int64_t groups = (n + 31) / 32, g0 = t * KK_GROUPS_PER_TASK;
        int64_t g1 = g0 + KK_GROUPS_PER_TASK < groups ? g0 + KK_GROUPS_PER_TASK : groups;
        int64_t codes[32];
        int64_t b = g0 * 32 / bs, next = (b + 1) * bs;   /* the block of element i, tracked: no division per element */
        for (int64_t g = g0; g < g1; g++) {
            int64_t base = g * 32;
            if (bs % 32 == 0 && base + 32 <= n) {         /* one block, no tail: its divisor once, loads by kind */
                const float qb = q[base / bs];
                if (kind == 1) {
                    const uint16_t* xb = (const uint16_t*)x + base;
                    for (int64_t j = 0; j < 32; j++)
                        codes[j] = kk_code_table(kb_bits_f32((uint32_t)xb[j] << 16) / qb, tab, sh, kbase, half, safe,
                                                 cb, m);
                } else {
                    for (int64_t j = 0; j < 32; j++)
                        codes[j] = kk_code_table(kk_load(x, kind, base + j) / qb, tab, sh, kbase, half, safe, cb, m);
                }
                b = (base + 32) / bs;
                next = (b + 1) * bs;
            } else {
                for (int64_t j = 0; j < 32; j++) {
                    int64_t i = base + j;
                    if (i >= next) { b++; next += bs; }
                    codes[j] = i < n ? kk_code_table(kk_load(x, kind, i) / q[b], tab, sh, kbase, half, safe, cb, m) : 0;
                }
            }
            kk_pack_store(codes, k, layout, g, out, nw);
        }
    }
    static void kk_dequantize_task(const uint32_t* words, int64_t nw, int64_t n, int64_t k, int layout, int64_t bs,
                                   const float* D, const float* cb, int kind, void* out, int64_t t) {
        int64_t groups = (n + 31) / 32, g0 = t * KK_GROUPS_PER_TASK;
        int64_t g1 = g0 + KK_GROUPS_PER_TASK < groups ? g0 + KK_GROUPS_PER_TASK : groups;
        uint64_t w[9];
        int64_t b = g0 * 32 / bs, next = (b + 1) * bs;
        for (int64_t g = g0; g < g1; g++) {
            kk_load_group(words, nw, g, k, w);
            int64_t base = g * 32, len = n - base < 32 ? n - base : 32;
            if (bs % 32 == 0 && len == 32) {              /* one block, no tail: all 32 codes, then the stores */
                uint32_t codes[32];
                kk_group_codes(w, k, layout, codes);
                const float d = D[base / bs];
                if (kind == 1) {
                    uint16_t* o = (uint16_t*)out + base;
                    for (int64_t j = 0; j < 32; j++) o[j] = kb_f32_to_bf16(cb[codes[j]] * d);
                } else {
                    for (int64_t j = 0; j < 32; j++) kk_store(out, kind, base + j, cb[codes[j]] * d);
                }
                b = (base + 32) / bs;
                next = (b + 1) * bs;
                continue;
            }
            for (int64_t j = 0; j < len; j++) {
                int64_t i = base + j;
                if (i >= next) { b++; next += bs; }
                kk_store(out, kind, i, cb[kk_code_at(w, j, k, layout)] * D[b]);
            }
        }
    }
    /* affine groups (spec: workbench/backends/reference/kbit_affine.py) */
    static inline void kk_range_block(const void* x, int kind, int64_t n, int64_t G, int64_t b, float* lo, float* hi) {
        int64_t start = b * G, end = start + G < n ? start + G : n;
        float mn = 0.0f, mx = 0.0f;
        for (int64_t i = start; i < end; i++) { float v = kk_load(x, kind, i); mn = v < mn ? v : mn; mx = v > mx ? v : mx; }
        lo[b] = mn; hi[b] = mx;
    }
    static void kk_mse_clip_block(const void* x, int kind, int64_t n, int64_t G, int64_t k, int fmt,
                                  const float* grid, int64_t ngrid, int64_t b, float* lo, float* hi) {
        int64_t start = b * G, end = start + G < n ? start + G : n;
        float qmax = (float)((1 << k) - 1), eps = 1.1920928955078125e-07f, mn = 0.0f, mx = 0.0f;
        for (int64_t i = start; i < end; i++) { float v = kk_load(x, kind, i); mn = v < mn ? v : mn; mx = v > mx ? v : mx; }
        double best = INFINITY;
        float blo = mn, bhi = mx;
        for (int64_t c = 0; c < ngrid; c++) {
            float plo = mn * grid[c], phi = mx * grid[c];
            float s = (phi - plo) / qmax;
            s = s > eps ? s : eps;
            float z = -rintf(plo / s);
            z = z < 0.0f ? 0.0f : (z > qmax ? qmax : z);
            float D = kk_decode(kk_encode(s, fmt, 0, 1.0f), fmt, 1.0f), r = 1.0f / D;
            double acc = 0.0;
            for (int64_t i = start; i < end; i++) {
                float v = kk_load(x, kind, i);
                float q = rintf(v * r) + z;
                q = q < 0.0f ? 0.0f : (q > qmax ? qmax : q);
                double e = (double)((q - z) * D - v);
                acc += e * e;
            }
            if (acc < best) { best = acc; blo = plo; bhi = phi; }
        }
        lo[b] = blo; hi[b] = bhi;
    }
    static void kk_quantize_affine_task(const void* x, int kind, int64_t n, int64_t G, const float* r,
                                        const uint8_t* z, int64_t k, int layout, uint32_t* out, int64_t nw, int64_t t) {
        int64_t groups = (n + 31) / 32, g0 = t * KK_GROUPS_PER_TASK;
        int64_t g1 = g0 + KK_GROUPS_PER_TASK < groups ? g0 + KK_GROUPS_PER_TASK : groups;
        float qmax = (float)((1 << k) - 1);
        int64_t codes[32];
        for (int64_t g = g0; g < g1; g++) {
            for (int64_t j = 0; j < 32; j++) {
                int64_t i = g * 32 + j;
                if (i < n) {
                    int64_t b = i / G;
                    float c = rintf(kk_load(x, kind, i) * r[b]) + (float)z[b];
                    c = c < 0.0f ? 0.0f : (c > qmax ? qmax : c);
                    codes[j] = (int64_t)c;
                } else codes[j] = 0;
            }
            kk_pack_store(codes, k, layout, g, out, nw);
        }
    }
    static void kk_dequantize_affine_task(const uint32_t* words, int64_t nw, int64_t n, int64_t k, int layout,
                                          int64_t G, const float* D, const uint8_t* z, int kind, void* out, int64_t t) {
        int64_t groups = (n + 31) / 32, g0 = t * KK_GROUPS_PER_TASK;
        int64_t g1 = g0 + KK_GROUPS_PER_TASK < groups ? g0 + KK_GROUPS_PER_TASK : groups;
        uint64_t w[9];
        for (int64_t g = g0; g < g1; g++) {
            kk_load_group(words, nw, g, k, w);
            int64_t base = g * 32, len = n - base < 32 ? n - base : 32;
            for (int64_t j = 0; j < len; j++) {
                int64_t i = base + j, b = i / G;
                kk_store(out, kind, i, (float)(kk_code_at(w, j, k, layout) - (int64_t)z[b]) * D[b]);
            }
        }
    }
    """
    int64_t kk_floor_log2(float a) nogil
    int64_t kk_encode(float a, int fmt, int64_t emax, float ts) nogil
    float kk_decode(int64_t bits, int fmt, float ts) nogil
    void kk_absmax_block(const void* x, int kind, int64_t n, int64_t bs, int64_t b, float* absmax) nogil
    void kk_quantize_task(const void* x, int kind, int64_t n, int64_t bs, const float* q, const float* cb,
                          int64_t m, const uint32_t* tab, int64_t sh, int64_t kbase, int64_t half, float safe,
                          int64_t k, int layout, uint32_t* out, int64_t nw, int64_t t) nogil
    void kk_dequantize_task(const uint32_t* words, int64_t nw, int64_t n, int64_t k, int layout, int64_t bs,
                            const float* D, const float* cb, int kind, void* out, int64_t t) nogil
    void kk_range_block(const void* x, int kind, int64_t n, int64_t G, int64_t b, float* lo, float* hi) nogil
    void kk_mse_clip_block(const void* x, int kind, int64_t n, int64_t G, int64_t k, int fmt, const float* grid,
                           int64_t ngrid, int64_t b, float* lo, float* hi) nogil
    void kk_quantize_affine_task(const void* x, int kind, int64_t n, int64_t G, const float* r, const uint8_t* z,
                                 int64_t k, int layout, uint32_t* out, int64_t nw, int64_t t) nogil
    void kk_dequantize_affine_task(const uint32_t* words, int64_t nw, int64_t n, int64_t k, int layout, int64_t G,
                                   const float* D, const uint8_t* z, int kind, void* out, int64_t t) nogil

FMT_IDS = {"fp32": 0, "fp16": 1, "bf16": 2, "e4m4": 3, "e8m0": 4, "e4m3": 5}
LAYOUT_IDS = {"bitplane": 0, "dense": 1}
cdef int64_t GPT = 64  # groups of 32 elements per task (KK_GROUPS_PER_TASK)


cdef inline const void* _addr(object arr):
    return <const void*><size_t>arr.ctypes.data


def floor_log2(float a):
    return kk_floor_log2(a)


def block_absmax(x, int kind, int64_t n, int64_t blocksize, float[::1] absmax):
    cdef const void* px = _addr(x)
    cdef int64_t b
    for b in prange(absmax.shape[0], nogil=True, schedule="static"):
        kk_absmax_block(px, kind, n, blocksize, b, &absmax[0])


def encode_scales(const float[::1] absmax, int fmt, int64_t emax, bint codes_decoded, uint32_t[::1] bits,
                  float[::1] D, float[::1] q):
    cdef float ts = 1.0, g = 0.0, a, d, base
    cdef int64_t b, nb = absmax.shape[0]
    if fmt == 5:
        for b in range(nb):
            g = absmax[b] if absmax[b] > g else g
        if g > 0:
            ts = g / <float>448.0
    for b in range(nb):
        a = absmax[b]
        bits[b] = <uint32_t>kk_encode(a, fmt, emax, ts)
        d = kk_decode(bits[b], fmt, ts)
        D[b] = d
        if fmt == 4:
            q[b] = d
        else:
            base = d if codes_decoded else a
            q[b] = base if base > <float>1e-8 else <float>1e-8
    return ts


def decode_scales(const uint32_t[::1] bits, int fmt, float ts, float[::1] D):
    cdef int64_t b
    for b in range(bits.shape[0]):
        D[b] = kk_decode(bits[b], fmt, ts)


def quantize_groups(x, int kind, int64_t n, int64_t blocksize, const float[::1] q, const float[::1] cb,
                    const uint32_t[::1] tab, int64_t sh, int64_t kbase, int64_t half, float safe, int64_t k,
                    int layout, uint32_t[::1] out):
    cdef const void* px = _addr(x)
    cdef int64_t tasks = ((n + 31) // 32 + GPT - 1) // GPT, t
    for t in prange(tasks, nogil=True, schedule="static"):
        kk_quantize_task(px, kind, n, blocksize, &q[0], &cb[0], cb.shape[0], &tab[0], sh, kbase, half, safe, k,
                         layout, &out[0], out.shape[0], t)


def dequantize_groups(const uint32_t[::1] words, int64_t n, int64_t k, int layout, int64_t blocksize,
                      const float[::1] D, const float[::1] cb, int kind, out):
    cdef void* po = <void*><size_t>out.ctypes.data
    cdef int64_t tasks = ((n + 31) // 32 + GPT - 1) // GPT, t
    for t in prange(tasks, nogil=True, schedule="static"):
        kk_dequantize_task(&words[0], words.shape[0], n, k, layout, blocksize, &D[0], &cb[0], kind, po, t)


def group_range(x, int kind, int64_t n, int64_t G, float[::1] lo, float[::1] hi):
    cdef const void* px = _addr(x)
    cdef int64_t b
    for b in prange(lo.shape[0], nogil=True, schedule="static"):
        kk_range_block(px, kind, n, G, b, &lo[0], &hi[0])


def quantize_affine_groups(x, int kind, int64_t n, int64_t G, const float[::1] r, const uint8_t[::1] z, int64_t k,
                           int layout, uint32_t[::1] out):
    cdef const void* px = _addr(x)
    cdef int64_t tasks = ((n + 31) // 32 + GPT - 1) // GPT, t
    for t in prange(tasks, nogil=True, schedule="static"):
        kk_quantize_affine_task(px, kind, n, G, &r[0], &z[0], k, layout, &out[0], out.shape[0], t)


def dequantize_affine_groups(const uint32_t[::1] words, int64_t n, int64_t k, int layout, int64_t G,
                             const float[::1] D, const uint8_t[::1] z, int kind, out):
    cdef void* po = <void*><size_t>out.ctypes.data
    cdef int64_t tasks = ((n + 31) // 32 + GPT - 1) // GPT, t
    for t in prange(tasks, nogil=True, schedule="static"):
        kk_dequantize_affine_task(&words[0], words.shape[0], n, k, layout, G, &D[0], &z[0], kind, po, t)


def mse_clip_range(x, int kind, int64_t n, int64_t G, int64_t k, int fmt, const float[::1] grid, float[::1] lo,
                   float[::1] hi):
    cdef const void* px = _addr(x)
    cdef int64_t b
    for b in prange(lo.shape[0], nogil=True, schedule="dynamic"):
        kk_mse_clip_block(px, kind, n, G, k, fmt, &grid[0], grid.shape[0], b, &lo[0], &hi[0])
