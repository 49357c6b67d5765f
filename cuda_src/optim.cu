// kbit-workbench: fused optimizer updates, 32-bit and 8-bit blockwise state, for Hopper (sm_90).
// Build: python -m workbench.cuda_build optim  (IEEE flags: -fmad=false -prec-div=true -prec-sqrt=true -ftz=false).
//
// One pass over memory: grad and param are read once, param written once; states are read once and
// written once (8-bit: codes + one absmax per 256-block). The update rule is the reference's
// (workbench/optim/functional.py) operation by operation, so results are bit-identical to it.
//
// 8-bit layout: a warp owns one 256-element block at a time; with aligned pointers a lane handles
// elements 4l..4l+3 and 128+4l..128+4l+3 of a full block (16-byte fp32 / 8-byte 16-bit accesses,
// 4 codes per 32-bit access: 4x fewer memory instructions); the tail block and misaligned arrays
// take lane l -> elements l, l+32, ..., l+224 (scalar, bounds-checked). The new states stay in registers; the block absmax is a
// NaN-propagating max (max.NaN per lane, then one REDUX over the bits); requantization is a cell-plan search in
// shared memory (one cell load, S <= 3 bound loads, one code load).
// NaN/Inf (workbench/optim/functional.py, "NaN and Inf"): the block absmax propagates NaN (fmaxf would drop it), so a
// NaN poisons its whole 256-block as in the reference; a block whose absmax is NaN or Inf (a warp-uniform branch)
// takes the reference's codes: NaN's is the last bucket's, +-0's the code of 0.0 (nonfinite_code).
// Tables, trees and bucket codes (256 entries per state) are loaded into shared memory once per CTA
// (persistent grid).
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <stdint.h>

#include <algorithm>

#include "kbit_device.h"
#include "kbit_optim.h"

namespace {

constexpr int THREADS = 256;
constexpr int WARPS = THREADS / 32;
constexpr float TINY = 1e-38f;

struct KP {
    float k[KBIT_OPT_NK];
};

// ld/st: one element; ld4/st4: four consecutive elements at a 4-element-aligned index (one 16-byte
// access for float, one 8-byte access for the 16-bit types)
template <typename T> struct IO;
template <> struct IO<float> {
    __device__ static float ld(const float* a, long long i) { return a[i]; }
    __device__ static void st(float* a, long long i, float v) { a[i] = v; }
    __device__ static void ld4(const float* a, long long i, float* v) {
        const float4 w = *reinterpret_cast<const float4*>(a + i);
        v[0] = w.x, v[1] = w.y, v[2] = w.z, v[3] = w.w;
    }
    __device__ static void st4(float* a, long long i, const float* v) {
        *reinterpret_cast<float4*>(a + i) = make_float4(v[0], v[1], v[2], v[3]);
    }
};
template <typename H, float (*TO)(H), H (*FROM)(float)> struct IO16 {
    __device__ static float ld(const H* a, long long i) { return TO(a[i]); }
    __device__ static void st(H* a, long long i, float v) { a[i] = FROM(v); }
    __device__ static void ld4(const H* a, long long i, float* v) {
        const uint2 w = *reinterpret_cast<const uint2*>(a + i);
        const H* h = reinterpret_cast<const H*>(&w);
        for (int c = 0; c < 4; c++) v[c] = TO(h[c]);
    }
    __device__ static void st4(H* a, long long i, const float* v) {
        uint2 w;
        H* h = reinterpret_cast<H*>(&w);
        for (int c = 0; c < 4; c++) h[c] = FROM(v[c]);
        *reinterpret_cast<uint2*>(a + i) = w;
    }
};
__device__ __forceinline__ float h2f(__half h) { return __half2float(h); }
__device__ __forceinline__ __half f2h(float v) { return __float2half_rn(v); }
__device__ __forceinline__ float b2f(__nv_bfloat16 h) { return __bfloat162float(h); }
__device__ __forceinline__ __nv_bfloat16 f2b(float v) { return __float2bfloat16_rn(v); }
template <> struct IO<__half> : IO16<__half, h2f, f2h> {};
template <> struct IO<__nv_bfloat16> : IO16<__nv_bfloat16, b2f, f2b> {};

// torch.sign: +-0 and NaN -> +0
__device__ __forceinline__ float sgn(float x) { return (float)((x > 0.0f) - (x < 0.0f)); }

// New (p, a = state1, b = AdEMAMix m2, d = state2) for one element. Mirrors functional._rule.
template <int OPT, bool EIGHT>
__device__ __forceinline__ void rule(bool first, float g, float& p, float& a, float& b, float& d, const float* k) {
    g = g * k[KBIT_K_GS];
    const float wd = k[KBIT_K_WD];
    if constexpr (OPT == KBIT_OPT_MOMENTUM || OPT == KBIT_OPT_RMSPROP || OPT == KBIT_OPT_ADAGRAD) {
        if (wd > 0.0f) g = g + p * wd;
    }
    if constexpr (OPT == KBIT_OPT_ADAM) {
        a = a * k[KBIT_K_B1] + g * k[KBIT_K_OMB1];
        d = d * k[KBIT_K_B2] + (g * g) * k[KBIT_K_OMB2];
        if (wd > 0.0f) p = p * k[KBIT_K_DECAY];
        if constexpr (EIGHT) {
            p = p + (a / (sqrtf(d) / k[KBIT_K_C2] + k[KBIT_K_EPS])) * k[KBIT_K_NEG_LR_C1];
        } else {
            p = p + (a / (sqrtf(d) + k[KBIT_K_EPS_C2])) * k[KBIT_K_UPD_MUL];
        }
    } else if constexpr (OPT == KBIT_OPT_ADEMAMIX) {
        a = a * k[KBIT_K_B1] + g * k[KBIT_K_OMB1];
        b = b * k[KBIT_K_B3] + g * k[KBIT_K_OMB3];
        d = d * k[KBIT_K_B2] + (g * g) * k[KBIT_K_OMB2];
        if (wd > 0.0f) p = p * k[KBIT_K_DECAY];
        p = p + ((a / k[KBIT_K_C1] + b * k[KBIT_K_ALPHA]) / (sqrtf(d) / k[KBIT_K_C2] + k[KBIT_K_EPS])) *
                    k[KBIT_K_NEG_LR];
    } else if constexpr (OPT == KBIT_OPT_MOMENTUM) {
        a = first ? g : a * k[KBIT_K_B1] + g;
        p = p + a * k[KBIT_K_UPD_MUL];
    } else if constexpr (OPT == KBIT_OPT_LION) {
        if (wd > 0.0f) p = p * k[KBIT_K_DECAY];
        p = p + sgn(a * k[KBIT_K_B1] + g * k[KBIT_K_OMB1]) * k[KBIT_K_NEG_LR];
        a = a * k[KBIT_K_B2] + g * k[KBIT_K_OMB2];
    } else if constexpr (OPT == KBIT_OPT_RMSPROP) {
        a = a * k[KBIT_K_B1] + (g * g) * k[KBIT_K_OMB1];
        p = p + (g / (sqrtf(a) + k[KBIT_K_EPS])) * k[KBIT_K_UPD_MUL];
    } else { // ADAGRAD
        a = a + g * g;
        p = p + (g / (sqrtf(a) + k[KBIT_K_EPS])) * k[KBIT_K_NEG_LR];
    }
}

// ------------------------------------------------------------------------------------------ 32-bit
constexpr int U32 = 4; // elements per thread per grid-stride step

template <typename T, int OPT>
__global__ void __launch_bounds__(THREADS) k_update32(int first, int skip_zeros, const T* __restrict__ g,
                                                      T* __restrict__ p, float* __restrict__ s1,
                                                      float* __restrict__ m2, float* __restrict__ s2, long long n,
                                                      const __grid_constant__ KP kp) {
    constexpr bool HB = OPT == KBIT_OPT_ADEMAMIX;
    constexpr bool HS2 = OPT == KBIT_OPT_ADAM || OPT == KBIT_OPT_ADEMAMIX;
    const long long stride = (long long)gridDim.x * THREADS * U32;
    for (long long base = (long long)blockIdx.x * THREADS * U32 + threadIdx.x; base < n; base += stride) {
        float gv[U32], pv[U32], a[U32], b[U32], d[U32];
#pragma unroll
        for (int j = 0; j < U32; j++) {
            long long i = base + (long long)j * THREADS;
            if (i < n) {
                gv[j] = IO<T>::ld(g, i);
                pv[j] = IO<T>::ld(p, i);
                a[j] = s1[i];
                b[j] = HB ? m2[i] : 0.0f;
                d[j] = HS2 ? s2[i] : 0.0f;
            }
        }
#pragma unroll
        for (int j = 0; j < U32; j++) {
            long long i = base + (long long)j * THREADS;
            if (i < n && !(skip_zeros && gv[j] == 0.0f)) {
                rule<OPT, false>(first, gv[j], pv[j], a[j], b[j], d[j], kp.k);
                IO<T>::st(p, i, pv[j]);
                s1[i] = a[j];
                if (HB) m2[i] = b[j];
                if (HS2) s2[i] = d[j];
            }
        }
    }
}

template <typename T, int OPT>
__global__ void __launch_bounds__(THREADS) k_norm32(int first, const T* __restrict__ g, const T* __restrict__ p,
                                                    const float* __restrict__ s1, const float* __restrict__ s2,
                                                    long long n, const __grid_constant__ KP kp, double* out) {
    const float* k = kp.k;
    double acc = 0.0;
    for (long long i = (long long)blockIdx.x * THREADS + threadIdx.x; i < n; i += (long long)gridDim.x * THREADS) {
        float gv = IO<T>::ld(g, i) * k[KBIT_K_GS];
        float pv = IO<T>::ld(p, i);
        float u;
        if constexpr (OPT == KBIT_OPT_ADAM) {
            float a = s1[i] * k[KBIT_K_B1] + gv * k[KBIT_K_OMB1];
            float d = s2[i] * k[KBIT_K_B2] + (gv * gv) * k[KBIT_K_OMB2];
            u = a / (sqrtf(d) + k[KBIT_K_EPS_C2]);
        } else if constexpr (OPT == KBIT_OPT_MOMENTUM) {
            if (k[KBIT_K_WD] > 0.0f) gv = gv + pv * k[KBIT_K_WD];
            u = first ? gv : s1[i] * k[KBIT_K_B1] + gv;
        } else { // RMSPROP
            if (k[KBIT_K_WD] > 0.0f) gv = gv + pv * k[KBIT_K_WD];
            float a = s1[i] * k[KBIT_K_B1] + (gv * gv) * k[KBIT_K_OMB1];
            u = gv / (sqrtf(a) + k[KBIT_K_EPS]);
        }
        acc += (double)u * (double)u;
    }
    for (int off = 16; off > 0; off >>= 1) acc += __shfl_xor_sync(0xffffffffu, acc, off);
    __shared__ double s_acc[WARPS];
    if ((threadIdx.x & 31) == 0) s_acc[threadIdx.x >> 5] = acc;
    __syncthreads();
    if (threadIdx.x == 0) {
        double t = 0.0;
        for (int w = 0; w < WARPS; w++) t += s_acc[w];
        atomicAdd(out, t);
    }
}

// ------------------------------------------------------------------------------------------ 8-bit
constexpr int CELLS = 384 << 4; // m <= 4
constexpr int NB = 256 + 8;

__device__ __forceinline__ unsigned char encode(float v, float amc, float r, bool tail, const unsigned char* cell,
                                                const float* b, const unsigned char* codes, int shift, int S) {
    float s = tail ? v / amc : v * r;
    s = fminf(fmaxf(s, -1.0f), 1.0f); // NaN -> -1 (keeps the key in range); bounds fold the clamp anyway
    int pos = cell[__float_as_uint(s) >> shift];
    for (int step = 1 << (S - 1); step > 0; step >>= 1) pos += (s > b[pos + step - 1]) ? step : 0;
    return codes[pos];
}

// FAST: the standard dynamic maps' plans (identity bucket codes, S = 2 for state1, S = 3 for state2):
// the search unrolled and code = pos (no code load).
// NaN -> +1 (fminf first): the last bucket (every bound < 1 on this path, see Plan.identity in _gpu_plan.py), which is
// the reference's code of a NaN scaled value; with the NaN-keeping absmax this path needs no non-finite branch.
template <int S>
__device__ __forceinline__ unsigned char encode_fast(float v, float amc, float r, bool tail, const unsigned char* cell,
                                                     const float* b, int shift) {
    float s = tail ? v / amc : v * r;
    s = fmaxf(fminf(s, 1.0f), -1.0f);
    int pos = cell[__float_as_uint(s) >> shift];
#pragma unroll
    for (int step = 1 << (S - 1); step > 0; step >>= 1) pos += (s > b[pos + step - 1]) ? step : 0;
    return (unsigned char)pos;
}

// |v|'s bit pattern: as unsigned integers NaN patterns > Inf > every finite value (in float order)
__device__ __forceinline__ uint32_t abs_bits(float v) { return __float_as_uint(v) & 0x7FFFFFFFu; }

// NaN-propagating max (PTX max.NaN, sm_80+: one FMNMX, |x| folded in as an operand modifier); fmaxf drops NaN
__device__ __forceinline__ float fmax_nan(float a, float b) {
#if __CUDA_ARCH__ >= 800
    float r;
    asm("max.NaN.f32 %0, %1, %2;" : "=f"(r) : "f"(a), "f"(b));
    return r;
#else
    return (a != a || b != b) ? __int_as_float(0x7FFFFFFF) : fmaxf(a, b);
#endif
}

__device__ __forceinline__ uint32_t warp_umax(uint32_t v) {
#if __CUDA_ARCH__ >= 800
    return __reduce_max_sync(0xffffffffu, v);
#else
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) v = max(v, __shfl_xor_sync(0xffffffffu, v, off));
    return v;
#endif
}

constexpr uint32_t EXP_BITS = 0x7F800000u; // abs_bits >= EXP_BITS: Inf or NaN

// The code of element v of a block whose absmax (bits mxu) is NaN or Inf, as the reference computes it: a NaN absmax
// makes every scaled value NaN (nc: torch.bucketize puts NaN after every bound); an Inf absmax scales finite values to
// +-0 (zc: the code of 0.0) and Inf ones to NaN.
__device__ __forceinline__ unsigned char nonfinite_code(float v, uint32_t mxu, unsigned char zc, unsigned char nc) {
    return (mxu > EXP_BITS || abs_bits(v) >= EXP_BITS) ? nc : zc;
}

// FAST: the cell plan with identity bucket codes (unrolled search, code = bucket)
template <typename T, int OPT, bool FAST>
__global__ void __launch_bounds__(THREADS, 4) // 4 CTAs/SM: AdEMAMix fits 64 registers with packed codes
    k_update8(int first, int skip_zeros, const T* __restrict__ g, T* __restrict__ p, unsigned char* __restrict__ c1,
              float* __restrict__ a1, unsigned char* __restrict__ c1b, float* __restrict__ a1b,
              unsigned char* __restrict__ c2, float* __restrict__ a2, const float* __restrict__ table1,
              const unsigned char* __restrict__ cell1, const float* __restrict__ bounds1,
              const unsigned char* __restrict__ codes1, int m1, int S1, const float* __restrict__ table2,
              const unsigned char* __restrict__ cell2, const float* __restrict__ bounds2,
              const unsigned char* __restrict__ codes2, int m2, int S2, long long n, long long nblocks,
              const __grid_constant__ KP kp, int vec_ok) {
    constexpr bool HB = OPT == KBIT_OPT_ADEMAMIX;
    constexpr bool HS2 = OPT == KBIT_OPT_ADAM || OPT == KBIT_OPT_ADEMAMIX;
    __shared__ float s_t1[256], s_b1[NB], s_t2[HS2 ? 256 : 1], s_b2[HS2 ? NB : 1];
    __shared__ __align__(16) unsigned char s_cell1[CELLS], s_cell2[HS2 ? CELLS : 16];
    __shared__ unsigned char s_c1[260], s_c2[HS2 ? 260 : 1];
    const int ncell1 = 384 << m1, ncell2 = HS2 ? 384 << m2 : 0;
    for (int i = threadIdx.x; i < NB; i += THREADS) {
        if (i < 256) s_t1[i] = table1[i];
        s_b1[i] = bounds1[i];
        if (!FAST && i < 257) s_c1[i] = codes1[i];
        if constexpr (HS2) {
            if (i < 256) s_t2[i] = table2[i];
            s_b2[i] = bounds2[i];
            if (!FAST && i < 257) s_c2[i] = codes2[i];
        }
    }
    for (int i = threadIdx.x; i < ncell1; i += THREADS) s_cell1[i] = cell1[i];
    for (int i = threadIdx.x; i < ncell2; i += THREADS) s_cell2[i] = cell2[i];
    __syncthreads();
    const int sh1 = 23 - m1, sh2 = 23 - m2;
    const int lane = threadIdx.x & 31;
    // Element j (0..7) of a lane in a 256-block: full blocks with aligned pointers (vec) take
    // 128 * (j / 4) + 4 * lane + j % 4 (4 consecutive elements: vector loads/stores, 4 codes in one
    // 32-bit word); other blocks take 32 * j + lane (scalar, bounds-checked).
    for (long long blk = (long long)blockIdx.x * WARPS + (threadIdx.x >> 5); blk < nblocks;
         blk += (long long)gridDim.x * WARPS) {
        const long long start = blk * 256;
        const int cnt = (int)min(256LL, n - start);
        const bool tail = cnt < 256;
        const bool vec = vec_ok && !tail;
        const float am1 = a1[blk];
        const float amb = HB ? a1b[blk] : 0.0f;
        const float am2 = HS2 ? a2[blk] : 0.0f;
        float gv[8], pv[8], va[8], vb[8], vd[8];
        // codes of the 8 elements, packed: element j is byte j & 3 of word j >> 2 (registers)
        uint32_t q1[2] = {0, 0}, qb[2] = {0, 0}, q2[2] = {0, 0};
        auto byte_of = [](const uint32_t* q, int j) { return (q[j >> 2] >> (8 * (j & 3))) & 0xFFu; };
        auto elem = [&](int j) { return vec ? 128 * (j >> 2) + 4 * lane + (j & 3) : 32 * j + lane; };
        if (vec) {
#pragma unroll
            for (int h = 0; h < 2; h++) {
                const long long i = start + 128 * h + 4 * lane;
                IO<T>::ld4(g, i, gv + 4 * h);
                IO<T>::ld4(p, i, pv + 4 * h);
                q1[h] = *reinterpret_cast<const uint32_t*>(c1 + i);
                if (HB) qb[h] = *reinterpret_cast<const uint32_t*>(c1b + i);
                if (HS2) q2[h] = *reinterpret_cast<const uint32_t*>(c2 + i);
            }
        } else {
#pragma unroll
            for (int j = 0; j < 8; j++) {
                const int e = elem(j);
                const long long i = start + e;
                const bool in = e < cnt;
                gv[j] = in ? IO<T>::ld(g, i) : 0.0f;
                pv[j] = in ? IO<T>::ld(p, i) : 0.0f;
                const int sh = 8 * (j & 3);
                q1[j >> 2] |= (in ? (uint32_t)c1[i] : 0u) << sh;
                qb[j >> 2] |= (in && HB ? (uint32_t)c1b[i] : 0u) << sh;
                q2[j >> 2] |= (in && HS2 ? (uint32_t)c2[i] : 0u) << sh;
            }
        }
        float mx1 = 0.0f, mxb = 0.0f, mx2 = 0.0f; // NaN-propagating maxima of |x| (>= +0 or NaN)
#pragma unroll
        for (int j = 0; j < 8; j++) {
            float a = s_t1[byte_of(q1, j)] * am1;
            float b = HB ? s_t1[byte_of(qb, j)] * amb : 0.0f;
            float d = HS2 ? s_t2[byte_of(q2, j)] * am2 : 0.0f;
            if (elem(j) < cnt) {
                if (!(skip_zeros && gv[j] == 0.0f)) rule<OPT, true>(first, gv[j], pv[j], a, b, d, kp.k);
            } else {
                a = b = d = 0.0f;
            }
            va[j] = a;
            vb[j] = b;
            vd[j] = d;
            mx1 = fmax_nan(mx1, fabsf(a));
            if (HB) mxb = fmax_nan(mxb, fabsf(b));
            if (HS2) mx2 = fmax_nan(mx2, fabsf(d));
        }
        if (vec) {
#pragma unroll
            for (int h = 0; h < 2; h++) IO<T>::st4(p, start + 128 * h + 4 * lane, pv + 4 * h);
        } else {
#pragma unroll
            for (int j = 0; j < 8; j++)
                if (elem(j) < cnt) IO<T>::st(p, start + elem(j), pv[j]);
        }
        // across the warp: the maxima as bits (non-negative floats order as their bits, NaN above all)
        const uint32_t u1 = warp_umax(__float_as_uint(mx1));
        const uint32_t ub = HB ? warp_umax(__float_as_uint(mxb)) : 0u;
        const uint32_t u2 = HS2 ? warp_umax(__float_as_uint(mx2)) : 0u;
        mx1 = __uint_as_float(u1), mxb = __uint_as_float(ub), mx2 = __uint_as_float(u2);
        // max(absmax, 1e-38) on the bits: keeps NaN (fmaxf would not); the same value as fmaxf otherwise
        const uint32_t tiny = __float_as_uint(TINY);
        const float amc1 = __uint_as_float(max(u1, tiny)), r1 = 1.0f / amc1;
        const float amcb = __uint_as_float(max(ub, tiny)), rb = 1.0f / amcb;
        const float amc2 = __uint_as_float(max(u2, tiny)), r2 = 1.0f / amc2;
        const bool bad1 = u1 >= EXP_BITS, badb = ub >= EXP_BITS, bad2 = u2 >= EXP_BITS; // warp-uniform
        q1[0] = q1[1] = qb[0] = qb[1] = q2[0] = q2[1] = 0; // now the new codes
        // a block whose absmax is NaN/Inf (warp-uniform, rare): the reference's codes (NaN's: the last bucket's; +-0's:
        // 0.0's). FAST gets them from encode_fast itself: r = 1/NaN = NaN and 1/Inf = 0 give NaN and +-0 scaled values,
        // and NaN encodes as +1 there. The general path (any code table) branches.
        if (FAST || !(bad1 || badb || bad2)) {
#pragma unroll
            for (int j = 0; j < 8; j++) {
                const int sh = 8 * (j & 3);
                if constexpr (FAST) {
                    q1[j >> 2] |= (uint32_t)encode_fast<2>(va[j], amc1, r1, tail, s_cell1, s_b1, sh1) << sh;
                    if (HB) qb[j >> 2] |= (uint32_t)encode_fast<2>(vb[j], amcb, rb, tail, s_cell1, s_b1, sh1) << sh;
                    if (HS2) q2[j >> 2] |= (uint32_t)encode_fast<3>(vd[j], amc2, r2, tail, s_cell2, s_b2, sh2) << sh;
                } else {
                    q1[j >> 2] |= (uint32_t)encode(va[j], amc1, r1, tail, s_cell1, s_b1, s_c1, sh1, S1) << sh;
                    if (HB) qb[j >> 2] |= (uint32_t)encode(vb[j], amcb, rb, tail, s_cell1, s_b1, s_c1, sh1, S1) << sh;
                    if (HS2) q2[j >> 2] |= (uint32_t)encode(vd[j], amc2, r2, tail, s_cell2, s_b2, s_c2, sh2, S2) << sh;
                }
            }
        } else if constexpr (!FAST) {
            // 0.0's code from the plan; NaN's is the last bucket's (codes[256] pads with bucket_codes[-1])
            const unsigned char zc1 = encode(0.0f, 1.0f, 1.0f, false, s_cell1, s_b1, s_c1, sh1, S1), nc1 = s_c1[256];
            unsigned char zc2 = 0, nc2 = 0;
            if constexpr (HS2) zc2 = encode(0.0f, 1.0f, 1.0f, false, s_cell2, s_b2, s_c2, sh2, S2), nc2 = s_c2[256];
#pragma unroll
            for (int j = 0; j < 8; j++) {
                const int sh = 8 * (j & 3);
                q1[j >> 2] |= (uint32_t)(bad1 ? nonfinite_code(va[j], u1, zc1, nc1)
                                              : encode(va[j], amc1, r1, tail, s_cell1, s_b1, s_c1, sh1, S1))
                              << sh;
                if (HB)
                    qb[j >> 2] |= (uint32_t)(badb ? nonfinite_code(vb[j], ub, zc1, nc1)
                                                  : encode(vb[j], amcb, rb, tail, s_cell1, s_b1, s_c1, sh1, S1))
                                  << sh;
                if (HS2)
                    q2[j >> 2] |= (uint32_t)(bad2 ? nonfinite_code(vd[j], u2, zc2, nc2)
                                                  : encode(vd[j], amc2, r2, tail, s_cell2, s_b2, s_c2, sh2, S2))
                                  << sh;
            }
        }
        if (vec) {
#pragma unroll
            for (int h = 0; h < 2; h++) {
                const long long i = start + 128 * h + 4 * lane;
                *reinterpret_cast<uint32_t*>(c1 + i) = q1[h];
                if (HB) *reinterpret_cast<uint32_t*>(c1b + i) = qb[h];
                if (HS2) *reinterpret_cast<uint32_t*>(c2 + i) = q2[h];
            }
        } else {
#pragma unroll
            for (int j = 0; j < 8; j++) {
                if (elem(j) < cnt) {
                    const long long i = start + elem(j);
                    c1[i] = (unsigned char)byte_of(q1, j);
                    if (HB) c1b[i] = (unsigned char)byte_of(qb, j);
                    if (HS2) c2[i] = (unsigned char)byte_of(q2, j);
                }
            }
        }
        if (lane == 0) {
            a1[blk] = tail ? amc1 : mx1;
            if (HB) a1b[blk] = tail ? amcb : mxb;
            if (HS2) a2[blk] = tail ? amc2 : mx2;
        }
    }
}

KP make_kp(const float* k) {
    KP kp;
    for (int i = 0; i < KBIT_OPT_NK; i++) kp.k[i] = k[i];
    return kp;
}

template <typename T, int OPT>
cudaError_t launch32(int first, int skip, const void* g, void* p, float* s1, float* m2, float* s2, long long n,
                     const KP& kp, cudaStream_t st) {
    long long need = (n + (long long)THREADS * U32 - 1) / ((long long)THREADS * U32);
    static int occ = 0;
    if (occ == 0 && (cudaOccupancyMaxActiveBlocksPerMultiprocessor(&occ, k_update32<T, OPT>, THREADS, 0) != cudaSuccess || occ < 1)) occ = 4;
    int grid = (int)std::min<long long>(need, (long long)kbit_num_sms() * occ * 4);
    k_update32<T, OPT><<<grid, THREADS, 0, st>>>(first, skip, (const T*)g, (T*)p, s1, m2, s2, n, kp);
    return cudaGetLastError();
}

template <typename T, int OPT>
cudaError_t launch8(int first, int skip, const void* g, void* p, unsigned char* c1, float* a1, unsigned char* c1b,
                    float* a1b, unsigned char* c2, float* a2, const float* t1, const unsigned char* l1,
                    const float* f1, const unsigned char* q1, int m1, int S1, const float* t2, const unsigned char* l2,
                    const float* f2, const unsigned char* q2, int m2, int S2, long long n, const KP& kp, bool fast,
                    cudaStream_t st) {
    long long nblocks = (n + 255) / 256;
    long long need = (nblocks + WARPS - 1) / WARPS;
    auto kern = fast ? k_update8<T, OPT, true> : k_update8<T, OPT, false>;
    static int occ[2] = {0, 0}; // persistent grid: exactly the resident CTAs
    int& o = occ[fast ? 1 : 0];
    if (o == 0 && (cudaOccupancyMaxActiveBlocksPerMultiprocessor(&o, kern, THREADS, 0) != cudaSuccess || o < 1)) o = 4;
    int grid = (int)std::min<long long>(need, (long long)kbit_num_sms() * o);
    // vector path: 16-byte (float) / 8-byte (16-bit) param and grad, 4-byte code arrays
    auto al = [](const void* q, uintptr_t a) { return q == nullptr || (reinterpret_cast<uintptr_t>(q) % a) == 0; };
    const int vec_ok = al(g, 4 * sizeof(T)) && al(p, 4 * sizeof(T)) && al(c1, 4) && al(c1b, 4) && al(c2, 4);
    kern<<<grid, THREADS, 0, st>>>(first, skip, (const T*)g, (T*)p, c1, a1, c1b, a1b, c2, a2, t1, l1, f1, q1, m1, S1, t2,
                                   l2, f2, q2, m2, S2, n, nblocks, kp, vec_ok);
    return cudaGetLastError();
}

template <typename T>
cudaError_t dispatch32(int opt, int first, int skip, const void* g, void* p, float* s1, float* m2, float* s2,
                       long long n, const KP& kp, cudaStream_t st) {
    switch (opt) {
    case KBIT_OPT_ADAM: return launch32<T, KBIT_OPT_ADAM>(first, skip, g, p, s1, m2, s2, n, kp, st);
    case KBIT_OPT_ADEMAMIX: return launch32<T, KBIT_OPT_ADEMAMIX>(first, skip, g, p, s1, m2, s2, n, kp, st);
    case KBIT_OPT_MOMENTUM: return launch32<T, KBIT_OPT_MOMENTUM>(first, skip, g, p, s1, m2, s2, n, kp, st);
    case KBIT_OPT_LION: return launch32<T, KBIT_OPT_LION>(first, skip, g, p, s1, m2, s2, n, kp, st);
    case KBIT_OPT_RMSPROP: return launch32<T, KBIT_OPT_RMSPROP>(first, skip, g, p, s1, m2, s2, n, kp, st);
    case KBIT_OPT_ADAGRAD: return launch32<T, KBIT_OPT_ADAGRAD>(first, skip, g, p, s1, m2, s2, n, kp, st);
    }
    return cudaErrorInvalidValue;
}

template <typename T>
cudaError_t dispatch8(int opt, int first, int skip, const void* g, void* p, unsigned char* c1, float* a1,
                      unsigned char* c1b, float* a1b, unsigned char* c2, float* a2, const float* t1,
                      const unsigned char* l1, const float* f1, const unsigned char* q1, int m1, int S1,
                      const float* t2, const unsigned char* l2, const float* f2, const unsigned char* q2, int m2, int S2,
                      long long n, const KP& kp, bool fast, cudaStream_t st) {
#define KB_L8(O)                                                                                                      \
    return launch8<T, O>(first, skip, g, p, c1, a1, c1b, a1b, c2, a2, t1, l1, f1, q1, m1, S1, t2, l2, f2, q2, m2, S2, \
                         n, kp, fast, st)
    switch (opt) {
    case KBIT_OPT_ADAM: KB_L8(KBIT_OPT_ADAM);
    case KBIT_OPT_ADEMAMIX: KB_L8(KBIT_OPT_ADEMAMIX);
    case KBIT_OPT_MOMENTUM: KB_L8(KBIT_OPT_MOMENTUM);
    case KBIT_OPT_LION: KB_L8(KBIT_OPT_LION);
    case KBIT_OPT_RMSPROP: KB_L8(KBIT_OPT_RMSPROP);
    case KBIT_OPT_ADAGRAD: KB_L8(KBIT_OPT_ADAGRAD);
    }
#undef KB_L8
    return cudaErrorInvalidValue;
}

template <typename T>
cudaError_t dispatch_norm(int opt, int first, const void* g, const void* p, const float* s1, const float* s2,
                          long long n, const KP& kp, double* out, cudaStream_t st) {
    int grid = (int)std::min<long long>((n + THREADS - 1) / THREADS, (long long)kbit_num_sms() * 4);
    if (grid < 1) return cudaSuccess;
    switch (opt) {
    case KBIT_OPT_ADAM:
        k_norm32<T, KBIT_OPT_ADAM><<<grid, THREADS, 0, st>>>(first, (const T*)g, (const T*)p, s1, s2, n, kp, out);
        break;
    case KBIT_OPT_MOMENTUM:
        k_norm32<T, KBIT_OPT_MOMENTUM><<<grid, THREADS, 0, st>>>(first, (const T*)g, (const T*)p, s1, s2, n, kp, out);
        break;
    case KBIT_OPT_RMSPROP:
        k_norm32<T, KBIT_OPT_RMSPROP><<<grid, THREADS, 0, st>>>(first, (const T*)g, (const T*)p, s1, s2, n, kp, out);
        break;
    default: return cudaErrorInvalidValue;
    }
    return cudaGetLastError();
}

} // namespace

extern "C" {

cudaError_t kbit_optimizer_update_32bit(int opt, int first, int skip_zeros, const void* g, int gdtype, void* p,
                                        int pdtype, float* s1, float* m2, float* s2, long long n, const float* k,
                                        cudaStream_t stream) {
    if (n <= 0) return cudaSuccess;
    if (gdtype != pdtype) return cudaErrorInvalidValue;
    KP kp = make_kp(k);
    switch (gdtype) {
    case KBIT_F32: return dispatch32<float>(opt, first, skip_zeros, g, p, s1, m2, s2, n, kp, stream);
    case KBIT_F16: return dispatch32<__half>(opt, first, skip_zeros, g, p, s1, m2, s2, n, kp, stream);
    case KBIT_BF16: return dispatch32<__nv_bfloat16>(opt, first, skip_zeros, g, p, s1, m2, s2, n, kp, stream);
    }
    return cudaErrorInvalidValue;
}

cudaError_t kbit_optimizer_update_norm_sq(int opt, int first, const void* g, int gdtype, const void* p, int pdtype,
                                          const float* s1, const float* s2, long long n, const float* k, double* out,
                                          cudaStream_t stream) {
    if (n <= 0) return cudaSuccess;
    if (gdtype != pdtype) return cudaErrorInvalidValue;
    KP kp = make_kp(k);
    switch (gdtype) {
    case KBIT_F32: return dispatch_norm<float>(opt, first, g, p, s1, s2, n, kp, out, stream);
    case KBIT_F16: return dispatch_norm<__half>(opt, first, g, p, s1, s2, n, kp, out, stream);
    case KBIT_BF16: return dispatch_norm<__nv_bfloat16>(opt, first, g, p, s1, s2, n, kp, out, stream);
    }
    return cudaErrorInvalidValue;
}

cudaError_t kbit_optimizer_update_8bit_blockwise(int opt, int first, int skip_zeros, const void* g, int gdtype,
                                                 void* p, int pdtype, unsigned char* c1, float* a1,
                                                 unsigned char* c1b, float* a1b, unsigned char* c2, float* a2,
                                                 const float* table1, const unsigned char* cell1, const float* bounds1,
                                                 const unsigned char* codes1, int m1, int S1, const float* table2,
                                                 const unsigned char* cell2, const float* bounds2,
                                                 const unsigned char* codes2, int m2, int S2, long long n,
                                                 const float* k, cudaStream_t stream) {
    if (n <= 0) return cudaSuccess;
    if (gdtype != pdtype) return cudaErrorInvalidValue;
    if (m1 < 1 || m1 > 4 || S1 < 1 || S1 > 8) return cudaErrorInvalidValue;
    if (cell2 != nullptr && (m2 < 1 || m2 > 4 || S2 < 1 || S2 > 8)) return cudaErrorInvalidValue;
    // codes1/codes2 == NULL: identity bucket codes (code = bucket); with S1 == 2 (and S2 == 3) -> unrolled fast path
    const bool fast = codes1 == nullptr && S1 == 2 && (cell2 == nullptr || (codes2 == nullptr && S2 == 3));
    if (!fast && (codes1 == nullptr || (cell2 != nullptr && codes2 == nullptr))) return cudaErrorInvalidValue;
    KP kp = make_kp(k);
    switch (gdtype) {
    case KBIT_F32:
        return dispatch8<float>(opt, first, skip_zeros, g, p, c1, a1, c1b, a1b, c2, a2, table1, cell1, bounds1, codes1, m1, S1, table2, cell2, bounds2, codes2, m2, S2, n, kp, fast, stream);
    case KBIT_F16:
        return dispatch8<__half>(opt, first, skip_zeros, g, p, c1, a1, c1b, a1b, c2, a2, table1, cell1, bounds1, codes1, m1, S1, table2, cell2, bounds2, codes2, m2, S2, n, kp, fast, stream);
    case KBIT_BF16:
        return dispatch8<__nv_bfloat16>(opt, first, skip_zeros, g, p, c1, a1, c1b, a1b, c2, a2, table1, cell1, bounds1, codes1, m1, S1, table2, cell2, bounds2, codes2, m2, S2, n, kp, fast, stream);
    }
    return cudaErrorInvalidValue;
}

int kbit_optim_ieee_build(void) {
#if defined(__FAST_MATH__) || defined(__USE_FAST_MATH__)
    return 0;
#else
    return 1;
#endif
}

} // extern "C"
