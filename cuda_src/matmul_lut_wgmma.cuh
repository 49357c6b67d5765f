/* kbit-workbench: the unscaled-lookup 4-bit GEMM of matmul_lut.cuh on Hopper's warpgroup MMA (wgmma), 1..64
 * activation rows, written for 17..64 (family "matmul", included by matmul.cu; its pipelined form the default
 * there, and kbit_gemm_lut_tuning 20..22, 29, 30 at any M: takes below, kbit_matmul.h).
 *
 * Why: matmul_lut.cuh's warps each read their own activation fragments, 8 KB per warp and 64-element chunk at
 * M = 64 against 512 bytes of weights, so past 16 rows its time grows with M (84 -> 153 -> 242 us at M = 16, 32,
 * 64 on 28672x8192, reports/matmul-h200/lut_gemm). Here a CTA stages each chunk's activations in shared memory
 * once, and every warpgroup's wgmma reads them from there: the weight decode is unchanged, the activations are read
 * from L2 once per 64 WG weight rows instead of once per 16.
 *
 * Same numerics as matmul_lut.cuh: per 64-element chunk, P = the tensor core's float32 sum over 4 k16 steps of
 * dtype(table[c]) * A from zero, then acc = fma(s, P, acc); chunks in order within a split, splits summed in order.
 * Bound: error_bound_unscaled. Whether wgmma's k16 sums equal mma.sync's bit for bit is not assumed.
 *
 * Layout: out^T[N, M] = W[N, K] . A^T[K, M] as wgmma m64nNBk16 (NB = 8 NT >= M), A (the weight, 64 rows: warp w of
 * the warpgroup rows 16 w .. 16 w + 15) from registers, decoded exactly as matmul_lut.cuh (decode_step: the same
 * k permutation); B (the activations, K-major: each token's 8 consecutive logical k in 16 bytes) from shared
 * memory, no swizzle: core matrix (kc, nc) = logical k 8 kc .. 8 kc + 7 of tokens 8 nc .. 8 nc + 7 at
 * (kc NT + nc) 128 bytes; a k16 step spans kc = 2j, 2j + 1 (leading byte offset NT 128, stride byte offset 128).
 * Staging applies matmul_lut.cuh's k permutation: chunk element 16t + 4j + 2h + l is logical k 16j + 8h + 2t + l.
 *
 * Work and the chunk step: gemm_lut_wg_kernel below. */
#pragma once

#include "matmul_lut.cuh"

namespace lutwg {

using lut4::Args;
using lut4::Group;
using lut4::Rows;
using lut4::kChunk;

constexpr int kWarpgroupThreads = 128;
constexpr int kU = 4;  // chunks per group of codes and scales (one aligned word of nested codes)

// one chunk's activations: 8 NT tokens x 64 k x 2 bytes
template <int NT> __host__ __device__ constexpr int stage_bytes() { return NT * 8 * kChunk * 2; }
template <int NT, int STAGES = 2> constexpr size_t smem_bytes() {
    return lut4::kSmem + STAGES * (size_t)stage_bytes<NT>();
}
static_assert(lut4::kSmem % 1024 == 0, "the stages start 1 KB-aligned");

/* One wgmma m64n(8 NT)k16, A from registers, B by descriptor, D float32: d += a . b (ACC), d = a . b (!ACC: d
 * written only, so no instruction defines it before: a definition of a wgmma's registers by another instruction
 * while wgmma are in flight makes ptxas serialize them all). */
#define LUTWG_D4(i) "+f"(d[i][0]), "+f"(d[i][1]), "+f"(d[i][2]), "+f"(d[i][3])
#define LUTWG_W4(i) "=f"(d[i][0]), "=f"(d[i][1]), "=f"(d[i][2]), "=f"(d[i][3])
#define LUTWG_IN "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(b)
template <int NT> struct Mma;
/* Mma<NT>: wgmma SHAPE; D names its 4 NT accumulator operands, AB its A registers and B descriptor (then LUTWG_IN's
 * order); DL lists the accumulators for the constraints. */
#define LUTWG_ASM(SHAPE, TY, SD, D, AB, OUTS)                                                                     \
    asm volatile("wgmma.mma_async.sync.aligned." SHAPE ".f32." TY "." TY " {" D "}, " AB ", " SD ", 1, 1, 0;\n"   \
                 : OUTS : LUTWG_IN)
#define LUTWG_MMA(NT, SHAPE, D, AB, DL)                                                                           \
    template <> struct Mma<NT> {                                                                                  \
        template <int DT, bool ACC>                                                                               \
        __device__ static __forceinline__ void run(float (&d)[NT][4], const uint32_t (&a)[4], uint64_t b) {      \
            if constexpr (DT == KBIT_BF16 && ACC) LUTWG_ASM(SHAPE, "bf16", "1", D, AB, DL(LUTWG_D4));            \
            else if constexpr (DT == KBIT_BF16) LUTWG_ASM(SHAPE, "bf16", "0", D, AB, DL(LUTWG_W4));              \
            else if constexpr (ACC) LUTWG_ASM(SHAPE, "f16", "1", D, AB, DL(LUTWG_D4));                           \
            else LUTWG_ASM(SHAPE, "f16", "0", D, AB, DL(LUTWG_W4));                                             \
        }                                                                                                         \
    };
#define LUTWG_L1(M) M(0)
#define LUTWG_L2(M) M(0), M(1)
#define LUTWG_L4(M) M(0), M(1), M(2), M(3)
#define LUTWG_L8(M) LUTWG_L4(M), M(4), M(5), M(6), M(7)
LUTWG_MMA(1, "m64n8k16", "%0,%1,%2,%3", "{%4,%5,%6,%7}, %8", LUTWG_L1)
LUTWG_MMA(2, "m64n16k16", "%0,%1,%2,%3,%4,%5,%6,%7", "{%8,%9,%10,%11}, %12", LUTWG_L2)
LUTWG_MMA(4, "m64n32k16", "%0,%1,%2,%3,%4,%5,%6,%7,%8,%9,%10,%11,%12,%13,%14,%15", "{%16,%17,%18,%19}, %20", LUTWG_L4)
LUTWG_MMA(8, "m64n64k16",
          "%0,%1,%2,%3,%4,%5,%6,%7,%8,%9,%10,%11,%12,%13,%14,%15,"
          "%16,%17,%18,%19,%20,%21,%22,%23,%24,%25,%26,%27,%28,%29,%30,%31",
          "{%32,%33,%34,%35}, %36", LUTWG_L8)
#undef LUTWG_MMA
#undef LUTWG_ASM
#undef LUTWG_L1
#undef LUTWG_L2
#undef LUTWG_L4
#undef LUTWG_L8
#undef LUTWG_D4
#undef LUTWG_W4
#undef LUTWG_IN

__device__ __forceinline__ void wgmma_fence() { asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory"); }
__device__ __forceinline__ void wgmma_commit() { asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory"); }
__device__ __forceinline__ void wgmma_wait_all() { asm volatile("wgmma.wait_group.sync.aligned 0;\n" ::: "memory"); }
/* Orders later reads of r after the wait (the asm statements above carry no register dependence). */
__device__ __forceinline__ void fence_operand(float& r) { asm volatile("" : "+f"(r)::"memory"); }
/* Shared memory written by ordinary stores and read next by the tensor core (the async proxy). */
__device__ __forceinline__ void fence_proxy_async() { asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory"); }

/* K-major operand without swizzle: start, leading byte offset (next core matrix along K), stride byte offset (next
 * 8 rows), each >> 4 in 14 bits; base offset 0, layout type 0. */
__device__ __forceinline__ uint64_t desc_kmajor(uint32_t smem_addr, uint32_t lbo, uint32_t sbo) {
    return (uint64_t)((smem_addr & 0x3FFFFu) >> 4) | ((uint64_t)((lbo & 0x3FFFFu) >> 4) << 16) |
           ((uint64_t)((sbo & 0x3FFFFu) >> 4) << 32);
}

/* The 4 k16 steps of a chunk from zero: d = sum_j a[j] . b_j, b_j the descriptor of core columns 2j, 2j + 1 of the
 * stage at b0. The descriptors are made before wgmma.fence and pinned there (an empty asm): a wgmma input register
 * defined between the fence and the wgmma, while others are in flight, makes ptxas serialize them all. */
template <int DT, int NT>
__device__ __forceinline__ void mma_chunk(float (&d)[NT][4], const uint32_t (&a)[4][4], uint32_t b0) {
    uint64_t desc[4];
#pragma unroll
    for (int j = 0; j < 4; ++j) {
        desc[j] = desc_kmajor(b0 + 2 * j * NT * 128, NT * 128, 128);
        asm volatile("" : "+l"(desc[j]));
    }
    wgmma_fence();
    Mma<NT>::template run<DT, false>(d, a[0], desc[0]);
#pragma unroll
    for (int j = 1; j < 4; ++j) Mma<NT>::template run<DT, true>(d, a[j], desc[j]);
}

/* This thread's pieces of one chunk's activations: piece i = 16 bytes, elements 8q .. 8q + 7 of token m, with
 * i's bits 0-2 = m % 8, 3-4 = t = q / 2, 5 = q % 2, 6.. = m / 8 (so a warp's shared stores hit 32 banks). */
template <int NT, int THREADS> struct Staged {
    static constexpr int kPieces = NT * 64;
    static constexpr int kPer = (kPieces + THREADS - 1) / THREADS;
    uint4 v[kPer];
};

template <int NT, int THREADS>
__device__ __forceinline__ void load_chunk_x(Staged<NT, THREADS>& X, const Args& p, int c, int tid) {
#pragma unroll
    for (int r = 0; r < Staged<NT, THREADS>::kPer; ++r) {
        const int i = tid + THREADS * r;
        const int m = 8 * (i >> 6) + (i & 7), q = 2 * ((i >> 3) & 3) + ((i >> 5) & 1);
        const bool ok = i < Staged<NT, THREADS>::kPieces && m < p.M;
        const long long at = (long long)(ok ? m : 0) * p.K + (long long)c * kChunk + 8 * q;  // element index
        const uint4* src = reinterpret_cast<const uint4*>(reinterpret_cast<const uint8_t*>(p.A) + 2 * at);
        X.v[r] = ok ? __ldg(src) : make_uint4(0u, 0u, 0u, 0u);  // tokens past M: zeros
    }
}

/* Word h of a piece holds chunk elements 16t + 4j + 2h' + {0, 1} (j = 2 (q % 2) + h / 2, h' = h % 2): logical k
 * 16j + 8h' + 2t, core column kc = 4 (q % 2) + h, offset 4t bytes in its token's 16. */
template <int NT, int THREADS>
__device__ __forceinline__ void store_chunk_x(const Staged<NT, THREADS>& X, char* stage, int tid) {
#pragma unroll
    for (int r = 0; r < Staged<NT, THREADS>::kPer; ++r) {
        const int i = tid + THREADS * r;
        if (i >= Staged<NT, THREADS>::kPieces) break;
        const int t = (i >> 3) & 3, qlo = (i >> 5) & 1, nc = i >> 6;
        char* base = stage + nc * 128 + (i & 7) * 16 + 4 * t;
        const uint32_t w[4] = {X.v[r].x, X.v[r].y, X.v[r].z, X.v[r].w};
#pragma unroll
        for (int h = 0; h < 4; ++h) *reinterpret_cast<uint32_t*>(base + (4 * qlo + h) * NT * 128) = w[h];
    }
}

/* The 4 k-steps' A fragments of a chunk (matmul_lut.cuh's decode). */
template <int DG>
__device__ __forceinline__ void decode_chunk(uint32_t (&a)[4][4], const uint2 (&w)[2], const char* tab,
                                             uint32_t lane4) {
#pragma unroll
    for (int j = 0; j < 4; ++j) lut4::decode_step<DG, false>(a[j], w, j, tab, lane4);
}


/* acc += s * P for one chunk's partial P (this thread's 2 rows: sc[0], sc[1]), read after the wgmma wait. */
template <int NT>
__device__ __forceinline__ void scale_into(float (&acc)[NT][4], float (&P)[NT][4], const float (&sc)[2]) {
#pragma unroll
    for (int nt = 0; nt < NT; ++nt) {
#pragma unroll
        for (int e = 0; e < 4; ++e) {
            fence_operand(P[nt][e]);
            acc[nt][e] = __fmaf_rn(sc[e >> 1], P[nt][e], acc[nt][e]);
        }
    }
}

constexpr int kPipeStages = 4;                // activation stages of the pipelined form
constexpr int kPipeAhead = kPipeStages - 1;   // chunks whose activations are in flight ahead of the one computed

__device__ __forceinline__ void cp_async4(uint32_t dst, const void* src, uint32_t bytes) {
    asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;\n" ::"r"(dst), "l"(src), "r"(bytes) : "memory");
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }
template <int N> __device__ __forceinline__ void cp_async_wait() {
    asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
}

/* Chunk c's activations into the stage at shared address `stage` without registers: this thread's pieces of
 * load_chunk_x, each word placed where store_chunk_x puts it, by asynchronous 4-byte copies (zeros for tokens past
 * M). */
template <int NT, int THREADS>
__device__ __forceinline__ void copy_chunk_x(const Args& p, int c, uint32_t stage, int tid) {
#pragma unroll
    for (int r = 0; r < Staged<NT, THREADS>::kPer; ++r) {
        const int i = tid + THREADS * r;
        if (i >= Staged<NT, THREADS>::kPieces) break;
        const int m = 8 * (i >> 6) + (i & 7), q = 2 * ((i >> 3) & 3) + ((i >> 5) & 1);
        const int t = (i >> 3) & 3, qlo = (i >> 5) & 1, nc = i >> 6;
        const bool ok = m < p.M;
        const long long at = (long long)(ok ? m : 0) * p.K + (long long)c * kChunk + 8 * q;  // element index
        const char* src = reinterpret_cast<const char*>(p.A) + 2 * at;
        const uint32_t base = stage + nc * 128 + (i & 7) * 16 + 4 * t;
#pragma unroll
        for (int h = 0; h < 4; ++h) cp_async4(base + (4 * qlo + h) * NT * 128, src + 4 * h, ok ? 4u : 0u);
    }
}

/* The kernel: persistent CTAs of WG warpgroups take (64 WG weight rows, K split) tasks in grid stride; each warp
 * owns one 16-row tile as in matmul_lut.cuh and finishes it as there (splits: the tile's last warp sums the
 * partials in split order).
 *
 * A chunk step without PIPE (variants 20..22): the next chunk's activations loaded into registers, this chunk's A
 * decoded, its 4 wgmma issued and waited for, the partial scaled into acc, the next chunk's activations stored to
 * the other of 2 stages, one CTA barrier.
 *
 * With PIPE (variants 29, 30; the default past 16 rows) chunk k + 3's activations are copied asynchronously
 * (cp.async, 4-byte words straight into 4 stages in the decode's k order) while chunk k is computed, so no chunk
 * waits for its activations' trip from L2, and chunk k + 1's A is decoded while the tensor core runs chunk k's
 * wgmma (two sets of A fragments). A step: wait for chunk k's copies, CTA barrier (they are everyone's; every
 * warpgroup is done with chunk k - 1's stage, which chunk k + 3 takes next), issue chunk k + 3's copies and chunk
 * k's wgmma, decode chunk k + 1, make chunk k's scales, wait (wait_group 0: ptxas keeps the wgmma asynchronous
 * only where no other instruction touches a register of a wgmma issued before the next wait_group 0, and no wait
 * sits on a branch), scale chunk k's partial into acc. The same sums in the same order: the same bits. The 4-byte
 * copies are 82 % excess L1 sectors at M = 64 (Nsight Compute, H100), yet 16-byte pieces copied into a linear
 * ring and moved into the stage by their thread were 1.06-1.18x slower at M = 32 and 64 (git ff8a15d,
 * reports/matmul-h100/wgmma_pipeline). Three warpgroups a CTA (12 warps an SM instead of 8, at most 168 registers a
 * thread) were 1.10-1.20x slower (git 71986e2). */
template <int DT, int NT, int WG, int S, int MINB, bool TL, int DG, bool PIPE>
__global__ void __launch_bounds__(WG * kWarpgroupThreads, MINB) gemm_lut_wg_kernel(const Args p) {
    constexpr int kThreads = WG * kWarpgroupThreads, kWarps = 4 * WG;
    static_assert(!PIPE || kU % 2 == 0, "a chunk's set of A fragments (k % 2) is known at compile time");
    extern __shared__ __align__(1024) uint32_t wg_smem[];
    uint32_t* pair = wg_smem;
    float* code2 = reinterpret_cast<float*>(wg_smem + lut4::kPairWords);
    char* stages = reinterpret_cast<char*>(wg_smem) + lut4::kSmem;

    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int g = lane >> 2, t = lane & 3;
    const bool nested = p.a8 != nullptr;
    lut4::fill_tables<DT, kThreads>(pair, code2, p, tid);
    const float off = nested ? __ldg(p.off) : 0.0f;
    __syncthreads();
    const char* tab = reinterpret_cast<const char*>(pair);
    const uint32_t lane4 = 4u * (uint32_t)lane;
    const uint32_t stage_addr = (uint32_t)__cvta_generic_to_shared(stages);

    const int chunks = (int)(p.K / kChunk);
    const long long tiles = (p.N + 15) / 16;
    const long long tasks = (tiles + kWarps - 1) / kWarps * p.splits;
    float part[NT][4];    // a chunk's partial, written by wgmma only (its first k16 step does not read it)
    uint32_t a[2][4][4];  // a chunk's A fragments (PIPE: chunk k's in set k % 2)

    for (long long task = blockIdx.x; task < tasks; task += gridDim.x) {  // uniform across the CTA
        const long long rowgroup = task / p.splits;
        const int z = (int)(task - rowgroup * p.splits);
        const int c_begin = z * p.chunks_per_split;
        const int c_end = c_begin + p.chunks_per_split < chunks ? c_begin + p.chunks_per_split : chunks;
        const long long tile = rowgroup * kWarps + warp;
        Rows<1> R;  // weights only: the activations come from the stages
        lut4::tile_rows<1, TL>(R, p, tile, g, t, lane, chunks);
        R.x[0] = nullptr;
        R.xok[0] = false;

        float acc[NT][4];
#pragma unroll
        for (int nt = 0; nt < NT; ++nt) acc[nt][0] = acc[nt][1] = acc[nt][2] = acc[nt][3] = 0.0f;
        if constexpr (PIPE) {
#pragma unroll
            for (int d = 0; d < kPipeAhead; ++d) {  // chunks c_begin .. + 2 in flight (a group each, empty past c_end)
                if (c_begin + d < c_end)
                    copy_chunk_x<NT, kThreads>(p, c_begin + d, stage_addr + d * stage_bytes<NT>(), tid);
                cp_async_commit();
            }
        } else {
            if (c_begin < c_end) {  // chunk c_begin's activations into stage 0
                Staged<NT, kThreads> X;
                load_chunk_x<NT, kThreads>(X, p, c_begin, tid);
                store_chunk_x<NT, kThreads>(X, stages, tid);
                fence_proxy_async();
            }
            __syncthreads();
        }
        Group<kU> G[S];  // a ring: the next S - 1 groups' codes and scales in flight
#pragma unroll
        for (int s = 0; s + 1 < S; ++s) lut4::load_group<kU, 1, TL, DG>(G[s], p, R, c_begin + s * kU, c_end);
        if constexpr (PIPE) {
            if (c_begin < c_end) decode_chunk<DG>(a[0], G[0].w[0], tab, lane4);
        }
        for (int c = c_begin; c < c_end; c += S * kU) {
#pragma unroll
            for (int s = 0; s < S; ++s) {
                const int cs = c + s * kU;
                if (cs >= c_end) break;
                if (cs + (S - 1) * kU < c_end)
                    lut4::load_group<kU, 1, TL, DG>(G[(s + S - 1) % S], p, R, cs + (S - 1) * kU, c_end);
#pragma unroll
                for (int u = 0; u < kU; ++u) {
                    const int cc = cs + u;
                    if (cc >= c_end) break;
                    if constexpr (PIPE) {
                        const int k = cc - c_begin, b = u & 1;  // k % 2 == u % 2: c - c_begin and s kU are even
                        cp_async_wait<kPipeAhead - 1>();  // this thread's copies of chunk cc have landed
                        fence_proxy_async();
                        __syncthreads();  // everyone's have; every warpgroup is done with chunk cc - 1
                        const uint32_t ahead = stage_addr + ((k + kPipeAhead) % kPipeStages) * stage_bytes<NT>();
                        if (cc + kPipeAhead < c_end) copy_chunk_x<NT, kThreads>(p, cc + kPipeAhead, ahead, tid);
                        cp_async_commit();
                        mma_chunk<DT, NT>(part, a[b], stage_addr + (k % kPipeStages) * stage_bytes<NT>());
                        wgmma_commit();
                        // while it runs: chunk cc + 1's A (the next group's first: loaded a group ahead; past
                        // c_end, codes never used) and chunk cc's scales
                        decode_chunk<DG>(a[b ^ 1], u + 1 < kU ? G[s].w[u + 1] : G[(s + 1) % S].w[0], tab, lane4);
                        float sc[2];
                        lut4::chunk_scales<kU, DG>(sc, G[s], u, nested, R.ok, code2, off);
                        wgmma_wait_all();
                        scale_into<NT>(acc, part, sc);
                    } else {
                        const int st = (cc - c_begin) & 1;
                        const bool next = cc + 1 < c_end;
                        Staged<NT, kThreads> X;
                        if (next) load_chunk_x<NT, kThreads>(X, p, cc + 1, tid);
                        decode_chunk<DG>(a[0], G[s].w[u], tab, lane4);
                        mma_chunk<DT, NT>(part, a[0], stage_addr + st * stage_bytes<NT>());
                        wgmma_commit();
                        float sc[2];
                        lut4::chunk_scales<kU, DG>(sc, G[s], u, nested, R.ok, code2, off);
                        wgmma_wait_all();
                        scale_into<NT>(acc, part, sc);
                        if (next) {
                            store_chunk_x<NT, kThreads>(X, stages + (st ^ 1) * stage_bytes<NT>(), tid);
                            fence_proxy_async();
                        }
                        __syncthreads();  // the next stage is written; this one's readers are done (waited above)
                    }
                }
            }
        }
        if constexpr (PIPE) {
            asm volatile("cp.async.wait_all;\n" ::: "memory");
            __syncthreads();  // the next task's copies go to stages this one's last wgmma may still read
        }

        if (tile < tiles) lut4::finish_tile<DT, NT>(p, tile, z, g, t, lane, acc);  // warps with rows in N
    }
}

template <int DT, int NT, int WG, int S, bool PIPE, bool TL>
cudaError_t launch_wg(const Args& p, cudaStream_t stream, int* ctas_per_sm) {
    constexpr int MINB = 1;
    constexpr size_t smem = PIPE ? smem_bytes<NT, kPipeStages>() : smem_bytes<NT>();
    static lut4::Fit fit[2][64];  // per scale mode: two kernels
    const long long ctas = ((p.N + 15) / 16 + 4 * WG - 1) / (4 * WG) * p.splits;  // tasks: no more CTAs than these
    const int threads = WG * kWarpgroupThreads;
    if (p.group_scales)
        return lut4::launch_persistent(gemm_lut_wg_kernel<DT, NT, WG, S, MINB, TL, lut4::kScalesPerGroup, PIPE>,
                                       fit[1], smem, threads, ctas, p, stream, ctas_per_sm);
    return lut4::launch_persistent(gemm_lut_wg_kernel<DT, NT, WG, S, MINB, TL, lut4::kScalesPerChunk, PIPE>,
                                   fit[0], smem, threads, ctas, p, stream, ctas_per_sm);
}

/* variant 20: 2 warpgroups a CTA (128 weight rows share each staged chunk), 2 groups of codes in flight; 21: 1
 * warpgroup (2 CTAs fit an SM); 22: as 20 with 3 groups in flight (more weight bytes in flight per SM); 29, 30: as
 * 20, 21 with the next chunk decoded while the tensor core runs this one (gemm_lut_wg_kernel with PIPE). An earlier
 * attempt at that overlap (decoded into a copy; git 6309973) gave wrong results on the H200. A wgmma that ptxas
 * serializes (its C7513..C7520 advisories) fails the build (workbench/cuda_build.py). */
template <int DT, int NT, bool TL>
cudaError_t launch_wg_tl(const Args& p, int variant, cudaStream_t stream, int* ctas_per_sm) {
    switch (variant) {
        case 20: return launch_wg<DT, NT, 2, 2, false, TL>(p, stream, ctas_per_sm);
        case 21: return launch_wg<DT, NT, 1, 2, false, TL>(p, stream, ctas_per_sm);
        case 22: return launch_wg<DT, NT, 2, 3, false, TL>(p, stream, ctas_per_sm);
        case 30: return launch_wg<DT, NT, 1, 2, true, TL>(p, stream, ctas_per_sm);
        default: return launch_wg<DT, NT, 2, 2, true, TL>(p, stream, ctas_per_sm);  // 0, 29
    }
}

template <int DT, int NT>
cudaError_t launch_wg_nt(const Args& p, int variant, cudaStream_t stream, int* ctas_per_sm) {
    return p.tiled ? launch_wg_tl<DT, NT, true>(p, variant, stream, ctas_per_sm)
                   : launch_wg_tl<DT, NT, false>(p, variant, stream, ctas_per_sm);
}

template <int DT>
cudaError_t launch_dt(const Args& p, int variant, cudaStream_t stream, int* ctas_per_sm) {
    switch (lut4::tile_n8(p.M)) {
        case 1: return launch_wg_nt<DT, 1>(p, variant, stream, ctas_per_sm);
        case 2: return launch_wg_nt<DT, 2>(p, variant, stream, ctas_per_sm);
        case 4: return launch_wg_nt<DT, 4>(p, variant, stream, ctas_per_sm);
        default: return launch_wg_nt<DT, 8>(p, variant, stream, ctas_per_sm);
    }
}

/* Whether this kernel serves M rows against an (N, K) weight under kbit_gemm_lut_tuning's variant: 20..22, 29, 30
 * always, 31 never (the mma.sync form at any M: the A/B's baseline); the default (its pipelined form, 29) past 16
 * rows. On an H100 form 29 measured 1.05-1.17x the committed forms at M = 32 and 64 on the five shapes of issue 18
 * (the mma.sync form at 32, form 20 at 64) and 0.65-1.0x at M = 16 (reports/matmul-h100/wgmma_pipeline). */
inline bool takes(int variant, int M, long long N, long long K) {
    (void)N, (void)K;
    return (variant >= 20 && variant <= 22) || variant == 29 || variant == 30 || (variant == 0 && M > 16);
}

}  // namespace lutwg
