/* kbit-workbench: fused 4-bit dequantize + tensor-core GEMM for M = 5..~1024 (family "matmul", included by
 * matmul.cu). API and numerics: kbit_matmul.h (kbit_gemm_4bit_mma).
 *
 * The product is computed transposed, out^T[N, M] = W[N, K] . X^T[K, M], so the weight is the mma's A operand
 * (m16 = 16 weight rows) and the activations its B operand (n8 = 8 activation rows): mma.sync m16n8k16,
 * bf16/fp16 inputs, float32 accumulators.
 *
 * k permutation: an mma sums over its 16 k positions in any order, so logical k positions may map to any real k
 * as long as A and B use the same map. Thread (g = lane / 4, t = lane % 4) supplies logical positions
 * {2t, 2t+1, 2t+8, 2t+9} of k-step j; they are mapped to the real elements k0 + 32t + 4j + {0, 1, 2, 3}. So over
 * one 128-wide chunk (8 steps) a thread needs exactly 32 consecutive elements of each of its weight rows: one
 * 16-byte load of packed codes per row, one quantization block per row (blocksize >= 32, chunks 32-aligned in the
 * flat weight since K % 32 == 0), one scale per row and chunk.
 *
 * CTA: 4 warps stacked along N, each RT m16 tiles (RT = 2 by default: 32 weight rows); the CTA covers 64 RT weight
 * rows x 8*TM activation rows. Each thread reads its own packed codes (one 16-byte load per row and chunk) and
 * scale ingredients straight into registers, one and two chunks ahead (WR; staging them in shared memory by
 * cp.async, the other variant, cost more L1 wavefronts than the rest of the kernel: 1.38x the time at M = 16). The
 * activations, shared by the CTA, go through a 3-stage cp.async pipeline in fragment order, two 128-wide chunks in
 * flight.
 * Weights are dequantized into the mma fragment layout: code -> shared table -> float32 product with the block
 * scale -> rounded once to A's dtype (rule 2, bit for bit).
 * Split-K (grid.z): each split writes float32 partials; the CTA that finishes a tile last (an atomic counter per
 * tile, reset by that CTA) sums the partials in split order 0, 1, ... -- deterministic -- and adds the bias.
 */
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <stdint.h>

namespace mma4 {

constexpr int kWarps = 4;                        // warps per CTA, stacked along N
// RT (template): m16 weight tiles per warp, 1 or 2; a CTA covers kWarps * RT * 16 weight rows
__host__ __device__ constexpr int rows_per_cta(int RT) { return kWarps * RT * 16; }
constexpr int kChunk = 128;                      // k per pipeline step; a thread reads 32 codes of each row
constexpr int kThreads = kWarps * 32;
static_assert(kWarps == 4, "the activation pieces (make_feed): warp w stages the k offset 8 w of each lane's 32");

template <int DT> struct Frag;
template <> struct Frag<KBIT_BF16> {
    typedef __nv_bfloat16 t;
    __device__ static __forceinline__ uint32_t pack(float lo, float hi) {  // round each once, to nearest even
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
template <> struct Frag<KBIT_F16> {
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

/* The operands and state of a fused 4-bit GEMM, shared by this kernel and the unscaled-lookup one (matmul_lut.cuh). */
struct Operands {
    const void* A;
    const uint8_t* B;
    const float* absmax;     // per block, or per 256 blocks when a8 != nullptr
    const uint8_t* a8;       // nested codes (or nullptr)
    const float* code2;      // 256-entry nested table
    const float* off;        // nested offset (device scalar)
    const float* table;      // 16-entry codebook
    const void* bias;
    void* out;
    float* partial;          // splits * M * N float32 (splits > 1)
    int* counters;           // one per output tile, zero on entry, left zero on exit
    int M;
    long long N, K;
    int bs_shift;            // log2(blocksize)
};

struct Args : Operands {
    int chunks_per_split;
    int lookup;              // kLookup* (codebook lookup variant)
};

__device__ __forceinline__ void cp_async16(void* smem, const void* gmem, bool valid) {
    const unsigned s = (unsigned)__cvta_generic_to_shared(smem);
    const int n = valid ? 16 : 0;  // 0: zero-fill (rows past M, k past K)
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(s), "l"(gmem), "r"(n));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n"); }
template <int N>
__device__ __forceinline__ void cp_async_wait() { asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory"); }

/* One pipeline stage in shared memory: the activation tile in fragment order; unless WR (weights in registers),
 * also the CTA's weight rows x 64 packed bytes (row-major, so a warp's 16-byte reads of 8 rows x 4 threads are 512
 * contiguous bytes) and each thread's own scale ingredients for its rows (the float absmax -- nested: the float32
 * absmax of the group -- and, nested, the aligned 32-bit word holding the uint8 code). */
template <int TM, int RT, bool WR> struct Stage {
    uint4 x[TM * 128];
    uint4 w[WR ? 1 : rows_per_cta(RT) * 4];
    float amax[WR ? 1 : 2 * RT][kThreads];
    uint32_t q8w[WR ? 1 : 2 * RT][kThreads];
};

__device__ __forceinline__ void cp_async4(void* smem, const void* gmem, bool valid) {
    const unsigned s = (unsigned)__cvta_generic_to_shared(smem);
    const int n = valid ? 4 : 0;
    asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;\n" ::"r"(s), "l"(gmem), "r"(n));
}

/* Where this thread's copies come from, set once per CTA (chunk c adds c * kChunk along k):
 *   weight piece i < 2 RT (staged variant): row n0 + tid / 4 + 32 i, k = 32 (tid % 4), 16 bytes: w + i * 16 K bytes;
 *   activation piece j < TM: row m0 + 8 j + lane / 4, k = 32 (lane % 4) + 8 warp, 16 bytes in fragment order
 *   (stage slot tid + 128 j): x + j * 16 K bytes;
 *   scale slot q < 2 RT (this thread's rows, slot_row): flat weight index f + row_off(q) * K, k = 32 (tid % 4).
 * So a chunk's addresses are a few adds: the bounds are masks of valid rows, and one k test per chunk (every
 * copy of a thread starts at k0 + 32 (tid % 4), and K % 32 == 0). Invalid copies read nothing and zero-fill. */
struct Feed {
    const uint8_t* w;
    const uint8_t* x;
    long long f;
    unsigned wok, xok, sok;  // valid-row masks: bit i, j, q
};

/* The row (within the CTA) of weight slot q of thread (warp, g): tile q/2, row g or g+8. */
template <int RT>
__device__ __forceinline__ int slot_row(int warp, int q, int g) {
    return warp * RT * 16 + 16 * (q >> 1) + 8 * (q & 1) + g;
}
__device__ __forceinline__ constexpr int row_off(int q) { return 16 * (q >> 1) + 8 * (q & 1); }

template <int TM, int RT>
__device__ __forceinline__ Feed make_feed(const Args& p, int m0, long long n0, int warp, int g) {
    const int tid = threadIdx.x, kt = 32 * (tid & 3);
    Feed F;
    const long long wrow = n0 + (tid >> 2);
    F.w = p.B + ((wrow * p.K + kt) >> 1);
    const int xrow = m0 + (tid & 31) / 4;
    F.x = reinterpret_cast<const uint8_t*>(p.A) + 2 * ((long long)xrow * p.K + kt + 8 * warp);
    const long long srow = n0 + slot_row<RT>(warp, 0, g);
    F.f = srow * p.K + kt;
    F.wok = F.xok = F.sok = 0;
#pragma unroll
    for (int i = 0; i < 2 * RT; ++i) F.wok |= (unsigned)(wrow + 32 * i < p.N) << i;
#pragma unroll
    for (int j = 0; j < TM; ++j) F.xok |= (unsigned)(xrow + 8 * j < p.M) << j;
#pragma unroll
    for (int q = 0; q < 2 * RT; ++q) F.sok |= (unsigned)(srow + row_off(q) < p.N) << q;
    // kept in registers: otherwise the compiler recomputes them from the kernel arguments for every chunk
    asm volatile("" : "+l"(F.w), "+l"(F.x), "+l"(F.f), "+r"(F.wok), "+r"(F.xok), "+r"(F.sok));
    return F;
}

/* Issue the copies of chunk c into a stage: TM x 16 bytes of activations and, unless WR, 2 RT x 16 bytes of
 * weights (consecutive threads on consecutive 16 bytes of a row) and this thread's scale ingredients (the float
 * absmax -- nested: the float32 absmax of the group -- and, nested, the aligned 32-bit word holding the code). */
template <int TM, int RT, bool WR>
__device__ __forceinline__ void stage_chunk(Stage<TM, RT, WR>& st, const Args& p, const Feed& F, int c) {
    const int tid = threadIdx.x;
    const long long k0 = (long long)c * kChunk;
    const bool kv = k0 + 32 * (tid & 3) < p.K;
    const long long rows32 = 16 * p.K;  // bytes of 32 packed weight rows, and of 8 activation rows
#pragma unroll
    for (int j = 0; j < TM; ++j) {
        const bool ok = kv && ((F.xok >> j) & 1);
        cp_async16(st.x + tid + kThreads * j, ok ? F.x + j * rows32 + 2 * k0 : p.B, ok);
    }
    if constexpr (!WR) {
#pragma unroll
        for (int i = 0; i < 2 * RT; ++i) {
            const bool ok = kv && ((F.wok >> i) & 1);
            cp_async16(st.w + tid + kThreads * i, ok ? F.w + i * rows32 + (k0 >> 1) : p.B, ok);
        }
#pragma unroll
        for (int q = 0; q < 2 * RT; ++q) {
            const bool ok = kv && ((F.sok >> q) & 1);
            const long long b = ok ? (F.f + row_off(q) * p.K + k0) >> p.bs_shift : 0;
            if (p.a8 != nullptr) {
                cp_async4(&st.amax[q][tid], p.absmax + (b >> 8), ok);
                // the aligned word holding byte b: never crosses a page, so never leaves mapped memory
                const uintptr_t word = (uintptr_t)(p.a8 + b) & ~(uintptr_t)3;
                cp_async4(&st.q8w[q][tid], reinterpret_cast<const void*>(word), ok);
            } else {
                cp_async4(&st.amax[q][tid], p.absmax + b, ok);
            }
        }
    }
}

/* WR: this thread's own codes and scale ingredients, read straight into registers (the k permutation gives a
 * thread one 16-byte load per weight row and chunk; staging them in shared memory cost more L1 wavefronts than the
 * tensor cores' work: reports/matmul-h200/gemm_tiling_ab_h200.md). Codes one chunk ahead; the scale ingredients
 * two, since the nested code's table read waits on a scattered byte load (ncu_gemm_source_top_m16_0f0ddca.txt). */
template <int RT> struct RegScales {
    float amax[2 * RT];
    uint32_t q8[2 * RT];
};
template <int RT> struct RegChunk {
    uint4 w[2 * RT];
    RegScales<RT> s;
};
__device__ __forceinline__ uint4 ld_stream16(const uint8_t* p) {  // read once: no L1 allocation
    uint4 v;
    asm volatile("ld.global.nc.L1::no_allocate.v4.u32 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w) : "l"(p));
    return v;
}
template <int RT>
__device__ __forceinline__ void load_codes(uint4* w, const Args& p, const Feed& F, int c) {
    const long long k0 = (long long)c * kChunk;
    const bool kv = k0 + 32 * (threadIdx.x & 3) < p.K;
#pragma unroll
    for (int q = 0; q < 2 * RT; ++q) {
        const bool ok = kv && ((F.sok >> q) & 1);
        w[q] = ok ? ld_stream16(p.B + ((F.f + row_off(q) * p.K + k0) >> 1)) : make_uint4(0u, 0u, 0u, 0u);
    }
}
template <int RT>
__device__ __forceinline__ void load_scales(RegScales<RT>& r, const Args& p, const Feed& F, int c) {
    const long long k0 = (long long)c * kChunk;
    const bool kv = k0 + 32 * (threadIdx.x & 3) < p.K;
#pragma unroll
    for (int q = 0; q < 2 * RT; ++q) {
        const bool ok = kv && ((F.sok >> q) & 1);
        const long long b = (F.f + row_off(q) * p.K + k0) >> p.bs_shift;
        r.amax[q] = ok ? __ldg(p.absmax + (p.a8 != nullptr ? b >> 8 : b)) : 0.0f;
        r.q8[q] = ok && p.a8 != nullptr ? (uint32_t)__ldg(p.a8 + b) : 0u;
    }
}

/* Codebook lookup, three ways (template LK; which is fastest is measured: reports/matmul-h200):
 *   kLookupShared  (0): a 16-float table in shared memory, one 32-bit load per code (lanes share the 16 words);
 *   kLookupPerLane (1): 32 copies, tab[code][lane], so every lane reads its own bank and no word is shared;
 *   kLookupPair    (3): 256 float pairs indexed by a whole byte (two codes): one 64-bit load per two codes.
 * Each returns the float32 table values of the 4 codes e0..e3 of half h of a 32-bit word of packed codes
 * (half h = bytes 2h, 2h+1; e0 = high nibble of byte 2h). */
constexpr int kLookupShared = 0, kLookupPerLane = 1, kLookupPair = 3;
constexpr int kLookupNone = 9;  // diagnostic only, wrong values: the code's bits as a float, no table read

template <int LK> struct Tables { float one[16]; };  // each variant holds only its own table (shared memory)
template <> struct Tables<kLookupPerLane> { float per_lane[16][32]; };
template <> struct Tables<kLookupPair> { float2 pair[256]; };

/* Byte offsets of the 8 codes of a word into a float table: hi4[b] = 4 * high nibble of byte b, lo4[b] = 4 * low
 * nibble (two shifts and masks per 8 codes; a byte then costs one PRMT to extract). */
struct CodeOffsets {
    uint32_t hi4, lo4, word;
};
__device__ __forceinline__ CodeOffsets code_offsets(uint32_t w) {
    return {(w >> 2) & 0x3c3c3c3cu, (w << 2) & 0x3c3c3c3cu, w};
}
__device__ __forceinline__ uint32_t byte_of(uint32_t v, int byte) { return __byte_perm(v, 0u, 0x4440u | byte); }

template <int LK>
__device__ __forceinline__ void lookup4(float* v, const CodeOffsets& c, int h, const Tables<LK>& T, int lane) {
    const int b0 = 2 * h, b1 = 2 * h + 1;
    if constexpr (LK == kLookupNone) {
        v[0] = __uint_as_float(0x3f800000u | (byte_of(c.hi4, b0) << 15));
        v[1] = __uint_as_float(0x3f800000u | (byte_of(c.lo4, b0) << 15));
        v[2] = __uint_as_float(0x3f800000u | (byte_of(c.hi4, b1) << 15));
        v[3] = __uint_as_float(0x3f800000u | (byte_of(c.lo4, b1) << 15));
    } else if constexpr (LK == kLookupPair) {
        const float2 p0 = T.pair[byte_of(c.word, b0)], p1 = T.pair[byte_of(c.word, b1)];
        v[0] = p0.x; v[1] = p0.y; v[2] = p1.x; v[3] = p1.y;
    } else if constexpr (LK == kLookupPerLane) {
        const char* base = reinterpret_cast<const char*>(&T.per_lane[0][lane]);  // + code * 128 bytes
        v[0] = *reinterpret_cast<const float*>(base + (byte_of(c.hi4, b0) << 5));
        v[1] = *reinterpret_cast<const float*>(base + (byte_of(c.lo4, b0) << 5));
        v[2] = *reinterpret_cast<const float*>(base + (byte_of(c.hi4, b1) << 5));
        v[3] = *reinterpret_cast<const float*>(base + (byte_of(c.lo4, b1) << 5));
    } else {
        const char* base = reinterpret_cast<const char*>(T.one);
        v[0] = *reinterpret_cast<const float*>(base + byte_of(c.hi4, b0));
        v[1] = *reinterpret_cast<const float*>(base + byte_of(c.lo4, b0));
        v[2] = *reinterpret_cast<const float*>(base + byte_of(c.hi4, b1));
        v[3] = *reinterpret_cast<const float*>(base + byte_of(c.lo4, b1));
    }
}

/* A fragment of k-step j from the codes of row g (lo) and row g+8 (hi), half h = j % 2. Registers:
 * a0 = row g (e0, e1), a1 = row g+8 (e0, e1), a2 = row g (e2, e3), a3 = row g+8 (e2, e3).
 * Each weight: float32 product with its block scale, rounded once to the dtype (rule 2). */
template <int DT, int LK>
__device__ __forceinline__ void dequant_a(uint32_t* a, const CodeOffsets& lo, const CodeOffsets& hi, int h, float s_lo,
                                          float s_hi, const Tables<LK>& T, int lane) {
    typedef Frag<DT> F;
    float l[4], u[4];
    lookup4<LK>(l, lo, h, T, lane);
    lookup4<LK>(u, hi, h, T, lane);
    a[0] = F::pack(__fmul_rn(l[0], s_lo), __fmul_rn(l[1], s_lo));
    a[1] = F::pack(__fmul_rn(u[0], s_hi), __fmul_rn(u[1], s_hi));
    a[2] = F::pack(__fmul_rn(l[2], s_lo), __fmul_rn(l[3], s_lo));
    a[3] = F::pack(__fmul_rn(u[2], s_hi), __fmul_rn(u[3], s_hi));
}

__device__ __forceinline__ uint32_t word_of(const uint4& v, int w) {
    return w == 0 ? v.x : w == 1 ? v.y : w == 2 ? v.z : v.w;
}

constexpr int kStages = 3;  // two chunks in flight per CTA
template <int TM, int RT, bool WR> constexpr size_t smem_bytes() { return sizeof(Stage<TM, RT, WR>) * kStages; }

template <int DT, int TM, int RT, bool WR, int MINB, int LK>
__global__ void __launch_bounds__(kThreads, MINB) gemm_4bit_mma_kernel(const Args p) {
    typedef Frag<DT> F;
    typedef typename F::t T;
    constexpr int S = kStages;
    extern __shared__ __align__(16) unsigned char smem_raw[];
    Stage<TM, RT, WR>* stage = reinterpret_cast<Stage<TM, RT, WR>*>(smem_raw);
    __shared__ Tables<LK> tabs;
    __shared__ float code2[256];
    __shared__ int is_last;

    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int g = lane >> 2, t = lane & 3;
    const int m0 = blockIdx.x * 8 * TM;
    const long long n0 = (long long)blockIdx.y * rows_per_cta(RT);
    const long long row0 = n0 + warp * RT * 16;
    const int chunks = (int)((p.K + kChunk - 1) / kChunk);
    const int c_begin = blockIdx.z * p.chunks_per_split;
    const int c_end = c_begin + p.chunks_per_split < chunks ? c_begin + p.chunks_per_split : chunks;
    const bool nested = p.a8 != nullptr;
    const Feed feed = make_feed<TM, RT>(p, m0, n0, warp, g);

    if constexpr (LK == kLookupShared) {
        if (tid < 16) tabs.one[tid] = p.table[tid];
    } else if constexpr (LK == kLookupPerLane) {
        for (int i = tid; i < 16 * 32; i += kThreads) tabs.per_lane[i >> 5][i & 31] = p.table[i >> 5];
    } else if constexpr (LK == kLookupPair) {
        for (int i = tid; i < 256; i += kThreads) tabs.pair[i] = make_float2(p.table[i >> 4], p.table[i & 15]);
    }
    if (nested)
        for (int i = tid; i < 256; i += kThreads) code2[i] = p.code2[i];
    const float off = nested ? __ldg(p.off) : 0.0f;

    float acc[RT][TM][4];
#pragma unroll
    for (int r = 0; r < RT; ++r)
#pragma unroll
        for (int i = 0; i < TM; ++i)
#pragma unroll
            for (int e = 0; e < 4; ++e) acc[r][i][e] = 0.0f;

    // S-stage cp.async pipeline: S - 1 chunks in flight while one is computed (no registers hold data in flight)
#pragma unroll
    for (int s = 0; s < S - 1; ++s) {
        if (c_begin + s < c_end) stage_chunk<TM, RT, WR>(stage[s], p, feed, c_begin + s);
        cp_async_commit();
    }
    RegChunk<RT> rc, rn;  // WR: chunk c's codes and scales; chunk c + 1's codes and scales in flight
    RegScales<RT> s2;     // WR: chunk c + 2's scales in flight
    if constexpr (WR) {
        if (c_begin < c_end) {
            load_codes<RT>(rc.w, p, feed, c_begin);
            load_scales<RT>(rc.s, p, feed, c_begin);
        }
        if (c_begin + 1 < c_end) load_scales<RT>(rn.s, p, feed, c_begin + 1);
    }

    int cur = 0, next = S - 1;  // the stage of chunk c, and the one refilled with chunk c + S - 1
    for (int c = c_begin; c < c_end; ++c) {
        cp_async_wait<S - 2>();  // this thread's copies of chunk c have landed
        __syncthreads();         // everyone's; and everyone is done with chunk c - 1, whose stage is refilled now
        if (c + S - 1 < c_end) stage_chunk<TM, RT, WR>(stage[next], p, feed, c + S - 1);
        cp_async_commit();
        if constexpr (WR) {
            if (c + 1 < c_end) load_codes<RT>(rn.w, p, feed, c + 1);
            if (c + 2 < c_end) load_scales<RT>(s2, p, feed, c + 2);
        }

        const Stage<TM, RT, WR>& st = stage[cur];
        const long long k0 = (long long)c * kChunk;
        const bool kv = k0 + 32 * t < p.K;
        uint4 codes[2 * RT];
        float s[2 * RT];
#pragma unroll
        for (int q = 0; q < 2 * RT; ++q) {
            float v;
            if constexpr (WR) {
                codes[q] = rc.w[q];
                v = rc.s.amax[q];
                if (nested) v = __fadd_rn(__fmul_rn(code2[rc.s.q8[q]], v), off);  // rule 1
            } else {
                codes[q] = st.w[slot_row<RT>(warp, q, g) * 4 + t];
                v = st.amax[q][tid];
                if (nested) {  // rule 1
                    const long long b = (feed.f + row_off(q) * p.K + k0) >> p.bs_shift;
                    const uint32_t code = (st.q8w[q][tid] >> (8 * (int)((uintptr_t)(p.a8 + b) & 3))) & 0xffu;
                    v = __fadd_rn(__fmul_rn(code2[code], v), off);
                }
            }
            // outside the weight: every weight 0 (the codebook is finite)
            s[q] = (kv && ((feed.sok >> q) & 1)) ? v : 0.0f;
        }
        cur = cur == S - 1 ? 0 : cur + 1;
        next = next == S - 1 ? 0 : next + 1;

        const uint4* xr = st.x;
#pragma unroll
        for (int jp = 0; jp < 4; ++jp) {  // k-steps 2jp, 2jp+1: the two 16-bit halves of word jp of each row
            uint4 xb[TM];
#pragma unroll
            for (int i = 0; i < TM; ++i) xb[i] = xr[(i * 4 + jp) * 32 + lane];
            CodeOffsets lo[RT], hi[RT];
#pragma unroll
            for (int r = 0; r < RT; ++r) {
                lo[r] = code_offsets(word_of(codes[2 * r], jp));
                hi[r] = code_offsets(word_of(codes[2 * r + 1], jp));
            }
#pragma unroll
            for (int h = 0; h < 2; ++h) {
#pragma unroll
                for (int r = 0; r < RT; ++r) {
                    uint32_t a[4];
                    dequant_a<DT, LK>(a, lo[r], hi[r], h, s[2 * r], s[2 * r + 1], tabs, lane);
#pragma unroll
                    for (int i = 0; i < TM; ++i)
                        F::mma(acc[r][i], a, h ? xb[i].z : xb[i].x, h ? xb[i].w : xb[i].y);
                }
            }
        }
        if constexpr (WR) {
            rc = rn;
            rn.s = s2;
        }
    }

    // C fragment: acc[r][i][e] is out[m = m0 + 8i + 2t + (e & 1)][n = row0 + 16r + g + 8 (e >> 1)]
    const long long MN = (long long)p.M * p.N;
    if (gridDim.z > 1) {
        float* part = p.partial + blockIdx.z * MN;
#pragma unroll
        for (int r = 0; r < RT; ++r)
#pragma unroll
            for (int i = 0; i < TM; ++i)
#pragma unroll
                for (int e = 0; e < 4; ++e) {
                    const int m = m0 + 8 * i + 2 * t + (e & 1);
                    const long long n = row0 + 16 * r + g + 8 * (e >> 1);
                    if (m < p.M && n < p.N) __stcg(part + (long long)m * p.N + n, acc[r][i][e]);
                }
        __threadfence();
        __syncthreads();
        if (tid == 0) {
            int* ctr = p.counters + blockIdx.y * gridDim.x + blockIdx.x;
            const int done = atomicAdd(ctr, 1);
            is_last = done == (int)gridDim.z - 1;
            if (is_last) *ctr = 0;  // ready for the next call
        }
        __syncthreads();
        if (!is_last) return;
        __threadfence();
    }
    const T* bias = reinterpret_cast<const T*>(p.bias);
    T* out = reinterpret_cast<T*>(p.out);
#pragma unroll
    for (int r = 0; r < RT; ++r)
#pragma unroll
        for (int i = 0; i < TM; ++i)
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                const int m = m0 + 8 * i + 2 * t + (e & 1);
                const long long n = row0 + 16 * r + g + 8 * (e >> 1);
                if (m >= p.M || n >= p.N) continue;
                float y = acc[r][i][e];
                if (gridDim.z > 1) {  // fixed order: split 0, 1, 2, ...
                    y = 0.0f;
                    for (unsigned z = 0; z < gridDim.z; ++z)
                        y = __fadd_rn(y, __ldcg(p.partial + z * MN + (long long)m * p.N + n));
                }
                if (bias != nullptr) y = __fadd_rn(y, F::ld(bias, n));
                F::st(out, (long long)m * p.N + n, y);
            }
}

/* activation rows per CTA (8 * TM) for M rows: the smallest tile that holds them, at most 64 */
inline int tile_m(int M) { return M <= 8 ? 1 : M <= 16 ? 2 : M <= 32 ? 4 : 8; }

/* Resident CTAs per SM the register budget is set for: fewer accumulators (small TM, one row tile) leave room for
 * more of them, and the kernel is latency-bound (few warps per scheduler), so they are worth their registers. The
 * shared memory of the three stages bounds the same count (RT = 1: 30 / 42 / 66 KB for TM = 2 / 4 / 8). */
template <int TM, int RT, bool WR> struct MinBlocks {
    static constexpr int v = RT == 1 ? (TM <= 2 ? 6 : TM == 4 ? 4 : 3) : (TM <= 2 ? (WR ? 3 : 4) : TM == 4 ? 3 : 2);
};

/* Row tiles per warp and where the weights go (WR: registers, else shared memory), unless the A/B knob
 * kbit_gemm_tuning forces them: 2 tiles, registers, the fastest or within the spread on every shape and M = 8..64
 * measured but two (4096x4096 at M = 32 and 64, where one tile's split plan wins:
 * reports/matmul-h200/gemm_tiling_ab_h200.md). */
inline int g_row_tiles = 0, g_weights_in_registers = -1;
inline int row_tiles(int) { return g_row_tiles == 1 || g_row_tiles == 2 ? g_row_tiles : 2; }
inline bool weights_in_registers(int) { return g_weights_in_registers >= 0 ? g_weights_in_registers != 0 : true; }

/* The opt-in above 48 KB of dynamic shared memory for kernel ``kern``, once per device (``set``: the kernel's own
 * flags); ``dev`` gets the current device. */
template <typename Kernel>
cudaError_t allow_smem(Kernel kern, size_t smem, bool (&set)[64], int& dev) {
    dev = 0;
    cudaGetDevice(&dev);
    if (dev < 64 && !set[dev]) {
        const cudaError_t e = cudaFuncSetAttribute(kern, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem);
        if (e != cudaSuccess) return e;
        set[dev] = true;
    }
    return cudaSuccess;
}

template <int DT, int TM, int RT, bool WR, int LK>
cudaError_t launch_lk(const Args& p, int splits, cudaStream_t stream, int* ctas_per_sm) {
    auto kern = gemm_4bit_mma_kernel<DT, TM, RT, WR, MinBlocks<TM, RT, WR>::v, LK>;
    constexpr size_t smem = smem_bytes<TM, RT, WR>();
    static bool smem_set[64] = {};
    int dev = 0;
    if (const cudaError_t e = allow_smem(kern, smem, smem_set, dev); e != cudaSuccess) return e;
    if (ctas_per_sm != nullptr) return cudaOccupancyMaxActiveBlocksPerMultiprocessor(ctas_per_sm, kern, kThreads, smem);
    const dim3 grid((unsigned)((p.M + 8 * TM - 1) / (8 * TM)),
                    (unsigned)((p.N + rows_per_cta(RT) - 1) / rows_per_cta(RT)), (unsigned)splits);
    kern<<<grid, kThreads, smem, stream>>>(p);
    return cudaGetLastError();
}

template <int DT, int TM, int RT>
cudaError_t launch_rt(const Args& p, int splits, cudaStream_t stream, int* ctas_per_sm) {
    switch (p.lookup) {  // the other lookup variants are measured with the weights in shared memory only
        case kLookupPerLane: return launch_lk<DT, TM, RT, false, kLookupPerLane>(p, splits, stream, ctas_per_sm);
        case kLookupPair: return launch_lk<DT, TM, RT, false, kLookupPair>(p, splits, stream, ctas_per_sm);
        case kLookupNone: return launch_lk<DT, TM, RT, false, kLookupNone>(p, splits, stream, ctas_per_sm);
        default:
            if (weights_in_registers(TM)) return launch_lk<DT, TM, RT, true, kLookupShared>(p, splits, stream, ctas_per_sm);
            return launch_lk<DT, TM, RT, false, kLookupShared>(p, splits, stream, ctas_per_sm);
    }
}

template <int DT, int TM>
cudaError_t launch_tm(const Args& p, int splits, cudaStream_t stream, int* ctas_per_sm) {
    return row_tiles(TM) == 1 ? launch_rt<DT, TM, 1>(p, splits, stream, ctas_per_sm)
                              : launch_rt<DT, TM, 2>(p, splits, stream, ctas_per_sm);
}

template <int DT>
cudaError_t launch_dt(const Args& p, int splits, cudaStream_t stream, int* ctas_per_sm) {
    switch (tile_m(p.M)) {
        case 1: return launch_tm<DT, 1>(p, splits, stream, ctas_per_sm);
        case 2: return launch_tm<DT, 2>(p, splits, stream, ctas_per_sm);
        case 4: return launch_tm<DT, 4>(p, splits, stream, ctas_per_sm);
        default: return launch_tm<DT, 8>(p, splits, stream, ctas_per_sm);
    }
}

}  // namespace mma4
