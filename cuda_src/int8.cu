// kbit-workbench LLM.int8() kernels; see kbit_int8.h for the contract and numerics.
// Built with -fmad=false -prec-div=true -ftz=false; explicit __f*_rn intrinsics make the
// rounding of every float32 operation visible anyway.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <stdint.h>
#include <stdlib.h>

#include <algorithm>

#include "kbit_device.h"
#include "kbit_int8.h"

namespace {

template <typename T> __device__ __forceinline__ float to_f(T v);
template <> __device__ __forceinline__ float to_f<float>(float v) { return v; }
template <> __device__ __forceinline__ float to_f<__half>(__half v) { return __half2float(v); }
template <> __device__ __forceinline__ float to_f<__nv_bfloat16>(__nv_bfloat16 v) { return __bfloat162float(v); }

// float(dtype(x)): the product a*127 rounded to A's dtype, as torch's A.mul(127.0) does
template <typename T> __device__ __forceinline__ float round_to(float x);
template <> __device__ __forceinline__ float round_to<float>(float x) { return x; }
template <> __device__ __forceinline__ float round_to<__half>(float x) { return __half2float(__float2half_rn(x)); }
template <> __device__ __forceinline__ float round_to<__nv_bfloat16>(float x) {
    return __bfloat162float(__float2bfloat16_rn(x));
}

template <typename T> __device__ __forceinline__ T from_f(float v);
template <> __device__ __forceinline__ float from_f<float>(float v) { return v; }
template <> __device__ __forceinline__ __half from_f<__half>(float v) { return __float2half_rn(v); }
template <> __device__ __forceinline__ __nv_bfloat16 from_f<__nv_bfloat16>(float v) { return __float2bfloat16_rn(v); }

// rne(x) to int8; non-finite -> 0 (NaN from 0*inf, inf when 1/absmax overflows); |x| <= 127.5 otherwise
__device__ __forceinline__ signed char q8(float x) { return isfinite(x) ? (signed char)__float2int_rn(x) : (signed char)0; }

template <typename T> struct Vec { static constexpr int N = 16 / sizeof(T); };

__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

// One block per row; 16-byte vector loads when the row is aligned (VEC), scalar otherwise.
// Pass 1: absmax over non-outliers; pass 2 writes codes. With VEC the row's vectors stay in
// registers between the passes when they fit (MAXV per thread), else pass 2 re-reads the row
// (L1/L2). THR: thresholding compiled in or out.
//
// Outlier columns with THR, without a second pass over the codes: `mask` (one bit per column, in
// L2) collects every column holding an outlier. Pass 2 reads the mask words of its columns and
// codes 0 every column already marked (by any row) as well as its own outliers, setting the bits
// of its own outliers that were not marked yet (atomicOr only then: after the first rows nearly
// every row finds its columns marked). seen[row] counts the marked columns the row zeroed. Bits are
// only ever added, so a row whose count equals the final number of outlier columns has zeroed
// exactly those columns; k_outlier_finish redoes only the rows that ran before some column was
// marked (typically the first wave). Every row reads the whole mask, so it is kept in `copies`
// replicas (row r reads replica r % copies; a new bit is ORed into all of them): one 1 KB mask read
// by 8192 rows would load a handful of L2 slices with every row's requests.
template <typename T, bool VEC, bool THR, int THREADS, int MAXV, int MINB>
__global__ void __launch_bounds__(THREADS, MINB) k_vectorwise_quant(const T* __restrict__ A, long long cols, float thr,
                                                              signed char* __restrict__ codes,
                                                              float* __restrict__ row_stats,
                                                              unsigned int* mask, long long mstride, int copies,
                                                              int* __restrict__ seen) {
    constexpr int N = Vec<T>::N;  // divides 32: a vector's columns share one mask word
    __shared__ float red[THREADS / 32];
    __shared__ float s_scale;
    const long long row = blockIdx.x;
    const unsigned int* mine = mask + (row % copies) * mstride;  // the replica this row reads
    const T* a = A + row * cols;
    signed char* out = codes + row * cols;
    float m = 0.0f;
    int zeroed = 0;  // THR: marked columns this thread coded 0
    const long long nv = VEC ? cols / N : 0;
    const bool cached = VEC && nv <= (long long)THREADS * MAXV;
    uint4 cache[MAXV];
    unsigned mwords[MAXV];
    if (VEC) {
        const uint4* av = reinterpret_cast<const uint4*>(a);
        if (cached) {
#pragma unroll
            for (int u = 0; u < MAXV; ++u) {
                const long long i = threadIdx.x + (long long)u * THREADS;
                if (i < nv) cache[u] = __ldcs(av + i);
            }
            if (THR) {  // the mask words too, so their L2 latency hides behind the row's reduction
#pragma unroll
                for (int u = 0; u < MAXV; ++u) {
                    const long long i = threadIdx.x + (long long)u * THREADS;
                    if (i < nv) mwords[u] = __ldcg(mine + ((i * N) >> 5));
                }
            }
        }
        for (int u = 0;; ++u) {
            const long long i = threadIdx.x + (long long)u * THREADS;
            if (i >= nv) break;
            uint4 raw;
            if (cached) {
                // unrolled selection keeps cache[] in registers
#pragma unroll
                for (int w = 0; w < MAXV; ++w) if (w == u) raw = cache[w];
            } else {
                raw = av[i];
            }
            const T* v = reinterpret_cast<const T*>(&raw);
#pragma unroll
            for (int j = 0; j < N; ++j) {
                float x = fabsf(to_f<T>(v[j]));
                if (!(THR && x >= thr)) m = fmaxf(m, x);
            }
            if (cached && u + 1 >= MAXV) break;
        }
    } else {
        for (long long i = threadIdx.x; i < cols; i += THREADS) {
            float x = fabsf(to_f<T>(a[i]));
            if (!(THR && x >= thr)) m = fmaxf(m, x);
        }
    }
    m = warp_max(m);
    if ((threadIdx.x & 31) == 0) red[threadIdx.x >> 5] = m;
    __syncthreads();
    if (threadIdx.x < 32) {
        float v = threadIdx.x < THREADS / 32 ? red[threadIdx.x] : 0.0f;
        v = warp_max(v);
        if (threadIdx.x == 0) {
            row_stats[row] = v;
            // torch evaluates 127.0 / row_stats as row_stats.reciprocal() * 127 (two roundings);
            // 1/0 = inf -> 0*inf = NaN -> code 0
            s_scale = __fmul_rn(__frcp_rn(v), 127.0f);
        }
    }
    __syncthreads();
    const float scale = s_scale;
    if (VEC) {
        const uint4* av = reinterpret_cast<const uint4*>(a);
        for (int u = 0;; ++u) {
            const long long i = threadIdx.x + (long long)u * THREADS;
            if (i >= nv) break;
            uint4 raw;
            unsigned word = 0;
            if (cached) {
#pragma unroll
                for (int w = 0; w < MAXV; ++w) if (w == u) { raw = cache[w]; if (THR) word = mwords[w]; }
            } else {
                raw = av[i];
                if (THR) word = __ldcg(mine + ((i * N) >> 5));
            }
            const T* v = reinterpret_cast<const T*>(&raw);
            unsigned zero = 0;  // THR: bit j -> column i*N+j is coded 0
            if (THR) {
                unsigned own = 0;
#pragma unroll
                for (int j = 0; j < N; ++j) own |= (fabsf(to_f<T>(v[j])) >= thr ? 1u : 0u) << j;
                const long long c0 = i * N;
                const unsigned sh = (unsigned)(c0 & 31);
                const unsigned marked = (word >> sh) & ((1u << N) - 1u);
                if (own & ~marked)
                    for (int k = 0; k < copies; ++k) atomicOr(mask + k * mstride + (c0 >> 5), own << sh);
                zero = own | marked;
                zeroed += __popc(zero);
            }
            signed char q[N];
#pragma unroll
            for (int j = 0; j < N; ++j) {
                q[j] = ((zero >> j) & 1u) ? (signed char)0 : q8(__fmul_rn(to_f<T>(v[j]), scale));
            }
            if constexpr (N == 8) {
                __stcs(reinterpret_cast<uint2*>(out + i * N), *reinterpret_cast<const uint2*>(q));
            } else {
                __stcs(reinterpret_cast<unsigned int*>(out + i * N), *reinterpret_cast<const unsigned int*>(q));
            }
            if (cached && u + 1 >= MAXV) break;
        }
    } else {
        for (long long i = threadIdx.x; i < cols; i += THREADS) {
            float x = to_f<T>(a[i]);
            bool z = false;
            if (THR) {
                const bool own = fabsf(x) >= thr;
                const unsigned bit = 1u << (unsigned)(i & 31);
                z = own || (__ldcg(mine + (i >> 5)) & bit);
                if (own)
                    for (int k = 0; k < copies; ++k) atomicOr(mask + k * mstride + (i >> 5), bit);
                zeroed += z ? 1 : 0;
            }
            out[i] = z ? (signed char)0 : q8(__fmul_rn(x, scale));
        }
    }
    if (THR) {
#pragma unroll
        for (int o = 16; o > 0; o >>= 1) zeroed += __shfl_xor_sync(0xffffffffu, zeroed, o);
        if ((threadIdx.x & 31) == 0 && zeroed) atomicAdd(seen + row, zeroed);
    }
}

__device__ __forceinline__ int block_sum(int v, int* s_warp) {  // every thread gets the sum; blockDim % 32 == 0
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    __syncthreads();
    if ((threadIdx.x & 31) == 0) s_warp[threadIdx.x >> 5] = v;
    __syncthreads();
    int t = 0;
    for (int w = 0; w < (int)(blockDim.x >> 5); ++w) t += s_warp[w];
    return t;
}

// After k_vectorwise_quant<THR>: block 0 writes the ascending outlier column list with its count in
// idx[cols] (a block-wide prefix sum of the mask words' popcounts), and every block zeroes the marked
// columns of the rows whose count says they ran before some column was marked (a thread per row
// checks the counts, so the check costs one load latency per FIN_THREADS rows).
constexpr int FIN_THREADS = 256;
__global__ void __launch_bounds__(FIN_THREADS) k_outlier_finish(const unsigned int* __restrict__ mask, long long cols,
                                                                long long rows, const int* __restrict__ seen,
                                                                signed char* __restrict__ codes,
                                                                long long* __restrict__ idx) {
    __shared__ int s_warp[FIN_THREADS / 32];
    __shared__ long long s_rows[FIN_THREADS];
    __shared__ int s_n;
    const long long words = (cols + 31) / 32;
    int cnt = 0;
    for (long long w = threadIdx.x; w < words; w += FIN_THREADS) cnt += __popc(mask[w]);
    const int total = block_sum(cnt, s_warp);
    if (blockIdx.x == 0) {
        // chunks of FIN_THREADS words, one word per thread, in order
        long long base = 0;
        const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
        for (long long w0 = 0; w0 < words; w0 += FIN_THREADS) {
            const long long w = w0 + threadIdx.x;
            const unsigned bits = w < words ? mask[w] : 0u;
            const int c = __popc(bits);
            int incl = c;
            for (int o = 1; o < 32; o <<= 1) {
                const int t = __shfl_up_sync(0xffffffffu, incl, o);
                if (lane >= o) incl += t;
            }
            __syncthreads();
            if (lane == 31) s_warp[warp] = incl;
            __syncthreads();
            int before = 0;
            for (int k = 0; k < warp; ++k) before += s_warp[k];
            long long pos = base + before + incl - c;
            for (unsigned b = bits; b; b &= b - 1) idx[pos++] = w * 32 + __ffs(b) - 1;
            int chunk = 0;
            for (int k = 0; k < FIN_THREADS / 32; ++k) chunk += s_warp[k];
            base += chunk;
        }
        if (threadIdx.x == 0) idx[cols] = base;
    }
    // one row: its outliers are the only elements of their columns and are coded 0 already
    if (total == 0 || rows == 1) return;
    for (long long r0 = (long long)blockIdx.x * FIN_THREADS; r0 < rows; r0 += (long long)gridDim.x * FIN_THREADS) {
        __syncthreads();
        if (threadIdx.x == 0) s_n = 0;
        __syncthreads();
        const long long r = r0 + threadIdx.x;
        if (r < rows && seen[r] != total) s_rows[atomicAdd(&s_n, 1)] = r;
        __syncthreads();
        for (int k = 0; k < s_n; ++k) {
            signed char* out = codes + s_rows[k] * cols;
            for (long long w = threadIdx.x; w < words; w += FIN_THREADS)
                for (unsigned b = mask[w]; b; b &= b - 1) out[w * 32 + __ffs(b) - 1] = 0;
        }
    }
}

// The outlier mask's replicas: each padded to whole 128-byte lines, as many as fit 64 KB (1 to 32).
inline long long mask_stride(long long cols) { return ((cols + 31) / 32 + 31) / 32 * 32; }
inline int mask_copies(long long cols) { return (int)std::max(1LL, std::min(32LL, 16384 / mask_stride(cols))); }

// CTAs per SM the row kernel is compiled for: 1 (registers as needed) or "tight" (1536 threads
// per SM: <= 40 registers at 512 threads). Environment KBIT_INT8_OCC=loose|tight, read per call
// so one process can A/B them (studies/bench_int8.py --occ).
inline bool tight_occupancy() {
    const char* v = getenv("KBIT_INT8_OCC");
    return !(v && v[0] == 'l');
}

template <typename T, int THREADS>
cudaError_t launch_vq(const void* A, long long rows, long long cols, float thr, int use_thr, signed char* codes,
                      float* stats, unsigned int* work, long long* index, cudaStream_t s) {
    constexpr int N = Vec<T>::N;
    constexpr int TIGHT = 1536 / THREADS;
    const bool vec = (cols % N == 0) && ((reinterpret_cast<uintptr_t>(A) & 15) == 0) &&
                     ((reinterpret_cast<uintptr_t>(codes) & 7) == 0);
    const T* a = static_cast<const T*>(A);
    unsigned int* mask = work;
    const long long mstride = mask_stride(cols);
    const int copies = mask_copies(cols);
    int* seen = use_thr ? reinterpret_cast<int*>(work + mstride * copies) : nullptr;
    dim3 g((unsigned)rows);
    constexpr int MV = 4;
    const bool tight = tight_occupancy();
    if (vec) {
        if (use_thr) {
            if (tight) k_vectorwise_quant<T, true, true, THREADS, MV, TIGHT><<<g, THREADS, 0, s>>>(a, cols, thr, codes, stats, mask, mstride, copies, seen);
            else k_vectorwise_quant<T, true, true, THREADS, MV, 1><<<g, THREADS, 0, s>>>(a, cols, thr, codes, stats, mask, mstride, copies, seen);
        } else {
            if (tight) k_vectorwise_quant<T, true, false, THREADS, MV, TIGHT><<<g, THREADS, 0, s>>>(a, cols, thr, codes, stats, mask, mstride, copies, seen);
            else k_vectorwise_quant<T, true, false, THREADS, MV, 1><<<g, THREADS, 0, s>>>(a, cols, thr, codes, stats, mask, mstride, copies, seen);
        }
    } else {
        if (use_thr) k_vectorwise_quant<T, false, true, THREADS, 1, 1><<<g, THREADS, 0, s>>>(a, cols, thr, codes, stats, mask, mstride, copies, seen);
        else k_vectorwise_quant<T, false, false, THREADS, 1, 1><<<g, THREADS, 0, s>>>(a, cols, thr, codes, stats, mask, mstride, copies, seen);
    }
    cudaError_t e = cudaGetLastError();
    if (e != cudaSuccess || !use_thr) return e;
    const long long fin = std::min<long long>((rows + FIN_THREADS - 1) / FIN_THREADS, (long long)kbit_num_sms() * 4);
    k_outlier_finish<<<(unsigned)fin, FIN_THREADS, 0, s>>>(mask, cols, rows, seen, codes, index);
    return cudaGetLastError();
}

template <typename T>
cudaError_t vq_dispatch(const void* A, long long rows, long long cols, float thr, int use_thr, signed char* codes,
                        float* stats, unsigned int* work, long long* index, cudaStream_t s) {
    // small rows: fewer threads per row so a block is not mostly idle
    const long long nvec = (cols + Vec<T>::N - 1) / Vec<T>::N;
    if (nvec <= 64) return launch_vq<T, 64>(A, rows, cols, thr, use_thr, codes, stats, work, index, s);
    if (nvec <= 128) return launch_vq<T, 128>(A, rows, cols, thr, use_thr, codes, stats, work, index, s);
    if (nvec <= 256) return launch_vq<T, 256>(A, rows, cols, thr, use_thr, codes, stats, work, index, s);
    return launch_vq<T, 512>(A, rows, cols, thr, use_thr, codes, stats, work, index, s);
}

// column stats: each thread one column, a slice of rows; atomicMax on the float's bits (values >= 0)
template <typename T>
__global__ void k_col_stats(const T* __restrict__ A, long long rows, long long cols, float thr, int use_thr,
                            long long rows_per, float* col_stats) {
    const long long c = blockIdx.x * (long long)blockDim.x + threadIdx.x;
    if (c >= cols) return;
    const long long r0 = blockIdx.y * rows_per, r1 = min(rows, r0 + rows_per);
    float m = 0.0f;
    for (long long r = r0; r < r1; ++r) {
        float x = fabsf(to_f<T>(A[r * cols + c]));
        if (!(use_thr && x >= thr)) m = fmaxf(m, x);
    }
    atomicMax(reinterpret_cast<unsigned int*>(col_stats) + c, __float_as_uint(m));
}

template <typename T>
__global__ void k_col_codes(const T* __restrict__ A, long long rows, long long cols, float thr, int use_thr,
                            const float* __restrict__ col_stats, signed char* __restrict__ out) {
    const long long n = rows * cols;
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n; i += (long long)gridDim.x * blockDim.x) {
        const long long c = i % cols;
        const float x = to_f<T>(A[i]);
        if (use_thr && fabsf(x) >= thr) { out[i] = 0; continue; }
        const float t = round_to<T>(__fmul_rn(x, 127.0f));
        const float q = __fdiv_rn(t, col_stats[c]);
        out[i] = isfinite(q) ? q8(q) : (signed char)0;
    }
}

__global__ void k_vdequant(const signed char* __restrict__ q, const float* __restrict__ stats, long long rows,
                           long long cols, float* __restrict__ out) {
    const long long n = rows * cols;
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n; i += (long long)gridDim.x * blockDim.x) {
        out[i] = __fmul_rn(__fmul_rn((float)q[i], stats[i / cols]), 7.874015718698502e-3f);
    }
}

template <typename T>
__device__ __forceinline__ T dequant_one(int acc, float rs, float cs, const float* bias, int n) {
    float v = __fmul_rn(__fmul_rn(__int2float_rn(acc), __fmul_rn(rs, cs)), 6.200124e-05f);
    if (bias) v = __fadd_rn(v, bias[n]);
    return from_f<T>(v);
}

template <typename T>
__global__ void k_mm_dequant(const int* __restrict__ C, const float* __restrict__ rs, const float* __restrict__ cs,
                             const float* __restrict__ bias, int M, int N, T* __restrict__ out) {
    const long long n = (long long)M * N;
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n; i += (long long)gridDim.x * blockDim.x) {
        const int r = (int)(i / N), c = (int)(i - (long long)r * N);
        out[i] = dequant_one<T>(C[i], rs[r], cs[c], bias, c);
    }
}

// int8 GEMM C = A @ B.T with __dp4a: 64x64 output tile, 256 threads (4x4 outputs each), K step 32.
constexpr int TM = 64, TN = 64, TK = 32, TKW = TK / 4;

__device__ __forceinline__ int load_word(const signed char* X, int rows, int K, int r, int k0) {
    // 4 consecutive bytes X[r, k0..k0+3] with zero fill outside, assembled little-endian
    if (r >= rows) return 0;
    const signed char* p = X + (long long)r * K;
    if (k0 + 3 < K && ((reinterpret_cast<uintptr_t>(p + k0) & 3) == 0)) return *reinterpret_cast<const int*>(p + k0);
    unsigned w = 0;
#pragma unroll
    for (int b = 0; b < 4; ++b) {
        unsigned byte = (k0 + b < K) ? (unsigned char)p[k0 + b] : 0u;
        w |= byte << (8 * b);
    }
    return (int)w;
}

template <typename T, bool DEQ>
__global__ void __launch_bounds__(256) k_gemm(const signed char* __restrict__ A, const signed char* __restrict__ B,
                                              int M, int N, int K, int* __restrict__ C, const float* __restrict__ rs,
                                              const float* __restrict__ cs, const float* __restrict__ bias,
                                              T* __restrict__ out) {
    __shared__ int As[TKW][TM + 1];
    __shared__ int Bs[TKW][TN + 1];
    const int tx = threadIdx.x % 16, ty = threadIdx.x / 16;
    const int m0 = blockIdx.y * TM, n0 = blockIdx.x * TN;
    int acc[4][4] = {};
    for (int k0 = 0; k0 < K; k0 += TK) {
        // 64 rows x 8 words per operand = 512 words; 2 per thread
#pragma unroll
        for (int l = 0; l < 2; ++l) {
            const int idx = threadIdx.x + l * 256;
            const int r = idx / TKW, w = idx % TKW;
            As[w][r] = load_word(A, M, K, m0 + r, k0 + 4 * w);
            Bs[w][r] = load_word(B, N, K, n0 + r, k0 + 4 * w);
        }
        __syncthreads();
#pragma unroll
        for (int w = 0; w < TKW; ++w) {
            int a[4], b[4];
#pragma unroll
            for (int i = 0; i < 4; ++i) { a[i] = As[w][ty + 16 * i]; b[i] = Bs[w][tx + 16 * i]; }
#pragma unroll
            for (int i = 0; i < 4; ++i)
#pragma unroll
                for (int j = 0; j < 4; ++j) acc[i][j] = __dp4a(a[i], b[j], acc[i][j]);
        }
        __syncthreads();
    }
#pragma unroll
    for (int i = 0; i < 4; ++i) {
        const int m = m0 + ty + 16 * i;
        if (m >= M) continue;
#pragma unroll
        for (int j = 0; j < 4; ++j) {
            const int n = n0 + tx + 16 * j;
            if (n >= N) continue;
            if (DEQ) out[(long long)m * N + n] = dequant_one<T>(acc[i][j], rs[m], cs[n], bias, n);
            else C[(long long)m * N + n] = acc[i][j];
        }
    }
}

unsigned grid_for(long long n, int threads) {
    long long g = (n + threads - 1) / threads;
    if (g > 65535LL * 16) g = 65535LL * 16;
    return (unsigned)(g < 1 ? 1 : g);
}

}  // namespace

extern "C" {

long long kbit_int8_workspace_words(long long rows, long long cols) {
    return mask_stride(cols) * mask_copies(cols) + rows;
}

cudaError_t kbit_int8_vectorwise_quant(const void* A, int dtype, long long rows, long long cols, float thr,
                                       int use_thr, signed char* codes, float* row_stats, unsigned int* work,
                                       long long* col_index, cudaStream_t stream) {
    if (rows <= 0 || cols <= 0) return cudaSuccess;
    if (use_thr && (work == nullptr || col_index == nullptr)) return cudaErrorInvalidValue;
    if (use_thr) {
        cudaError_t e = cudaMemsetAsync(work, 0, (size_t)kbit_int8_workspace_words(rows, cols) * sizeof(unsigned int),
                                        stream);
        if (e != cudaSuccess) return e;
    }
    switch (dtype) {
        case 0: return vq_dispatch<float>(A, rows, cols, thr, use_thr, codes, row_stats, work, col_index, stream);
        case 1: return vq_dispatch<__half>(A, rows, cols, thr, use_thr, codes, row_stats, work, col_index, stream);
        case 2: return vq_dispatch<__nv_bfloat16>(A, rows, cols, thr, use_thr, codes, row_stats, work, col_index, stream);
        default: return cudaErrorInvalidValue;
    }
}

cudaError_t kbit_int8_col_quant(const void* A, int dtype, long long rows, long long cols, float thr, int use_thr,
                                signed char* col_codes, float* col_stats, cudaStream_t stream) {
    if (rows <= 0 || cols <= 0) return cudaSuccess;
    cudaError_t e = cudaMemsetAsync(col_stats, 0, (size_t)cols * sizeof(float), stream);
    if (e != cudaSuccess) return e;
    const long long rows_per = 64;
    dim3 gs((unsigned)((cols + 127) / 128), (unsigned)((rows + rows_per - 1) / rows_per));
    const unsigned gc = grid_for(rows * cols, 256);
    switch (dtype) {
        case 0:
            k_col_stats<float><<<gs, 128, 0, stream>>>((const float*)A, rows, cols, thr, use_thr, rows_per, col_stats);
            k_col_codes<float><<<gc, 256, 0, stream>>>((const float*)A, rows, cols, thr, use_thr, col_stats, col_codes);
            break;
        case 1:
            k_col_stats<__half><<<gs, 128, 0, stream>>>((const __half*)A, rows, cols, thr, use_thr, rows_per, col_stats);
            k_col_codes<__half><<<gc, 256, 0, stream>>>((const __half*)A, rows, cols, thr, use_thr, col_stats, col_codes);
            break;
        case 2:
            k_col_stats<__nv_bfloat16><<<gs, 128, 0, stream>>>((const __nv_bfloat16*)A, rows, cols, thr, use_thr,
                                                                rows_per, col_stats);
            k_col_codes<__nv_bfloat16><<<gc, 256, 0, stream>>>((const __nv_bfloat16*)A, rows, cols, thr, use_thr,
                                                                col_stats, col_codes);
            break;
        default: return cudaErrorInvalidValue;
    }
    return cudaGetLastError();
}

cudaError_t kbit_int8_vectorwise_dequant(const signed char* q, const float* stats, long long rows, long long cols,
                                         float* out, cudaStream_t stream) {
    if (rows <= 0 || cols <= 0) return cudaSuccess;
    k_vdequant<<<grid_for(rows * cols, 256), 256, 0, stream>>>(q, stats, rows, cols, out);
    return cudaGetLastError();
}

cudaError_t kbit_int8_linear_matmul(const signed char* A, const signed char* B, int* C, int M, int N, int K,
                                    cudaStream_t stream) {
    if (M <= 0 || N <= 0) return cudaSuccess;
    dim3 g((N + TN - 1) / TN, (M + TM - 1) / TM);
    k_gemm<float, false><<<g, 256, 0, stream>>>(A, B, M, N, K, C, nullptr, nullptr, nullptr, nullptr);
    return cudaGetLastError();
}

cudaError_t kbit_int8_mm_dequant(const int* C, const float* row_stats, const float* col_stats, const float* bias,
                                 int M, int N, void* out, int out_dtype, cudaStream_t stream) {
    if (M <= 0 || N <= 0) return cudaSuccess;
    const unsigned g = grid_for((long long)M * N, 256);
    switch (out_dtype) {
        case 0: k_mm_dequant<float><<<g, 256, 0, stream>>>(C, row_stats, col_stats, bias, M, N, (float*)out); break;
        case 1: k_mm_dequant<__half><<<g, 256, 0, stream>>>(C, row_stats, col_stats, bias, M, N, (__half*)out); break;
        case 2:
            k_mm_dequant<__nv_bfloat16><<<g, 256, 0, stream>>>(C, row_stats, col_stats, bias, M, N,
                                                               (__nv_bfloat16*)out);
            break;
        default: return cudaErrorInvalidValue;
    }
    return cudaGetLastError();
}

cudaError_t kbit_int8_scaled_mm(const signed char* A, const signed char* B, const float* row_stats,
                                const float* col_stats, const float* bias, int M, int N, int K, void* out,
                                int out_dtype, cudaStream_t stream) {
    if (M <= 0 || N <= 0) return cudaSuccess;
    dim3 g((N + TN - 1) / TN, (M + TM - 1) / TM);
    switch (out_dtype) {
        case 0: k_gemm<float, true><<<g, 256, 0, stream>>>(A, B, M, N, K, nullptr, row_stats, col_stats, bias, (float*)out); break;
        case 1: k_gemm<__half, true><<<g, 256, 0, stream>>>(A, B, M, N, K, nullptr, row_stats, col_stats, bias, (__half*)out); break;
        case 2:
            k_gemm<__nv_bfloat16, true><<<g, 256, 0, stream>>>(A, B, M, N, K, nullptr, row_stats, col_stats, bias,
                                                               (__nv_bfloat16*)out);
            break;
        default: return cudaErrorInvalidValue;
    }
    return cudaGetLastError();
}

}  // extern "C"
