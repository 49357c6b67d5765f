/* kbit-workbench: fused 4-bit dequantize + GEMV, M = 1..4 (family "matmul"), and the entry points of the fused
 * dequantize + tensor-core GEMM (any M; the kernel: matmul_mma.cuh). API and numerics: kbit_matmul.h.
 *
 * The GEMV:
 * One warp per output row n (fast path: RW = 1, 2 or 4 consecutive rows, sharing each activation load), 8 warps
 * per 256-thread CTA. Fast path (K % 32 == 0, 16-byte aligned B and A): each
 * lane reads 16 packed bytes (32 codes) per step with one 128-bit load -- a warp step is 512 contiguous bytes of
 * the row -- decodes the chunk's block scale once (the chunk lies in one quantization block: blocksize >= 32 and
 * chunks start at multiples of 32 elements of the flat weight), looks the codes up in the shared-memory table,
 * rounds each weight to A's dtype (rule 2) and multiplies by the activations (read as 128-bit vectors through
 * the read-only cache; they are shared by every warp). Generic path: per element, any K, any alignment.
 * Float32 throughout, separate multiply and add (__fmul_rn/__fadd_rn; the library is built with -fmad=false).
 */
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <stdint.h>

#include "kbit_device.h"
#include "kbit_matmul.h"
#include "matmul_mma.cuh"

namespace {

constexpr int kWarps = 8;
constexpr unsigned kFull = 0xffffffffu;

template <int DT> struct Ty;
template <> struct Ty<KBIT_F32> {
    typedef float t;
    static constexpr int per16 = 4;  // elements per 16-byte vector
    __device__ static __forceinline__ float ld(const float* p, long long i) { return __ldg(p + i); }
    __device__ static __forceinline__ float rnd(float v) { return v; }
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

template <int DT, int M, bool FAST, int RW>
__global__ void __launch_bounds__(kWarps * 32)
gemv_4bit_kernel(const typename Ty<DT>::t* __restrict__ A, long long N, long long K, const uint8_t* __restrict__ B,
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
    const long long n0 = ((long long)blockIdx.x * kWarps + (tid >> 5)) * RW;  // this warp's first row
    if (n0 >= N) return;

    float acc[RW][M];
#pragma unroll
    for (int r = 0; r < RW; ++r)
#pragma unroll
        for (int m = 0; m < M; ++m) acc[r][m] = 0.0f;

    if (FAST) {
        // RW rows per warp: each activation vector loaded serves RW rows (with one row per warp the activation
        // reads through L1 were 4x the weight bytes and bounded the kernel: ncu, reports/matmul-h200)
        const long long chunks = K >> 5;
#pragma unroll 2
        for (long long c = lane; c < chunks; c += 32) {
            const long long k0 = c << 5;
            uint4 w[RW];
            float s[RW];
#pragma unroll
            for (int r = 0; r < RW; ++r) {
                const long long n = n0 + r < N ? n0 + r : n0;  // rows past N repeat row n0 and are not stored
                w[r] = __ldg(reinterpret_cast<const uint4*>(B + n * (K >> 1)) + c);
                s[r] = block_scale((n * K + k0) >> bs_shift, absmax, a8, code2, off);
            }
#pragma unroll
            for (int q = 0; q < 4; ++q) {  // word q: codes of elements k0 + 8q .. k0 + 8q + 7
                float av[M][8];
#pragma unroll
                for (int m = 0; m < M; ++m) {
                    const typename D::t* ap = A + (long long)m * K + k0 + 8 * q;
                    D::unpack(__ldg(reinterpret_cast<const uint4*>(ap)), av[m]);
                    if (D::per16 == 4) D::unpack(__ldg(reinterpret_cast<const uint4*>(ap) + 1), av[m] + 4);
                }
#pragma unroll
                for (int r = 0; r < RW; ++r) {
                    const uint32_t word = q == 0 ? w[r].x : q == 1 ? w[r].y : q == 2 ? w[r].z : w[r].w;
                    float wv[8];
#pragma unroll
                    for (int j = 0; j < 4; ++j) {
                        const uint32_t byte = (word >> (8 * j)) & 0xffu;
                        wv[2 * j] = D::rnd(__fmul_rn(tab[byte >> 4], s[r]));
                        wv[2 * j + 1] = D::rnd(__fmul_rn(tab[byte & 15u], s[r]));
                    }
#pragma unroll
                    for (int m = 0; m < M; ++m)
#pragma unroll
                        for (int e = 0; e < 8; ++e) acc[r][m] = __fadd_rn(acc[r][m], __fmul_rn(wv[e], av[m][e]));
                }
            }
        }
    } else {
        const long long n = n0;  // the generic path runs with RW == 1
        for (long long k = lane; k < K; k += 32) {
            const long long i = n * K + k;
            const uint32_t byte = __ldg(B + (i >> 1));
            const uint32_t code = (i & 1) ? (byte & 15u) : (byte >> 4);
            const float s = block_scale(i >> bs_shift, absmax, a8, code2, off);
            const float wv = D::rnd(__fmul_rn(tab[code], s));
#pragma unroll
            for (int m = 0; m < M; ++m) acc[0][m] = __fadd_rn(acc[0][m], __fmul_rn(wv, D::ld(A, (long long)m * K + k)));
        }
    }
#pragma unroll
    for (int r = 0; r < RW; ++r) {
        warp_sum<M>(acc[r]);
        const long long n = n0 + r;
        if (lane == 0 && n < N) {
            const float b = (bias != nullptr) ? D::ld(bias, n) : 0.0f;
#pragma unroll
            for (int m = 0; m < M; ++m)
                D::st(out, (long long)m * N + n, bias != nullptr ? __fadd_rn(acc[r][m], b) : acc[r][m]);
        }
    }
}

/* Rows per warp: as many (4, 2) as still leave two CTAs per SM, else one. */
static int rows_per_warp(long long N) {
    const long long ctas = 2LL * kbit_num_sms();
    for (int rw = 4; rw > 1; rw >>= 1)
        if ((N + kWarps * rw - 1) / (kWarps * rw) >= ctas) return rw;
    return 1;
}

template <int DT, int M, int RW>
cudaError_t launch_rw(const void* A, long long N, long long K, const unsigned char* B, const float* absmax,
                      const unsigned char* a8, const float* code2, const float* off, const float* table, int bs_shift,
                      const void* bias, void* out, cudaStream_t stream) {
    typedef typename Ty<DT>::t T;
    const dim3 grid((unsigned)((N + kWarps * RW - 1) / (kWarps * RW))), block(kWarps * 32);
    gemv_4bit_kernel<DT, M, true, RW><<<grid, block, 0, stream>>>((const T*)A, N, K, B, absmax, a8, code2, off, table,
                                                                  bs_shift, (const T*)bias, (T*)out);
    return cudaGetLastError();
}

template <int DT, int M>
cudaError_t launch(const void* A, long long N, long long K, const unsigned char* B, const float* absmax,
                   const unsigned char* a8, const float* code2, const float* off, const float* table, int bs_shift,
                   const void* bias, void* out, cudaStream_t stream) {
    typedef typename Ty<DT>::t T;
    const bool fast = (K % 32 == 0) && ((uintptr_t)B % 16 == 0) && ((uintptr_t)A % 16 == 0);
    if (fast) {
        switch (rows_per_warp(N)) {
            case 4: return launch_rw<DT, M, 4>(A, N, K, B, absmax, a8, code2, off, table, bs_shift, bias, out, stream);
            case 2: return launch_rw<DT, M, 2>(A, N, K, B, absmax, a8, code2, off, table, bs_shift, bias, out, stream);
            default: return launch_rw<DT, M, 1>(A, N, K, B, absmax, a8, code2, off, table, bs_shift, bias, out, stream);
        }
    }
    const dim3 grid((unsigned)((N + kWarps - 1) / kWarps)), block(kWarps * 32);
    gemv_4bit_kernel<DT, M, false, 1><<<grid, block, 0, stream>>>((const T*)A, N, K, B, absmax, a8, code2, off,
                                                                  table, bs_shift, (const T*)bias, (T*)out);
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

extern "C" cudaError_t kbit_gemm_4bit_mma(const void* A, int dtype, int M, long long N, long long K,
                                          const unsigned char* B, const float* absmax, const unsigned char* absmax_8bit,
                                          const float* absmax_code, const float* absmax_offset, const float* table,
                                          int blocksize, const void* bias, void* out, float* partial, int* counters,
                                          int splits, int lookup, cudaStream_t stream) {
    const int bs_shift = log2_exact(blocksize);
    if (M < 1 || N < 0 || K < 0 || K % 32 != 0 || bs_shift < 5 || splits < 1) return cudaErrorInvalidValue;
    if ((uintptr_t)A % 16 != 0 || (uintptr_t)B % 16 != 0) return cudaErrorInvalidValue;
    if (absmax_8bit != nullptr && (absmax_code == nullptr || absmax_offset == nullptr)) return cudaErrorInvalidValue;
    if (splits > 1 && (partial == nullptr || counters == nullptr)) return cudaErrorInvalidValue;
    if (N == 0) return cudaSuccess;
    const long long chunks = (K + mma4::kChunk - 1) / mma4::kChunk;
    mma4::Args p{A, B, absmax, absmax_8bit, absmax_code, absmax_offset, table, bias, out, partial, counters,
                 M, N, K, bs_shift, (int)((chunks + splits - 1) / splits), lookup};
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
    *block_n = mma4::kRowsPerCta;
    mma4::Args p{};
    p.M = M;
    p.lookup = lookup;
    return (int)mma4::launch_dt<KBIT_BF16>(p, 1, 0, ctas_per_sm);
}

extern "C" int kbit_matmul_ieee_build(void) {
#if defined(__FAST_MATH__) || defined(__USE_FAST_MATH__)
    return 0;
#else
    return 1;
#endif
}
