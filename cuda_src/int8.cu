// kbit-workbench LLM.int8() kernels; see kbit_int8.h for the contract and numerics.
// Built with -fmad=false -prec-div=true -ftz=false; explicit __f*_rn intrinsics make the
// rounding of every float32 operation visible anyway.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <type_traits>

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
// the same for x = a * scale with a finite scale (|x| <= 127.5 or NaN): cvt.rni.s32.f32 maps NaN to 0
__device__ __forceinline__ signed char q8_scaled(float x) { return (signed char)__float2int_rn(x); }

template <typename T> struct Vec { static constexpr int N = 16 / sizeof(T); };

// Maxima of magnitudes (x >= 0 or NaN) as unsigned integer maxima of their bits: exact, one instruction,
// and NaN-propagating (a NaN's bits, sign cleared, exceed +inf's, which exceed every finite value's), so a
// row's absmax is NaN when the row holds a NaN, as torch's amax gives; fmaxf and __hmax2 would drop it.
__device__ __forceinline__ float mag_max(float m, float x) {
    return __uint_as_float(max(__float_as_uint(m), __float_as_uint(x)));
}

__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v = mag_max(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

// 16-bit dtypes are handled two lanes per 32-bit word in the absmax pass and the outlier tests (packed
// abs, compare-to-mask and max): |x| >= thr is exact in the dtype (thr is rounded to it by the caller,
// as torch compares), and the max is the integer max of the 16-bit magnitudes (__vmaxu2: NaN-propagating,
// see mag_max). Per element this
// halves the instructions of the threshold path, which is what it cost over threshold 0.
template <typename T> struct Pair { using H2 = unsigned; };  // float: unused
template <> struct Pair<__half> {
    using H2 = __half2;
    static __device__ __forceinline__ H2 splat(float v) { return __float2half2_rn(v); }
};
template <> struct Pair<__nv_bfloat16> {
    using H2 = __nv_bfloat162;
    static __device__ __forceinline__ H2 splat(float v) { return __float2bfloat162_rn(v); }
};
template <typename H2> __device__ __forceinline__ H2 as_h2(unsigned w) {
    H2 h;
    memcpy(&h, &w, 4);
    return h;
}

// Where the outlier bookkeeping lives in the caller's col_flags buffer (P = cols rounded up to 16):
// [0, P) flags: every outlier column (the row kernel); [P, 2P) cand: the columns the probe found;
// [2P, 2P + 16) their count (int); then the probe's column list (int, unordered, up to cols entries).
struct OutlierWork {
    unsigned char* flags;
    unsigned char* cand;
    int* n_cand;
    int* cand_list;
    __host__ __device__ OutlierWork(unsigned char* base, long long cols) {
        const long long pad = (cols + 15) / 16 * 16;
        flags = base;
        cand = base + pad;
        n_cand = reinterpret_cast<int*>(base + 2 * pad);
        cand_list = reinterpret_cast<int*>(base + 2 * pad + 16);
    }
    static long long zeroed_bytes(long long cols) { return (cols + 15) / 16 * 16 * 2 + 16; }
};

// One block per row; 16-byte vector loads when the row is aligned (VEC), scalar otherwise.
// Pass 1: absmax over non-outliers (and outlier column flags); pass 2 writes codes. With VEC the
// row's vectors stay in registers between the passes when they fit (MAXV per thread), else pass 2
// re-reads the row (L1/L2). THR: thresholding compiled in or out. With THR, the columns of the probe's
// list (k_probe) are then zeroed in the row while its codes are still in L2 (a few byte stores after a
// barrier); columns the probe missed are zeroed in all rows afterwards (kbit_int8_zero_late_cols).
template <typename T, bool VEC, bool THR, int THREADS, int MAXV, int MINB>
__global__ void __launch_bounds__(THREADS, MINB) k_vectorwise_quant(const T* __restrict__ A, long long cols, float thr,
                                                              signed char* __restrict__ codes,
                                                              float* __restrict__ row_stats,
                                                              unsigned char* __restrict__ flags,
                                                              const int* __restrict__ n_cand,
                                                              const int* __restrict__ cand_list) {
    constexpr int N = Vec<T>::N;
    constexpr bool PACKED = !std::is_same_v<T, float>;  // two 16-bit lanes per word
    using H2 = typename Pair<T>::H2;
    __shared__ float red[THREADS / 32];
    __shared__ float s_scale;
    const long long row = blockIdx.x;
    const T* a = A + row * cols;
    signed char* out = codes + row * cols;
    // the probe's columns: count and this thread's first entry, loaded now, used after pass 2
    int ncand = 0, my_col = 0;
    if (THR) {
        ncand = __ldg(n_cand);
        if (threadIdx.x < ncand) my_col = __ldg(cand_list + threadIdx.x);
    }
    float m = 0.0f;
    const long long nv = VEC ? cols / N : 0;
    const bool cached = VEC && nv <= (long long)THREADS * MAXV;
    uint4 cache[MAXV];
    unsigned has_out = 0;  // THR, 16-bit VEC: bit u = vector u holds an outlier (bit 31: any vector >= 31)
    if (VEC) {
        const uint4* av = reinterpret_cast<const uint4*>(a);
        if (cached) {
#pragma unroll
            for (int u = 0; u < MAXV; ++u) {
                const long long i = threadIdx.x + (long long)u * THREADS;
                if (i < nv) cache[u] = __ldcs(av + i);
            }
        }
        [[maybe_unused]] unsigned m2u = 0u;  // two 16-bit magnitudes, +0 (absmax pass)
        [[maybe_unused]] H2 thr2;
        if constexpr (PACKED) {
            thr2 = Pair<T>::splat(thr);
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
            if constexpr (PACKED) {
                const unsigned* wv = reinterpret_cast<const unsigned*>(&raw);
                unsigned ab[4];
#pragma unroll
                for (int k = 0; k < 4; ++k) ab[k] = wv[k] & 0x7fff7fffu;
                unsigned mxu = __vmaxu2(__vmaxu2(ab[0], ab[1]), __vmaxu2(ab[2], ab[3]));
                const H2 mx = as_h2<H2>(mxu);
                // one test per 8 elements; outliers are rare, their vectors take the branch (and pass 2
                // re-tests only those: bit u of has_out)
                if (THR && __hge2_mask(mx, thr2)) {
                    has_out |= 1u << (u < 31 ? u : 31);
#pragma unroll
                    for (int k = 0; k < 4; ++k) {
                        const unsigned om = __hge2_mask(as_h2<H2>(ab[k]), thr2);
                        // benign race: every writer stores 1. Skipping the store for columns the probe found
                        // (an L1 load of its flag first) measured slower at 1.8 and 7.3 outliers per row
                        // (8192^2: 79.8 -> 82.4, 81.2 -> 86.2 us), faster only at 29 (100.8 -> 96.0); so did
                        // zeroing the probe's columns in registers from a shared bitmap (81.2 -> 86.9 us)
                        if (om & 0xffffu) flags[i * N + 2 * k] = 1;
                        if (om >> 16) flags[i * N + 2 * k + 1] = 1;
                        ab[k] &= ~om;
                    }
                    mxu = __vmaxu2(__vmaxu2(ab[0], ab[1]), __vmaxu2(ab[2], ab[3]));
                }
                m2u = __vmaxu2(m2u, mxu);
            } else {
                const T* v = reinterpret_cast<const T*>(&raw);
#pragma unroll
                for (int j = 0; j < N; ++j) {
                    float x = fabsf(to_f<T>(v[j]));
                    if (THR && x >= thr) {
                        flags[i * N + j] = 1;  // benign race: every writer stores 1
                    } else {
                        m = mag_max(m, x);
                    }
                }
            }
            if (cached && u + 1 >= MAXV) break;
        }
        if constexpr (PACKED) {
            const H2 m2 = as_h2<H2>(m2u);
            m = mag_max(to_f<T>(m2.x), to_f<T>(m2.y));
        }
    } else {
        for (long long i = threadIdx.x; i < cols; i += THREADS) {
            float x = fabsf(to_f<T>(a[i]));
            if (THR && x >= thr) {
                flags[i] = 1;
            } else {
                m = mag_max(m, x);
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
    // scale is finite or +inf (absmax 0 or subnormal enough that 1/absmax overflows). Finite: |x * scale|
    // <= 127.0001 or NaN, and the int conversion gives NaN -> 0 -- no per-element test. +inf: the spec
    // codes every element 0 (0 * inf = NaN, inf -> 0); scale 0 does that.
    const float scale = isinf(s_scale) ? 0.0f : s_scale;
    if (VEC) {
        const uint4* av = reinterpret_cast<const uint4*>(a);
        [[maybe_unused]] H2 thr2;
        if constexpr (PACKED) thr2 = Pair<T>::splat(thr);
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
            if constexpr (PACKED) {
                if (THR && (!cached || ((has_out >> (u < 31 ? u : 31)) & 1u))) {  // outliers -> +0: code 0
                    unsigned* wv = reinterpret_cast<unsigned*>(&raw);
#pragma unroll
                    for (int k = 0; k < 4; ++k) wv[k] &= ~__hge2_mask(as_h2<H2>(wv[k] & 0x7fff7fffu), thr2);
                }
            }
            const T* v = reinterpret_cast<const T*>(&raw);
            signed char q[N];
#pragma unroll
            for (int j = 0; j < N; ++j) {
                float x = to_f<T>(v[j]);
                q[j] = (THR && !PACKED && fabsf(x) >= thr) ? (signed char)0 : q8_scaled(__fmul_rn(x, scale));
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
            out[i] = (THR && fabsf(x) >= thr) ? (signed char)0 : q8_scaled(__fmul_rn(x, scale));
        }
    }
    if (THR && ncand > 0) {  // ncand is the same in every thread: the barrier is reached by all or none
        __syncthreads();     // the row's codes are stored and visible to the block before these overwrite them
        if (threadIdx.x < ncand) out[my_col] = 0;
        for (int t = threadIdx.x + THREADS; t < ncand; t += THREADS) out[__ldg(cand_list + t)] = 0;
    }
}

// Outlier columns known before the row kernel runs: PROBE_ROWS rows spread evenly over A (the first
// included) are scanned; a column with an |a| >= thr there is marked in cand and appended once to the
// probe's list (atomics; the list is unordered). LLM.int8() outlier features are systematic (the same
// columns in most rows), so the probe finds nearly all of them and the row kernel zeroes them in each
// row while its codes are in L2 -- instead of a pass over all rows afterwards whose one-byte stores in
// rows x columns scattered sectors are each a DRAM read-modify-write (8192^2: 7.1 us). The probe's rows
// are read again from L2 by the row kernel. KBIT_INT8_PROBE=<rows> (read per call; 0 = no probe: every
// outlier column is then "late") for A/B runs and tests.
constexpr int PROBE_ROWS = 32, PROBE_THREADS = 256;

inline int probe_rows(long long rows, long long cols) {
    if (rows <= 1 || cols > 0x7fffffffLL) return 0;  // one row needs no column zeroing; list entries are int
    const char* v = getenv("KBIT_INT8_PROBE");
    const long long p = v ? atoll(v) : PROBE_ROWS;
    return (int)(p < rows ? (p < 0 ? 0 : p) : rows);
}

__device__ __forceinline__ void probe_mark(long long c, unsigned char* cand, int* n_cand, int* cand_list) {
    unsigned* w = reinterpret_cast<unsigned*>(cand + (c & ~3LL));
    const unsigned bit = 1u << (8 * (c & 3));
    if (!(atomicOr(w, bit) & bit)) cand_list[atomicAdd(n_cand, 1)] = (int)c;
}

template <typename T, bool VEC>
__global__ void __launch_bounds__(PROBE_THREADS) k_probe(const T* __restrict__ A, long long rows, long long cols,
                                                         float thr, int nprobe, unsigned char* cand, int* n_cand,
                                                         int* cand_list) {
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
                if (fabsf(to_f<T>(v[j])) >= thr) probe_mark(i * N + j, cand, n_cand, cand_list);
        }
    } else {
        for (long long i = blockIdx.x * (long long)PROBE_THREADS + threadIdx.x; i < cols; i += stride)
            if (fabsf(to_f<T>(a[i])) >= thr) probe_mark(i, cand, n_cand, cand_list);
    }
}

// An outlier column list on the device, ascending: LATE = false: every outlier column (flags | cand),
// its count in idx[cols] and the count of late columns (flagged, not probed) in idx[cols + 1];
// LATE = true: the late columns, their count in idx[cols]. One block; each thread owns IDX_PER
// consecutive flags, a block-wide prefix sum of the per-thread counts (warp shuffles, then the warp
// totals) gives each its write position. The host then reads the counts instead of running
// torch.nonzero's count + select passes.
constexpr int IDX_THREADS = 1024, IDX_PER = 16;
template <bool LATE>
__global__ void __launch_bounds__(IDX_THREADS) k_flag_index(const unsigned char* __restrict__ flags,
                                                            const unsigned char* __restrict__ cand, long long cols,
                                                            long long* __restrict__ idx,
                                                            volatile long long* host_counts = nullptr) {
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
            const uint4 wc = *reinterpret_cast<const uint4*>(cand + first);
            const unsigned char* f = reinterpret_cast<const unsigned char*>(&w);
            const unsigned char* fc = reinterpret_cast<const unsigned char*>(&wc);
#pragma unroll
            for (int k = 0; k < IDX_PER; ++k) {
                const bool in = first + k < cols, is_late = in && f[k] && !fc[k];
                if (LATE ? is_late : in && (f[k] | fc[k])) bits |= 1u << k;
                late += is_late;
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
    if (!LATE && late) atomicAdd(&s_late, late);
    __syncthreads();
    if (threadIdx.x == 0) {
        idx[cols] = s_base;
        if (!LATE) idx[cols + 1] = s_late;
        if (host_counts) {  // pinned host memory: read after a stream sync, no device->host copy to launch
            host_counts[0] = s_base;
            host_counts[1] = s_late;
        }
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
// process can A/B them (studies/bench/bench_int8.py --occ-ab).
inline bool tight_occupancy() {
    const char* v = getenv("KBIT_INT8_OCC");
    return !(v && v[0] == 'l');
}

template <typename T, int THREADS>
cudaError_t launch_vq(const void* A, long long rows, long long cols, float thr, int use_thr, signed char* codes,
                      float* stats, unsigned char* work_base, long long* index, long long* host_counts,
                      cudaStream_t s) {
    constexpr int N = Vec<T>::N;
    constexpr int TIGHT = 1536 / THREADS;
    const bool vec = (cols % N == 0) && ((reinterpret_cast<uintptr_t>(A) & 15) == 0) &&
                     ((reinterpret_cast<uintptr_t>(codes) & 7) == 0);
    const T* a = static_cast<const T*>(A);
    unsigned char *flags = nullptr, *cand = nullptr;
    int *n_cand = nullptr, *cand_list = nullptr;
    if (use_thr) {
        const OutlierWork w(work_base, cols);
        flags = w.flags;
        cand = w.cand;
        n_cand = w.n_cand;
        cand_list = w.cand_list;
        const int np = probe_rows(rows, cols);
        if (np > 0) {
            const long long work = vec ? cols / N : cols;
            long long gx = (work + PROBE_THREADS - 1) / PROBE_THREADS;
            gx = gx > 64 ? 64 : gx;
            const dim3 gp((unsigned)gx, (unsigned)np);
            if (vec) k_probe<T, true><<<gp, PROBE_THREADS, 0, s>>>(a, rows, cols, thr, np, cand, n_cand, cand_list);
            else k_probe<T, false><<<gp, PROBE_THREADS, 0, s>>>(a, rows, cols, thr, np, cand, n_cand, cand_list);
        }
    }
    const dim3 g((unsigned)rows);
    constexpr int MV = 4;
    const bool tight = tight_occupancy();
#define KBIT_VQ(V, TH, M, B) k_vectorwise_quant<T, V, TH, THREADS, M, B><<<g, THREADS, 0, s>>>(a, cols, thr, codes, stats, flags, n_cand, cand_list)
    if (vec) {
        if (use_thr) {
            if (tight) KBIT_VQ(true, true, MV, TIGHT);
            else KBIT_VQ(true, true, MV, 1);
        } else {
            if (tight) KBIT_VQ(true, false, MV, TIGHT);
            else KBIT_VQ(true, false, MV, 1);
        }
    } else {
        if (use_thr) KBIT_VQ(false, true, 1, 1);
        else KBIT_VQ(false, false, 1, 1);
    }
#undef KBIT_VQ
    cudaError_t e = cudaGetLastError();
    if (e != cudaSuccess || !use_thr) return e;
    k_flag_index<false><<<1, IDX_THREADS, 0, s>>>(flags, cand, cols, index, host_counts);
    return cudaGetLastError();
}

template <typename T>
cudaError_t vq_dispatch(const void* A, long long rows, long long cols, float thr, int use_thr, signed char* codes,
                        float* stats, unsigned char* flags, long long* index, long long* host_counts, cudaStream_t s) {
    // small rows: fewer threads per row so a block is not mostly idle
    const long long nvec = (cols + Vec<T>::N - 1) / Vec<T>::N;
    if (nvec <= 64) return launch_vq<T, 64>(A, rows, cols, thr, use_thr, codes, stats, flags, index, host_counts, s);
    if (nvec <= 128) return launch_vq<T, 128>(A, rows, cols, thr, use_thr, codes, stats, flags, index, host_counts, s);
    if (nvec <= 256) return launch_vq<T, 256>(A, rows, cols, thr, use_thr, codes, stats, flags, index, host_counts, s);
    return launch_vq<T, 512>(A, rows, cols, thr, use_thr, codes, stats, flags, index, host_counts, s);
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
        if (!(use_thr && x >= thr)) m = mag_max(m, x);
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
                                       long long* col_index, long long* host_counts, cudaStream_t stream) {
    if (rows <= 0 || cols <= 0) return cudaSuccess;
    if (use_thr && (col_flags == nullptr || col_index == nullptr)) return cudaErrorInvalidValue;
    if (use_thr) {  // flags, probe flags and the probe's count (its list needs no zeroing)
        cudaError_t e = cudaMemsetAsync(col_flags, 0, (size_t)OutlierWork::zeroed_bytes(cols), stream);
        if (e != cudaSuccess) return e;
    }
    switch (dtype) {
        case 0: return vq_dispatch<float>(A, rows, cols, thr, use_thr, codes, row_stats, col_flags, col_index, host_counts, stream);
        case 1: return vq_dispatch<__half>(A, rows, cols, thr, use_thr, codes, row_stats, col_flags, col_index, host_counts, stream);
        case 2: return vq_dispatch<__nv_bfloat16>(A, rows, cols, thr, use_thr, codes, row_stats, col_flags, col_index, host_counts, stream);
        default: return cudaErrorInvalidValue;
    }
}

cudaError_t kbit_int8_zero_late_cols(signed char* codes, long long rows, long long cols,
                                     const unsigned char* col_flags, long long* scratch, cudaStream_t stream) {
    if (rows <= 1 || cols <= 0) return cudaSuccess;
    k_flag_index<true><<<1, IDX_THREADS, 0, stream>>>(col_flags, OutlierWork(const_cast<unsigned char*>(col_flags), cols).cand,
                                                      cols, scratch);
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
