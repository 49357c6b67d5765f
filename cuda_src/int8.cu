// kbit-workbench LLM.int8() kernels; see kbit_int8.h for the contract and numerics.
// Built with -fmad=false -prec-div=true -ftz=false; explicit __f*_rn intrinsics make the
// rounding of every float32 operation visible anyway.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <stdint.h>
#include <stdlib.h>

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

// The N candidate flags (bytes 0/1) of vector i packed into N bits (bit j = column i*N + j): the
// multiply moves byte j's low bit to bit 8*(N-1) + j without carries (the cross terms land on distinct
// lower bits), the shift brings the N bits down.
template <int N> __device__ __forceinline__ unsigned cand_bits(const unsigned char* cand, long long i);
template <> __device__ __forceinline__ unsigned cand_bits<8>(const unsigned char* cand, long long i) {
    const unsigned long long w = __ldg(reinterpret_cast<const unsigned long long*>(cand) + i);
    return (unsigned)((w * 0x0102040810204080ull) >> 56);
}
template <> __device__ __forceinline__ unsigned cand_bits<4>(const unsigned char* cand, long long i) {
    const unsigned w = __ldg(reinterpret_cast<const unsigned*>(cand) + i);
    return (w * 0x01020408u) >> 24;
}

// One block per row; 16-byte vector loads when the row is aligned (VEC), scalar otherwise.
// Pass 1: absmax over non-outliers (and outlier column flags); pass 2 writes codes. With VEC the
// row's vectors stay in registers between the passes when they fit (MAXV per thread), else pass 2
// re-reads the row (L1/L2). THR: thresholding compiled in or out.
//
// THR: cand[c] = 1 for the columns the probe (k_probe) found; read through the read-only path (the probe
// wrote them before this kernel), they are zeroed in every row as it is coded, and an outlier in such a
// column stores no flag. flags[c] = 1 marks only outlier columns the probe missed ("late" columns: the
// host zeroes them in all rows afterwards, kbit_int8_zero_late_cols).
template <typename T, bool VEC, bool THR, int THREADS, int MAXV, int MINB>
__global__ void __launch_bounds__(THREADS, MINB) k_vectorwise_quant(const T* __restrict__ A, long long rows, long long cols, float thr,
                                                              signed char* __restrict__ codes,
                                                              float* __restrict__ row_stats,
                                                              unsigned char* __restrict__ flags,
                                                              const unsigned char* __restrict__ cand) {
    constexpr int N = Vec<T>::N;
    __shared__ float red[THREADS / 32];
    __shared__ float s_scale;
    const long long nv = VEC ? cols / N : 0;
    const bool cached = VEC && nv <= (long long)THREADS * MAXV;
    // THR && cached: the candidate bits of this thread's columns (vector u, element j: bit u*N + j). A
    // thread owns the same columns in every row, so they are loaded once per block (the threshold path
    // runs a persistent grid) and no pass waits on a flag load. Read per row instead (from L1/L2, an 8-byte
    // load per vector) they slowed the row kernel at 8192^2 from 84.6 to 96-106 us.
    unsigned cmask = 0;
    static_assert(MAXV * N <= 32, "candidate bits of a thread's vectors fit one word");
    if (THR && cached) {
#pragma unroll
        for (int u = 0; u < MAXV; ++u) {
            const long long i = threadIdx.x + (long long)u * THREADS;
            if (i < nv) cmask |= cand_bits<N>(cand, i) << (u * N);
        }
    }
    for (long long row = blockIdx.x; row < rows; row += gridDim.x) {
        const T* a = A + row * cols;
        signed char* out = codes + row * cols;
        float m = 0.0f;
        uint4 cache[MAXV];
        if (VEC) {
            const uint4* av = reinterpret_cast<const uint4*>(a);
            if (cached) {
#pragma unroll
                for (int u = 0; u < MAXV; ++u) {
                    const long long i = threadIdx.x + (long long)u * THREADS;
                    if (i < nv) cache[u] = __ldcs(av + i);
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
                const unsigned cb = !THR ? 0u : cached ? cmask >> (u * N) : cand_bits<N>(cand, i);
#pragma unroll
                for (int j = 0; j < N; ++j) {
                    float x = fabsf(to_f<T>(v[j]));
                    if (THR && x >= thr) {
                        // benign race: every writer stores 1. Without the probe this was a store from every
                        // row to the same few lines (8192^2: row kernel 84.6 us vs 76.4 at threshold 0)
                        if (!((cb >> j) & 1u)) flags[i * N + j] = 1;
                    } else {
                        m = fmaxf(m, x);
                    }
                }
                if (cached && u + 1 >= MAXV) break;
            }
        } else {
            for (long long i = threadIdx.x; i < cols; i += THREADS) {
                float x = fabsf(to_f<T>(a[i]));
                if (THR && x >= thr) {
                    if (!__ldg(cand + i)) flags[i] = 1;
                } else {
                    m = fmaxf(m, x);
                }
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
                if (cached) {
#pragma unroll
                    for (int w = 0; w < MAXV; ++w) if (w == u) raw = cache[w];
                } else {
                    raw = av[i];
                }
                const T* v = reinterpret_cast<const T*>(&raw);
                const unsigned cb = !THR ? 0u : cached ? cmask >> (u * N) : cand_bits<N>(cand, i);
                signed char q[N];
#pragma unroll
                for (int j = 0; j < N; ++j) {
                    float x = to_f<T>(v[j]);
                    q[j] = (THR && (fabsf(x) >= thr || ((cb >> j) & 1u))) ? (signed char)0 : q8(__fmul_rn(x, scale));
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
                out[i] = (THR && (fabsf(x) >= thr || __ldg(cand + i))) ? (signed char)0 : q8(__fmul_rn(x, scale));
            }
        }
    }
}

// Outlier columns known before the row kernel runs: PROBE_ROWS rows spread evenly over A (the first
// included) are scanned and cand[c] = 1 marks a column with an |a| >= thr there. LLM.int8() outlier
// features are systematic (the same columns in most rows), so the probe finds nearly all of them and
// the row kernel zeroes them as it codes each row, while the codes are on chip: no DRAM
// read-modify-write of one byte in rows x columns scattered sectors afterwards (8192^2: 7.1 us), and no
// flag store from every row to the same lines. The probe's rows are then read again from L2.
// KBIT_INT8_PROBE=<rows> (read per call; 0 = no probe: every outlier column is then "late") for A/B runs.
constexpr int PROBE_ROWS = 32, PROBE_THREADS = 256;

inline int probe_rows(long long rows) {
    const char* v = getenv("KBIT_INT8_PROBE");
    const long long p = v ? atoll(v) : PROBE_ROWS;
    return (int)(p < rows ? (p < 0 ? 0 : p) : rows);
}

template <typename T, bool VEC>
__global__ void __launch_bounds__(PROBE_THREADS) k_probe(const T* __restrict__ A, long long rows, long long cols,
                                                         float thr, int nprobe, unsigned char* __restrict__ cand) {
    const long long row = (long long)blockIdx.y * rows / nprobe;
    const T* a = A + row * cols;
    const long long stride = (long long)gridDim.x * PROBE_THREADS;
    if (VEC) {
        constexpr int N = Vec<T>::N;
        const long long nv = cols / N;
        for (long long i = blockIdx.x * (long long)PROBE_THREADS + threadIdx.x; i < nv; i += stride) {
            const uint4 raw = reinterpret_cast<const uint4*>(a)[i];
            const T* v = reinterpret_cast<const T*>(&raw);
#pragma unroll
            for (int j = 0; j < N; ++j)
                if (fabsf(to_f<T>(v[j])) >= thr) cand[i * N + j] = 1;
        }
    } else {
        for (long long i = blockIdx.x * (long long)PROBE_THREADS + threadIdx.x; i < cols; i += stride)
            if (fabsf(to_f<T>(a[i])) >= thr) cand[i] = 1;
    }
}

// The outlier column list on the device: ascending indices of the columns with flags[c] | cand[c]
// (cand may be null), their count in idx[cols] and, with cand, the count of late columns (flags only)
// in idx[cols + 1]. One block; each thread owns IDX_PER consecutive flags, a block-wide prefix sum of the
// per-thread counts (warp shuffles, then the warp totals) gives each its write position. The host
// then reads the counts instead of running torch.nonzero's count + select passes.
constexpr int IDX_THREADS = 1024, IDX_PER = 16;
__global__ void __launch_bounds__(IDX_THREADS) k_flag_index(const unsigned char* __restrict__ flags,
                                                            const unsigned char* __restrict__ cand, long long cols,
                                                            long long* __restrict__ idx) {
    __shared__ int s_warp[IDX_THREADS / 32];
    __shared__ long long s_base;
    __shared__ int s_late;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    if (threadIdx.x == 0) { s_base = 0; s_late = 0; }
    __syncthreads();
    int late = 0;
    for (long long c0 = 0; c0 < cols; c0 += (long long)IDX_THREADS * IDX_PER) {
        const long long first = c0 + (long long)threadIdx.x * IDX_PER;
        unsigned bits = 0;
        if (first < cols) {  // 16-byte loads (the caller pads both arrays to a multiple of 16 bytes)
            const uint4 w = *reinterpret_cast<const uint4*>(flags + first);
            const unsigned char* f = reinterpret_cast<const unsigned char*>(&w);
            uint4 wc = make_uint4(0, 0, 0, 0);
            if (cand) wc = *reinterpret_cast<const uint4*>(cand + first);
            const unsigned char* fc = reinterpret_cast<const unsigned char*>(&wc);
#pragma unroll
            for (int k = 0; k < IDX_PER; ++k) {
                if (first + k < cols && (f[k] | fc[k])) bits |= 1u << k;
                if (first + k < cols && f[k]) ++late;
            }
        }
        const int cnt = __popc(bits);
        int incl = cnt; // inclusive prefix within the warp
        for (int o = 1; o < 32; o <<= 1) {
            const int t = __shfl_up_sync(0xffffffffu, incl, o);
            if (lane >= o) incl += t;
        }
        if (lane == 31) s_warp[warp] = incl;
        __syncthreads();
        if (warp == 0) { // exclusive prefix of the warp totals
            const int v = s_warp[lane];
            int w = v;
            for (int o = 1; o < 32; o <<= 1) {
                const int t = __shfl_up_sync(0xffffffffu, w, o);
                if (lane >= o) w += t;
            }
            s_warp[lane] = w - v;
        }
        __syncthreads();
        long long pos = s_base + s_warp[warp] + (incl - cnt);
        for (int k = 0; k < IDX_PER; ++k)
            if ((bits >> k) & 1u) idx[pos++] = first + k;
        __syncthreads();
        if (threadIdx.x == IDX_THREADS - 1) s_base = pos; // the last thread ends at the running total
        __syncthreads();
    }
    if (cand && late) atomicAdd(&s_late, late);
    __syncthreads();
    if (threadIdx.x == 0) {
        idx[cols] = s_base;
        if (cand) idx[cols + 1] = s_late;
    }
}

// Zero every row of the listed columns (count read on the device): the late columns only. The stores
// land on sectors that large matrices have mostly evicted from L2 by now: what this costs is their
// DRAM read-modify-write, as for bitsandbytes' out_row[:, outlier_cols] = 0 (a thread per row over
// the list in shared memory measured the same at 8192 and 16384 rows and 2.5x slower at 4096).
__global__ void k_zero_listed(signed char* codes, long long rows, long long cols, const long long* __restrict__ idx) {
    const long long nidx = idx[cols];
    const long long total = rows * nidx;
    for (long long t = blockIdx.x * (long long)blockDim.x + threadIdx.x; t < total; t += (long long)gridDim.x * blockDim.x) {
        const long long r = t / nidx, j = t - r * nidx;
        codes[r * cols + idx[j]] = 0;
    }
}

// CTAs per SM the row kernel is compiled for: "tight" (1536 threads per SM: <= 40 registers at 512
// threads; the default) or 1 ("loose": registers as needed). H100, fp16, threshold 0, 8192 x 8192:
// 76.6 vs 84.9 us; 16384 x 8192: 149.6 vs 165.2 us. KBIT_INT8_OCC=loose|tight is read per call so one
// process can A/B them (studies/bench_int8.py --occ-ab).
inline bool tight_occupancy() {
    const char* v = getenv("KBIT_INT8_OCC");
    return !(v && v[0] == 'l');
}

// A persistent grid for the threshold row kernel: as many blocks as fit on the device at once (the
// occupancy of this kernel build, queried once), each looping over rows, at most one per row.
template <auto Kernel>
unsigned resident_grid(int threads, long long rows) {
    static const int per_sm = [threads] {  // per kernel build, queried once (thread-safe static init)
        int n = 0;
        return cudaOccupancyMaxActiveBlocksPerMultiprocessor(&n, Kernel, threads, 0) == cudaSuccess && n > 0 ? n : 1;
    }();
    const long long g = (long long)per_sm * kbit_num_sms();
    return (unsigned)(g < rows ? g : rows);
}

template <typename T, int THREADS>
cudaError_t launch_vq(const void* A, long long rows, long long cols, float thr, int use_thr, signed char* codes,
                      float* stats, unsigned char* flags, long long* index, cudaStream_t s) {
    constexpr int N = Vec<T>::N;
    constexpr int TIGHT = 1536 / THREADS;
    const bool vec = (cols % N == 0) && ((reinterpret_cast<uintptr_t>(A) & 15) == 0) &&
                     ((reinterpret_cast<uintptr_t>(codes) & 7) == 0);
    const T* a = static_cast<const T*>(A);
    unsigned char* cand = use_thr ? flags + (cols + 15) / 16 * 16 : nullptr;
    if (use_thr) {
        // one row needs no column zeroing: its outliers are the only elements of their columns and are
        // coded 0 anyway (cand stays zero)
        const int np = rows > 1 ? probe_rows(rows) : 0;
        if (np > 0) {
            const long long work = vec ? cols / N : cols;
            long long gx = (work + PROBE_THREADS - 1) / PROBE_THREADS;
            gx = gx > 64 ? 64 : gx;
            const dim3 gp((unsigned)gx, (unsigned)np);
            if (vec) k_probe<T, true><<<gp, PROBE_THREADS, 0, s>>>(a, rows, cols, thr, np, cand);
            else k_probe<T, false><<<gp, PROBE_THREADS, 0, s>>>(a, rows, cols, thr, np, cand);
        }
    }
    constexpr int MV = 4;
    const bool tight = tight_occupancy();
    const dim3 g((unsigned)rows);
    if (vec) {
        if (use_thr) {
            if (tight) {
                constexpr auto k = k_vectorwise_quant<T, true, true, THREADS, MV, TIGHT>;
                k<<<resident_grid<k>(THREADS, rows), THREADS, 0, s>>>(a, rows, cols, thr, codes, stats, flags, cand);
            } else {
                constexpr auto k = k_vectorwise_quant<T, true, true, THREADS, MV, 1>;
                k<<<resident_grid<k>(THREADS, rows), THREADS, 0, s>>>(a, rows, cols, thr, codes, stats, flags, cand);
            }
        } else {
            if (tight) k_vectorwise_quant<T, true, false, THREADS, MV, TIGHT><<<g, THREADS, 0, s>>>(a, rows, cols, thr, codes, stats, flags, cand);
            else k_vectorwise_quant<T, true, false, THREADS, MV, 1><<<g, THREADS, 0, s>>>(a, rows, cols, thr, codes, stats, flags, cand);
        }
    } else {
        if (use_thr) k_vectorwise_quant<T, false, true, THREADS, 1, 1><<<g, THREADS, 0, s>>>(a, rows, cols, thr, codes, stats, flags, cand);
        else k_vectorwise_quant<T, false, false, THREADS, 1, 1><<<g, THREADS, 0, s>>>(a, rows, cols, thr, codes, stats, flags, cand);
    }
    cudaError_t e = cudaGetLastError();
    if (e != cudaSuccess || !use_thr) return e;
    k_flag_index<<<1, IDX_THREADS, 0, s>>>(flags, cand, cols, index);
    return cudaGetLastError();
}

template <typename T>
cudaError_t vq_dispatch(const void* A, long long rows, long long cols, float thr, int use_thr, signed char* codes,
                        float* stats, unsigned char* flags, long long* index, cudaStream_t s) {
    // small rows: fewer threads per row so a block is not mostly idle
    const long long nvec = (cols + Vec<T>::N - 1) / Vec<T>::N;
    if (nvec <= 64) return launch_vq<T, 64>(A, rows, cols, thr, use_thr, codes, stats, flags, index, s);
    if (nvec <= 128) return launch_vq<T, 128>(A, rows, cols, thr, use_thr, codes, stats, flags, index, s);
    if (nvec <= 256) return launch_vq<T, 256>(A, rows, cols, thr, use_thr, codes, stats, flags, index, s);
    return launch_vq<T, 512>(A, rows, cols, thr, use_thr, codes, stats, flags, index, s);
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

cudaError_t kbit_int8_vectorwise_quant(const void* A, int dtype, long long rows, long long cols, float thr,
                                       int use_thr, signed char* codes, float* row_stats, unsigned char* col_flags,
                                       long long* col_index, cudaStream_t stream) {
    if (rows <= 0 || cols <= 0) return cudaSuccess;
    if (use_thr && (col_flags == nullptr || col_index == nullptr)) return cudaErrorInvalidValue;
    if (use_thr) {  // flags and candidate flags, each padded to 16 bytes
        cudaError_t e = cudaMemsetAsync(col_flags, 0, (size_t)((cols + 15) / 16 * 16 * 2), stream);
        if (e != cudaSuccess) return e;
    }
    switch (dtype) {
        case 0: return vq_dispatch<float>(A, rows, cols, thr, use_thr, codes, row_stats, col_flags, col_index, stream);
        case 1: return vq_dispatch<__half>(A, rows, cols, thr, use_thr, codes, row_stats, col_flags, col_index, stream);
        case 2: return vq_dispatch<__nv_bfloat16>(A, rows, cols, thr, use_thr, codes, row_stats, col_flags, col_index, stream);
        default: return cudaErrorInvalidValue;
    }
}

cudaError_t kbit_int8_zero_late_cols(signed char* codes, long long rows, long long cols,
                                     const unsigned char* col_flags, long long* scratch, cudaStream_t stream) {
    if (rows <= 1 || cols <= 0) return cudaSuccess;
    k_flag_index<<<1, IDX_THREADS, 0, stream>>>(col_flags, nullptr, cols, scratch);
    k_zero_listed<<<kbit_num_sms() * 4, 256, 0, stream>>>(codes, rows, cols, scratch);
    return cudaGetLastError();
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
