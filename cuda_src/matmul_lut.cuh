/* kbit-workbench: fused 4-bit dequantize + tensor-core GEMM with unscaled codebook lookups, M = 1..64 (family
 * "matmul", included by matmul.cu). API and numerics: kbit_matmul.h (kbit_gemm_4bit_lut); the cuda backend's rows:
 * workbench/backends/cuda/matmul.py (lut_rows).
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
 * Work: a task is one warp's: 16 weight rows x one K range (split). Persistent CTAs of 8 warps build the pair
 * table once, then each warp takes tasks on its own (no CTA barrier in the loop). Codes and scale ingredients of
 * the next U chunks are in flight in registers while U chunks are computed (a per-warp cp.async ring was slower, a
 * deeper register ring no faster: reports/matmul-h200/lut_gemm), and the next chunk's activations while one chunk is
 * (kXAhead: loaded at the chunk, they waited in L1 behind the weight stream and stalled the mma). Nested absmax
 * with blocksize 64 and K % 256 == 0: a row's uint8 codes of 4 chunks are one aligned word, read once per group
 * (per-chunk byte loads cost 21-32 % of the time). Splits > 1: float32
 * partials; the last warp of a tile (an atomic counter per tile, reset by it) sums them in split order, adds the
 * bias and stores; deterministic.
 * Weight layouts: bitsandbytes' rows, or tiled (Args::tiled; the copy the cuda backend keeps,
 * workbench/backends/cuda/gemm_layout.py: [ceil(N/16) tiles][K/64 chunks][32 lanes][16 bytes], a lane's rows g and
 * g + 8; each warp reads 512 contiguous bytes per chunk, which streams at copy speed where the rows do not).
 */
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <stdint.h>

#include "matmul_mma.cuh"

namespace lut4 {

constexpr int kWarps = 8;
constexpr int kThreads = kWarps * 32;
constexpr int kChunk = 64;                       // k per chunk (4 mma k-steps)
constexpr int kPairWords = 256 * 64;             // the pair table: 256 entries x 64 words (32 used: one per lane)
constexpr size_t kSmem = kPairWords * 4 + 256 * 4;  // + the nested absmax code table

struct Args : mma4::Operands {  // counters: one per m16 row tile
    int splits;
    int chunks_per_split;
    long long tasks;      // m16 row tiles x splits
    int tiled;            // B tiled (1 tile-major, 2 chunk-major: kbit_matmul.h), 0 bitsandbytes' rows
    int group_scales;     // nested, blocksize 64, K % 256 == 0, splits of whole groups: a group's codes in one word
    int spread;           // tasks may be dealt warp-major over every resident CTA (the lean form; launch_tasks)
};

template <int DT> using Op = mma4::Frag<DT>;  // packing to the dtype, the mma, loads and stores of the rule-2 GEMM
using mma4::ld_stream16;

__device__ __forceinline__ uint2 ld_stream8(const uint8_t* p) {  // read once: no L1 allocation
    uint2 v;
    asm volatile("ld.global.nc.L1::no_allocate.v2.u32 {%0,%1}, [%2];\n" : "=r"(v.x), "=r"(v.y) : "l"(p));
    return v;
}

/* The codes and scale ingredients of U chunks for this thread's two rows (r = 0: row g, 1: row g + 8). */
template <int U> struct Group {
    uint2 w[U][2];
    float amax[U][2];
    uint32_t q8[U][2];
};

/* Mode of the scale path (template DG): 0 per chunk; 1 per group of 4 chunks (nested, blocksize 64: the four uint8
 * codes of a row in one aligned word, one nested absmax); diagnostics, wrong results: 2 no scale loads (s = 1),
 * 3 no codebook lookup (the code words themselves as weights), 4 the weight loads alone (no scales, no math). */
constexpr int kScalesPerChunk = 0, kScalesPerGroup = 1, kDiagNoScales = 2, kDiagNoLookup = 3, kDiagLoadsOnly = 4;

/* Per task and thread: where its rows and activation rows start. */
template <int NT> struct Rows {
    const uint8_t* w[2];  // packed bytes of row n at this thread's 8-byte offset 8t (TL: w[0], the lane's 16 bytes
                          // of the warp's tile at chunk 0)
    long long wstep;      // TL: bytes from one chunk of the tile to the next (512, or 512 tiles chunk-major)
    long long f[2];       // flat element index n * K of each row (block indices by shift)
    bool ok[2];           // row < N
    const uint8_t* x[NT]; // activation row 8 nt + g at element 16t
    bool xok[NT];         // activation row < M
};

template <int U, int NT, bool TL, int DG>
__device__ __forceinline__ void load_group(Group<U>& G, const Args& p, const Rows<NT>& R, int c, int c_end) {
    const bool nested = p.a8 != nullptr;
    if constexpr (DG == kScalesPerGroup) {
        static_assert(U % 4 == 0, "a group is the 4 codes of one aligned word");
#pragma unroll
        for (int q = 0; q < U / 4; ++q)
#pragma unroll
            for (int r = 0; r < 2; ++r) {
                const bool ok = c + 4 * q < c_end && R.ok[r];
                const long long b = (R.f[r] >> 6) + c + 4 * q;  // blocksize 64; b % 4 == 0 (K % 256 == 0, c % 4 == 0)
                G.amax[q][r] = ok ? __ldg(p.absmax + (b >> 8)) : 0.0f;
                G.q8[q][r] = ok ? __ldg(reinterpret_cast<const uint32_t*>(p.a8 + b)) : 0u;
            }
    }
#pragma unroll
    for (int u = 0; u < U; ++u) {
        const int cc = c + u;
        if constexpr (TL) {  // one 16-byte load: rows g and g + 8 (the tile's rows past N are zero bytes)
            const uint4 v = cc < c_end && R.ok[0] ? ld_stream16(R.w[0] + R.wstep * cc) : make_uint4(0u, 0u, 0u, 0u);
            G.w[u][0] = make_uint2(v.x, v.y);
            G.w[u][1] = make_uint2(v.z, v.w);
        }
#pragma unroll
        for (int r = 0; r < 2; ++r) {
            const bool ok = cc < c_end && R.ok[r];
            const long long b = (R.f[r] + (long long)cc * kChunk) >> p.bs_shift;
            if constexpr (!TL) G.w[u][r] = ok ? ld_stream8(R.w[r] + 32 * cc) : make_uint2(0u, 0u);
            if constexpr (DG == kScalesPerChunk || DG == kDiagNoLookup) {
                G.amax[u][r] = ok ? __ldg(p.absmax + (nested ? b >> 8 : b)) : 0.0f;
                G.q8[u][r] = ok && nested ? (uint32_t)__ldg(p.a8 + b) : 0u;
            }
        }
    }
}

/* How a thread addresses the pair table (template PL). false: a generic pointer; ptxas adds the table's shared base
 * (the CTA's rank << 24 | 0x400) to every lookup's offset, one IMAD each (16 per chunk and warp). true: the byte
 * permute that places the code byte builds the whole address -- the rank's bits come from the lane word's upper
 * bytes -- and the LDS adds the table's offset in the CTA window as an immediate: no add per lookup. The kernel
 * traps if that offset is not kPtxTableOffset. */
constexpr uint32_t kPtxTableOffset = 0x400;  // the dynamic shared memory's start on sm_80+ (1 KB reserved before it)

__device__ __forceinline__ uint32_t lds_table(uint32_t addr) {
    uint32_t v;
    asm volatile("ld.shared.b32 %0, [%1+1024];\n" : "=r"(v) : "r"(addr));  // 1024 = kPtxTableOffset
    return v;
}

/* The block scales of chunk u of a group for the thread's two rows (rule 1 when nested). */
template <int U, int DG>
__device__ __forceinline__ void chunk_scales(float (&s)[2], const Group<U>& G, int u, bool nested, const bool (&ok)[2],
                                             const float* code2, float off) {
#pragma unroll
    for (int r = 0; r < 2; ++r) {
        float v;
        if constexpr (DG == kScalesPerGroup)  // rule 1
            v = __fadd_rn(__fmul_rn(code2[(G.q8[u >> 2][r] >> (8 * (u & 3))) & 0xffu], G.amax[u >> 2][r]), off);
        else if constexpr (DG == kDiagNoScales)
            v = 1.0f;
        else
            v = nested ? __fadd_rn(__fmul_rn(code2[G.q8[u][r]], G.amax[u][r]), off) : G.amax[u][r];  // rule 1
        s[r] = ok[r] ? v : 0.0f;  // rows past N: zeros (their codes read as 0, the codebook is finite)
    }
}

/* The A fragment of k-step j (0..3) of a chunk from the thread's codes of it (w[0]: row g's 8 bytes, w[1]: row
 * g + 8's): {row g, row g + 8} x {logical k 2t, 2t + 1; 2t + 8, 2t + 9}, the layout of mma.sync m16n8k16 and of
 * each warp's 16 rows in wgmma m64nNk16. */
template <int DG, bool PL>
__device__ __forceinline__ void decode_step(uint32_t (&a)[4], const uint2 (&w)[2], int j, const char* tab,
                                            uint32_t lane4) {
    // bytes 2j, 2j + 1 of the thread's 8: word j / 2, byte pair (2j) % 4; the byte goes into address byte 1
    const uint32_t wlo = j < 2 ? w[0].x : w[0].y, whi = j < 2 ? w[1].x : w[1].y;
    const uint32_t sel0 = 0x6604u | ((uint32_t)((2 * j) & 3) << 4), sel1 = sel0 + 0x10u;
    if constexpr (DG == kDiagNoLookup) {
        a[0] = __byte_perm(wlo, lane4, sel0); a[1] = __byte_perm(whi, lane4, sel0);
        a[2] = __byte_perm(wlo, lane4, sel1); a[3] = __byte_perm(whi, lane4, sel1);
    } else if constexpr (PL) {  // lane4 holds the table base's upper bytes: byte 3 from it too
        a[0] = lds_table(__byte_perm(wlo, lane4, sel0 + 0x1000u));
        a[1] = lds_table(__byte_perm(whi, lane4, sel0 + 0x1000u));
        a[2] = lds_table(__byte_perm(wlo, lane4, sel1 + 0x1000u));
        a[3] = lds_table(__byte_perm(whi, lane4, sel1 + 0x1000u));
    } else {
        a[0] = *reinterpret_cast<const uint32_t*>(tab + __byte_perm(wlo, lane4, sel0));
        a[1] = *reinterpret_cast<const uint32_t*>(tab + __byte_perm(whi, lane4, sel0));
        a[2] = *reinterpret_cast<const uint32_t*>(tab + __byte_perm(wlo, lane4, sel1));
        a[3] = *reinterpret_cast<const uint32_t*>(tab + __byte_perm(whi, lane4, sel1));
    }
}

/* Where the activations of a chunk come from (template XM): 0 loaded at the chunk; 1 the group's U chunks loaded
 * before its first mma; 2 a diagnostic, wrong results: no loads (constant ones); 3 loaded one chunk ahead (carried
 * in Ahead across groups). A copy staged in shared memory per CTA measured no faster than 0 (lut_gemm report). */
constexpr int kXPerChunk = 0, kXPerGroup = 1, kDiagNoX = 2, kXAhead = 3;

template <int NT> struct Ahead {  // XM 3: the next chunk's activations
    uint4 x[NT][2];
};

template <int NT>
__device__ __forceinline__ void load_x(uint4 (&x)[NT][2], const Rows<NT>& R, int cc, int c_end) {
#pragma unroll
    for (int nt = 0; nt < NT; ++nt) {
        const uint4* xp = reinterpret_cast<const uint4*>(R.x[nt] + 128 * (long long)cc);
        const bool ok = R.xok[nt] && cc < c_end;
        x[nt][0] = ok ? __ldg(xp) : make_uint4(0u, 0u, 0u, 0u);
        x[nt][1] = ok ? __ldg(xp + 1) : make_uint4(0u, 0u, 0u, 0u);
    }
}

/* One chunk of one row tile into acc: its 4 mma k-steps from zero (the weights decoded from the thread's codes w,
 * the activations xv), then acc = fma(s, partial, acc) with the block scales s of rows g and g + 8. */
template <int DT, int NT, int DG, bool PL>
__device__ __forceinline__ void chunk_mma(float (&acc)[NT][4], const uint2 (&w)[2], const uint4 (&xv)[NT][2],
                                          const float (&s)[2], const char* tab, uint32_t lane4) {
    typedef Op<DT> O;
    float part[NT][4];
#pragma unroll
    for (int nt = 0; nt < NT; ++nt) part[nt][0] = part[nt][1] = part[nt][2] = part[nt][3] = 0.0f;
#pragma unroll
    for (int j = 0; j < 4; ++j) {
        uint32_t a[4];
        decode_step<DG, PL>(a, w, j, tab, lane4);
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

/* Chunks c .. c + U - 1 (those below c_end) of the warp's RT row tiles into acc: each chunk's activations are
 * read once and multiply every tile's weights. */
template <int DT, int NT, int U, int DG, int XM, bool PL, int RT>
__device__ __forceinline__ void compute_group(float (&acc)[RT][NT][4], const Group<U> (&G)[RT], const Args& p,
                                              const Rows<NT> (&R)[RT], int c, int c_end, const char* tab,
                                              uint32_t lane4, const float* code2, float off, Ahead<NT>& ahead) {
    const bool nested = p.a8 != nullptr;
    uint4 xg[XM == kXPerGroup ? U : 1][NT][2];
    if constexpr (XM == kXPerGroup) {
#pragma unroll
        for (int u = 0; u < U; ++u) load_x<NT>(xg[u], R[0], c + u, c_end);
    }
    if constexpr (DG == kDiagLoadsOnly) {  // keeps the loads alive, nothing else
#pragma unroll
        for (int rt = 0; rt < RT; ++rt)
#pragma unroll
            for (int u = 0; u < U; ++u)
                if (c + u < c_end)
                    acc[rt][0][0] += __uint_as_float((G[rt].w[u][0].x ^ G[rt].w[u][0].y ^ G[rt].w[u][1].x ^
                                                      G[rt].w[u][1].y) & 0x3fffffffu);
        return;
    } else {
#pragma unroll
        for (int u = 0; u < U; ++u) {
            const int cc = c + u;
            if (cc >= c_end) break;  // uniform across the CTA
            float s[RT][2];
#pragma unroll
            for (int rt = 0; rt < RT; ++rt) chunk_scales<U, DG>(s[rt], G[rt], u, nested, R[rt].ok, code2, off);
            uint4 xv[NT][2];
            if constexpr (XM == kXPerChunk) load_x<NT>(xv, R[0], cc, c_end);
#pragma unroll
            for (int nt = 0; nt < NT; ++nt) {
                if constexpr (XM == kXPerGroup) {
                    xv[nt][0] = xg[u][nt][0];
                    xv[nt][1] = xg[u][nt][1];
                } else if constexpr (XM == kXAhead) {
                    xv[nt][0] = ahead.x[nt][0];
                    xv[nt][1] = ahead.x[nt][1];
                } else if constexpr (XM == kDiagNoX) {
                    xv[nt][0] = xv[nt][1] = make_uint4(0x3f803f80u, 0x3f803f80u, 0x3f803f80u, 0x3f803f80u);
                }
            }
            if constexpr (XM == kXAhead) load_x<NT>(ahead.x, R[0], cc + 1, c_end);
#pragma unroll
            for (int rt = 0; rt < RT; ++rt) chunk_mma<DT, NT, DG, PL>(acc[rt], G[rt].w[u], xv, s[rt], tab, lane4);
        }
    }
}

/* The lean form of one task's K range (template LN; the default for M <= 16 on the tile-major copy with grouped
 * scales; A/B: variant 19 runs the general loop instead, 18 the lean form with registers for 3 CTAs per SM): the
 * general loop's form for those calls (nested absmax in 4-chunk groups, activations one chunk ahead, the table
 * addressed by PTX, one row tile a task) with its per-chunk bookkeeping taken out; the same results bit for bit
 * (the same mma steps, scales and fma order):
 * - no per-chunk range checks: with grouped scales every split is whole 4-chunk groups (kbit_gemm_4bit_lut), so a
 *   group is in range or not as a whole;
 * - no predicated loads and no zero fill: a warp's tile exists (one tile a task), its rows past N are zero bytes
 *   in the tiled copy and read row 0's scales (finite; never stored), and activation rows past M read row 0
 *   (they only reach output columns past M, never stored); the activations one chunk ahead of the range's last
 *   chunk re-read that chunk instead (unused);
 * - running pointers: the weights at +512 bytes a chunk (immediate offsets), the activations at +128. */
template <int DT, int NT, int U, int S, bool PL, int PF = 0>
__device__ __forceinline__ void lean_range(float (&acc)[NT][4], const Args& p, const Rows<NT>& R, int c_begin,
                                           int c_end, const char* tab, uint32_t lane4, const float* code2,
                                           float off) {
    static_assert(U == 4, "a group is the 4 codes of one aligned word");
    const int groups = (c_end - c_begin) / U;
    if (groups <= 0) return;
    const uint8_t* w0 = R.w[0] + 512LL * c_begin;
    const long long b0[2] = {(R.f[0] >> 6) + c_begin, (R.f[1] >> 6) + c_begin};  // blocksize 64: block = chunk
    const uint8_t* x0[NT];
#pragma unroll
    for (int nt = 0; nt < NT; ++nt) x0[nt] = R.x[nt] + 128LL * c_begin;
    const int last = groups * U - 1;  // the range's last chunk, from c_begin

    // PF > 0 (A/B): the group PF groups past the registers' ring asked into L2 ahead of its loads, one 128-byte
    // line a lane (16 lanes: the group's 2048 bytes), so those loads wait on L2 rather than DRAM
    const bool pf_lane = (lane4 & 0x7cu) < 64u;
    auto load = [&](Group<U>& G, int gi) {
        const uint8_t* w = w0 + 2048LL * gi;
        if constexpr (PF > 0) {
            if (pf_lane && gi + PF < groups)
                asm volatile("prefetch.global.L2 [%0];\n" ::"l"(w + 2048LL * PF + 32 * (lane4 & 0x7cu)));
        }
#pragma unroll
        for (int u = 0; u < U; ++u) {
            const uint4 v = ld_stream16(w + 512 * u);
            G.w[u][0] = make_uint2(v.x, v.y);
            G.w[u][1] = make_uint2(v.z, v.w);
        }
#pragma unroll
        for (int r = 0; r < 2; ++r) {
            const long long b = b0[r] + 4LL * gi;
            G.amax[0][r] = __ldg(p.absmax + (b >> 8));
            G.q8[0][r] = __ldg(reinterpret_cast<const uint32_t*>(p.a8 + b));
        }
    };
    auto load_x_at = [&](uint4 (&x)[NT][2], int k) {
#pragma unroll
        for (int nt = 0; nt < NT; ++nt) {
            const uint4* xp = reinterpret_cast<const uint4*>(x0[nt] + 128LL * k);
            x[nt][0] = __ldg(xp);
            x[nt][1] = __ldg(xp + 1);
        }
    };

    Group<U> G[S];
    uint4 xa[NT][2];
    load_x_at(xa, 0);
#pragma unroll
    for (int s = 0; s + 1 < S; ++s)
        if (s < groups) load(G[s], s);
    for (int i = 0; i < groups; i += S) {
#pragma unroll
        for (int s = 0; s < S; ++s) {
            const int gi = i + s;
            if (gi >= groups) break;
            if (gi + S - 1 < groups) load(G[(s + S - 1) % S], gi + S - 1);
#pragma unroll
            for (int u = 0; u < U; ++u) {
                const int k = gi * U + u;
                float sc[2];
#pragma unroll
                for (int r = 0; r < 2; ++r)  // rule 1
                    sc[r] = __fadd_rn(__fmul_rn(code2[(G[s].q8[0][r] >> (8 * u)) & 0xffu], G[s].amax[0][r]), off);
                uint4 xv[NT][2];
#pragma unroll
                for (int nt = 0; nt < NT; ++nt) {
                    xv[nt][0] = xa[nt][0];
                    xv[nt][1] = xa[nt][1];
                }
                load_x_at(xa, k < last ? k + 1 : k);
                chunk_mma<DT, NT, kScalesPerGroup, PL>(acc, G[s].w[u], xv, sc, tab, lane4);
            }
        }
    }
}

/* f(nt, e, m, n) for each element of the warp's C fragments inside the output: acc[nt][e] is out[m][n], m = 8 nt +
 * 2t + (e & 1), n = 16 tile + g + 8 (e >> 1). */
template <int NT, typename F>
__device__ __forceinline__ void each_output(const Args& p, long long tile, int g, int t, F f) {
#pragma unroll
    for (int nt = 0; nt < NT; ++nt)
#pragma unroll
        for (int e = 0; e < 4; ++e) {
            const int m = 8 * nt + 2 * t + (e & 1);
            const long long n = tile * 16 + g + 8 * (e >> 1);
            if (m < p.M && n < p.N) f(nt, e, m, n);
        }
}

/* The pair table (entry e = one byte, its high nibble the first (lower-k) element, in the low half; a copy per
 * lane) and the nested absmax code table, filled by the CTA's THREADS threads. Every warp waits for the fill before
 * its first weight load, so it is short: a thread packs an entry once and writes its 32 lane copies (128 bytes) as
 * 8 16-byte stores, the k-th at slot (k + e) % 8, so the 8 threads of a quarter warp hit 8 different bank groups
 * (each copy by its own store, with two table loads and a pack each: ~440 SASS instructions a thread, now ~60). */
template <int DT, int THREADS>
__device__ __forceinline__ void fill_tables(uint32_t* pair, float* code2, const Args& p, int tid) {
    for (int e = tid; e < 256; e += THREADS) {
        const uint32_t v = Op<DT>::pack(__ldg(p.table + (e >> 4)), __ldg(p.table + (e & 15)));
        uint4* copies = reinterpret_cast<uint4*>(pair + e * 64);
#pragma unroll
        for (int k = 0; k < 8; ++k) copies[(k + e) & 7] = make_uint4(v, v, v, v);
    }
    if (p.a8 != nullptr)
        for (int i = tid; i < 256; i += THREADS) code2[i] = __ldg(p.code2 + i);
}

/* The weight side of a warp's Rows for its 16-row tile: rows g and g + 8 (rows past N: ok false, never read). */
template <int NT, bool TL>
__device__ __forceinline__ void tile_rows(Rows<NT>& R, const Args& p, long long tile, int g, int t, int lane,
                                          int chunks) {
#pragma unroll
    for (int r = 0; r < 2; ++r) {
        const long long n = tile * 16 + g + 8 * r;
        R.ok[r] = n < p.N;
        const long long nn = R.ok[r] ? n : 0;
        R.w[r] = p.B + nn * (p.K >> 1) + 8 * t;
        R.f[r] = nn * p.K;
    }
    if constexpr (TL) {  // tiled = 1: tile-major [tiles][chunks][32][16]; 2: chunk-major [chunks][tiles][32][16]
        R.w[0] = p.B + ((p.tiled == 2 ? tile : tile * (long long)chunks) * 32 + lane) * 16;
        R.wstep = p.tiled == 2 ? 512 * ((p.N + 15) / 16) : 512;
    }
}

/* A warp's tile of out from its acc of split z. Splits > 1: the float32 partials are parked, and the tile's last
 * warp (a counter per tile, reset by it) sums all splits in order 0, 1, ...: deterministic. Then bias and the
 * rounding to the dtype. */
template <int DT, int NT>
__device__ __forceinline__ void finish_tile(const Args& p, long long tile, int z, int g, int t, int lane,
                                            const float (&acc)[NT][4]) {
    typedef Op<DT> O;
    typedef typename O::t T;
    const long long MN = (long long)p.M * p.N;
    if (p.splits > 1) {
        float* part = p.partial + (long long)z * MN;
        each_output<NT>(p, tile, g, t, [&](int nt, int e, int m, long long n) {
            __stcg(part + (long long)m * p.N + n, acc[nt][e]);
        });
        __threadfence();
        __syncwarp();
        int last = 0;
        if (lane == 0) {
            int* ctr = p.counters + tile;
            last = atomicAdd(ctr, 1) == p.splits - 1;
            if (last) *ctr = 0;  // ready for the next call
        }
        if (!__shfl_sync(0xffffffffu, last, 0)) return;
        __threadfence();
    }
    const T* bias = reinterpret_cast<const T*>(p.bias);
    T* out = reinterpret_cast<T*>(p.out);
    each_output<NT>(p, tile, g, t, [&](int nt, int e, int m, long long n) {
        float y = acc[nt][e];
        if (p.splits > 1) {  // fixed order: split 0, 1, 2, ...
            y = 0.0f;
            for (int zz = 0; zz < p.splits; ++zz)
                y = __fadd_rn(y, __ldcg(p.partial + (long long)zz * MN + (long long)m * p.N + n));
        }
        if (bias != nullptr) y = __fadd_rn(y, O::ld(bias, n));
        O::st(out, (long long)m * p.N + n, y);
    });
}

template <int DT, int NT, int U, int S, int MINB, bool TL, int DG, int XM, bool PL, int RT, int LN = 0>
__global__ void __launch_bounds__(kThreads, MINB) gemm_lut_kernel(const Args p) {
    static_assert(!LN || (TL && DG == kScalesPerGroup && XM == kXAhead && RT == 1), "the lean form's premises");
    extern __shared__ __align__(16) uint32_t lut_smem[];
    uint32_t* pair = lut_smem;
    float* code2 = reinterpret_cast<float*>(lut_smem + kPairWords);

    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int g = lane >> 2, t = lane & 3;
    const bool nested = p.a8 != nullptr;
    fill_tables<DT, kThreads>(pair, code2, p, tid);
    const float off = nested ? __ldg(p.off) : 0.0f;
    __syncthreads();
    const char* tab = reinterpret_cast<const char*>(pair);
    uint32_t lane4 = 4u * (uint32_t)lane;
    if constexpr (PL) {  // the table's shared address: upper 16 bits into the lane word, the rest the LDS immediate
        const uint32_t base = (uint32_t)__cvta_generic_to_shared(pair);
        if ((base & 0xffffu) != kPtxTableOffset) __trap();
        lane4 |= base & 0xffff0000u;
    }

    const int chunks = (int)(p.K / kChunk);
    const long long tasks = RT == 1 ? p.tasks : ((p.N + 15) / 16 + RT - 1) / RT * p.splits;

    // warps take tasks on their own (no CTA barrier after the table), so the last wave is one warp's task deep.
    // spread: task b + G w for warp w of CTA b (G CTAs: every resident slot, launch_tasks), so that fewer tasks
    // than warp slots fall evenly on the SMs (1792 tasks: 13-14 a SM) instead of filling 8 a CTA (16 a SM on most
    // SMs, 8 on the rest)
    const long long first = p.spread ? blockIdx.x + (long long)warp * gridDim.x : (long long)blockIdx.x * kWarps + warp;
    for (long long task = first; task < tasks; task += (long long)gridDim.x * kWarps) {
        const long long tile0 = task / p.splits * RT;  // the task's RT consecutive row tiles share its activations
        const int z = (int)(task - tile0 / RT * p.splits);
        const int c_begin = z * p.chunks_per_split;
        const int c_end = c_begin + p.chunks_per_split < chunks ? c_begin + p.chunks_per_split : chunks;
        Rows<NT> R[RT];
#pragma unroll
        for (int rt = 0; rt < RT; ++rt) tile_rows<NT, TL>(R[rt], p, tile0 + rt, g, t, lane, chunks);
#pragma unroll
        for (int nt = 0; nt < NT; ++nt) {  // the activation side: R[0]'s
            const int m = 8 * nt + g;
            R[0].xok[nt] = m < p.M;
            R[0].x[nt] = reinterpret_cast<const uint8_t*>(p.A) + 2 * ((long long)(R[0].xok[nt] ? m : 0) * p.K + 16 * t);
        }

        float acc[RT][NT][4];
#pragma unroll
        for (int rt = 0; rt < RT; ++rt)
#pragma unroll
            for (int nt = 0; nt < NT; ++nt) acc[rt][nt][0] = acc[rt][nt][1] = acc[rt][nt][2] = acc[rt][nt][3] = 0.0f;
        if constexpr (LN) {
            lean_range<DT, NT, U, S, PL, (LN > 1 ? LN : 0)>(acc[0], p, R[0], c_begin, c_end, tab, lane4, code2,
                                                          off);
            finish_tile<DT, NT>(p, tile0, z, g, t, lane, acc[0]);
            continue;
        }
        // S groups in registers, a ring: the next S - 1 groups' loads in flight while one group of U chunks is
        // computed (slots are compile-time indices, so the ring stays in registers)
        Group<U> G[S][RT];
        Ahead<NT> ahead;
        if constexpr (XM == kXAhead) load_x<NT>(ahead.x, R[0], c_begin, c_end);
#pragma unroll
        for (int s = 0; s + 1 < S; ++s)
#pragma unroll
            for (int rt = 0; rt < RT; ++rt) load_group<U, NT, TL, DG>(G[s][rt], p, R[rt], c_begin + s * U, c_end);
        for (int c = c_begin; c < c_end; c += S * U) {
#pragma unroll
            for (int s = 0; s < S; ++s) {
                const int cs = c + s * U;
                if (cs >= c_end) break;
                if (cs + (S - 1) * U < c_end)
#pragma unroll
                    for (int rt = 0; rt < RT; ++rt)
                        load_group<U, NT, TL, DG>(G[(s + S - 1) % S][rt], p, R[rt], cs + (S - 1) * U, c_end);
                compute_group<DT, NT, U, DG, XM, PL, RT>(acc, G[s], p, R, cs, c_end, tab, lane4, code2, off, ahead);
            }
        }

#pragma unroll
        for (int rt = 0; rt < RT; ++rt)  // tiles past N: rows all out, nothing to store or count
            if (rt == 0 || (tile0 + rt) * 16 < p.N) finish_tile<DT, NT>(p, tile0 + rt, z, g, t, lane, acc[rt]);
    }
}

/* n8 activation tiles for M rows (M <= 8 NT). */
inline int tile_n8(int M) { return M <= 8 ? 1 : M <= 16 ? 2 : M <= 32 ? 4 : 8; }

/* (chunks per group U, resident CTAs per SM the registers are budgeted for) of each variant; the pair table's
 * 64 KB allows 3 CTAs per SM. Variant 0 is the default; kbit_gemm_lut_tuning picks another for the A/B (bf16 only;
 * same results: neither changes the accumulation order). */
inline int g_lut_variant = 0;

/* What launch_persistent asks the runtime once per kernel and device: the CTAs of kern resident per SM (its
 * dynamic shared memory limit raised first) and the SM count; sms == 0: not asked yet. Asking on every call put an
 * occupancy query before each launch of the one-row GEMM. A torn read by another host thread can only see sms == 0
 * (asked again) or occ == 0 (one CTA per SM: fewer CTAs take the same tasks). */
struct Fit {
    int occ = 0, sms = 0;
};

/* A persistent grid of kern: as many CTAs as fit on the device, at most ctas (ctas_per_sm != nullptr: only how
 * many fit on one SM). fit: kern's own, per device. */
template <typename Kernel>
cudaError_t launch_persistent(Kernel kern, Fit (&fit)[64], size_t smem, int threads, long long ctas, const Args& p,
                              cudaStream_t stream, int* ctas_per_sm) {
    int dev = 0;
    cudaError_t e = cudaGetDevice(&dev);
    if (e != cudaSuccess) return e;
    Fit f = dev < 64 ? fit[dev] : Fit{};
    if (f.sms == 0) {
        e = cudaFuncSetAttribute(kern, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem);
        if (e == cudaSuccess) e = cudaOccupancyMaxActiveBlocksPerMultiprocessor(&f.occ, kern, threads, smem);
        if (e == cudaSuccess) e = cudaDeviceGetAttribute(&f.sms, cudaDevAttrMultiProcessorCount, dev);
        if (e != cudaSuccess) return e;
        if (dev < 64) fit[dev] = f;
    }
    if (ctas_per_sm != nullptr) {
        *ctas_per_sm = f.occ;
        return cudaSuccess;
    }
    const long long slots = (long long)(f.occ > 0 ? f.occ : 1) * f.sms;
    kern<<<(unsigned)(ctas < slots ? ctas : slots), threads, smem, stream>>>(p);
    return cudaGetLastError();
}

/* launch_persistent for `tasks` warp tasks: dealt 8 a CTA, or (p.spread) warp-major over every resident CTA where
 * that leaves fewer than 8 on the busiest CTA -- fewer tasks than warp slots, which 8 a CTA would pile on some SMs
 * while others idle (1792 tasks on 2112 slots: 16 warps on 92 SMs, 8 on 40; spread, 13-14 on each). Where both
 * put 8 on the busiest CTA (2048 tasks) spreading measured no faster (matmul-h100/lean_lut_spread). */
template <typename Kernel>
cudaError_t launch_tasks(Kernel kern, Fit (&fit)[64], size_t smem, long long tasks, const Args& p,
                         cudaStream_t stream, int* ctas_per_sm) {
    Args q = p;
    if (q.spread && ctas_per_sm == nullptr) {
        int occ = 0;
        cudaError_t e = launch_persistent(kern, fit, smem, kThreads, 0, p, stream, &occ);
        if (e != cudaSuccess) return e;
        int dev = 0;
        e = cudaGetDevice(&dev);
        if (e != cudaSuccess) return e;
        const long long slots = (long long)(occ > 0 ? occ : 1) * (dev < 64 ? fit[dev].sms : 1);
        q.spread = (tasks + slots - 1) / slots < kWarps;
    }
    return launch_persistent(kern, fit, smem, kThreads, q.spread ? tasks : (tasks + kWarps - 1) / kWarps, q, stream,
                             ctas_per_sm);
}

template <int DT, int NT, int U, int MINB, bool TL = false, int DG = kScalesPerChunk, int S = 2, int XM = kXPerChunk,
          bool PL = false, int RT = 1, int LN = 0>
cudaError_t launch_k(const Args& p, cudaStream_t stream, int* ctas_per_sm) {
    static Fit fit[64];
    return launch_tasks(gemm_lut_kernel<DT, NT, U, S, MINB, TL, DG, XM, PL, RT, LN>, fit, kSmem, p.tasks / RT, p,
                        stream, ctas_per_sm);
}

template <int DT, int NT, bool TL>
cudaError_t launch_tl(const Args& p, cudaStream_t stream, int* ctas_per_sm) {
    constexpr int U0 = NT == 1 ? 4 : 2, B0 = NT <= 2 ? 2 : 1;  // the default: no spills (ptxas -v)
    if constexpr (DT == KBIT_BF16 && NT <= 2) {
        if (p.group_scales) {  // A/B (bf16, M <= 16): kbit_matmul.h, kbit_gemm_lut_tuning
            switch (g_lut_variant) {
                case 1: return launch_k<DT, NT, 4, 2, TL>(p, stream, ctas_per_sm);
                case 2: return launch_k<DT, NT, 4, 2, TL, kDiagNoScales>(p, stream, ctas_per_sm);
                case 3: return launch_k<DT, NT, 4, 2, TL, kDiagNoLookup>(p, stream, ctas_per_sm);
                case 4: return launch_k<DT, NT, 4, 3, TL, kScalesPerGroup>(p, stream, ctas_per_sm);
                case 5: return launch_k<DT, NT, 4, 1, TL, kScalesPerGroup>(p, stream, ctas_per_sm);
                case 6: return launch_k<DT, NT, 4, 2, TL, kScalesPerGroup, 3, kXAhead>(p, stream, ctas_per_sm);
                case 10: return launch_k<DT, NT, 4, 2, TL, kDiagLoadsOnly>(p, stream, ctas_per_sm);
                case 11: return launch_k<DT, NT, 4, 2, TL, kScalesPerGroup, 2, kXPerGroup>(p, stream, ctas_per_sm);
                case 12: return launch_k<DT, NT, 4, 2, TL, kScalesPerGroup, 2, kDiagNoX>(p, stream, ctas_per_sm);
                case 13: return launch_k<DT, NT, 4, 2, TL, kScalesPerGroup>(p, stream, ctas_per_sm);
                case 15: return launch_k<DT, NT, 4, B0, TL, kScalesPerGroup, 2, kXAhead>(p, stream, ctas_per_sm);
                case 16: return launch_k<DT, NT, 4, 1, TL, kScalesPerGroup, 2, kXAhead, true, 2>(p, stream, ctas_per_sm);
                case 18:  // the lean form (the default on tile-major copies), registers for 3 CTAs per SM
                    if constexpr (TL) {
                        if (p.tiled == 1)
                            return launch_k<DT, NT, 4, 3, TL, kScalesPerGroup, 2, kXAhead, true, 1, 1>(
                                p, stream, ctas_per_sm);
                    }
                    break;
                case 23:  // the lean form with a ring of 3 / 4 groups (2 / 3 groups of codes in flight a warp)
                case 24:
                case 25:  // the lean form, the group 4 / 8 groups past the ring asked into L2 (lean_range, PF)
                case 26:
                    if constexpr (TL) {
                        if (p.tiled == 1) {
                            if (g_lut_variant == 23)
                                return launch_k<DT, NT, 4, B0, TL, kScalesPerGroup, 3, kXAhead, true, 1, 1>(
                                    p, stream, ctas_per_sm);
                            if (g_lut_variant == 24)
                                return launch_k<DT, NT, 4, B0, TL, kScalesPerGroup, 4, kXAhead, true, 1, 1>(
                                    p, stream, ctas_per_sm);
                            if (g_lut_variant == 25)
                                return launch_k<DT, NT, 4, B0, TL, kScalesPerGroup, 2, kXAhead, true, 1, 4>(
                                    p, stream, ctas_per_sm);
                            return launch_k<DT, NT, 4, B0, TL, kScalesPerGroup, 2, kXAhead, true, 1, 8>(
                                p, stream, ctas_per_sm);
                        }
                    }
                    break;
                case 27:  // the lean form with its tasks dealt 8 a CTA (the default before Args::spread)
                    if constexpr (TL) {
                        if (p.tiled == 1)
                            return launch_k<DT, NT, 4, B0, TL, kScalesPerGroup, 2, kXAhead, true, 1, 1>(
                                p, stream, ctas_per_sm);
                    }
                    break;
                case 19:  // the default's general loop on every layout (the default before the lean form)
                    return launch_k<DT, NT, 4, B0, TL, kScalesPerGroup, 2, kXAhead, true>(p, stream, ctas_per_sm);
                default: break;
            }
        }
    }
    if constexpr (NT <= 2) {  // the next chunk's activations in flight while one is computed, the pair table
                              // addressed by inline PTX (lut_gemm and lut_gemm/wgmma_ab reports); on the tile-major
                              // copy the lean form (lean_range) with its tasks spread over every resident CTA
                              // where fewer than 8 a CTA (launch_tasks; H200: 1.07-1.11x on 28672x8192 at M = 1..16,
                              // matmul-h200/lean_lut_gemm)
        if (p.group_scales) {
            if constexpr (TL) {
                if (p.tiled == 1) {
                    Args q = p;
                    q.spread = 1;
                    return launch_k<DT, NT, 4, B0, TL, kScalesPerGroup, 2, kXAhead, true, 1, 1>(q, stream,
                                                                                                 ctas_per_sm);
                }
            }
            return launch_k<DT, NT, 4, B0, TL, kScalesPerGroup, 2, kXAhead, true>(p, stream, ctas_per_sm);
        }
    }
    if (p.group_scales) return launch_k<DT, NT, 4, B0, TL, kScalesPerGroup>(p, stream, ctas_per_sm);
    return launch_k<DT, NT, U0, B0, TL>(p, stream, ctas_per_sm);
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
