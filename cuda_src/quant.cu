// kbit-workbench: blockwise 8-bit / 4-bit quantization for Hopper (sm_90), bit-exact to the spec
// in docs/ARCHITECTURE.md. Build: python -m workbench.cuda_build quant  (IEEE flags: -fmad=false,
// -prec-div=true, -ftz=false).
//
// Layout of the work: a thread owns one CHUNK of 16 consecutive elements (bf16/fp16: two 16-byte
// loads, fp32: four). A quantization block of bs elements is G = bs/16 consecutive threads, so a
// warp holds 32/G blocks for bs <= 512 (absmax by xor-shuffles inside the G-lane group) and a
// block of bs >= 1024 spans G/32 warps of one CTA (shuffles, then shared memory).
// Rounding to the codebook is a branch-free search of an Eytzinger-ordered tree of the bounds in
// shared memory: i = 2i + (s > node[i]) for log2(m) levels; the leaf index then IS the bucket, and
// the leaf words hold bucket_codes, so the code costs one more shared load. The tree is built on
// the host from the codebook and passed by value as a kernel parameter (no device temporaries).
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <stdint.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <initializer_list>
#include <map>
#include <memory>
#include <mutex>
#include <type_traits>
#include <vector>

#include "kbit_quant.h"

namespace {

constexpr int CHUNK = 16;      // elements per thread
constexpr int THREADS = 256;   // threads per CTA
constexpr float TINY = 1e-38f; // float32 subnormal; kernels must not flush it

// Eytzinger tree: words [1, 2^L) are float bounds (bit patterns), [2^L, 2^(L+1)) bucket codes.
template <int L> struct Tree {
    uint32_t w[1 << (L + 1)];
};

template <int L> void build_tree(Tree<L>& t, const float* bounds, int nbounds, const unsigned char* bucket_codes,
                                 int nbuckets) {
    constexpr int M = 1 << L; // buckets
    float sorted[M];
    for (int i = 0; i < M - 1; i++) sorted[i] = i < nbounds ? bounds[i] : INFINITY;
    // in-order fill of the implicit tree 1..M-1 with the sorted bounds
    int k = 0;
    int stack[L + 2];
    int sp = 0;
    int node = 1;
    while (sp > 0 || node < M) {
        while (node < M) {
            stack[sp++] = node;
            node = 2 * node;
        }
        node = stack[--sp];
        float v = sorted[k++];
        std::memcpy(&t.w[node], &v, 4);
        node = 2 * node + 1;
    }
    t.w[0] = 0;
    for (int b = 0; b < M; b++) t.w[M + b] = bucket_codes[b < nbuckets ? b : nbuckets - 1];
}

// Cell plan: the fast search. A float's top bits (sign, exponent, m mantissa bits) name a CELL:
// key = bits >> (23 - m), so s in (-2, 2) lands in [0, 128 << m) (s >= +0) or [256 << m, 384 << m)
// (s <= -0) with one shift. Per cell the host stores off = 4 * #{bounds < min(cell)} and checks that at
// most 2^S - 1 bounds lie inside the cell. In the kernel: off = cell[key], then an S-step branch-free
// binary search over bounds[off/4 ...] (sorted, +inf padded), the last step choosing between the two
// codes of a (codes[pos], codes[pos+1]) pair. The [-1, 1] clamp of the spec is folded into the bounds
// (bounds < -1 -> -inf, bounds >= 1 -> +inf), so #{b' < s} = #{b < clamp(s)} for every |s| < 2.
constexpr int MMAX = 4; // cells: 2 * (384 << 4) bytes = 12 KB
struct Plan {
    uint16_t cell[384 << MMAX];
    float bounds[256 + 8];
    uint32_t pair[2 * 256];
    int m;
    int identity; // bucket_codes[i] == i: the code is the bucket index, no table read
};

static bool build_plan(Plan& p, int S, const float* bounds_in, int nbounds, const unsigned char* bucket_codes,
                       int nbuckets) {
    const int kmax = (1 << S) - 1;
    float b[256 + 8];
    for (int i = 0; i < 256 + 8; i++) {
        float v = i < nbounds ? bounds_in[i] : INFINITY;
        b[i] = v < -1.0f ? -INFINITY : (v >= 1.0f ? INFINITY : v);
    }
    auto count = [&](float v) { return (int)(std::lower_bound(b, b + nbounds, v) - b); };
    for (int m = 1; m <= MMAX; m++) {
        const uint32_t ncell = 128u << m;
        bool ok = true;
        std::memset(p.cell, 0, sizeof(p.cell));
        for (int sign = 0; sign < 2 && ok; sign++) {
            for (uint32_t u = 0; u < ncell; u++) {
                uint32_t lo = u << (23 - m), hi = ((u + 1) << (23 - m)) - 1;
                float vlo, vhi;
                std::memcpy(&vlo, &lo, 4);
                std::memcpy(&vhi, &hi, 4);
                float vmin = sign ? -vhi : vlo, vmax = sign ? -vlo : vhi;
                int base = count(vmin);
                if (count(vmax) - base > kmax) {
                    ok = false;
                    break;
                }
                p.cell[(sign ? (256u << m) : 0u) + u] = (uint16_t)(4 * base);
            }
        }
        if (ok) {
            p.m = m;
            std::memcpy(p.bounds, b, sizeof(b));
            p.identity = 1;
            for (int i = 0; i < nbuckets; i++) p.identity &= bucket_codes[i] == i;
            for (int i = 0; i < 256; i++) {
                p.pair[2 * i] = bucket_codes[std::min(i, nbuckets - 1)];
                p.pair[2 * i + 1] = bucket_codes[std::min(i + 1, nbuckets - 1)];
            }
            return true;
        }
    }
    return false;
}

template <typename T> struct Elem;
template <> struct Elem<float> {
    static constexpr int VECS = CHUNK * 4 / 16;
    __device__ static float at(const uint4* v, int j) { return __uint_as_float((&v[0].x)[j]); }
    __device__ static float load1(const void* p, long long i) { return static_cast<const float*>(p)[i]; }
    __device__ static uint32_t bits1(float x) { return __float_as_uint(x); }
    __device__ static void store1(void* p, long long i, float x) { static_cast<float*>(p)[i] = x; }
};
template <> struct Elem<__half> {
    static constexpr int VECS = CHUNK * 2 / 16;
    __device__ static float at(const uint4* v, int j) {
        uint32_t w = (&v[0].x)[j >> 1];
        unsigned short h = (j & 1) ? (unsigned short)(w >> 16) : (unsigned short)(w & 0xFFFF);
        return __half2float(__ushort_as_half(h));
    }
    __device__ static float load1(const void* p, long long i) {
        return __half2float(static_cast<const __half*>(p)[i]);
    }
    __device__ static uint32_t bits1(float x) { return __half_as_ushort(__float2half_rn(x)); }
    __device__ static void store1(void* p, long long i, float x) { static_cast<__half*>(p)[i] = __float2half_rn(x); }
};
template <> struct Elem<__nv_bfloat16> {
    static constexpr int VECS = CHUNK * 2 / 16;
    __device__ static float at(const uint4* v, int j) {
        uint32_t w = (&v[0].x)[j >> 1];
        return __uint_as_float((j & 1) ? (w & 0xFFFF0000u) : (w << 16));
    }
    __device__ static float load1(const void* p, long long i) {
        return __bfloat162float(static_cast<const __nv_bfloat16*>(p)[i]);
    }
    __device__ static uint32_t bits1(float x) { return __bfloat16_as_ushort(__float2bfloat16_rn(x)); }
    __device__ static void store1(void* p, long long i, float x) {
        static_cast<__nv_bfloat16*>(p)[i] = __float2bfloat16_rn(x);
    }
};

__device__ __forceinline__ float rcp_approx_ftz(float x) {
    float r;
    asm("rcp.approx.ftz.f32 %0, %1;" : "=f"(r) : "f"(x));
    return r;
}
__device__ __forceinline__ float mul_ftz(float a, float b) {
    float r;
    asm("mul.rn.ftz.f32 %0, %1, %2;" : "=f"(r) : "f"(a), "f"(b));
    return r;
}

// ------------------------------------------------------------------------------------------ quantize
// BITS: 4 (packed output) or 8 (one code per byte). L: tree levels (4 or 8). G: threads per block.
// S = 0: Eytzinger tree search (any codebook); S >= 1: cell plan with an S-step search.
template <int L, int S> using QParams = std::conditional_t<S == 0, Tree<L>, Plan>;

template <typename T, int BITS, int L, int G, int S>
__global__ void __launch_bounds__(THREADS, BITS == 8 ? 8 : 6) k_quantize(const void* __restrict__ A, long long n, long long nblocks,
                                                      const __grid_constant__ QParams<L, S> prm,
                                                      unsigned char* __restrict__ out, float* __restrict__ absmax,
                                                      int flags, int vec_ok, long long ntiles) {
    constexpr int M = 1 << L;
    constexpr int TREE_WORDS = S == 0 ? 2 * M : 1;
    __shared__ uint32_t s_tree[TREE_WORDS];
    __shared__ __align__(16) uint16_t s_cell[S == 0 ? 2 : 384 << MMAX];
    __shared__ __align__(16) float s_b[S == 0 ? 1 : 256 + 8];
    __shared__ __align__(16) uint32_t s_pair[S == 0 ? 2 : 2 * 256];
    __shared__ float s_warpmax[2][THREADS / 32];
    int m_bits = 0, ident = 0;
    if constexpr (S == 0) {
        for (int i = threadIdx.x; i < 2 * M; i += THREADS) s_tree[i] = prm.w[i];
    } else {
        m_bits = prm.m;
        ident = prm.identity;
        const int nw = (384 << m_bits) / 2; // cell words
        const uint32_t* cw = reinterpret_cast<const uint32_t*>(prm.cell);
        uint32_t* sw = reinterpret_cast<uint32_t*>(s_cell);
        for (int i = threadIdx.x; i < nw; i += THREADS) sw[i] = cw[i];
        for (int i = threadIdx.x; i < 256 + 8; i += THREADS) s_b[i] = prm.bounds[i];
        for (int i = threadIdx.x; i < 2 * 256; i += THREADS) s_pair[i] = prm.pair[i];
    }

    __syncthreads();
    // persistent CTAs: the shared tables are filled once, then tiles of THREADS chunks are strided
    int it = 0;
    for (long long tile = blockIdx.x; tile < ntiles; tile += gridDim.x, it ^= 1) {
    const long long t = tile * THREADS + threadIdx.x; // chunk index
    const long long e0 = t * CHUNK;
    const long long blk = t / G;
    const bool live = blk < nblocks;

    float x[CHUNK];
    if (vec_ok && e0 + CHUNK <= n) {
        uint4 v[Elem<T>::VECS];
        const uint4* p = reinterpret_cast<const uint4*>(static_cast<const T*>(A) + e0);
#pragma unroll
        for (int k = 0; k < Elem<T>::VECS; k++) v[k] = __ldcs(p + k);
#pragma unroll
        for (int j = 0; j < CHUNK; j++) x[j] = Elem<T>::at(v, j);
    } else {
#pragma unroll
        for (int j = 0; j < CHUNK; j++) x[j] = (e0 + j < n) ? Elem<T>::load1(A, e0 + j) : 0.0f;
    }

    float m = 0.0f;
#pragma unroll
    for (int j = 0; j < CHUNK; j++) m = fmaxf(m, fabsf(x[j]));
    constexpr int GW = G < 32 ? G : 32;
#pragma unroll
    for (int o = GW / 2; o > 0; o >>= 1) m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, o));
    if constexpr (G > 32) {
        const int warp = threadIdx.x >> 5;
        if ((threadIdx.x & 31) == 0) s_warpmax[it][warp] = m; // double-buffered across tiles
        __syncthreads();
        const int first = warp & ~(G / 32 - 1);
        m = s_warpmax[it][first];
#pragma unroll
        for (int k = 1; k < G / 32; k++) m = fmaxf(m, s_warpmax[it][first + k]);
    }

    const bool tail = live && blk == nblocks - 1 && (n % ((long long)G * CHUNK)) != 0;
    const bool bnb = flags & KBIT_QFLAG_BNB_SCALE;
    if (live && (threadIdx.x & (G - 1)) == 0) absmax[blk] = (tail && !bnb) ? fmaxf(m, TINY) : m;

    float s[CHUNK];
    if (bnb) {
        // bnb's fast-math scaling; the clamp only turns an all-zero block's NaN into -1 (the tree
        // search without the clamp gives bucket 0 for NaN: the same bucket for every codebook here)
        const float inv = rcp_approx_ftz(m);
#pragma unroll
        for (int j = 0; j < CHUNK; j++) s[j] = fminf(fmaxf(mul_ftz(x[j], inv), -1.0f), 1.0f);
    } else if (!tail) {
        const float inv = __frcp_rn(fmaxf(m, TINY));
#pragma unroll
        for (int j = 0; j < CHUNK; j++) s[j] = __fmul_rn(x[j], inv);
    } else {
        const float d = fmaxf(m, TINY);
#pragma unroll
        for (int j = 0; j < CHUNK; j++) s[j] = __fdiv_rn(x[j], d);
    }
    if constexpr (S == 0) { // the cell plan folds the clamp into its bounds; the tree clamps
#pragma unroll
        for (int j = 0; j < CHUNK; j++) s[j] = fminf(fmaxf(s[j], -1.0f), 1.0f);
    }

    uint32_t q[CHUNK];
    if constexpr (S == 0) {
        const float* nodes = reinterpret_cast<const float*>(s_tree);
#pragma unroll
        for (int j = 0; j < CHUNK; j++) {
            int i = 1;
#pragma unroll
            for (int l = 0; l < L; l++) i = 2 * i + (s[j] > nodes[i] ? 1 : 0);
            q[j] = s_tree[i];
        }
    } else {
        const int sh = 23 - m_bits;
        const char* sb = reinterpret_cast<const char*>(s_b);
        const char* sp = reinterpret_cast<const char*>(s_pair);
#pragma unroll
        for (int j = 0; j < CHUNK; j++) {
            uint32_t off = s_cell[__float_as_uint(s[j]) >> sh]; // 4 * #{bounds < min(cell)}
#pragma unroll
            for (int step = 1 << (S - 1); step > 1; step >>= 1)
                off += (s[j] > *reinterpret_cast<const float*>(sb + off + 4 * (step - 1))) ? 4 * step : 0;
            const bool up = s[j] > *reinterpret_cast<const float*>(sb + off);
            if (BITS == 8 && ident) { // sorted 8-bit tables: the bucket is the code (4-bit: the branch costs
                q[j] = (off >> 2) + (up ? 1 : 0); // registers -> occupancy; the pair read is cheap there)
            } else {
                const uint2 pr = *reinterpret_cast<const uint2*>(sp + 2 * off);
                q[j] = up ? pr.y : pr.x;
            }
        }
    }

    if (!live || e0 >= n) continue;
    if constexpr (BITS == 4) {
        uint32_t w[2];
#pragma unroll
        for (int k = 0; k < 2; k++) {
            w[k] = 0;
#pragma unroll
            for (int b = 0; b < 4; b++) w[k] |= ((q[8 * k + 2 * b] << 4) | q[8 * k + 2 * b + 1]) << (8 * b);
        }
        if (e0 + CHUNK <= n) {
            __stcs(reinterpret_cast<uint2*>(out + e0 / 2), make_uint2(w[0], w[1]));
        } else {
            const long long nbytes = (n + 1) / 2;
#pragma unroll
            for (int b = 0; b < CHUNK / 2; b++)
                if (e0 / 2 + b < nbytes) out[e0 / 2 + b] = (unsigned char)(w[b >> 2] >> (8 * (b & 3)));
        }
    } else {
        uint32_t w[4];
#pragma unroll
        for (int k = 0; k < 4; k++)
            w[k] = q[4 * k] | (q[4 * k + 1] << 8) | (q[4 * k + 2] << 16) | (q[4 * k + 3] << 24);
        if (e0 + CHUNK <= n) {
            __stcs(reinterpret_cast<uint4*>(out + e0), make_uint4(w[0], w[1], w[2], w[3]));
        } else {
#pragma unroll
            for (int j = 0; j < CHUNK; j++)
                if (e0 + j < n) out[e0 + j] = (unsigned char)q[j];
        }
    }
    } // tile loop
}

// ---------------------------------------------------------------------------------------- dequantize
template <typename T> __device__ __forceinline__ void store_chunk(void* out, long long e0, const float* v) {
    if constexpr (sizeof(T) == 4) {
        uint4* p = reinterpret_cast<uint4*>(static_cast<float*>(out) + e0);
#pragma unroll
        for (int k = 0; k < 4; k++)
            __stcs(p + k, make_uint4(__float_as_uint(v[4 * k]), __float_as_uint(v[4 * k + 1]),
                                     __float_as_uint(v[4 * k + 2]), __float_as_uint(v[4 * k + 3])));
    } else {
        uint32_t w[8];
#pragma unroll
        for (int k = 0; k < 8; k++) w[k] = Elem<T>::bits1(v[2 * k]) | (Elem<T>::bits1(v[2 * k + 1]) << 16);
        uint4* p = reinterpret_cast<uint4*>(static_cast<T*>(out) + e0);
        __stcs(p, make_uint4(w[0], w[1], w[2], w[3]));
        __stcs(p + 1, make_uint4(w[4], w[5], w[6], w[7]));
    }
}

template <typename T, int BITS>
__global__ void __launch_bounds__(THREADS) k_dequantize(const unsigned char* __restrict__ in,
                                                        const float* __restrict__ absmax,
                                                        const float* __restrict__ table, int ntable, long long n,
                                                        int bs_shift, void* __restrict__ out, int vec_ok) {
    constexpr int TS = 1 << BITS;
    __shared__ float s_tab[TS];
    for (int i = threadIdx.x; i < TS; i += THREADS) s_tab[i] = i < ntable ? table[i] : 0.0f;
    __syncthreads();

    const long long t = (long long)blockIdx.x * THREADS + threadIdx.x;
    const long long e0 = t * CHUNK;
    if (e0 >= n) return;
    const float a = __ldg(absmax + (e0 >> bs_shift));
    uint32_t q[CHUNK];
    const bool full = e0 + CHUNK <= n;
    if constexpr (BITS == 4) {
        uint32_t w[2];
        if (full && vec_ok) {
            uint2 v = __ldcs(reinterpret_cast<const uint2*>(in + e0 / 2));
            w[0] = v.x;
            w[1] = v.y;
        } else {
            w[0] = w[1] = 0;
            const long long nbytes = (n + 1) / 2;
#pragma unroll
            for (int b = 0; b < CHUNK / 2; b++)
                if (e0 / 2 + b < nbytes) w[b >> 2] |= (uint32_t)in[e0 / 2 + b] << (8 * (b & 3));
        }
#pragma unroll
        for (int b = 0; b < 8; b++) {
            uint32_t byte = (w[b >> 2] >> (8 * (b & 3))) & 0xFF;
            q[2 * b] = byte >> 4;
            q[2 * b + 1] = byte & 0xF;
        }
    } else {
        if (full && vec_ok) {
            uint4 v = __ldcs(reinterpret_cast<const uint4*>(in + e0));
            uint32_t w[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
            for (int j = 0; j < CHUNK; j++) q[j] = (w[j >> 2] >> (8 * (j & 3))) & 0xFF;
        } else {
#pragma unroll
            for (int j = 0; j < CHUNK; j++) q[j] = (e0 + j < n) ? in[e0 + j] : 0;
        }
    }
    float v[CHUNK];
#pragma unroll
    for (int j = 0; j < CHUNK; j++) v[j] = __fmul_rn(s_tab[q[j]], a);
    if (full && vec_ok) {
        store_chunk<T>(out, e0, v);
    } else {
#pragma unroll
        for (int j = 0; j < CHUNK; j++)
            if (e0 + j < n) Elem<T>::store1(out, e0 + j, v[j]);
    }
}

// --------------------------------------------------------------------------------------------- host
inline bool aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15) == 0; }

int num_sms() {
    static int cache[64] = {0};
    int dev = 0;
    cudaGetDevice(&dev);
    if (dev < 0 || dev >= 64) return 132;
    if (cache[dev] == 0) {
        int v = 0;
        cache[dev] = (cudaDeviceGetAttribute(&v, cudaDevAttrMultiProcessorCount, dev) == cudaSuccess && v > 0) ? v : 132;
    }
    return cache[dev];
}

int log2i(long long v) {
    int s = 0;
    while ((1LL << s) < v) s++;
    return s;
}

template <typename T, int BITS, int L, int G, int S>
cudaError_t launch_q(const void* A, long long n, const QParams<L, S>& tree, unsigned char* out, float* absmax,
                     int flags, cudaStream_t stream) {
    const long long bs = (long long)G * CHUNK;
    const long long nblocks = (n + bs - 1) / bs;
    const long long threads = nblocks * G;
    const long long ntiles = (threads + THREADS - 1) / THREADS;
    static int per_sm = 0; // resident CTAs per SM of this instantiation
    if (per_sm == 0) {
        cudaError_t e = cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, k_quantize<T, BITS, L, G, S>, THREADS, 0);
        if (e != cudaSuccess || per_sm < 1) per_sm = 1;
    }
    const long long grid = std::min<long long>(ntiles, (long long)per_sm * num_sms());
    const int vec_ok = aligned16(A) && aligned16(out);
    k_quantize<T, BITS, L, G, S><<<(unsigned)grid, THREADS, 0, stream>>>(A, n, nblocks, tree, out, absmax, flags,
                                                                         vec_ok, ntiles);
    return cudaGetLastError();
}

template <typename T, int BITS, int L, int S>
cudaError_t dispatch_g(const void* A, long long n, int blocksize, const QParams<L, S>& tree, unsigned char* out,
                       float* absmax, int flags, cudaStream_t stream) {
    switch (blocksize) {
    case 32: return launch_q<T, BITS, L, 2, S>(A, n, tree, out, absmax, flags, stream);
    case 64: return launch_q<T, BITS, L, 4, S>(A, n, tree, out, absmax, flags, stream);
    case 128: return launch_q<T, BITS, L, 8, S>(A, n, tree, out, absmax, flags, stream);
    case 256: return launch_q<T, BITS, L, 16, S>(A, n, tree, out, absmax, flags, stream);
    case 512: return launch_q<T, BITS, L, 32, S>(A, n, tree, out, absmax, flags, stream);
    case 1024: return launch_q<T, BITS, L, 64, S>(A, n, tree, out, absmax, flags, stream);
    case 2048: return launch_q<T, BITS, L, 128, S>(A, n, tree, out, absmax, flags, stream);
    case 4096: return launch_q<T, BITS, L, 256, S>(A, n, tree, out, absmax, flags, stream);
    default: return cudaErrorInvalidValue;
    }
}

template <int BITS, int L, int S>
cudaError_t dispatch_t(const void* A, int dtype, long long n, int blocksize, const QParams<L, S>& prm,
                       unsigned char* out, float* absmax, int flags, cudaStream_t stream) {
    switch (dtype) {
    case KBIT_F32: return dispatch_g<float, BITS, L, S>(A, n, blocksize, prm, out, absmax, flags, stream);
    case KBIT_F16: return dispatch_g<__half, BITS, L, S>(A, n, blocksize, prm, out, absmax, flags, stream);
    case KBIT_BF16: return dispatch_g<__nv_bfloat16, BITS, L, S>(A, n, blocksize, prm, out, absmax, flags, stream);
    default: return cudaErrorInvalidValue;
    }
}

// Plans are cached per (S, bounds, codes): building one scans up to 2 x 4096 cells.
struct PlanCache {
    std::mutex mu;
    std::map<std::vector<uint32_t>, std::unique_ptr<Plan>> plans; // value null: no plan with this S
};

static const Plan* cached_plan(int S, const float* bounds, int nbounds, const unsigned char* codes, int nbuckets) {
    static PlanCache cache;
    std::vector<uint32_t> key(2 + nbounds + nbuckets);
    key[0] = S;
    key[1] = nbounds;
    std::memcpy(key.data() + 2, bounds, 4 * nbounds);
    for (int i = 0; i < nbuckets; i++) key[2 + nbounds + i] = codes[i];
    std::lock_guard<std::mutex> lock(cache.mu);
    auto it = cache.plans.find(key);
    if (it == cache.plans.end()) {
        auto p = std::make_unique<Plan>();
        if (!build_plan(*p, S, bounds, nbounds, codes, nbuckets)) p.reset();
        it = cache.plans.emplace(std::move(key), std::move(p)).first;
    }
    return it->second.get();
}

static int g_force_tree = -1; // KBIT_QUANT_SEARCH=tree forces the Eytzinger path (for studies)

template <int BITS, int L>
cudaError_t quantize(const void* A, int dtype, long long n, int blocksize, const float* bounds, int nbounds,
                     const unsigned char* bucket_codes, int nbuckets, unsigned char* out, float* absmax, int flags,
                     cudaStream_t stream) {
    if (n < 0 || nbounds < 0 || nbounds > (1 << L) - 1 || nbuckets != nbounds + 1) return cudaErrorInvalidValue;
    for (int i = 1; i < nbounds; i++)
        if (!(bounds[i - 1] < bounds[i])) return cudaErrorInvalidValue; // must be strictly increasing
    if (n == 0) return cudaSuccess;
    if (g_force_tree < 0) {
        const char* e = std::getenv("KBIT_QUANT_SEARCH");
        g_force_tree = (e && std::strcmp(e, "tree") == 0) ? 1 : 0;
    }
    if (!g_force_tree) {
        // fewest search steps whose cell table fits: 4-bit S = 1, 8-bit S = 2 or 3
        if constexpr (BITS == 4) {
            if (const Plan* p = cached_plan(1, bounds, nbounds, bucket_codes, nbuckets))
                return dispatch_t<BITS, L, 1>(A, dtype, n, blocksize, *p, out, absmax, flags, stream);
        } else {
            if (const Plan* p = cached_plan(2, bounds, nbounds, bucket_codes, nbuckets))
                return dispatch_t<BITS, L, 2>(A, dtype, n, blocksize, *p, out, absmax, flags, stream);
            if (const Plan* p = cached_plan(3, bounds, nbounds, bucket_codes, nbuckets))
                return dispatch_t<BITS, L, 3>(A, dtype, n, blocksize, *p, out, absmax, flags, stream);
        }
    }
    Tree<L> tree;
    build_tree<L>(tree, bounds, nbounds, bucket_codes, nbuckets);
    return dispatch_t<BITS, L, 0>(A, dtype, n, blocksize, tree, out, absmax, flags, stream);
}

template <int BITS>
cudaError_t dequantize(const unsigned char* in, const float* absmax, const float* table, int ntable, long long n,
                       int blocksize, void* out, int dtype, cudaStream_t stream) {
    if (n < 0 || blocksize < CHUNK || (blocksize & (blocksize - 1)) || ntable < 1 || ntable > (1 << BITS))
        return cudaErrorInvalidValue;
    if (n == 0) return cudaSuccess;
    const long long threads = (n + CHUNK - 1) / CHUNK;
    const unsigned grid = (unsigned)((threads + THREADS - 1) / THREADS);
    const int shift = log2i(blocksize);
    const int vec_ok = aligned16(in) && aligned16(out);
    switch (dtype) {
    case KBIT_F32:
        k_dequantize<float, BITS><<<grid, THREADS, 0, stream>>>(in, absmax, table, ntable, n, shift, out, vec_ok);
        break;
    case KBIT_F16:
        k_dequantize<__half, BITS><<<grid, THREADS, 0, stream>>>(in, absmax, table, ntable, n, shift, out, vec_ok);
        break;
    case KBIT_BF16:
        k_dequantize<__nv_bfloat16, BITS>
            <<<grid, THREADS, 0, stream>>>(in, absmax, table, ntable, n, shift, out, vec_ok);
        break;
    default: return cudaErrorInvalidValue;
    }
    return cudaGetLastError();
}

} // namespace

extern "C" {

cudaError_t kbit_quantize_blockwise(const void* A, int dtype, long long n, int blocksize, const float* bounds,
                                    int nbounds, const unsigned char* bucket_codes, int nbuckets, unsigned char* codes,
                                    float* absmax, int flags, cudaStream_t stream) {
    return quantize<8, 8>(A, dtype, n, blocksize, bounds, nbounds, bucket_codes, nbuckets, codes, absmax, flags,
                          stream);
}

cudaError_t kbit_quantize_4bit(const void* A, int dtype, long long n, int blocksize, const float* bounds, int nbounds,
                               const unsigned char* bucket_codes, int nbuckets, unsigned char* packed, float* absmax,
                               int flags, cudaStream_t stream) {
    return quantize<4, 4>(A, dtype, n, blocksize, bounds, nbounds, bucket_codes, nbuckets, packed, absmax, flags,
                          stream);
}

cudaError_t kbit_dequantize_blockwise(const unsigned char* codes, const float* absmax, const float* table, int ntable,
                                      long long n, int blocksize, void* out, int dtype, cudaStream_t stream) {
    return dequantize<8>(codes, absmax, table, ntable, n, blocksize, out, dtype, stream);
}

cudaError_t kbit_dequantize_4bit(const unsigned char* packed, const float* absmax, const float* table, long long n,
                                 int blocksize, void* out, int dtype, cudaStream_t stream) {
    return dequantize<4>(packed, absmax, table, 16, n, blocksize, out, dtype, stream);
}

int kbit_quant_ieee_build(void) {
#if defined(__FAST_MATH__) || defined(__USE_FAST_MATH__)
    return 0;
#else
    return 1;
#endif
}

} // extern "C"
