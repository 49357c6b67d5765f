/* kbit-workbench: fused 4-bit dequantize + GEMV, M = 1..4 (family "matmul"), and the entry points of the fused
 * dequantize + tensor-core GEMM (any M; the kernel: matmul_mma.cuh). API and numerics: kbit_matmul.h.
 *
 * The GEMV:
 * One warp per RW consecutive output rows (RW = 4, 2 or 1 with M * RW <= 4: each activation load serves RW rows),
 * 8 warps per 256-thread CTA. Fast path (K % 32 == 0, 16-byte aligned B and A): lane l owns the row's CH-element
 * chunks l, l + 32, l + 64, ... (CH = 64 when blocksize >= 64 and K % 64 == 0, else 32: a chunk lies in one
 * quantization block), in warp-uniform rounds (a lane past the last chunk adds zeros), so the shared base stays in
 * a uniform register folded into every shared access. Per chunk and row a lane decodes the block scale and writes
 * the 16 possible weights dtype(table[c] * s) (rule 2, exactly) into its own entries of a shared-memory table;
 * each weight then costs a byte permute (its code into the entry's address), one conflict-free shared load and M
 * fused multiply-adds, instead of a shared load, a multiply, a rounding and a multiply-add. Weights are read as
 * 16-byte loads one round ahead (each half refilled once used); the activations are staged once per CTA in
 * shared memory when M x K fits 64 KB (16-byte units swizzled per lane chunk: conflict-free), else read from
 * global memory. Generic path (any K, any alignment): per element. Float32 accumulation with explicit fused
 * multiply-adds (__fmaf_rn; the library is built with -fmad=false, so every fusion is written out): two partial
 * sums per lane and row (even and odd elements), then a warp butterfly.
 */
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <stdint.h>

#include "kbit_device.h"
#include "kbit_matmul.h"
#include "matmul_lut.cuh"
#include "matmul_lut_wgmma.cuh"
#include "matmul_mma.cuh"

namespace {

constexpr int kWarps = 8;
constexpr int kThreads = kWarps * 32;  // 256: the byte permute below builds thread index + 256 * code
constexpr unsigned kFull = 0xffffffffu;
constexpr int kStageMax = 64 * 1024;   // largest M x K activation block staged in shared memory (bytes)
constexpr int kSmemMax = 16 * 4 * kThreads * 4 + kStageMax;  // RW = 4 tables + staged activations

template <int DT> struct Ty;
template <> struct Ty<KBIT_F32> {
    typedef float t;
    static constexpr int per16 = 4;  // elements per 16-byte vector
    __device__ static __forceinline__ float ld(const float* p, long long i) { return __ldg(p + i); }
    __device__ static __forceinline__ float rnd(float v) { return v; }
    __device__ static __forceinline__ void rnd2(float a, float b, float& ra, float& rb) { ra = a; rb = b; }
    __device__ static __forceinline__ void st(float* p, long long i, float v) { p[i] = v; }
    __device__ static __forceinline__ void unpack(uint4 u, float* f) {
        f[0] = __uint_as_float(u.x); f[1] = __uint_as_float(u.y); f[2] = __uint_as_float(u.z); f[3] = __uint_as_float(u.w);
    }
};
template <> struct Ty<KBIT_BF16> {
    typedef __nv_bfloat16 t;
    static constexpr int per16 = 8;
    __device__ static __forceinline__ float ld(const t* p, long long i) { return __bfloat162float(p[i]); }
    __device__ static __forceinline__ float rnd(float v) { return __bfloat162float(__float2bfloat16_rn(v)); }
    // packing (0, v) rounds v into the top half over a zero low half: the widened float32 in one instruction
    __device__ static __forceinline__ float rnd1(float v) {
        const __nv_bfloat162 h = __floats2bfloat162_rn(0.0f, v);
        return __uint_as_float(*reinterpret_cast<const uint32_t*>(&h));
    }
    __device__ static __forceinline__ void rnd2(float a, float b, float& ra, float& rb) { ra = rnd1(a); rb = rnd1(b); }
    __device__ static __forceinline__ void st(t* p, long long i, float v) { p[i] = __float2bfloat16_rn(v); }
    __device__ static __forceinline__ void unpack(uint4 u, float* f) {
        const uint32_t w[4] = {u.x, u.y, u.z, u.w};
#pragma unroll
        for (int j = 0; j < 4; ++j) {  // exact widening: bf16 bits are the top half of a float32
            f[2 * j] = __uint_as_float(w[j] << 16);
            f[2 * j + 1] = __uint_as_float(w[j] & 0xffff0000u);
        }
    }
};
template <> struct Ty<KBIT_F16> {
    typedef __half t;
    static constexpr int per16 = 8;
    __device__ static __forceinline__ float ld(const t* p, long long i) { return __half2float(p[i]); }
    __device__ static __forceinline__ float rnd(float v) { return __half2float(__float2half_rn(v)); }
    __device__ static __forceinline__ void rnd2(float a, float b, float& ra, float& rb) {
        const __half2 h = __floats2half2_rn(a, b);
        ra = __low2float(h);
        rb = __high2float(h);
    }
    __device__ static __forceinline__ void st(t* p, long long i, float v) { p[i] = __float2half_rn(v); }
    __device__ static __forceinline__ void unpack(uint4 u, float* f) {
        const uint32_t w[4] = {u.x, u.y, u.z, u.w};
#pragma unroll
        for (int j = 0; j < 4; ++j) {
            __half2 h = *reinterpret_cast<const __half2*>(&w[j]);
            f[2 * j] = __low2float(h);
            f[2 * j + 1] = __high2float(h);
        }
    }
};

/* rule 1 (nested) or the plain float32 absmax of block b */
__device__ __forceinline__ float block_scale(long long b, const float* absmax, const uint8_t* a8, const float* code2,
                                             float off) {
    if (a8 == nullptr) return __ldg(absmax + b);
    return __fadd_rn(__fmul_rn(code2[__ldg(a8 + b)], __ldg(absmax + (b >> 8))), off);
}

template <int M>
__device__ __forceinline__ void warp_sum(float* acc) {
#pragma unroll
    for (int m = 0; m < M; ++m)
#pragma unroll
        for (int o = 16; o > 0; o >>= 1) acc[m] = __fadd_rn(acc[m], __shfl_xor_sync(kFull, acc[m], o));
}

/* lane-chunk swizzle of the staged activations: 16-byte unit u of a row is stored at u ^ swz(u), a permutation
 * inside each lane's chunk of U units that spreads the 32 lanes' reads of one unit over the 8 bank groups */
template <int U>
__device__ __forceinline__ uint32_t swz(uint32_t u) {
    return (u >> (U == 16 ? 4 : 3)) & (uint32_t)(U >= 8 ? 7 : U - 1);
}

/* out[m, n] for row n: the warp's partial sums, butterfly, bias, store (lane 0) */
template <int DT, int M>
__device__ __forceinline__ void finish(float* acc, long long n, long long N, int lane, const typename Ty<DT>::t* bias,
                                       typename Ty<DT>::t* out) {
    typedef Ty<DT> D;
    warp_sum<M>(acc);
    if (lane == 0 && n < N) {
        const float b = (bias != nullptr) ? D::ld(bias, n) : 0.0f;
#pragma unroll
        for (int m = 0; m < M; ++m)
            D::st(out, (long long)m * N + n, bias != nullptr ? __fadd_rn(acc[m], b) : acc[m]);
    }
}

/* The decoded-weight table, RW x 16 KB of dynamic shared memory: the entry of (row r, code c) for thread t is at
 * byte 16384 r + 4096 (t >> 6) + 256 c + 4 (t & 63). A lane's entries share its bank (t & 31); the code sits
 * alone in address byte 1 next to the warp-pair bits, so one byte permute of (code | warp pair << 4) into the
 * lane's byte 0 is the whole address (the shared base and the row come in the load's immediate). */
constexpr int kTabBytes = 16 * kThreads * 4;

template <bool B> struct Tail { static constexpr bool v = B; };

template <int DT, int M, int RW, int CH, bool SA>
__global__ void __launch_bounds__(kThreads, 2)
gemv_4bit_kernel(const typename Ty<DT>::t* __restrict__ A, long long N, long long K, const uint8_t* __restrict__ B,
                 const float* __restrict__ absmax, const uint8_t* __restrict__ a8, const float* __restrict__ code2_g,
                 const float* __restrict__ off_p, const float* __restrict__ table_g, int bs_shift,
                 const typename Ty<DT>::t* __restrict__ bias, typename Ty<DT>::t* __restrict__ out) {
    typedef Ty<DT> D;
    constexpr int NW = CH / 32;               // 16-byte weight loads per chunk and row
    constexpr int U = CH / D::per16;          // 16-byte activation units per chunk and row
    // dynamic shared memory: the decoded weights (RW * kTabBytes), then the staged activations (M x K) when SA;
    // always addressed from the array itself, so the shared base stays a uniform register folded into each access
    extern __shared__ uint4 smem[];
    __shared__ float code2[256];
    const int tid = threadIdx.x;
    const int lane = tid & 31;
    const uint32_t ku = (uint32_t)(K / D::per16);                       // 16-byte units per activation row
    const uint4* gA = reinterpret_cast<const uint4*>(A);
    if (a8 != nullptr)
        for (int i = tid; i < 256; i += kThreads) code2[i] = code2_g[i];
    if (SA)
        for (int m = 0; m < M; ++m)
            for (uint32_t u = tid; u < ku; u += kThreads)
                smem[RW * kTabBytes / 16 + m * ku + (u ^ swz<U>(u))] = __ldg(gA + m * ku + u);
    __syncthreads();
    const float off = (a8 != nullptr) ? __ldg(off_p) : 0.0f;
    const long long n0 = ((long long)blockIdx.x * kWarps + (tid >> 5)) * RW;  // this warp's first row
    if (n0 >= N) return;
    float tv[16];  // the codebook, in registers: read 16 times per chunk and row
#pragma unroll
    for (int i = 0; i < 16; ++i) tv[i] = __ldg(table_g + i);
    const uint32_t tcol = 4u * (uint32_t)(tid & 63);                   // address byte 0 of this lane's entries
    const uint32_t tgrp = (uint32_t)(tid >> 6) * 0x10101010u;           // warp pair, in every byte's high nibble
    const uint32_t mycol = 4096u * (uint32_t)(tid >> 6) + tcol;          // byte offset of this lane's entries

    // acc[r][m][e]: even / odd elements in two partial sums (two independent FMA chains per row)
    float acc[RW][M][2];
#pragma unroll
    for (int r = 0; r < RW; ++r)
#pragma unroll
        for (int m = 0; m < M; ++m) acc[r][m][0] = acc[r][m][1] = 0.0f;

    const long long chunks = K / CH;
    const long long rounds = (chunks + 31) / 32;  // lane l takes chunk 32 i + l in round i (warp-uniform trips)
    const uint4* wrow[RW];
    long long erow[RW];  // element index n * K of each row (blocks by shift)
#pragma unroll
    for (int r = 0; r < RW; ++r) {
        const long long n = n0 + r < N ? n0 + r : n0;  // rows past N repeat row n0 and are not stored
        wrow[r] = reinterpret_cast<const uint4*>(B + n * (K >> 1));
        erow[r] = n * K;
    }
    // loads run one round ahead: the next chunk's scale inputs right after this chunk's tables are written, and
    // each half of its weights into the registers of this chunk's half as soon as that half has been used.
    // Lanes past the last chunk load the last chunk (in bounds) and add zeros (the tail round).
    uint4 w[RW][NW];
    float am[RW];
    uint32_t q[RW];
    auto fetch_scales = [&](long long c) {
        c = c < chunks ? c : chunks - 1;
#pragma unroll
        for (int r = 0; r < RW; ++r) {
            const long long b = (erow[r] + c * CH) >> bs_shift;
            if (a8 == nullptr) {
                am[r] = __ldg(absmax + b);
                q[r] = 0;
            } else {
                am[r] = __ldg(absmax + (b >> 8));
                q[r] = __ldg(a8 + b);
            }
        }
    };
    auto fetch_weights = [&](long long c, int h) {
        c = c < chunks ? c : chunks - 1;
#pragma unroll
        for (int r = 0; r < RW; ++r) w[r][h] = __ldg(wrow[r] + c * NW + h);
    };
    auto round = [&](long long i, auto tail) {
        const long long c0 = 32 * i + lane;
        const bool valid = !decltype(tail)::v || c0 < chunks;
        const long long c = valid ? c0 : chunks - 1;
#pragma unroll
        for (int r = 0; r < RW; ++r) {
            // rule 1, then rule 2 for the 16 codes into this lane's entries (zeros past the last chunk)
            float s = (a8 == nullptr) ? am[r] : __fadd_rn(__fmul_rn(code2[q[r]], am[r]), off);
            if (decltype(tail)::v && !valid) s = 0.0f;
#pragma unroll
            for (int j = 0; j < 16; j += 2) {
                float lo, hi;
                D::rnd2(__fmul_rn(tv[j], s), __fmul_rn(tv[j + 1], s), lo, hi);
                *reinterpret_cast<float*>(reinterpret_cast<char*>(smem) + mycol + r * kTabBytes + 256 * j) = lo;
                *reinterpret_cast<float*>(reinterpret_cast<char*>(smem) + mycol + r * kTabBytes + 256 * (j + 1)) = hi;
            }
        }
        fetch_scales(c0 + 32);  // unconditional (clamped): a branch here let the compiler sink the loads
        // activation rows: shared (swizzled units: XOR of the unit's byte offset) or global
        uint32_t ax[M];
        const uint4* ag[M];
#pragma unroll
        for (int m = 0; m < M; ++m) {
            const uint32_t u0 = (uint32_t)c * U;
            ax[m] = RW * kTabBytes + 16u * (m * ku + u0 + swz<U>(u0));
            ag[m] = gA + (long long)m * ku + (long long)c * U;
        }
#pragma unroll
        for (int v8 = 0; v8 < CH / 8; ++v8) {  // 8 elements: k = c * CH + 8 * v8 + 0..7
            float av[M][8];
#pragma unroll
            for (int m = 0; m < M; ++m) {
#pragma unroll
                for (int p = 0; p < 8 / D::per16; ++p) {
                    const uint32_t v = (uint32_t)(v8 * (8 / D::per16) + p);
                    uint4 x = SA ? *reinterpret_cast<const uint4*>(reinterpret_cast<const char*>(smem) + (ax[m] ^ (16u * v)))
                                 : __ldg(ag[m] + v);
                    if (decltype(tail)::v && !valid) x = make_uint4(0u, 0u, 0u, 0u);  // 0 * 0: no NaN from inf
                    D::unpack(x, av[m] + p * D::per16);
                }
            }
#pragma unroll
            for (int r = 0; r < RW; ++r) {
                const uint4 wv = w[r][v8 / 4];
                const uint32_t word = (v8 & 3) == 0 ? wv.x : (v8 & 3) == 1 ? wv.y : (v8 & 3) == 2 ? wv.z : wv.w;
                // byte j of hi / lo: the code of element 2j / 2j + 1 (high / low nibble of packed byte j)
                const uint32_t hi = ((word >> 4) & 0x0f0f0f0fu) | tgrp;
                const uint32_t lo = (word & 0x0f0f0f0fu) | tgrp;
                const char* tab = reinterpret_cast<const char*>(smem) + r * kTabBytes;
#pragma unroll
                for (int j = 0; j < 4; ++j) {
                    const float we = *reinterpret_cast<const float*>(tab + __byte_perm(hi, tcol, 0x7604u | (j << 4)));
                    const float wo = *reinterpret_cast<const float*>(tab + __byte_perm(lo, tcol, 0x7604u | (j << 4)));
#pragma unroll
                    for (int m = 0; m < M; ++m) {
                        acc[r][m][0] = __fmaf_rn(we, av[m][2 * j], acc[r][m][0]);
                        acc[r][m][1] = __fmaf_rn(wo, av[m][2 * j + 1], acc[r][m][1]);
                    }
                }
            }
            if ((v8 & 3) == 3) fetch_weights(c0 + 32, v8 / 4);
        }
    };
    if (rounds > 0) {
        fetch_scales(lane);
#pragma unroll
        for (int h = 0; h < NW; ++h) fetch_weights(lane, h);
    }
    const long long full = chunks / 32;  // rounds in which every lane has a chunk
    for (long long i = 0; i < full; ++i) round(i, Tail<false>());
    if (full < rounds) round(full, Tail<true>());
#pragma unroll
    for (int r = 0; r < RW; ++r) {
        float a[M];
#pragma unroll
        for (int m = 0; m < M; ++m) a[m] = __fadd_rn(acc[r][m][0], acc[r][m][1]);
        finish<DT, M>(a, n0 + r, N, lane, bias, out);
    }
}

/* Generic path: lane l owns elements l, l + 32, ... of its warp's row (any K, any alignment). */
template <int DT, int M>
__global__ void __launch_bounds__(kThreads)
gemv_4bit_generic(const typename Ty<DT>::t* __restrict__ A, long long N, long long K, const uint8_t* __restrict__ B,
                  const float* __restrict__ absmax, const uint8_t* __restrict__ a8, const float* __restrict__ code2_g,
                  const float* __restrict__ off_p, const float* __restrict__ table_g, int bs_shift,
                  const typename Ty<DT>::t* __restrict__ bias, typename Ty<DT>::t* __restrict__ out) {
    typedef Ty<DT> D;
    __shared__ float tab[16];
    __shared__ float code2[256];
    const int tid = threadIdx.x;
    if (tid < 16) tab[tid] = table_g[tid];
    if (a8 != nullptr)
        for (int i = tid; i < 256; i += blockDim.x) code2[i] = code2_g[i];
    __syncthreads();
    const float off = (a8 != nullptr) ? __ldg(off_p) : 0.0f;
    const int lane = tid & 31;
    const long long n = (long long)blockIdx.x * kWarps + (tid >> 5);
    if (n >= N) return;
    float acc[M];
#pragma unroll
    for (int m = 0; m < M; ++m) acc[m] = 0.0f;
    for (long long k = lane; k < K; k += 32) {
        const long long i = n * K + k;
        const uint32_t byte = __ldg(B + (i >> 1));
        const uint32_t code = (i & 1) ? (byte & 15u) : (byte >> 4);
        const float s = block_scale(i >> bs_shift, absmax, a8, code2, off);
        const float wv = D::rnd(__fmul_rn(tab[code], s));
#pragma unroll
        for (int m = 0; m < M; ++m) acc[m] = __fmaf_rn(wv, D::ld(A, (long long)m * K + k), acc[m]);
    }
    finish<DT, M>(acc, n, N, lane, bias, out);
}

/* Rows per warp: the most (4 / M; M * RW <= 4 keeps the accumulators and activations in registers), whatever the grid.
 * Measured on the H200 (M = 1, reports/matmul-h200/gemv_rows_per_warp_h200.md): 4 rows per warp is fastest or within
 * 2 % on all five shapes, also where it leaves fewer CTAs than the SMs hold or a partial last wave (4096x4096: 7.2 us
 * vs 8.3 us with one row per warp; 28672x8192: 62 us vs 69 us with 2, chosen by wave fill). One activation load
 * serving 4 rows outweighs the lost occupancy. The outputs do not depend on RW (a row's order is per lane and chunk).
 * g_gemv_rw (kbit_gemv_tuning, the A/B knob): 0 this rule, 1/2/4 forced. */
int g_gemv_rw = 0;
static int rows_per_warp(int M) {
    const int rw = (g_gemv_rw == 1 || g_gemv_rw == 2 || g_gemv_rw == 4) ? g_gemv_rw : 4;
    return rw * M <= 4 ? rw : 4 / M;
}

template <int DT, int M, int RW, int CH, bool SA>
cudaError_t launch_sa(const void* A, long long N, long long K, const unsigned char* B, const float* absmax,
                      const unsigned char* a8, const float* code2, const float* off, const float* table, int bs_shift,
                      const void* bias, void* out, cudaStream_t stream) {
    typedef typename Ty<DT>::t T;
    auto kern = gemv_4bit_kernel<DT, M, RW, CH, SA>;
    static bool smem_set[64] = {};  // per device: the opt-in above 48 KB of dynamic shared memory
    int dev = 0;
    cudaGetDevice(&dev);
    if (dev < 64 && !smem_set[dev]) {
        const cudaError_t e = cudaFuncSetAttribute(kern, cudaFuncAttributeMaxDynamicSharedMemorySize, kSmemMax);
        if (e != cudaSuccess) return e;
        smem_set[dev] = true;
    }
    const size_t smem = (size_t)RW * kTabBytes + (SA ? (size_t)M * K * sizeof(T) : 0);
    const dim3 grid((unsigned)((N + kWarps * RW - 1) / (kWarps * RW))), block(kThreads);
    kern<<<grid, block, smem, stream>>>((const T*)A, N, K, B, absmax, a8, code2, off, table, bs_shift, (const T*)bias,
                                        (T*)out);
    return cudaGetLastError();
}

/* activations staged in shared memory when M x K fits kStageMax */
template <int DT, int M, int RW, int CH>
cudaError_t launch_rw(const void* A, long long N, long long K, const unsigned char* B, const float* absmax,
                      const unsigned char* a8, const float* code2, const float* off, const float* table, int bs_shift,
                      const void* bias, void* out, cudaStream_t stream) {
    if ((long long)M * K * (long long)sizeof(typename Ty<DT>::t) <= kStageMax)
        return launch_sa<DT, M, RW, CH, true>(A, N, K, B, absmax, a8, code2, off, table, bs_shift, bias, out, stream);
    return launch_sa<DT, M, RW, CH, false>(A, N, K, B, absmax, a8, code2, off, table, bs_shift, bias, out, stream);
}

template <int DT, int M>
cudaError_t launch(const void* A, long long N, long long K, const unsigned char* B, const float* absmax,
                   const unsigned char* a8, const float* code2, const float* off, const float* table, int bs_shift,
                   const void* bias, void* out, cudaStream_t stream) {
    typedef typename Ty<DT>::t T;
    const bool fast = (K % 32 == 0) && ((uintptr_t)B % 16 == 0) && ((uintptr_t)A % 16 == 0);
    if (fast && bs_shift >= 6 && K % 64 == 0) {  // 64-element chunks, one quantization block each
        switch (rows_per_warp(M)) {
            case 4: return launch_rw<DT, M, (M == 1 ? 4 : 1), 64>(A, N, K, B, absmax, a8, code2, off, table, bs_shift, bias, out, stream);
            case 2: return launch_rw<DT, M, (M <= 2 ? 2 : 1), 64>(A, N, K, B, absmax, a8, code2, off, table, bs_shift, bias, out, stream);
            default: return launch_rw<DT, M, 1, 64>(A, N, K, B, absmax, a8, code2, off, table, bs_shift, bias, out, stream);
        }
    }
    if (fast)  // blocksize 32 or K % 64 == 32: 32-element chunks (a table per 32 weights), one row per warp
        return launch_rw<DT, M, 1, 32>(A, N, K, B, absmax, a8, code2, off, table, bs_shift, bias, out, stream);
    const dim3 grid((unsigned)((N + kWarps - 1) / kWarps)), block(kThreads);
    gemv_4bit_generic<DT, M><<<grid, block, 0, stream>>>((const T*)A, N, K, B, absmax, a8, code2, off, table,
                                                         bs_shift, (const T*)bias, (T*)out);
    return cudaGetLastError();
}

template <int DT>
cudaError_t dispatch_m(int M, const void* A, long long N, long long K, const unsigned char* B, const float* absmax,
                       const unsigned char* a8, const float* code2, const float* off, const float* table,
                       int bs_shift, const void* bias, void* out, cudaStream_t stream) {
    switch (M) {
        case 1: return launch<DT, 1>(A, N, K, B, absmax, a8, code2, off, table, bs_shift, bias, out, stream);
        case 2: return launch<DT, 2>(A, N, K, B, absmax, a8, code2, off, table, bs_shift, bias, out, stream);
        case 3: return launch<DT, 3>(A, N, K, B, absmax, a8, code2, off, table, bs_shift, bias, out, stream);
        case 4: return launch<DT, 4>(A, N, K, B, absmax, a8, code2, off, table, bs_shift, bias, out, stream);
        default: return cudaErrorInvalidValue;
    }
}

}  // namespace

extern "C" cudaError_t kbit_gemv_4bit(const void* A, int dtype, int M, long long N, long long K, const unsigned char* B,
                                      const float* absmax, const unsigned char* absmax_8bit, const float* absmax_code,
                                      const float* absmax_offset, const float* table, int blocksize, const void* bias,
                                      void* out, cudaStream_t stream) {
    int bs_shift = 0;  // blocksize a power of two >= 32: block indices by a shift (a 64-bit division costs ~100 instructions)
    while ((1 << bs_shift) < blocksize && bs_shift < 30) ++bs_shift;
    if (M < 1 || M > KBIT_GEMV_MAX_M || N < 0 || K < 0 || blocksize < 32 || (1 << bs_shift) != blocksize)
        return cudaErrorInvalidValue;
    if (absmax_8bit != nullptr && (absmax_code == nullptr || absmax_offset == nullptr)) return cudaErrorInvalidValue;
    if (N == 0) return cudaSuccess;
    switch (dtype) {
        case KBIT_F32: return dispatch_m<KBIT_F32>(M, A, N, K, B, absmax, absmax_8bit, absmax_code, absmax_offset, table, bs_shift, bias, out, stream);
        case KBIT_F16: return dispatch_m<KBIT_F16>(M, A, N, K, B, absmax, absmax_8bit, absmax_code, absmax_offset, table, bs_shift, bias, out, stream);
        case KBIT_BF16: return dispatch_m<KBIT_BF16>(M, A, N, K, B, absmax, absmax_8bit, absmax_code, absmax_offset, table, bs_shift, bias, out, stream);
        default: return cudaErrorInvalidValue;
    }
}

static int log2_exact(int v) {
    int s = 0;
    while ((1 << s) < v) ++s;
    return (1 << s) == v ? s : -1;
}

/* The tensor-core GEMMs' common checks: A and B 16-byte aligned (vector loads), the nested trio complete, partials
 * and counters for a split run. */
static bool gemm_operands_ok(const void* A, const unsigned char* B, const unsigned char* absmax_8bit,
                             const float* absmax_code, const float* absmax_offset, int splits, const float* partial,
                             const int* counters) {
    return (uintptr_t)A % 16 == 0 && (uintptr_t)B % 16 == 0 &&
           (absmax_8bit == nullptr || (absmax_code != nullptr && absmax_offset != nullptr)) &&
           (splits == 1 || (partial != nullptr && counters != nullptr));
}

extern "C" cudaError_t kbit_gemm_4bit_mma(const void* A, int dtype, int M, long long N, long long K,
                                          const unsigned char* B, const float* absmax, const unsigned char* absmax_8bit,
                                          const float* absmax_code, const float* absmax_offset, const float* table,
                                          int blocksize, const void* bias, void* out, float* partial, int* counters,
                                          int splits, int lookup, cudaStream_t stream) {
    const int bs_shift = log2_exact(blocksize);
    if (M < 1 || N < 0 || K < 0 || K % 32 != 0 || bs_shift < 5 || splits < 1) return cudaErrorInvalidValue;
    if (!gemm_operands_ok(A, B, absmax_8bit, absmax_code, absmax_offset, splits, partial, counters))
        return cudaErrorInvalidValue;
    if (N == 0) return cudaSuccess;
    const long long chunks = (K + mma4::kChunk - 1) / mma4::kChunk;
    mma4::Args p{{A, B, absmax, absmax_8bit, absmax_code, absmax_offset, table, bias, out, partial, counters,
                  M, N, K, bs_shift}, (int)((chunks + splits - 1) / splits), lookup};
    if (K == 0) p.chunks_per_split = 0;
    switch (dtype) {
        case KBIT_F16: return mma4::launch_dt<KBIT_F16>(p, splits, stream, nullptr);
        case KBIT_BF16: return mma4::launch_dt<KBIT_BF16>(p, splits, stream, nullptr);
        default: return cudaErrorInvalidValue;
    }
}

extern "C" int kbit_gemm_4bit_mma_tile(int M, int lookup, int* block_m, int* block_n, int* ctas_per_sm) {
    if (M < 1) return (int)cudaErrorInvalidValue;
    *block_m = 8 * mma4::tile_m(M);
    *block_n = mma4::rows_per_cta(mma4::row_tiles(mma4::tile_m(M)));
    mma4::Args p{};
    p.M = M;
    p.lookup = lookup;
    return (int)mma4::launch_dt<KBIT_BF16>(p, 1, 0, ctas_per_sm);
}

/* The unscaled-lookup GEMM's form for p (the variant, M and the weight's size): launched, or (ctas_per_sm) only
 * its resident CTAs per SM. */
static cudaError_t lut_launch(const lut4::Args& p, int dtype, cudaStream_t stream, int* ctas_per_sm) {
    const int v = lut4::g_lut_variant;
    const bool wg = lutwg::takes(v, p.M, p.N, p.K);
    switch (dtype) {
        case KBIT_F16:
            return wg ? lutwg::launch_dt<KBIT_F16>(p, v, stream, ctas_per_sm)
                      : lut4::launch_dt<KBIT_F16>(p, stream, ctas_per_sm);
        case KBIT_BF16:
            return wg ? lutwg::launch_dt<KBIT_BF16>(p, v, stream, ctas_per_sm)
                      : lut4::launch_dt<KBIT_BF16>(p, stream, ctas_per_sm);
        default: return cudaErrorInvalidValue;
    }
}

extern "C" cudaError_t kbit_gemm_4bit_lut(const void* A, int dtype, int M, long long N, long long K,
                                          const unsigned char* B, const float* absmax, const unsigned char* absmax_8bit,
                                          const float* absmax_code, const float* absmax_offset, const float* table,
                                          int blocksize, const void* bias, void* out, float* partial, int* counters,
                                          int splits, int tiled, cudaStream_t stream) {
    const int bs_shift = log2_exact(blocksize);
    if (M < 1 || M > KBIT_GEMM_LUT_MAX_M || N < 0 || K < 0 || K % lut4::kChunk != 0 || bs_shift < 6 || splits < 1 ||
        tiled < 0 || tiled > 2)
        return cudaErrorInvalidValue;
    if (!gemm_operands_ok(A, B, absmax_8bit, absmax_code, absmax_offset, splits, partial, counters))
        return cudaErrorInvalidValue;
    if (N == 0) return cudaSuccess;
    const long long chunks = K / lut4::kChunk;
    // nested, blocksize 64, K % 256 == 0: splits of whole 4-chunk groups (a row's 4 codes in one aligned word)
    const bool grouped = absmax_8bit != nullptr && blocksize == 64 && K % 256 == 0;
    int cps = (int)((chunks + splits - 1) / splits);
    if (grouped) cps = (cps + 3) & ~3;
    lut4::Args p{{A, B, absmax, absmax_8bit, absmax_code, absmax_offset, table, bias, out, partial, counters,
                  M, N, K, bs_shift}, splits, cps, ((N + 15) / 16) * splits, tiled, grouped};
    return lut_launch(p, dtype, stream, nullptr);
}

extern "C" int kbit_gemm_4bit_lut_ctas(int M, long long N, long long K, int dtype, int* ctas_per_sm) {
    if (M < 1 || M > KBIT_GEMM_LUT_MAX_M || N < 0 || K < 0 || ctas_per_sm == nullptr) return (int)cudaErrorInvalidValue;
    lut4::Args p{};
    p.M = M;
    p.N = N;
    p.K = K;
    return (int)lut_launch(p, dtype, 0, ctas_per_sm);
}

extern "C" void kbit_gemm_lut_tuning(int variant) { lut4::g_lut_variant = variant; }

extern "C" void kbit_gemv_tuning(int rows_per_warp) { g_gemv_rw = rows_per_warp; }

extern "C" void kbit_gemm_tuning(int row_tiles, int weights_in_registers) {
    mma4::g_row_tiles = row_tiles;
    mma4::g_weights_in_registers = weights_in_registers;
}

extern "C" int kbit_matmul_ieee_build(void) {
#if defined(__FAST_MATH__) || defined(__USE_FAST_MATH__)
    return 0;
#else
    return 1;
#endif
}
