/* kbit-workbench: fused 4-bit dequantize + tensor-core GEMM with unscaled codebook lookups, M = 1..64 (family
 * "matmul", included by matmul.cu). API and numerics: kbit_matmul.h (kbit_gemm_4bit_lut).
 *
 * Why another GEMM: the rule-2 kernels (matmul.cu's GEMV, matmul_mma.cuh) round every weight as
 * dtype(table[c] * s), which costs a lookup, a multiply and a rounding per weight (5-6.5 instructions a weight
 * measured), several times the bandwidth floor's budget. Here a weight is the codebook entry alone, rounded to A's
 * dtype once per CTA, and the block scale multiplies the tensor core's partial sum of the block instead:
 *     out[m, n] = sum over blocks b of row n:  s[b] * (sum_{k in b} dtype(table[c_k]) * A[m, k])
 * Two codes (one byte) are one 32-bit A-fragment register, read from a 256-entry table of dtype pairs: per two
 * weights one byte permute (the byte into the table address) and one shared load. The table has 32 copies, entry e
 * of lane l at 256 e + 4 l bytes, so every lane reads its own bank: conflict-free for any codes. 64 KB per CTA.
 *
 * Layout: out^T[N, M] = W[N, K] . A^T[K, M], mma.sync m16n8k16, the weight as operand A (16 rows), the activations
 * as operand B (n8 = 8 activation rows; NT of them cover M <= 8 NT). k permutation (an mma sums its 16 positions
 * in any order, so A and B only have to agree): thread (g = lane / 4, t = lane % 4) supplies logical positions
 * {2t, 2t+1} and {2t+8, 2t+9} of k-step j, mapped to the chunk's elements 16t + 4j + {0, 1} and + {2, 3}: bytes
 * 8t + 2j and 8t + 2j + 1 of the row's 32 packed bytes. So one 64-element chunk is 4 k-steps, a thread reads 8
 * contiguous packed bytes of each of its rows (g, g + 8) and 16 contiguous activations of each of its B rows, and
 * a chunk lies in one quantization block (blocksize >= 64, K % 64 == 0): the 4 steps go into a zeroed partial,
 * then acc = fma(s, partial, acc).
 *
 * Work: a task is 128 weight rows (8 warps x m16) x one K range (split); persistent CTAs loop over tasks, so the
 * pair table is built once per CTA. Codes and scale ingredients of the next U chunks are in flight (registers)
 * while U chunks are computed. Splits > 1: float32 partials, the last CTA of a row group (atomic counter, reset by
 * it) sums them in split order, adds the bias and stores; deterministic.
 */
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <stdint.h>

namespace lut4 {

constexpr int kWarps = 8;
constexpr int kThreads = kWarps * 32;
constexpr int kRows = kWarps * 16;               // weight rows per task
constexpr int kChunk = 64;                       // k per chunk (4 mma k-steps)
constexpr int kPairWords = 256 * 64;             // the pair table: 256 entries x 64 words (32 used: one per lane)
constexpr size_t kTableBytes = kPairWords * 4 + 256 * 4;  // + the nested absmax code table

struct Args {
    const void* A;
    const uint8_t* B;
    const float* absmax;  // per block, or per 256 blocks when a8 != nullptr
    const uint8_t* a8;    // nested codes (or nullptr)
    const float* code2;   // 256-entry nested table
    const float* off;     // nested offset (device scalar)
    const float* table;   // 16-entry codebook
    const void* bias;
    void* out;
    float* partial;       // splits * M * N float32 (splits > 1)
    int* counters;        // one per row group, zero on entry, left zero on exit
    int M;
    long long N, K;
    int bs_shift;
    int splits;
    int chunks_per_split;
    long long tasks;      // row groups x splits
    int tiled;            // B in the tiled layout (tile_codes below) instead of bitsandbytes' rows
};

template <int DT> struct Op;
template <> struct Op<KBIT_BF16> {
    typedef __nv_bfloat16 t;
    __device__ static __forceinline__ uint32_t pack(float lo, float hi) {
        __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
        return *reinterpret_cast<uint32_t*>(&v);
    }
    __device__ static __forceinline__ void mma(float* c, const uint32_t* a, uint32_t b0, uint32_t b1) {
        asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
                     "{%0,%1,%2,%3};\n"
                     : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                     : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
    }
    __device__ static __forceinline__ float ld(const t* p, long long i) { return __bfloat162float(p[i]); }
    __device__ static __forceinline__ void st(t* p, long long i, float v) { p[i] = __float2bfloat16_rn(v); }
};
template <> struct Op<KBIT_F16> {
    typedef __half t;
    __device__ static __forceinline__ uint32_t pack(float lo, float hi) {
        __half2 v = __floats2half2_rn(lo, hi);
        return *reinterpret_cast<uint32_t*>(&v);
    }
    __device__ static __forceinline__ void mma(float* c, const uint32_t* a, uint32_t b0, uint32_t b1) {
        asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
                     "{%0,%1,%2,%3};\n"
                     : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                     : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
    }
    __device__ static __forceinline__ float ld(const t* p, long long i) { return __half2float(p[i]); }
    __device__ static __forceinline__ void st(t* p, long long i, float v) { p[i] = __float2half_rn(v); }
};

template <int BYTES>
__device__ __forceinline__ void cp_async(void* smem, const void* gmem) {
    const unsigned d = (unsigned)__cvta_generic_to_shared(smem);
    if constexpr (BYTES == 16)
        asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(d), "l"(gmem));
    else
        asm volatile("cp.async.ca.shared.global [%0], [%1], %2;\n" ::"r"(d), "l"(gmem), "n"(BYTES));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n"); }
template <int N>
__device__ __forceinline__ void cp_async_wait() { asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory"); }

/* One pipeline stage of one warp: each lane's 16 code bytes (rows g and g + 8, 8 each), then each lane's scale item:
 * lane 4g + t copies item t of its quad -- the float absmax (nested: of the 256-block group) of row g (t = 0) and
 * g + 8 (t = 1), and, nested, the aligned 32-bit word holding the uint8 code of row g (t = 2) and g + 8 (t = 3) --
 * so a lane reads its quad's four items in one 16-byte load. A lane reads only its own codes, and its quad's items
 * after a __syncwarp. */
constexpr int kStageBytes = 32 * 16 + 32 * 4;

/* Per task and thread: what it copies and reads. */
template <int NT> struct Feed {
    const uint8_t* w[2];   // tiled: w[0], this lane's 16 bytes at chunk 0; else rows g, g + 8 at byte 8t
    bool ok[2];            // rows g, g + 8 < N
    uint32_t f_lo[2];      // low 32 bits of n K of rows g, g + 8: which byte of the nested code's word is the code
    long long f_item;      // n K of this lane's item row
    bool item_ok;          // the item exists (row < N; t >= 2 only when nested)
    const uint8_t* x[NT];  // activation row 8 nt + g at element 16t
    bool xok[NT];          // activation row < M
};

template <int NT, bool TL>
__device__ __forceinline__ void stage_chunk(uint8_t* st, const Args& p, const Feed<NT>& F, int cc, int c_end, int lane) {
    if (cc >= c_end) return;
    if constexpr (TL) {
        if (F.ok[0]) cp_async<16>(st + 16 * lane, F.w[0] + 512 * (long long)cc);
    } else {
        if (F.ok[0]) cp_async<8>(st + 16 * lane, F.w[0] + 32 * (long long)cc);
        if (F.ok[1]) cp_async<8>(st + 16 * lane + 8, F.w[1] + 32 * (long long)cc);
    }
    if (F.item_ok) {
        const long long b = (F.f_item + (long long)cc * kChunk) >> p.bs_shift;
        const void* src;
        if ((lane & 2) == 0) src = p.absmax + (p.a8 != nullptr ? b >> 8 : b);
        else src = reinterpret_cast<const void*>((uintptr_t)(p.a8 + b) & ~(uintptr_t)3);  // never crosses a page
        cp_async<4>(st + 512 + 4 * lane, src);
    }
}

template <int NT>
__device__ __forceinline__ void load_x(uint4 (&xv)[NT][2], const Feed<NT>& F, int cc) {
#pragma unroll
    for (int nt = 0; nt < NT; ++nt) {
        const uint4* xp = reinterpret_cast<const uint4*>(F.x[nt] + 128 * (long long)cc);
        xv[nt][0] = F.xok[nt] ? __ldg(xp) : make_uint4(0u, 0u, 0u, 0u);
        xv[nt][1] = F.xok[nt] ? __ldg(xp + 1) : make_uint4(0u, 0u, 0u, 0u);
    }
}

/* Chunk cc from its stage into acc. */
template <int DT, int NT>
__device__ __forceinline__ void compute_chunk(float (&acc)[NT][4], const uint8_t* st, const uint4 (&xv)[NT][2],
                                              const Args& p, const Feed<NT>& F, int cc, int lane, const char* tab,
                                              const float* code2, float off) {
    typedef Op<DT> O;
    const uint4 cw = *reinterpret_cast<const uint4*>(st + 16 * lane);
    const uint4 it = *reinterpret_cast<const uint4*>(st + 512 + 16 * (lane >> 2));
    float s[2];
#pragma unroll
    for (int r = 0; r < 2; ++r) {
        const float am = __uint_as_float(r ? it.y : it.x);
        float v = am;
        if (p.a8 != nullptr) {  // rule 1
            const uint32_t sh = 8u * (((F.f_lo[r] + 64u * (uint32_t)cc) >> p.bs_shift) & 3u);
            v = __fadd_rn(__fmul_rn(code2[((r ? it.w : it.z) >> sh) & 0xffu], am), off);
        }
        s[r] = F.ok[r] ? v : 0.0f;  // rows past N: zeros (never stored)
    }
    const uint32_t lane4 = 4u * (uint32_t)lane;
    float part[NT][4];
#pragma unroll
    for (int nt = 0; nt < NT; ++nt) part[nt][0] = part[nt][1] = part[nt][2] = part[nt][3] = 0.0f;
#pragma unroll
    for (int j = 0; j < 4; ++j) {
        // bytes 2j, 2j + 1 of the row's 8: word j / 2, byte pair (2j) % 4; the byte goes into address byte 1
        const uint32_t wlo = j < 2 ? cw.x : cw.y, whi = j < 2 ? cw.z : cw.w;
        const uint32_t sel0 = 0x6604u | ((uint32_t)((2 * j) & 3) << 4), sel1 = sel0 + 0x10u;
        uint32_t a[4];
        a[0] = *reinterpret_cast<const uint32_t*>(tab + __byte_perm(wlo, lane4, sel0));
        a[1] = *reinterpret_cast<const uint32_t*>(tab + __byte_perm(whi, lane4, sel0));
        a[2] = *reinterpret_cast<const uint32_t*>(tab + __byte_perm(wlo, lane4, sel1));
        a[3] = *reinterpret_cast<const uint32_t*>(tab + __byte_perm(whi, lane4, sel1));
#pragma unroll
        for (int nt = 0; nt < NT; ++nt) {
            const uint4& x = xv[nt][j >> 1];
            O::mma(part[nt], a, (j & 1) ? x.z : x.x, (j & 1) ? x.w : x.y);
        }
    }
#pragma unroll
    for (int nt = 0; nt < NT; ++nt) {
        acc[nt][0] = __fmaf_rn(s[0], part[nt][0], acc[nt][0]);
        acc[nt][1] = __fmaf_rn(s[0], part[nt][1], acc[nt][1]);
        acc[nt][2] = __fmaf_rn(s[1], part[nt][2], acc[nt][2]);
        acc[nt][3] = __fmaf_rn(s[1], part[nt][3], acc[nt][3]);
    }
}

template <int DT, int NT, int S, int MINB, bool TL>
__global__ void __launch_bounds__(kThreads, MINB) gemm_lut_kernel(const Args p) {
    typedef Op<DT> O;
    typedef typename O::t T;
    extern __shared__ __align__(16) uint32_t lut_smem[];
    uint32_t* pair = lut_smem;
    float* code2 = reinterpret_cast<float*>(lut_smem + kPairWords);
    __shared__ int is_last;

    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int g = lane >> 2, t = lane & 3;
    const bool nested = p.a8 != nullptr;
    for (int i = tid; i < 256 * 32; i += kThreads) {
        const int e = i >> 5;  // entry e = one byte: high nibble the first (lower-k) element, in the low half
        pair[e * 64 + (i & 31)] = O::pack(__ldg(p.table + (e >> 4)), __ldg(p.table + (e & 15)));
    }
    if (nested)
        for (int i = tid; i < 256; i += kThreads) code2[i] = __ldg(p.code2 + i);
    const float off = nested ? __ldg(p.off) : 0.0f;
    __syncthreads();
    const char* tab = reinterpret_cast<const char*>(pair);
    uint8_t* stages = reinterpret_cast<uint8_t*>(lut_smem + kPairWords + 256) + warp * S * kStageBytes;

    const int chunks = (int)(p.K / kChunk);
    const long long MN = (long long)p.M * p.N;
    const T* bias = reinterpret_cast<const T*>(p.bias);
    T* out = reinterpret_cast<T*>(p.out);

    for (long long task = blockIdx.x; task < p.tasks; task += gridDim.x) {
        const long long rg = task / p.splits;
        const int z = (int)(task - rg * p.splits);
        const int c_begin = z * p.chunks_per_split;
        const int c_end = c_begin + p.chunks_per_split < chunks ? c_begin + p.chunks_per_split : chunks;
        Feed<NT> F;
#pragma unroll
        for (int r = 0; r < 2; ++r) {
            const long long n = rg * kRows + warp * 16 + g + 8 * r;
            F.ok[r] = n < p.N;
            const long long nn = F.ok[r] ? n : 0;
            F.w[r] = p.B + nn * (p.K >> 1) + 8 * t;
            F.f_lo[r] = (uint32_t)(nn * p.K);
        }
        if constexpr (TL) F.w[0] = p.B + ((rg * kWarps + warp) * (long long)chunks * 32 + lane) * 16;
        {
            const long long n = rg * kRows + warp * 16 + g + 8 * (t & 1);
            F.item_ok = n < p.N && (t < 2 || nested);
            F.f_item = (n < p.N ? n : 0) * p.K;
        }
#pragma unroll
        for (int nt = 0; nt < NT; ++nt) {
            const int m = 8 * nt + g;
            F.xok[nt] = m < p.M;
            F.x[nt] = reinterpret_cast<const uint8_t*>(p.A) + 2 * ((long long)(F.xok[nt] ? m : 0) * p.K + 16 * t);
        }

        float acc[NT][4];
#pragma unroll
        for (int nt = 0; nt < NT; ++nt) acc[nt][0] = acc[nt][1] = acc[nt][2] = acc[nt][3] = 0.0f;
        // S-stage cp.async ring per warp: S - 1 chunks of codes and scale items in flight, no registers held
#pragma unroll
        for (int i = 0; i < S - 1; ++i) {
            stage_chunk<NT, TL>(stages + i * kStageBytes, p, F, c_begin + i, c_end, lane);
            cp_async_commit();
        }
        constexpr bool XP = NT <= 2;  // activations one chunk ahead in registers (small M only: registers)
        uint4 xn[NT][2];
        if (XP && c_begin < c_end) load_x<NT>(xn, F, c_begin);
        int slot = 0;
        for (int c = c_begin; c < c_end; ++c) {
            cp_async_wait<S - 2>();  // this lane's copies of chunk c have landed
            __syncwarp();            // and every lane's; every lane is done with chunk c - 1, refilled below
            stage_chunk<NT, TL>(stages + (slot == 0 ? S - 1 : slot - 1) * kStageBytes, p, F, c + S - 1, c_end, lane);
            cp_async_commit();
            uint4 xv[NT][2];
            if constexpr (XP) {
#pragma unroll
                for (int nt = 0; nt < NT; ++nt) xv[nt][0] = xn[nt][0], xv[nt][1] = xn[nt][1];
                if (c + 1 < c_end) load_x<NT>(xn, F, c + 1);
            } else {
                load_x<NT>(xv, F, c);
            }
            compute_chunk<DT, NT>(acc, stages + slot * kStageBytes, xv, p, F, c, lane, tab, code2, off);
            slot = slot == S - 1 ? 0 : slot + 1;
        }
        cp_async_wait<0>();
        __syncwarp();  // the next task refills the stages

        // C fragment: acc[nt][e] is out[m = 8 nt + 2t + (e & 1)][n = row g + 8 (e >> 1)]
        if (p.splits > 1) {
            float* part = p.partial + (long long)z * MN;
#pragma unroll
            for (int nt = 0; nt < NT; ++nt)
#pragma unroll
                for (int e = 0; e < 4; ++e) {
                    const int m = 8 * nt + 2 * t + (e & 1);
                    const long long n = rg * kRows + warp * 16 + g + 8 * (e >> 1);
                    if (m < p.M && n < p.N) __stcg(part + (long long)m * p.N + n, acc[nt][e]);
                }
            __threadfence();
            __syncthreads();
            if (tid == 0) {
                int* ctr = p.counters + rg;
                const int done = atomicAdd(ctr, 1);
                is_last = done == p.splits - 1;
                if (is_last) *ctr = 0;  // ready for the next call
            }
            __syncthreads();
            if (!is_last) continue;
            __threadfence();
        }
#pragma unroll
        for (int nt = 0; nt < NT; ++nt)
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                const int m = 8 * nt + 2 * t + (e & 1);
                const long long n = rg * kRows + warp * 16 + g + 8 * (e >> 1);
                if (m >= p.M || n >= p.N) continue;
                float y = acc[nt][e];
                if (p.splits > 1) {  // fixed order: split 0, 1, 2, ...
                    y = 0.0f;
                    for (int zz = 0; zz < p.splits; ++zz)
                        y = __fadd_rn(y, __ldcg(p.partial + (long long)zz * MN + (long long)m * p.N + n));
                }
                if (bias != nullptr) y = __fadd_rn(y, O::ld(bias, n));
                O::st(out, (long long)m * p.N + n, y);
            }
    }
}

/* n8 activation tiles for M rows (M <= 8 NT). */
inline int tile_n8(int M) { return M <= 8 ? 1 : M <= 16 ? 2 : M <= 32 ? 4 : 8; }

/* (stages S, resident CTAs per SM the registers are budgeted for) of each variant; shared memory: the 65 KB table
 * + 8 warps x S x 640 bytes, so 2 CTAs per SM up to S = 11. Variant 0 is the default; kbit_gemm_lut_tuning picks
 * another for the A/B (bf16 only; same results: neither changes the accumulation order). */
inline int g_lut_variant = 0;

template <int S> constexpr size_t smem_bytes() { return kTableBytes + (size_t)kWarps * S * kStageBytes; }

template <int DT, int NT, int S, int MINB, bool TL>
cudaError_t launch_k(const Args& p, cudaStream_t stream, int* ctas_per_sm) {
    auto kern = gemm_lut_kernel<DT, NT, S, MINB, TL>;
    constexpr size_t smem = smem_bytes<S>();
    static bool smem_set[64] = {};  // per device: the opt-in above 48 KB of dynamic shared memory
    int dev = 0;
    cudaGetDevice(&dev);
    if (dev < 64 && !smem_set[dev]) {
        const cudaError_t e = cudaFuncSetAttribute(kern, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem);
        if (e != cudaSuccess) return e;
        smem_set[dev] = true;
    }
    int occ = 0;
    cudaError_t e = cudaOccupancyMaxActiveBlocksPerMultiprocessor(&occ, kern, kThreads, smem);
    if (e != cudaSuccess) return e;
    if (ctas_per_sm != nullptr) {
        *ctas_per_sm = occ;
        return cudaSuccess;
    }
    int sms = 0;
    e = cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev);
    if (e != cudaSuccess) return e;
    const long long slots = (long long)(occ > 0 ? occ : 1) * sms;
    const unsigned grid = (unsigned)(p.tasks < slots ? p.tasks : slots);
    kern<<<grid, kThreads, smem, stream>>>(p);
    return cudaGetLastError();
}

template <int DT, int NT, bool TL>
cudaError_t launch_tl(const Args& p, cudaStream_t stream, int* ctas_per_sm) {
    constexpr int B0 = NT <= 4 ? 2 : 1;
    if constexpr (DT == KBIT_BF16) {
        if (g_lut_variant == 1) return launch_k<DT, NT, 4, B0, TL>(p, stream, ctas_per_sm);
    }
    return launch_k<DT, NT, 8, B0, TL>(p, stream, ctas_per_sm);
}

template <int DT, int NT>
cudaError_t launch_nt(const Args& p, cudaStream_t stream, int* ctas_per_sm) {
    return p.tiled ? launch_tl<DT, NT, true>(p, stream, ctas_per_sm) : launch_tl<DT, NT, false>(p, stream, ctas_per_sm);
}

template <int DT>
cudaError_t launch_dt(const Args& p, cudaStream_t stream, int* ctas_per_sm) {
    switch (tile_n8(p.M)) {
        case 1: return launch_nt<DT, 1>(p, stream, ctas_per_sm);
        case 2: return launch_nt<DT, 2>(p, stream, ctas_per_sm);
        case 4: return launch_nt<DT, 4>(p, stream, ctas_per_sm);
        default: return launch_nt<DT, 8>(p, stream, ctas_per_sm);
    }
}

}  // namespace lut4
