# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""Cython/OpenMP CPU kernels for fused optimizer updates (32-bit state, 8-bit blockwise state).

Same arguments and rounding as numba_kernels/cpu/optim.py (the operation order of
workbench/optim/functional.py; float32, no FMA: setup.py passes -ffp-contract=off; sqrtf is
correctly rounded). ``prange`` hands runs of 256-element blocks to OpenMP threads; each block
is read once (grad, param, codes), updated in registers, its new state kept in an L1 stack
buffer for the block absmax, then written once (param, codes, absmax).

NaN/Inf (workbench/optim/functional.py, "NaN and Inf"): a block's absmax is the integer max of its
|x| bit patterns (NaN > Inf > finite: a NaN poisons the whole block, as the reference's amax); a
block whose absmax is NaN or Inf takes the reference's codes (the plan's nan_code / zero_code) on a
block-level branch. Optimizer ids and constant slots: functional.py's KERNEL_RULES / KERNEL_SLOTS
(tests/test_optim_wire_constants.py holds the enums below to them).
"""
from cython.parallel cimport prange
from libc.stdint cimport uint8_t, uint16_t, uint32_t, int64_t

cdef extern from *:
    """
    #include <stdint.h>
    #include <string.h>
    #include <math.h>
    #ifdef __AVX__
    #include <immintrin.h>
    #endif
    static const float KO_TINY = 1e-38f;
    enum { KO_ADAM = 0, KO_ADEMAMIX = 1, KO_MOMENTUM = 2, KO_LION = 3, KO_RMSPROP = 4, KO_ADAGRAD = 5 };
    enum { K_B1, K_B2, K_B3, K_ALPHA, K_EPS, K_OMB1, K_OMB2, K_OMB3, K_WD, K_DECAY, K_GS, K_C1, K_C2, K_EPS_C2,
           K_NEG_LR, K_NEG_LR_C1, K_UPD_MUL };

    #include "kb_convert.h"
    static inline float ko_load(const void* x, int64_t i, int kind) {
        if (kind == 0) return ((const float*)x)[i];
        uint16_t h = ((const uint16_t*)x)[i];
        return kind == 1 ? kb_bits_f32((uint32_t)h << 16) : kb_f16_to_f32(h);
    }
    static inline void ko_store(void* x, int64_t i, float v, int kind) {
        if (kind == 0) ((float*)x)[i] = v;
        else if (kind == 1) ((uint16_t*)x)[i] = kb_f32_to_bf16(v);
        else ((uint16_t*)x)[i] = kb_f32_to_f16(v);
    }
    /* IEEE sqrt. With -fno-math-errno (not in setup.py today) GCC vectorizes the update loops;
       without it the libm errno path for negative inputs keeps sqrt loops scalar. */
    static inline float ko_sqrt(float x) { return sqrtf(x); }
    static inline float ko_sign(float x) { return (float)((x > 0.0f) - (x < 0.0f)); }  /* torch.sign: +-0, NaN -> +0 */

    /* one element: mirrors workbench/optim/functional.py::_rule */
    static inline void ko_rule(int opt, int eight, int first, float g0, float* pp, float* a, float* b, float* d,
                               const float* k) {
        float g = g0 * k[K_GS], p = *pp, wd = k[K_WD];
        if (opt >= KO_MOMENTUM && opt != KO_LION) g = wd > 0.0f ? g + p * wd : g;  /* selects: vectorizable */
        if (opt == KO_ADAM) {
            float s1 = *a * k[K_B1] + g * k[K_OMB1];
            float s2 = *d * k[K_B2] + (g * g) * k[K_OMB2];
            p = wd > 0.0f ? p * k[K_DECAY] : p;
            if (eight) p = p + (s1 / (ko_sqrt(s2) / k[K_C2] + k[K_EPS])) * k[K_NEG_LR_C1];
            else p = p + (s1 / (ko_sqrt(s2) + k[K_EPS_C2])) * k[K_UPD_MUL];
            *a = s1; *d = s2;
        } else if (opt == KO_ADEMAMIX) {
            float m1 = *a * k[K_B1] + g * k[K_OMB1];
            float m2 = *b * k[K_B3] + g * k[K_OMB3];
            float nu = *d * k[K_B2] + (g * g) * k[K_OMB2];
            p = wd > 0.0f ? p * k[K_DECAY] : p;
            p = p + ((m1 / k[K_C1] + m2 * k[K_ALPHA]) / (ko_sqrt(nu) / k[K_C2] + k[K_EPS])) * k[K_NEG_LR];
            *a = m1; *b = m2; *d = nu;
        } else if (opt == KO_MOMENTUM) {
            float s1 = first ? g : *a * k[K_B1] + g;
            p = p + s1 * k[K_UPD_MUL];
            *a = s1;
        } else if (opt == KO_LION) {
            p = wd > 0.0f ? p * k[K_DECAY] : p;
            p = p + ko_sign(*a * k[K_B1] + g * k[K_OMB1]) * k[K_NEG_LR];
            *a = *a * k[K_B2] + g * k[K_OMB2];
        } else if (opt == KO_RMSPROP) {
            float s1 = *a * k[K_B1] + (g * g) * k[K_OMB1];
            p = p + (g / (ko_sqrt(s1) + k[K_EPS])) * k[K_UPD_MUL];
            *a = s1;
        } else {
            float s1 = *a + g * g;
            p = p + (g / (ko_sqrt(s1) + k[K_EPS])) * k[K_NEG_LR];
            *a = s1;
        }
        *pp = p;
    }

    typedef struct { int mode; const float* bnd15; const uint8_t* bcodes; const float* kbound;
                     const uint8_t* klo; const uint8_t* khi; const float* bpad; int64_t npad;
                     uint8_t nan_code; uint8_t zero_code; } ko_plan;
    static const uint32_t KO_EXP = 0x7F800000u;  /* |x| bits >= this: Inf or NaN */

    static inline uint8_t ko_encode(float s, const ko_plan* P) {
        if (P->mode == 0) { int c = 0; for (int j = 0; j < 15; j++) c += P->bnd15[j] < s; return P->bcodes[c]; }
        if (P->mode == 1) { uint32_t key = kb_f32_bits(s) >> 16; return s > P->kbound[key] ? P->khi[key] : P->klo[key]; }
        int64_t pos = 0, step = (P->npad + 1) / 2;
        while (step > 0) { if (P->bpad[pos + step - 1] < s) pos += step; step >>= 1; }
        return P->bcodes[pos];
    }
    /* mbits: the block's absmax as float bits (integer max of |x| patterns: NaN-propagating) */
    static inline void ko_requant(const float* buf, uint32_t mbits, int64_t start, int64_t end, int is_tail,
                                  const ko_plan* P, uint8_t* codes, float* absmax_b) {
        float mx = kb_bits_f32(mbits);
        int64_t m = end - start;
        uint8_t* out = codes + start;
        if (mbits >= KO_EXP) {
            /* NaN or Inf absmax, stored as is (the tail's 1e-38 clamp keeps it); the reference's codes:
               all scaled values NaN (NaN absmax), or +-0 / NaN for finite / Inf values (Inf absmax) */
            *absmax_b = mx;
            for (int64_t j = 0; j < m; j++) {
                uint32_t a = kb_f32_bits(buf[j]) & 0x7FFFFFFFu;
                out[j] = (mbits > KO_EXP || a >= KO_EXP) ? P->nan_code : P->zero_code;
            }
            return;
        }
        float amc = mx > KO_TINY ? mx : KO_TINY, r = 1.0f / amc;
        *absmax_b = is_tail ? amc : mx;
        if (P->mode == 1 && !is_tail) {
            /* the common case, hoisted: plan fields in registers (a uint8 store may alias them) */
            const float* kb = P->kbound; const uint8_t* lo = P->klo; const uint8_t* hi = P->khi;
            for (int64_t j = 0; j < m; j++) {
                float s = buf[j] * r;
                s = s < -1.0f ? -1.0f : (s > 1.0f ? 1.0f : s);
                uint32_t key = kb_f32_bits(s) >> 16;
                out[j] = s > kb[key] ? hi[key] : lo[key];
            }
            return;
        }
        for (int64_t j = 0; j < m; j++) {
            float s = is_tail ? buf[j] / amc : buf[j] * r;
            s = s < -1.0f ? -1.0f : (s > 1.0f ? 1.0f : s);
            out[j] = ko_encode(s, P);
        }
    }

    static void ko_update8_block(int opt, int first, int skip_zeros, const void* g, int gk, void* p, int pk,
                                 uint8_t* c1, float* a1, uint8_t* c1b, float* a1b, uint8_t* c2, float* a2,
                                 const float* t1, const float* t2, const float* k, int64_t blk, int64_t n,
                                 const ko_plan* P1, const ko_plan* P2) {
        float buf1[256], bufb[256], buf2[256];
        int64_t start = blk * 256, end = start + 256 < n ? start + 256 : n;
        int is_tail = end - start < 256, has_b = opt == KO_ADEMAMIX, has_s2 = opt == KO_ADAM || opt == KO_ADEMAMIX;
        float am1 = a1[blk], amb = has_b ? a1b[blk] : 0.0f, am2 = has_s2 ? a2[blk] : 0.0f;
        uint32_t mx1 = 0, mxb = 0, mx2 = 0;  /* absmax as bits: NaN-propagating */
        for (int64_t i = start; i < end; i++) {
            float a = t1[c1[i]] * am1, b = has_b ? t1[c1b[i]] * amb : 0.0f, d = has_s2 ? t2[c2[i]] * am2 : 0.0f;
            float g0 = ko_load(g, i, gk);
            if (!(skip_zeros && g0 == 0.0f)) {
                float pv = ko_load(p, i, pk);
                ko_rule(opt, 1, first, g0, &pv, &a, &b, &d, k);
                ko_store(p, i, pv, pk);
            }
            int64_t j = i - start;
            buf1[j] = a; uint32_t v = kb_f32_bits(a) & 0x7FFFFFFFu; mx1 = v > mx1 ? v : mx1;
            if (has_b) { bufb[j] = b; v = kb_f32_bits(b) & 0x7FFFFFFFu; mxb = v > mxb ? v : mxb; }
            if (has_s2) { buf2[j] = d; v = kb_f32_bits(d) & 0x7FFFFFFFu; mx2 = v > mx2 ? v : mx2; }
        }
        ko_requant(buf1, mx1, start, end, is_tail, P1, c1, &a1[blk]);
        if (has_b) ko_requant(bufb, mxb, start, end, is_tail, P1, c1b, &a1b[blk]);
        if (has_s2) ko_requant(buf2, mx2, start, end, is_tail, P2, c2, &a2[blk]);
    }


    /* Fast path (float32 grad/param, no skip_zeros): the optimizer id is a compile-time constant
       so the update loop has no branches and vectorizes (sqrt/div included: no errno here). */
    static inline __attribute__((always_inline)) void
    ko_fast8_impl(const int OPT, int first, const float* g, float* p, uint8_t* c1, float* a1, uint8_t* c1b,
                  float* a1b, uint8_t* c2, float* a2, const float* t1, const float* t2, const float* k,
                  int64_t blk, int64_t n, const ko_plan* P1, const ko_plan* P2) {
        float A[256], B[256], D[256];
        int64_t start = blk * 256, end = start + 256 < n ? start + 256 : n, m = end - start;
        int is_tail = m < 256;
        const int has_b = OPT == KO_ADEMAMIX, has_s2 = OPT == KO_ADAM || OPT == KO_ADEMAMIX;
        float am1 = a1[blk], amb = has_b ? a1b[blk] : 0.0f, am2 = has_s2 ? a2[blk] : 0.0f;
        const float* gg = g + start; float* pb = p + start;
        const uint8_t* q1 = c1 + start; const uint8_t* qb = c1b + start; const uint8_t* q2 = c2 + start;
        for (int64_t j = 0; j < m; j++) A[j] = t1[q1[j]] * am1;
        if (has_b) for (int64_t j = 0; j < m; j++) B[j] = t1[qb[j]] * amb;
        if (has_s2) for (int64_t j = 0; j < m; j++) D[j] = t2[q2[j]] * am2;
        int64_t j0 = 0;
    #ifdef __AVX__
        if (OPT == KO_ADAM) {
            /* Adam, 8 lanes: the same IEEE operations in the same order as ko_rule (separate
               mul/add, true division, sqrtps), so results are bit-identical to the scalar path. */
            const __m256 gs = _mm256_set1_ps(k[K_GS]), b1 = _mm256_set1_ps(k[K_B1]), b2 = _mm256_set1_ps(k[K_B2]);
            const __m256 o1 = _mm256_set1_ps(k[K_OMB1]), o2 = _mm256_set1_ps(k[K_OMB2]);
            const __m256 dec = _mm256_set1_ps(k[K_DECAY]), c2 = _mm256_set1_ps(k[K_C2]);
            const __m256 eps = _mm256_set1_ps(k[K_EPS]), nl = _mm256_set1_ps(k[K_NEG_LR_C1]);
            const int wd = k[K_WD] > 0.0f;
            for (; j0 + 8 <= m; j0 += 8) {
                __m256 g = _mm256_mul_ps(_mm256_loadu_ps(gg + j0), gs);
                __m256 s1 = _mm256_add_ps(_mm256_mul_ps(_mm256_loadu_ps(A + j0), b1), _mm256_mul_ps(g, o1));
                __m256 s2 = _mm256_add_ps(_mm256_mul_ps(_mm256_loadu_ps(D + j0), b2),
                                          _mm256_mul_ps(_mm256_mul_ps(g, g), o2));
                __m256 pv = _mm256_loadu_ps(pb + j0);
                if (wd) pv = _mm256_mul_ps(pv, dec);
                __m256 den = _mm256_add_ps(_mm256_div_ps(_mm256_sqrt_ps(s2), c2), eps);
                pv = _mm256_add_ps(pv, _mm256_mul_ps(_mm256_div_ps(s1, den), nl));
                _mm256_storeu_ps(pb + j0, pv);
                _mm256_storeu_ps(A + j0, s1);
                _mm256_storeu_ps(D + j0, s2);
            }
        }
    #endif
        for (int64_t j = j0; j < m; j++) {
            float pv = pb[j], a = A[j], b = has_b ? B[j] : 0.0f, d = has_s2 ? D[j] : 0.0f;
            ko_rule(OPT, 1, first, gg[j], &pv, &a, &b, &d, k);
            pb[j] = pv; A[j] = a;
            if (has_b) B[j] = b;
            if (has_s2) D[j] = d;
        }
        /* absmax as an unsigned max over |x|'s bit patterns: vectorizes; same order as floats */
        uint32_t u1 = 0, ub = 0, u2 = 0;
        for (int64_t j = 0; j < m; j++) { uint32_t v = kb_f32_bits(A[j]) & 0x7FFFFFFFu; u1 = v > u1 ? v : u1; }
        if (has_b) for (int64_t j = 0; j < m; j++) { uint32_t v = kb_f32_bits(B[j]) & 0x7FFFFFFFu; ub = v > ub ? v : ub; }
        if (has_s2) for (int64_t j = 0; j < m; j++) { uint32_t v = kb_f32_bits(D[j]) & 0x7FFFFFFFu; u2 = v > u2 ? v : u2; }
        ko_requant(A, u1, start, end, is_tail, P1, c1, &a1[blk]);
        if (has_b) ko_requant(B, ub, start, end, is_tail, P1, c1b, &a1b[blk]);
        if (has_s2) ko_requant(D, u2, start, end, is_tail, P2, c2, &a2[blk]);
    }
    #define KO_FAST8(OPT) \
    static void ko_fast8_##OPT(int first, const float* g, float* p, uint8_t* c1, float* a1, uint8_t* c1b, \
                               float* a1b, uint8_t* c2, float* a2, const float* t1, const float* t2, \
                               const float* k, int64_t blk, int64_t n, const ko_plan* P1, const ko_plan* P2) { \
        ko_fast8_impl(OPT, first, g, p, c1, a1, c1b, a1b, c2, a2, t1, t2, k, blk, n, P1, P2); }
    KO_FAST8(0) KO_FAST8(1) KO_FAST8(2) KO_FAST8(3) KO_FAST8(4) KO_FAST8(5)

    static void ko_fast8(int opt, int first, const float* g, float* p, uint8_t* c1, float* a1, uint8_t* c1b,
                         float* a1b, uint8_t* c2, float* a2, const float* t1, const float* t2, const float* k,
                         int64_t blk, int64_t n, const ko_plan* P1, const ko_plan* P2) {
        switch (opt) {
            case 0: ko_fast8_0(first, g, p, c1, a1, c1b, a1b, c2, a2, t1, t2, k, blk, n, P1, P2); break;
            case 1: ko_fast8_1(first, g, p, c1, a1, c1b, a1b, c2, a2, t1, t2, k, blk, n, P1, P2); break;
            case 2: ko_fast8_2(first, g, p, c1, a1, c1b, a1b, c2, a2, t1, t2, k, blk, n, P1, P2); break;
            case 3: ko_fast8_3(first, g, p, c1, a1, c1b, a1b, c2, a2, t1, t2, k, blk, n, P1, P2); break;
            case 4: ko_fast8_4(first, g, p, c1, a1, c1b, a1b, c2, a2, t1, t2, k, blk, n, P1, P2); break;
            default: ko_fast8_5(first, g, p, c1, a1, c1b, a1b, c2, a2, t1, t2, k, blk, n, P1, P2); break;
        }
    }

    static void ko_update32_range(int opt, int first, int skip_zeros, const void* g, int gk, void* p, int pk,
                                  float* s1, float* m2, float* s2, const float* k, int64_t lo, int64_t hi) {
        int has_b = opt == KO_ADEMAMIX, has_s2 = opt == KO_ADAM || opt == KO_ADEMAMIX;
        for (int64_t i = lo; i < hi; i++) {
            float g0 = ko_load(g, i, gk);
            if (skip_zeros && g0 == 0.0f) continue;
            float pv = ko_load(p, i, pk), a = s1[i], b = has_b ? m2[i] : 0.0f, d = has_s2 ? s2[i] : 0.0f;
            ko_rule(opt, 0, first, g0, &pv, &a, &b, &d, k);
            ko_store(p, i, pv, pk);
            s1[i] = a;
            if (has_b) m2[i] = b;
            if (has_s2) s2[i] = d;
        }
    }

    static double ko_norm_sq_range(int opt, int first, const void* g, int gk, const void* p, int pk,
                                   const float* s1, const float* s2, const float* k, int64_t lo, int64_t hi) {
        double acc = 0.0;
        for (int64_t i = lo; i < hi; i++) {
            float gv = ko_load(g, i, gk) * k[K_GS], pv = ko_load(p, i, pk), u;
            if (opt != KO_ADAM && k[K_WD] > 0.0f) gv = gv + pv * k[K_WD];
            if (opt == KO_ADAM) {
                float a = s1[i] * k[K_B1] + gv * k[K_OMB1], d = s2[i] * k[K_B2] + (gv * gv) * k[K_OMB2];
                u = a / (ko_sqrt(d) + k[K_EPS_C2]);
            } else if (opt == KO_MOMENTUM) {
                u = first ? gv : s1[i] * k[K_B1] + gv;
            } else {
                float a = s1[i] * k[K_B1] + (gv * gv) * k[K_OMB1];
                u = gv / (ko_sqrt(a) + k[K_EPS]);
            }
            acc += (double)u * (double)u;
        }
        return acc;
    }
    """
    ctypedef struct ko_plan:
        int mode
        const float* bnd15
        const uint8_t* bcodes
        const float* kbound
        const uint8_t* klo
        const uint8_t* khi
        const float* bpad
        int64_t npad
        uint8_t nan_code
        uint8_t zero_code
    void ko_update8_block(int opt, int first, int skip_zeros, const void* g, int gk, void* p, int pk,
                          uint8_t* c1, float* a1, uint8_t* c1b, float* a1b, uint8_t* c2, float* a2,
                          const float* t1, const float* t2, const float* k, int64_t blk, int64_t n,
                          const ko_plan* P1, const ko_plan* P2) nogil
    void ko_update32_range(int opt, int first, int skip_zeros, const void* g, int gk, void* p, int pk,
                           float* s1, float* m2, float* s2, const float* k, int64_t lo, int64_t hi) nogil
    void ko_fast8(int opt, int first, const float* g, float* p, uint8_t* c1, float* a1, uint8_t* c1b,
                  float* a1b, uint8_t* c2, float* a2, const float* t1, const float* t2, const float* k,
                  int64_t blk, int64_t n, const ko_plan* P1, const ko_plan* P2) nogil
    double ko_norm_sq_range(int opt, int first, const void* g, int gk, const void* p, int pk,
                            const float* s1, const float* s2, const float* k, int64_t lo, int64_t hi) nogil


cdef inline void* _addr(object arr):
    return <void*><size_t>arr.ctypes.data


cdef ko_plan _plan(int mode, const float[::1] bnd15, const uint8_t[::1] bc, const float[::1] kb,
                   const uint8_t[::1] klo, const uint8_t[::1] khi, const float[::1] bpad, int nan_code,
                   int zero_code):
    cdef ko_plan P
    P.nan_code = <uint8_t>nan_code
    P.zero_code = <uint8_t>zero_code
    P.mode = mode
    P.bnd15 = &bnd15[0]
    P.bcodes = &bc[0]
    P.kbound = &kb[0]
    P.klo = &klo[0]
    P.khi = &khi[0]
    P.bpad = &bpad[0]
    P.npad = bpad.shape[0]
    return P


def update_32bit(int opt, bint first, bint skip_zeros, g, int gkind, p, int pkind, float[::1] s1, float[::1] m2,
                 float[::1] s2, const float[::1] k, int64_t chunk):
    cdef int64_t n = p.shape[0]
    cdef int64_t nch = (n + chunk - 1) // chunk
    cdef void* pg = _addr(g)
    cdef void* pp = _addr(p)
    cdef int64_t c, hi
    for c in prange(nch, nogil=True, schedule="static"):
        hi = (c + 1) * chunk if (c + 1) * chunk < n else n
        ko_update32_range(opt, first, skip_zeros, pg, gkind, pp, pkind, &s1[0], &m2[0], &s2[0], &k[0], c * chunk, hi)


def update_norm_sq(int opt, bint first, g, int gkind, p, int pkind, float[::1] s1, float[::1] s2,
                   const float[::1] k, int64_t chunk):
    cdef int64_t n = p.shape[0]
    cdef int64_t nch = (n + chunk - 1) // chunk
    cdef void* pg = _addr(g)
    cdef void* pp = _addr(p)
    cdef int64_t c, hi
    cdef double acc = 0.0
    for c in prange(nch, nogil=True, schedule="static"):
        hi = (c + 1) * chunk if (c + 1) * chunk < n else n
        acc += ko_norm_sq_range(opt, first, pg, gkind, pp, pkind, &s1[0], &s2[0], &k[0], c * chunk, hi)
    return acc


def update_8bit_blockwise(int opt, bint first, bint skip_zeros, g, int gkind, p, int pkind,
                          uint8_t[::1] c1, float[::1] a1, uint8_t[::1] c1b, float[::1] a1b, uint8_t[::1] c2,
                          float[::1] a2, const float[::1] t1, const float[::1] t2, const float[::1] k, int64_t bpt,
                          int m1, const float[::1] n1, const uint8_t[::1] bc1, const float[::1] kb1,
                          const uint8_t[::1] klo1, const uint8_t[::1] khi1, const float[::1] bp1,
                          int m2_, const float[::1] n2, const uint8_t[::1] bc2, const float[::1] kb2,
                          const uint8_t[::1] klo2, const uint8_t[::1] khi2, const float[::1] bp2,
                          int nan1, int zero1, int nan2, int zero2):
    cdef int64_t n = p.shape[0]
    cdef int64_t nb = (n + 255) // 256
    cdef void* pg = _addr(g)
    cdef void* pp = _addr(p)
    cdef ko_plan P1 = _plan(m1, n1, bc1, kb1, klo1, khi1, bp1, nan1, zero1)
    cdef ko_plan P2 = _plan(m2_, n2, bc2, kb2, klo2, khi2, bp2, nan2, zero2)
    cdef int64_t b
    if gkind == 0 and pkind == 0 and not skip_zeros:
        for b in prange(nb, nogil=True, schedule="static"):
            ko_fast8(opt, first, <const float*>pg, <float*>pp, &c1[0], &a1[0], &c1b[0], &a1b[0], &c2[0], &a2[0],
                     &t1[0], &t2[0], &k[0], b, n, &P1, &P2)
        return
    for b in prange(nb, nogil=True, schedule="static"):
        ko_update8_block(opt, first, skip_zeros, pg, gkind, pp, pkind, &c1[0], &a1[0], &c1b[0], &a1b[0],
                         &c2[0], &a2[0], &t1[0], &t2[0], &k[0], b, n, &P1, &P2)
