// kbit-workbench: blockwise 8-bit / 4-bit quantization for Hopper (sm_90), bit-exact to the spec
// in docs/ARCHITECTURE.md. Build: python -m workbench.cuda_build quant  (IEEE flags: -fmad=false,
// -prec-div=true, -ftz=false).
//
// Layout of the work: a thread owns one CHUNK of 16 consecutive elements (bf16/fp16: two 16-byte
// loads, fp32: four). A quantization block of bs elements is G = bs/16 consecutive threads, so a
// warp holds 32/G blocks for bs <= 512 (absmax by xor-shuffles inside the G-lane group) and a
// block of bs >= 1024 spans G/32 warps of one CTA (shuffles, then shared memory).
// Rounding to the codebook: a table in shared memory built on the host from the codebook (cached;
// the table uploaded once per device, the fallbacks passed by value as kernel parameters; no
// per-call device temporaries). First choice, one shared load + one compare per element: the compact
// table for 8-bit codes (4-byte entries, "Compact plan" below), the fine table (8-byte entries, "Fine
// plan") for 4-bit codes and 8-bit codebooks the compact one cannot hold; fallbacks for codebooks too
// dense for them: the cell plan (cell load + S search steps) and an Eytzinger tree of the bounds
// (i = 2i + (s > node[i]) for log2(m) levels, the leaf words hold bucket_codes).
// Non-finite input (the spec, as the torch reference): absmax is the integer maximum of the magnitudes'
// float bits, so a block holding a NaN has absmax NaN (else an Inf: +Inf); such blocks (rare) take an
// element-by-element path: NaN scaled values get the top bucket's code (torch.bucketize), the tail
// block's stored max(absmax, 1e-38) keeps NaN.
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

#include "kbit_device.h"
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

// Fine plan: the one-load search. The cells are fine enough (m mantissa bits) that each holds at most
// ONE bound, so an entry {bound, code below | code above << 8} decides the code with one 8-byte shared
// load and one compare: q = s > bound ? above : below (cells without a bound store +inf). Direct mode
// (kbase_p < 0, small m: 4-bit codebooks) indexes by key = bits >> (23 - m) over the whole (-2, 2)
// range (384 << m entries, [128 << m, 256 << m) unused). Clamped mode indexes the key of
// max(|s|, lowest), per sign: lowest = the float of key kbase, so all smaller magnitudes share one
// cell (where the codebook has at most one bound); positive s in [0, half), negative s after it.
// The tables see finite s only, |s| < 2 (|x| <= absmax): blocks holding a NaN or an Inf take the
// kernel's element-by-element path, whose NaN code is the top bucket's. The [-1, 1] clamp is folded into
// the bounds as in the cell plan. numba_kernels/cell_plan.py:fine_plan is the numpy twin (CI tests it).
// 4-bit tables hold each code in both nibbles of its byte (code * 0x11: the kernel merges by mask).
constexpr int FINE_MAX = 4000; // entries: 31.25 KB of shared memory at most
struct Fine {
    uint2 e[FINE_MAX];
    int m;
    int kbase_p, kbase_n; // kbase_p < 0: direct mode
    int half;             // clamped mode: entries of the positive side
    int size;             // entries used
};

// What the kernel gets for a table plan: the table stays in device memory (uploaded once per plan and
// device, padded to 16 bytes) and only its pointer travels in the launch; each CTA copies it into shared
// memory with vec4 16-byte loads. Passing the 32 KB Fine struct as a __grid_constant__ parameter made every
// launch copy 32 KB of parameters, and every CTA's table fill read the constant bank with 32 distinct
// addresses per warp access (serialized); from global memory the fill is coalesced.
struct FineArgs {
    const uint4* __restrict__ e;
    int m;
    int kbase_p, kbase_n;
    int half;
    int size; // entries (8 bytes)
    int vec4; // 16-byte words of the padded table
};

// Compact plan (8-bit codes): 4-byte entries, so a warp's 32 random table reads hit about half as many
// shared-memory wavefronts as with 8-byte fine entries (bank conflicts dominated the 8-bit kernels). Cells
// are m = 7 fine (the top 16 bits of s), so a cell's bound is s's top 16 bits + 16 stored bits:
// entry = bound low 16 bits | code below << 16 | code above << 24 (cells without a bound: below == above).
// Key: x = (bits ^ (bits >> 31 arithmetic)) & 0xffff0000 folds the sign (negative s: 0x7fff - cell), so
// the used keys are one run [kbase, 0x8000 - kbase); k = min(x - (kbase << 16), limit << 16) (unsigned)
// sends |s| < lowest = float(kbase << 16) of either sign to the last entry (limit): the builder picks the
// largest kbase with no bound in (-lowest, lowest), where every s has the code of 0. byte offset = k >> 14.
// numba_kernels/cell_plan.py:compact_plan is the numpy twin (CI tests it against the spec).
constexpr int COMPACT_MAX = 8000; // entries: 31.25 KB of shared memory at most
struct Compact {
    std::vector<uint32_t> e; // limit + 1 entries, padded to a multiple of 4
    uint32_t kbase, limit;
};
struct CompactArgs {
    const uint4* __restrict__ e;
    int size; // entries (4 bytes)
    int vec4;
    uint32_t kb, lim; // kbase << 16, limit << 16
};

static bool build_compact(Compact& p, const float* bounds_in, int nbounds, const unsigned char* bucket_codes,
                          int nbuckets) {
    std::vector<float> b(nbounds);
    float minabs = INFINITY;
    for (int i = 0; i < nbounds; i++) {
        float v = bounds_in[i];
        b[i] = v < -1.0f ? -INFINITY : (v >= 1.0f ? INFINITY : v);
        if (std::isfinite(b[i])) minabs = std::min(minabs, std::fabs(b[i]));
    }
    auto count = [&](float v) { return (int)(std::lower_bound(b.begin(), b.end(), v) - b.begin()); };
    auto code = [&](int k) { return (uint32_t)bucket_codes[std::min(k, nbuckets - 1)]; };
    auto as_float = [](uint32_t u) { float f; std::memcpy(&f, &u, 4); return f; };
    uint32_t mb;
    std::memcpy(&mb, &minabs, 4);
    const uint32_t kbase = std::min<uint32_t>(mb >> 16, 0x3FFF); // no bound b with |b| < float(kbase << 16)
    const uint32_t limit = 0x8000 - 2 * kbase;
    if (kbase == 0 || limit + 1 > (uint32_t)COMPACT_MAX) return false;
    p.e.assign((limit + 1 + 3) & ~3u, 0);
    for (uint32_t k = 0; k <= limit; k++) {
        float vmin, vmax;
        if (k == limit) { // (-lowest, lowest): no bound inside
            vmin = vmax = 0.0f;
        } else {
            const uint32_t key = k + kbase; // < 0x4000: s >= 0 in cell key; else s < 0 in cell 0x7fff - key
            const uint32_t u = key < 0x4000 ? key : 0x7FFF - key;
            const float lo = as_float(u << 16), hi = as_float((u << 16) | 0xFFFF);
            vmin = key < 0x4000 ? lo : -hi;
            vmax = key < 0x4000 ? hi : -lo;
        }
        const int base = count(vmin), inside = count(vmax) - base;
        if (inside > 1) return false;
        uint32_t low = 0;
        if (inside) std::memcpy(&low, &b[base], 4);
        p.e[k] = (low & 0xFFFF) | code(base) << 16 | code(base + inside) << 24;
    }
    p.kbase = kbase;
    p.limit = limit;
    return true;
}

static bool build_fine(Fine& p, const float* bounds_in, int nbounds, const unsigned char* bucket_codes, int nbuckets,
                       bool clamped_only, bool rep4) {
    std::vector<float> b(nbounds);
    for (int i = 0; i < nbounds; i++) {
        float v = bounds_in[i];
        b[i] = v < -1.0f ? -INFINITY : (v >= 1.0f ? INFINITY : v);
    }
    auto count = [&](float v) { return (int)(std::lower_bound(b.begin(), b.end(), v) - b.begin()); };
    // 4-bit tables hold each code in both nibbles of its byte (the kernel merges high and low nibbles by mask)
    auto code = [&](int k) { return (uint32_t)bucket_codes[std::min(k, nbuckets - 1)] * (rep4 ? 0x11u : 1u); };
    auto as_float = [](uint32_t u) { float f; std::memcpy(&f, &u, 4); return f; };
    // entry of the value range [vmin, vmax] (one sign): base = #{b < vmin}, one bound allowed in [vmin, vmax)
    auto entry = [&](float vmin, float vmax, uint2& e) {
        const int base = count(vmin), inside = count(vmax) - base;
        if (inside > 1) return false;
        const float bound = inside ? b[base] : INFINITY;
        std::memcpy(&e.x, &bound, 4);
        e.y = code(base) | (code(base + 1) << 8);
        return true;
    };
    for (int m = 1; m <= 10; m++) {
        const int sh = 23 - m;
        const uint32_t ncell = 128u << m; // keys of |s| < 2
        auto hi_of = [&](uint32_t u) { return as_float(((u + 1) << sh) - 1); };
        std::memset(p.e, 0, sizeof(p.e));
        bool ok = true;
        if (!clamped_only && (384u << m) <= (uint32_t)FINE_MAX) { // direct
            for (uint32_t u = 0; u < ncell && ok; u++) {
                const float lo = as_float(u << sh), hi = hi_of(u);
                ok = entry(lo, hi, p.e[u]) && entry(-hi, -lo, p.e[(256u << m) + u]);
            }
            if (!ok) continue;
            for (uint32_t u = ncell; u < (256u << m); u++) p.e[u] = make_uint2(0x7f800000u, 0); // NaN keys
            p.m = m;
            p.kbase_p = p.kbase_n = -1;
            p.half = 256 << m;
            p.size = 384 << m;
            return true;
        }
        // per sign, the largest kbase whose merged cell [0, hi(kbase)] holds at most one bound
        const int zero = count(0.0f); // == count(-0.0f)
        int kp = -1, kn = -1;
        while (kp + 1 < (int)ncell && count(hi_of(kp + 1)) - zero <= 1) kp++;
        while (kn + 1 < (int)ncell && zero - count(-hi_of(kn + 1)) <= 1) kn++;
        if (kp < 0 || kn < 0) continue;
        const int half = (int)ncell - kp, size = half + (int)ncell - kn;
        if (size > FINE_MAX) continue;
        for (uint32_t u = kp; u < ncell && ok; u++)
            ok = entry((int)u == kp ? 0.0f : as_float(u << sh), hi_of(u), p.e[u - kp]);
        for (uint32_t u = kn; u < ncell && ok; u++)
            ok = entry(-hi_of(u), (int)u == kn ? -0.0f : -as_float(u << sh), p.e[half + u - kn]);
        if (!ok) continue;
        p.m = m;
        p.kbase_p = kp;
        p.kbase_n = kn;
        p.half = half;
        p.size = size;
        return true;
    }
    return false;
}

// element j of a chunk held as raw words (16-bit types: element j in half j & 1 of word j / 2);
// put() stores an element that is exactly representable in T (the tail path's scalar loads)
__device__ __forceinline__ void put16(uint4* v, int j, uint32_t h) {
    uint32_t& w = (&v[0].x)[j >> 1];
    w = (j & 1) ? ((w & 0xFFFFu) | (h << 16)) : ((w & 0xFFFF0000u) | h);
}
template <typename T> struct Elem;
template <> struct Elem<float> {
    static constexpr int VECS = CHUNK * 4 / 16;
    __device__ static float at(const uint4* v, int j) { return __uint_as_float((&v[0].x)[j]); }
    __device__ static void put(uint4* v, int j, float x) { (&v[0].x)[j] = __float_as_uint(x); }
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
    __device__ static void put(uint4* v, int j, float x) { put16(v, j, bits1(x)); }
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
    __device__ static void put(uint4* v, int j, float x) { put16(v, j, bits1(x)); }
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
// S: the search (below). Table plans first (compact for 8-bit codes, fine for 4-bit); the cell plan and
// the tree are fallbacks for codebooks whose bounds are too dense somewhere for a table.
constexpr int S_TREE = 0;         // Eytzinger tree, any codebook
constexpr int S_FINE_DIRECT = 1;  // fine plan, key = bits >> (23 - m)
constexpr int S_COMPACT = 7;      // compact plan (4-byte entries, m = 7), sign-folded clamped key
constexpr int S_FINE_CLAMPED = 9; // fine plan, clamped |s| key + sign half
// S = 2, 3: cell plan with an S-step search
__host__ __device__ constexpr bool is_fine(int S) { return S == S_FINE_DIRECT || S == S_FINE_CLAMPED; }
__host__ __device__ constexpr bool is_table(int S) { return is_fine(S) || S == S_COMPACT; }
template <int L, int S>
using QParams = std::conditional_t<S == S_TREE, Tree<L>, std::conditional_t<is_fine(S), FineArgs,
                                   std::conditional_t<S == S_COMPACT, CompactArgs, Plan>>>;

// |x| maximum of a chunk as float32 bits with NaN propagating: NaN bit patterns (sign cleared) compare above
// +Inf above every finite magnitude, so the integer maximum of magnitudes is max |x| with NaN > Inf.
// 16-bit types: the maximum of the 16-bit magnitudes from the unsigned and the signed maximum of the raw
// halves (negative elements win the unsigned one, positive ones the signed one: no per-word masking),
// then one exact conversion. fp32: max.NaN with the |.| operand modifier.
template <typename T> __device__ __forceinline__ uint32_t chunk_absmax_bits(const uint4* v) {
    if constexpr (sizeof(T) == 4) {
        float m = 0.0f;
#pragma unroll
        for (int j = 0; j < CHUNK; j++) asm("max.NaN.f32 %0, %0, %1;" : "+f"(m) : "f"(fabsf(Elem<T>::at(v, j))));
        return __float_as_uint(m);
    } else {
        const uint32_t* w = &v[0].x;
        const uint32_t u = __vmaxu2(__vmaxu2(__vmaxu2(w[0], w[1]), __vmaxu2(w[2], w[3])),
                                    __vmaxu2(__vmaxu2(w[4], w[5]), __vmaxu2(w[6], w[7])));
        const uint32_t s = __vmaxs2(__vmaxs2(__vmaxs2(w[0], w[1]), __vmaxs2(w[2], w[3])),
                                    __vmaxs2(__vmaxs2(w[4], w[5]), __vmaxs2(w[6], w[7])));
        const uint32_t r = __vmaxu2(u & 0x7FFF7FFFu, s & 0x7FFF7FFFu); // two 16-bit magnitudes
        if constexpr (std::is_same_v<T, __nv_bfloat16>) return max(r << 16, r & 0xFFFF0000u);
        else return __float_as_uint(__half2float(__ushort_as_half((unsigned short)max(r & 0xFFFFu, r >> 16))));
    }
}

// PRMT selector that writes byte `byte` (4..7: of the second operand) into byte k, keeping the first operand's rest
__device__ __forceinline__ constexpr uint32_t sel_keep(int k, int byte) {
    return (0x3210u & ~(0xFu << (4 * k))) | ((uint32_t)byte << (4 * k));
}
// shared-memory table reads by 32-bit shared address (the generic address of a shared array costs an S2R of
// the CTA's cluster id, which the compiler re-issued for every group of lookups)
__device__ __forceinline__ uint2 lds64(uint32_t addr) {
    uint2 r;
    asm volatile("ld.shared.v2.u32 {%0, %1}, [%2];" : "=r"(r.x), "=r"(r.y) : "r"(addr));
    return r;
}
__device__ __forceinline__ uint32_t lds32(uint32_t addr) {
    uint32_t r;
    asm volatile("ld.shared.u32 %0, [%1];" : "=r"(r) : "r"(addr));
    return r;
}

template <typename T, int BITS, int L, int G, int S>
__global__ void __launch_bounds__(THREADS, is_table(S) ? 5 : 6) k_quantize(const void* __restrict__ A, long long n, long long nblocks,
                                                      const __grid_constant__ QParams<L, S> prm,
                                                      unsigned char* __restrict__ out, float* __restrict__ absmax,
                                                      int flags, int vec_ok, long long ntiles, long long tail_blk,
                                                      uint32_t nan_code) {
    constexpr int M = 1 << L;
    constexpr bool CELL = S == 2 || S == 3;
    __shared__ uint32_t s_tree[S == S_TREE ? 2 * M : 1];
    __shared__ __align__(16) uint16_t s_cell[CELL ? 384 << MMAX : 2];
    __shared__ __align__(16) float s_b[CELL ? 256 + 8 : 1];
    __shared__ __align__(16) uint32_t s_pair[CELL ? 2 * 256 : 2];
    __shared__ uint32_t s_warpmax[2][THREADS / 32];
    extern __shared__ uint4 s_dyn[]; // table plans: the table (dynamic shared memory)
    const uint32_t s_tab = (uint32_t)__cvta_generic_to_shared(s_dyn);
    int m_bits = 0, ident = 0;
    if constexpr (S == S_TREE) {
        for (int i = threadIdx.x; i < 2 * M; i += THREADS) s_tree[i] = prm.w[i];
    } else if constexpr (is_table(S)) {
        if constexpr (is_fine(S)) m_bits = prm.m;
        for (int i = threadIdx.x; i < prm.vec4; i += THREADS) s_dyn[i] = __ldg(prm.e + i);
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
    // Blocks spanning several warps (G > 32) meet at a barrier every tile; there each thread already
    // holds the next tile's chunk in flight (PF), so warps waiting at the barrier keep DRAM busy.
    // 8-bit codes, 16-bit inputs and table plans only: elsewhere the second chunk spills at the register
    // cap, and 4-bit nf4 bs4096 (16 bytes of spills) ran slower with it (kernel 0.283 -> 0.295 ms, A/B, H100).
    constexpr bool PF = BITS == 8 && G > 32 && sizeof(T) == 2 && is_table(S);
    uint4 nxt[PF ? Elem<T>::VECS : 1];
    bool have_nxt = false;
    const bool bnb = flags & KBIT_QFLAG_BNB_SCALE;
    // persistent CTAs: the shared tables are filled once, then tiles of THREADS chunks are strided
    int it = 0;
    for (long long tile = blockIdx.x; tile < ntiles; tile += gridDim.x, it ^= 1) {
    const long long t = tile * THREADS + threadIdx.x; // chunk index
    const long long e0 = t * CHUNK;
    const long long blk = t / G;
    const bool live = blk < nblocks;

    // the chunk stays in its raw words: elements are unpacked where they are used (registers)
    uint4 v[Elem<T>::VECS];
    if (PF && have_nxt) {
#pragma unroll
        for (int k = 0; k < Elem<T>::VECS; k++) v[k] = nxt[PF ? k : 0];
    } else if (vec_ok && e0 + CHUNK <= n) {
        const uint4* p = reinterpret_cast<const uint4*>(static_cast<const T*>(A) + e0);
#pragma unroll
        for (int k = 0; k < Elem<T>::VECS; k++) v[k] = __ldcs(p + k);
    } else {
#pragma unroll
        for (int j = 0; j < CHUNK; j++) Elem<T>::put(v, j, (e0 + j < n) ? Elem<T>::load1(A, e0 + j) : 0.0f);
    }

    // block absmax as float bits, NaN > +Inf > finite (integer maxima of non-negative float bits)
    uint32_t mb = chunk_absmax_bits<T>(v);
    constexpr int GW = G < 32 ? G : 32;
#pragma unroll
    for (int o = GW / 2; o > 0; o >>= 1) mb = max(mb, __shfl_xor_sync(0xffffffffu, mb, o));
    if constexpr (PF) {
        const long long e1 = e0 + (long long)gridDim.x * THREADS * CHUNK; // this thread's chunk of the next tile
        have_nxt = vec_ok && tile + gridDim.x < ntiles && e1 + CHUNK <= n;
        if (have_nxt) {
            const uint4* p = reinterpret_cast<const uint4*>(static_cast<const T*>(A) + e1);
#pragma unroll
            for (int k = 0; k < Elem<T>::VECS; k++) nxt[k] = __ldcs(p + k);
        }
    }
    if constexpr (G > 32) {
        const int warp = threadIdx.x >> 5;
        if ((threadIdx.x & 31) == 0) s_warpmax[it][warp] = mb; // double-buffered across tiles
        __syncthreads();
        const int first = warp & ~(G / 32 - 1);
        mb = s_warpmax[it][first];
#pragma unroll
        for (int k = 1; k < G / 32; k++) mb = max(mb, s_warpmax[it][first + k]);
    }
    const float m = __uint_as_float(mb);
    const float d = m < TINY ? TINY : m; // max(m, 1e-38) keeping NaN, as torch's clamp
    const bool tail = blk == tail_blk;
    if (live && (threadIdx.x & (G - 1)) == 0) absmax[blk] = (tail && !bnb) ? d : m;
    const float inv = bnb ? rcp_approx_ftz(m) : __frcp_rn(d);

    // codes go straight into the output words (8-bit: byte j; 4-bit: element 2k in the high nibble)
    constexpr int NW = CHUNK * BITS / 32;
    uint32_t w[NW];
#pragma unroll
    for (int k = 0; k < NW; k++) w[k] = 0;
    auto scaled = [&](int j) {
        const float x = Elem<T>::at(v, j);
        if (bnb) // bnb's fast-math scaling; the clamp turns an all-zero block's NaN into -1
            return fminf(fmaxf(mul_ftz(x, inv), -1.0f), 1.0f);
        return tail ? __fdiv_rn(x, d) : __fmul_rn(x, inv);
    };
    // the code of s through the fallback searches (tree, cell plan); s finite
    auto search = [&](float s) -> uint32_t {
        if constexpr (S == S_TREE) {
            s = fminf(fmaxf(s, -1.0f), 1.0f); // the plans fold the clamp into their bounds; the tree clamps
            const float* nodes = reinterpret_cast<const float*>(s_tree);
            int i = 1;
#pragma unroll
            for (int l = 0; l < L; l++) i = 2 * i + (s > nodes[i] ? 1 : 0);
            return s_tree[i];
        } else if constexpr (CELL) {
            const char* sb = reinterpret_cast<const char*>(s_b);
            const char* sp = reinterpret_cast<const char*>(s_pair);
            uint32_t off = s_cell[__float_as_uint(s) >> (23 - m_bits)]; // 4 * #{bounds < min(cell)}
#pragma unroll
            for (int step = 1 << (S - 1); step > 1; step >>= 1)
                off += (s > *reinterpret_cast<const float*>(sb + off + 4 * (step - 1))) ? 4 * step : 0;
            const bool up = s > *reinterpret_cast<const float*>(sb + off);
            if (BITS == 8 && ident) return (off >> 2) + (up ? 1 : 0); // sorted tables: the bucket is the code
            const uint2 pr = *reinterpret_cast<const uint2*>(sp + 2 * off);
            return up ? pr.y : pr.x;
        } else {
            return 0u;
        }
    };
    // table plans: the entry word whose byte `byte` (below) or byte + 1 (above, when `up`) holds the code
    // (4-bit tables hold the code in both nibbles of those bytes); s finite, |s| < 2
    auto lookup = [&](float s, uint32_t& y, bool& up) {
        const uint32_t bits = __float_as_uint(s);
        if constexpr (S == S_COMPACT) {
            // key of the sign-folded bits (negative s: ~bits = 0x7fffffff - |s| bits), the cell's top 16 bits;
            // keys below kbase (|s| < lowest, either sign after the unsigned wrap) clamp to the last entry
            const uint32_t x = (bits ^ (uint32_t)((int)bits >> 31)) & 0xFFFF0000u;
            const uint32_t k = min(x - prm.kb, prm.lim);
            y = lds32(s_tab + (k >> 14));
            // the cell's bound = s's top 16 bits + the entry's low 16 bits (cells without one: codes equal)
            uint32_t fb; // (bits & 0xffff0000) | (y & 0xffff) in one LOP3
            asm("lop3.b32 %0, %1, %2, %3, 0xE4;" : "=r"(fb) : "r"(bits), "r"(y), "r"(0xFFFF0000u));
            up = s > __uint_as_float(fb);
        } else if constexpr (is_fine(S)) {
            int idx;
            if constexpr (S == S_FINE_DIRECT) {
                idx = (int)(bits >> (23 - m_bits)); // finite |s| < 2: in the table
            } else {
                const int sh = 23 - m_bits;
                const uint32_t low_p = (uint32_t)max(prm.kbase_p, 0) << sh, low_n = (uint32_t)max(prm.kbase_n, 0) << sh;
                const int off_p = -prm.kbase_p, off_n = prm.half - prm.kbase_n;
                const uint32_t neg = (uint32_t)((int)bits >> 31);
                const float lowest = __uint_as_float(low_p ^ ((low_p ^ low_n) & neg));
                idx = (int)(__float_as_uint(fmaxf(fabsf(s), lowest)) >> sh) + (off_p ^ ((off_p ^ off_n) & (int)neg));
            }
            const uint2 e = lds64(s_tab + 8 * (uint32_t)idx);
            y = e.y;
            up = s > __uint_as_float(e.x);
        } else {
            y = 0;
            up = false;
        }
    };
    constexpr int YB = S == S_COMPACT ? 6 : 4; // PRMT index of the entry word's "below" byte

    if (!(mb < 0x7F800000u)) {
        // a NaN or an Inf in this block (rare): the spec's codes element by element. torch.bucketize puts NaN
        // in the top bucket; an Inf block scales finite elements to +-0 and the Infs to NaN; the 4-bit pad of
        // an odd n is s = 0 (the reference pads the scaled values)
#pragma unroll // (a run-time j would move the chunk and the output words to local memory)
        for (int j = 0; j < CHUNK; j++) {
            float s = scaled(j);
            if (BITS == 4 && !bnb && e0 + j >= n) s = 0.0f;
            uint32_t q;
            if (s != s) {
                q = nan_code;
            } else if constexpr (is_table(S)) {
                uint32_t y;
                bool up;
                lookup(s, y, up);
                q = (y >> (8 * (YB - 4 + (up ? 1 : 0)))) & (BITS == 4 ? 0xFu : 0xFFu);
            } else {
                q = search(s);
            }
            if constexpr (BITS == 8) w[j >> 2] |= q << (8 * (j & 3));
            else w[j >> 3] |= q << (4 * ((j & 7) ^ 1));
        }
    } else {
    // GRP elements at a time: the table search keeps GRP entries in flight, not 16 (registers)
    constexpr int GRP = is_table(S) ? 8 : CHUNK;
#pragma unroll
    for (int g = 0; g < CHUNK; g += GRP) {
    float s[GRP]; // (the branches stay outside the element loops)
    if (bnb) {
#pragma unroll
        for (int j = 0; j < GRP; j++) s[j] = fminf(fmaxf(mul_ftz(Elem<T>::at(v, g + j), inv), -1.0f), 1.0f);
    } else if (!tail) {
#pragma unroll
        for (int j = 0; j < GRP; j++) s[j] = __fmul_rn(Elem<T>::at(v, g + j), inv);
    } else {
#pragma unroll
        for (int j = 0; j < GRP; j++) s[j] = __fdiv_rn(Elem<T>::at(v, g + j), d);
    }

    if constexpr (is_table(S)) {
        // one table entry per element; its code byte goes into place with one PRMT (8-bit: byte j of its
        // word; 4-bit: H collects the high-nibble elements' bytes, Lo the low ones', both nibbles replicated)
        uint32_t H = 0, Lo = 0;
#pragma unroll
        for (int j = 0; j < GRP; j++) {
            uint32_t y;
            bool up;
            lookup(s[j], y, up);
            const uint32_t q = up ? y >> 8 : y; // the code in byte YB - 4 (one predicated shift)
            const int jj = g + j;
            if constexpr (BITS == 8) w[jj >> 2] = __byte_perm(w[jj >> 2], q, sel_keep(jj & 3, YB));
            else if ((jj & 1) == 0) H = __byte_perm(H, q, sel_keep((jj & 7) >> 1, YB));
            else Lo = __byte_perm(Lo, q, sel_keep((jj & 7) >> 1, YB));
        }
        if constexpr (BITS == 4) w[g >> 3] = (H & 0xF0F0F0F0u) | (Lo & 0x0F0F0F0Fu);
        asm volatile("" ::: "memory"); // keep the next group's loads behind this group's (registers)
    } else {
#pragma unroll
        for (int j = 0; j < GRP; j++) {
            const uint32_t q = search(s[j]);
            const int jj = g + j;
            if constexpr (BITS == 8) w[jj >> 2] |= q << (8 * (jj & 3));
            else w[jj >> 3] |= q << (4 * ((jj & 7) ^ 1));
        }
    }
    } // groups
    } // finite block

    if (!live || e0 >= n) continue;
    if constexpr (BITS == 4) {
        if (e0 + CHUNK <= n) {
            __stcs(reinterpret_cast<uint2*>(out + e0 / 2), make_uint2(w[0], w[1]));
        } else {
            const long long nbytes = (n + 1) / 2;
#pragma unroll
            for (int b = 0; b < CHUNK / 2; b++)
                if (e0 / 2 + b < nbytes) out[e0 / 2 + b] = (unsigned char)(w[b >> 2] >> (8 * (b & 3)));
        }
    } else {
        if (e0 + CHUNK <= n) {
            __stcs(reinterpret_cast<uint4*>(out + e0), make_uint4(w[0], w[1], w[2], w[3]));
        } else {
#pragma unroll
            for (int j = 0; j < CHUNK; j++)
                if (e0 + j < n) out[e0 + j] = (unsigned char)(w[j >> 2] >> (8 * (j & 3)));
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

// STAGED: a warp's 32 chunks leave through shared memory, 512 contiguous bytes per store
// (kbit_store_warp_staged). The default uses it for 4-bit codes, where it measured faster (g_staged_dequant).
template <typename T>
__device__ __forceinline__ void store_chunk_staged(void* out, long long e0_warp, const float* v, uint4* st, int lane) {
    constexpr int S = sizeof(T) == 4 ? 4 : 2;   // 16-byte slots per chunk
    uint4 o[S];
    if constexpr (sizeof(T) == 4) {
#pragma unroll
        for (int k = 0; k < 4; k++)
            o[k] = make_uint4(__float_as_uint(v[4 * k]), __float_as_uint(v[4 * k + 1]), __float_as_uint(v[4 * k + 2]),
                              __float_as_uint(v[4 * k + 3]));
    } else {
        uint32_t w[8];
#pragma unroll
        for (int k = 0; k < 8; k++) w[k] = Elem<T>::bits1(v[2 * k]) | (Elem<T>::bits1(v[2 * k + 1]) << 16);
        o[0] = make_uint4(w[0], w[1], w[2], w[3]);
        o[1] = make_uint4(w[4], w[5], w[6], w[7]);
    }
    kbit_store_warp_staged<S>(reinterpret_cast<uint4*>(static_cast<T*>(out) + e0_warp), o, st, lane);
}

// NESTED: double-quantized absmax, a block's scale decoded here by rule 1, code2[a8[b]] * absmax[b / 256] rounded,
// then + offset rounded: the bits of dequantize_blockwise(a8, absmax, code2, 256) + offset in float32, without
// that launch, its float32 scales in memory, and the add's launch.
struct Nested {
    const unsigned char* a8;
    const float* code2;
    const float* off;
};

template <typename T, int BITS, bool STAGED, bool NESTED = false>
__global__ void __launch_bounds__(THREADS) k_dequantize(const unsigned char* __restrict__ in,
                                                        const float* __restrict__ absmax,
                                                        const float* __restrict__ table, int ntable, long long n,
                                                        int bs_shift, void* __restrict__ out, int vec_ok,
                                                        Nested nest = {}) {
    constexpr int TS = 1 << BITS;
    __shared__ float s_tab[TS];
    __shared__ uint4 s_stage[STAGED ? THREADS * (sizeof(T) == 4 ? 4 : 2) : 1];
    for (int i = threadIdx.x; i < TS; i += THREADS) s_tab[i] = i < ntable ? table[i] : 0.0f;
    __syncthreads();

    const long long t = (long long)blockIdx.x * THREADS + threadIdx.x;
    const long long e0 = t * CHUNK;
    if (e0 >= n) return;
    float a;
    if constexpr (NESTED) {
        const long long b = e0 >> bs_shift;
        a = __fadd_rn(__fmul_rn(__ldg(nest.code2 + __ldg(nest.a8 + b)), __ldg(absmax + (b >> 8))), __ldg(nest.off));
    } else {
        a = __ldg(absmax + (e0 >> bs_shift));
    }
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
    const int lane = threadIdx.x & 31;
    if (STAGED && vec_ok && (t - lane + 32) * CHUNK <= n) {   // the whole warp's chunks are full (warp-uniform)
        store_chunk_staged<T>(out, (t - lane) * CHUNK, v, s_stage + (threadIdx.x - lane) * (sizeof(T) == 4 ? 4 : 2),
                              lane);
    } else if (full && vec_ok) {
        store_chunk<T>(out, e0, v);
    } else {
#pragma unroll
        for (int j = 0; j < CHUNK; j++)
            if (e0 + j < n) Elem<T>::store1(out, e0 + j, v[j]);
    }
}

// --------------------------------------------------------------------------------------------- host
inline bool aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15) == 0; }

int log2i(long long v) {
    int s = 0;
    while ((1LL << s) < v) s++;
    return s;
}

template <typename T, int BITS, int L, int G, int S>
cudaError_t launch_q(const void* A, long long n, const QParams<L, S>& prm, unsigned char* out, float* absmax,
                     int flags, uint32_t nan_code, cudaStream_t stream) {
    const long long bs = (long long)G * CHUNK;
    const long long nblocks = (n + bs - 1) / bs;
    const long long threads = nblocks * G;
    const long long ntiles = (threads + THREADS - 1) / THREADS;
    const long long tail_blk = n % bs ? nblocks - 1 : -1;
    size_t smem = 0;
    if constexpr (is_table(S)) smem = sizeof(uint4) * (size_t)prm.vec4;
    // resident CTAs per SM of this instantiation, for the last dynamic shared-memory size seen
    static thread_local size_t cached_smem = ~(size_t)0;
    static thread_local int per_sm = 0;
    if (smem != cached_smem) {
        cudaError_t e = cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, k_quantize<T, BITS, L, G, S>, THREADS, smem);
        if (e != cudaSuccess || per_sm < 1) per_sm = 1;
        cached_smem = smem;
    }
    const long long grid = std::min<long long>(ntiles, (long long)per_sm * kbit_num_sms());
    const int vec_ok = aligned16(A) && aligned16(out);
    k_quantize<T, BITS, L, G, S><<<(unsigned)grid, THREADS, smem, stream>>>(A, n, nblocks, prm, out, absmax, flags,
                                                                            vec_ok, ntiles, tail_blk, nan_code);
    return cudaGetLastError();
}

template <typename T, int BITS, int L, int S>
cudaError_t dispatch_g(const void* A, long long n, int blocksize, const QParams<L, S>& prm, unsigned char* out,
                       float* absmax, int flags, uint32_t nan_code, cudaStream_t stream) {
    switch (blocksize) {
    case 32: return launch_q<T, BITS, L, 2, S>(A, n, prm, out, absmax, flags, nan_code, stream);
    case 64: return launch_q<T, BITS, L, 4, S>(A, n, prm, out, absmax, flags, nan_code, stream);
    case 128: return launch_q<T, BITS, L, 8, S>(A, n, prm, out, absmax, flags, nan_code, stream);
    case 256: return launch_q<T, BITS, L, 16, S>(A, n, prm, out, absmax, flags, nan_code, stream);
    case 512: return launch_q<T, BITS, L, 32, S>(A, n, prm, out, absmax, flags, nan_code, stream);
    case 1024: return launch_q<T, BITS, L, 64, S>(A, n, prm, out, absmax, flags, nan_code, stream);
    case 2048: return launch_q<T, BITS, L, 128, S>(A, n, prm, out, absmax, flags, nan_code, stream);
    case 4096: return launch_q<T, BITS, L, 256, S>(A, n, prm, out, absmax, flags, nan_code, stream);
    default: return cudaErrorInvalidValue;
    }
}

template <int BITS, int L, int S>
cudaError_t dispatch_t(const void* A, int dtype, long long n, int blocksize, const QParams<L, S>& prm,
                       unsigned char* out, float* absmax, int flags, uint32_t nan_code, cudaStream_t stream) {
    switch (dtype) {
    case KBIT_F32: return dispatch_g<float, BITS, L, S>(A, n, blocksize, prm, out, absmax, flags, nan_code, stream);
    case KBIT_F16: return dispatch_g<__half, BITS, L, S>(A, n, blocksize, prm, out, absmax, flags, nan_code, stream);
    case KBIT_BF16:
        return dispatch_g<__nv_bfloat16, BITS, L, S>(A, n, blocksize, prm, out, absmax, flags, nan_code, stream);
    default: return cudaErrorInvalidValue;
    }
}

// Plans are cached per (kind, bits, bounds, codes): building one scans up to 2 x 131072 cells.
template <typename P> struct PlanCache {
    std::mutex mu;
    std::map<std::vector<uint32_t>, std::unique_ptr<P>> plans; // value null: no plan of this kind
};

template <typename P>
static const P* cached_plan(int S, int bits, const float* bounds, int nbounds, const unsigned char* codes,
                            int nbuckets) {
    static PlanCache<P> cache;
    // The plan this thread used last, matched on the arrays' contents: the layers of a model share a codebook, and
    // otherwise every call builds a key of up to 514 entries and searches the map with it (host time before a launch).
    struct Last {
        int S = -1, bits = 0;
        std::vector<float> bounds;
        std::vector<unsigned char> codes;
        const P* plan = nullptr;
    };
    static thread_local Last last;
    if (last.S == S && last.bits == bits && (int)last.bounds.size() == nbounds && (int)last.codes.size() == nbuckets &&
        (nbounds == 0 || std::memcmp(last.bounds.data(), bounds, 4 * (size_t)nbounds) == 0) &&
        (nbuckets == 0 || std::memcmp(last.codes.data(), codes, (size_t)nbuckets) == 0))
        return last.plan;
    std::vector<uint32_t> key(3 + nbounds + nbuckets);
    key[0] = S;
    key[1] = bits;
    key[2] = nbounds;
    std::memcpy(key.data() + 3, bounds, 4 * nbounds);
    for (int i = 0; i < nbuckets; i++) key[3 + nbounds + i] = codes[i];
    std::lock_guard<std::mutex> lock(cache.mu);
    auto it = cache.plans.find(key);
    if (it == cache.plans.end()) {
        auto p = std::make_unique<P>();
        bool ok;
        if constexpr (std::is_same_v<P, Fine>)
            ok = build_fine(*p, bounds, nbounds, codes, nbuckets, S == S_FINE_CLAMPED, bits == 4);
        else if constexpr (std::is_same_v<P, Compact>) ok = build_compact(*p, bounds, nbounds, codes, nbuckets);
        else ok = build_plan(*p, S, bounds, nbounds, codes, nbuckets);
        if (!ok) p.reset();
        it = cache.plans.emplace(std::move(key), std::move(p)).first;
    }
    last.S = S;   // plans live for the process: the pointer stays valid
    last.bits = bits;
    last.bounds.assign(bounds, bounds + nbounds);
    last.codes.assign(codes, codes + nbuckets);
    last.plan = it->second.get();
    return last.plan;
}

// A plan's table on the current device: uploaded on first use (bytes, a multiple of 16), kept for the
// process (<= 32 KB per codebook and device; a cache, not a per-call temporary). Returns the CUDA error of
// a failed upload.
static cudaError_t table_on_device(const void* plan, const void* host, size_t bytes, const uint4** table) {
    static std::mutex mu;
    static std::map<std::pair<const void*, int>, uint4*> tables;
    int dev = 0;
    cudaError_t e = cudaGetDevice(&dev);
    if (e != cudaSuccess) return e;
    std::lock_guard<std::mutex> lock(mu);
    auto it = tables.find({plan, dev});
    if (it == tables.end()) {
        uint4* d = nullptr;
        if ((e = cudaMalloc(&d, bytes)) != cudaSuccess) return e;
        if ((e = cudaMemcpy(d, host, bytes, cudaMemcpyHostToDevice)) != cudaSuccess) {
            cudaFree(d);
            return e;
        }
        it = tables.emplace(std::make_pair(plan, dev), d).first;
    }
    *table = it->second;
    return cudaSuccess;
}

// KBIT_QUANT_SEARCH=tree forces the Eytzinger path, =cell the cell plan, =clamped fine tables in
// clamped mode only, =fine the 8-byte fine tables (no compact table for 8-bit codes) (studies and tests)
static int g_search = -1; // 0 default, 1 tree, 2 cell, 3 clamped, 4 fine

template <int BITS, int L>
cudaError_t quantize(const void* A, int dtype, long long n, int blocksize, const float* bounds, int nbounds,
                     const unsigned char* bucket_codes, int nbuckets, unsigned char* out, float* absmax, int flags,
                     cudaStream_t stream) {
    if (n < 0 || nbounds < 0 || nbounds > (1 << L) - 1 || nbuckets != nbounds + 1) return cudaErrorInvalidValue;
    for (int i = 1; i < nbounds; i++)
        if (!(bounds[i - 1] < bounds[i])) return cudaErrorInvalidValue; // must be strictly increasing
    if (n == 0) return cudaSuccess;
    if (g_search < 0) {
        const char* e = std::getenv("KBIT_QUANT_SEARCH");
        g_search = !e ? 0 : std::strcmp(e, "tree") == 0 ? 1 : std::strcmp(e, "cell") == 0 ? 2
                 : std::strcmp(e, "clamped") == 0 ? 3 : std::strcmp(e, "fine") == 0 ? 4 : 0;
    }
    // torch.bucketize puts NaN in the top bucket: its code is the NaN blocks' code
    const uint32_t nan_code = bucket_codes[nbuckets - 1];
    // 8-bit codes: the compact table (4-byte entries) if it fits
    if constexpr (BITS == 8) {
        if (g_search == 0) {
            if (const Compact* p = cached_plan<Compact>(S_COMPACT, BITS, bounds, nbounds, bucket_codes, nbuckets)) {
                const uint4* table = nullptr;
                if (const cudaError_t e = table_on_device(p, p->e.data(), 4 * p->e.size(), &table)) return e;
                const CompactArgs a{table, (int)p->limit + 1, (int)(p->e.size() / 4), p->kbase << 16, p->limit << 16};
                return dispatch_t<BITS, L, S_COMPACT>(A, dtype, n, blocksize, a, out, absmax, flags, nan_code, stream);
            }
        }
    }
    // the one-load fine plan if its table fits, else the fewest cell-search steps whose table fits
    if (g_search == 0 || g_search == 3 || g_search == 4) {
        const int kind = g_search == 3 ? S_FINE_CLAMPED : S_FINE_DIRECT;
        if (const Fine* p = cached_plan<Fine>(kind, BITS, bounds, nbounds, bucket_codes, nbuckets)) {
            const uint4* table = nullptr;
            const int vec4 = (p->size + 1) / 2; // e[] is zeroed past size
            if (const cudaError_t e = table_on_device(p, p->e, sizeof(uint4) * vec4, &table)) return e;
            const FineArgs a{table, p->m, p->kbase_p, p->kbase_n, p->half, p->size, vec4};
            if (p->kbase_p < 0)
                return dispatch_t<BITS, L, S_FINE_DIRECT>(A, dtype, n, blocksize, a, out, absmax, flags, nan_code, stream);
            return dispatch_t<BITS, L, S_FINE_CLAMPED>(A, dtype, n, blocksize, a, out, absmax, flags, nan_code, stream);
        }
    }
    if (g_search != 1) {
        if (const Plan* p = cached_plan<Plan>(2, BITS, bounds, nbounds, bucket_codes, nbuckets))
            return dispatch_t<BITS, L, 2>(A, dtype, n, blocksize, *p, out, absmax, flags, nan_code, stream);
        if (const Plan* p = cached_plan<Plan>(3, BITS, bounds, nbounds, bucket_codes, nbuckets))
            return dispatch_t<BITS, L, 3>(A, dtype, n, blocksize, *p, out, absmax, flags, nan_code, stream);
    }
    Tree<L> tree;
    build_tree<L>(tree, bounds, nbounds, bucket_codes, nbuckets);
    return dispatch_t<BITS, L, 0>(A, dtype, n, blocksize, tree, out, absmax, flags, nan_code, stream);
}

// The dequantizers' per-warp staged stores: on for 4-bit codes, off for 8-bit (H200, n = 2^28 into bf16: 4-bit
// 0.221 -> 0.169 ms, 8-bit 0.210 -> 0.218 ms; studies/probes/quant_dequant_ab.py, reports/gpu-h200/staged_dequant).
// The A/B knob kbit_quant_tuning: -1 that default, 0 direct, 1 staged.
int g_staged_dequant = -1;

template <int BITS, bool NESTED = false>
cudaError_t dequantize(const unsigned char* in, const float* absmax, const float* table, int ntable, long long n,
                       int blocksize, void* out, int dtype, cudaStream_t stream, Nested nest = {}) {
    if (n < 0 || blocksize < CHUNK || (blocksize & (blocksize - 1)) || ntable < 1 || ntable > (1 << BITS))
        return cudaErrorInvalidValue;
    if (n == 0) return cudaSuccess;
    const long long threads = (n + CHUNK - 1) / CHUNK;
    const unsigned grid = (unsigned)((threads + THREADS - 1) / THREADS);
    const int shift = log2i(blocksize);
    const int vec_ok = aligned16(in) && aligned16(out);
    const bool staged = g_staged_dequant < 0 ? BITS == 4 : g_staged_dequant != 0;
#define KD(T) (staged ? k_dequantize<T, BITS, true, NESTED><<<grid, THREADS, 0, stream>>>( \
                                     in, absmax, table, ntable, n, shift, out, vec_ok, nest) \
                               : k_dequantize<T, BITS, false, NESTED><<<grid, THREADS, 0, stream>>>( \
                                     in, absmax, table, ntable, n, shift, out, vec_ok, nest))
    switch (dtype) {
    case KBIT_F32: KD(float); break;
    case KBIT_F16: KD(__half); break;
    case KBIT_BF16: KD(__nv_bfloat16); break;
    default: return cudaErrorInvalidValue;
    }
#undef KD
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

cudaError_t kbit_dequantize_4bit_nested(const unsigned char* packed, const float* absmax2,
                                        const unsigned char* absmax_8bit, const float* absmax_code,
                                        const float* absmax_offset, const float* table, long long n, int blocksize,
                                        void* out, int dtype, cudaStream_t stream) {
    if (absmax2 == nullptr || absmax_8bit == nullptr || absmax_code == nullptr || absmax_offset == nullptr)
        return cudaErrorInvalidValue;
    return dequantize<4, true>(packed, absmax2, table, 16, n, blocksize, out, dtype, stream,
                               Nested{absmax_8bit, absmax_code, absmax_offset});
}

void kbit_quant_tuning(int staged_dequant) { g_staged_dequant = staged_dequant < 0 ? -1 : staged_dequant != 0; }

int kbit_quant_ieee_build(void) {
#if defined(__FAST_MATH__) || defined(__USE_FAST_MATH__)
    return 0;
#else
    return 1;
#endif
}

} // extern "C"
