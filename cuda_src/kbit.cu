// k-bit family (issue 19): quantize/dequantize with K = 2..8, bit-plane or dense packing, six scale formats.
// Rules: workbench/backends/reference/kbit.py, bit for bit (the same helpers as workbench/_native/kbit_cpu.pyx):
// IEEE float32 (cuda_build: -fmad=false, IEEE division), rintf = round half to even, floor(log2) from the bits.
//
// Quantize, one fused pass (each element read once from DRAM):
//   blocksize 16 or 32 (the defaults): a thread per 32-element group, 16-byte loads (16-bit input: the next
//     group's issued before this one's codes, its absmax taken on the packed words), the scale encoded once per
//     block, K a template parameter so the search and both packings unroll into registers. A whole group of an
//     ordinary block whose largest quotient lies inside the lane table codes every element from it without a
//     branch (kk_code_lane: the quotient, a clamped cell, one 8-byte shared load, a subtract whose sign bit is
//     added to the code); any other group takes the exact search. Bit planes are packed densely and transposed by
//     delta swaps in registers (KkPack); even K stores a group's words as 16- or 8-byte vectors. This kernel is
//     bound by instruction issue at K <= 6 (ncu: 0.77 issued per cycle per scheduler, ALU pipe 62 %), about 20
//     instructions per element with the block's own work (dense; the bit planes' swaps add 0.2 at K = 2 to 1.9 at
//     K > 4), and by L1 at K = 7, 8 (92-97 %: the table's bank conflicts and the scattered loads and stores; at
//     K = 8 the input is staged by coalesced cp.async through shared memory, kk_stage_in);
//   64, 128, 256: a warp per block, a lane per element, 8 chunks of 32 in flight per warp, the packed words made
//     by a ballot per bit plane or an OR-reduction per dense word;
//   other multiples of 32 (longer blocks, rows, 96, 384): a warp per block in 8-chunk batches, read twice (the
//     second read hits L1/L2).
// The search (the fused kernels): s = x / q by a per-block reciprocal and two FMA corrections (the IEEE
// quotient, see kk_code; one in the lane kernel where x and q are 16-bit values, kk_quotient1), then one 8-byte
// shared load of the codebook's search table (numba_kernels/cell_plan.py:kbit_plan, built on the host once per
// codebook; the lane kernel restages it, kk_stage_lane) and one compare. Elements outside the table's range,
// blocks whose divisor is outside [2^-60, 2^100] and codebooks without a table take the exact path (__fdiv_rn and
// the full nearest search). The absmax is the integer max of the magnitudes' bits, which is the spec's float max
// for finite input and >= 0x7F800000 exactly when a block holds a NaN or an Inf.
// e4m3 needs the tensor max before any scale, so it runs one reduction pass first. Any other blocksize takes the
// simple path (a thread per block for the absmax, a lane per element for the codes).
// Dequantize, blocksize 16 or a multiple of 32: a thread per 32-element group (its K words in vector loads, codes by
// constant shifts or a bit gather per element), the output staged per warp in shared memory for 512-byte stores;
// at K = 8 and dense K = 7 the codebook in interleaved copies against bank conflicts (KK_DQ_COPIES).
// Other blocksizes: a thread per 8 elements. The scale is decoded in the kernel.
// Speed on the H200 and what bounds it: reports/kbit-h200/README.md.
// Every quantize path also raises a non-finite flag: the public API refuses NaN/Inf without its own pass.
#include <cuda_runtime.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <stdint.h>
#include "kbit_device.h"
#include "kbit_kbit.h"

#define KK static __device__ __forceinline__

KK float kk_bits_f32(uint32_t u) { return __uint_as_float(u); }
KK uint32_t kk_f32_bits(float f) { return __float_as_uint(f); }

// 32-bit integers where the values fit (the scale is computed once per block, on the quantizer's critical path)
KK int kk_floor_log2(float a) {
    uint32_t u = kk_f32_bits(a);
    int ex = (int)(u >> 23);
    if (ex > 0) return ex - 127;
    return (32 - __clz(u)) - 150;
}
KK float kk_pow2f(int e) {
    return e >= -126 ? kk_bits_f32((uint32_t)(e + 127) << 23) : kk_bits_f32(1u << (e + 149));
}
KK long long kk_minifloat_bits(float a, long long M, long long bias, long long emin, long long maxbits) {
    if (a == 0.0f) return 0;
    long long e = kk_floor_log2(a), eq = e > emin ? e : emin;
    long long ni = (long long)rintf(__fdiv_rn(a, kk_pow2f(eq - M)));
    long long bits = e >= emin ? (((eq + bias - 1) << M) + ni) : ni;
    return bits < maxbits ? bits : maxbits;
}
KK float kk_minifloat_value(long long bits, long long M, long long bias, long long emin) {
    long long ex = bits >> M, mant = bits & ((1LL << M) - 1);
    if (ex == 0) return __fmul_rn((float)mant, kk_pow2f(emin - M));
    return __fmul_rn((float)(mant + (1LL << M)), kk_pow2f(ex - bias - M));
}
// a >= 0 (an absmax; NaN and Inf give 0xFF). Branch-free, once per block on the quantizer's critical path: the normal
// code's mantissa rint((a 2^-e - 1) 16) is the float's top 4 mantissa bits rounded half to even (e in [-10, 4]);
// e + 11 <= 0 (zero and subnormal floats included) takes rint(a 2^14), e + 11 > 15 saturates.
KK int kk_e4m4_bits(float a) {
    const uint32_t u = __float_as_uint(a), ex = u >> 23, mant = u & 0x7FFFFFu;
    const uint32_t m = min((mant + 0x3FFFFu + ((mant >> 19) & 1u)) >> 19, 15u);
    const int sub = min((int)rintf(__fmul_rn(a, 16384.0f)), 15);
    return ex > 131u ? 0xFF : ex > 116u ? (int)(((ex - 116u) << 4) | m) : sub;
}
KK float kk_e4m4_value(int b) {
    int e = b >> 4, m = b & 15;
    return e == 0 ? __fmul_rn((float)m, kk_pow2f(-14)) : __fmul_rn((float)(16 + m), kk_pow2f(e - 15));
}
KK long long kk_encode(float a, int fmt, long long emax, float ts) {
    switch (fmt) {
    case 0: return (long long)kk_f32_bits(a);
    case 1: return kk_minifloat_bits(a, 10, 15, -14, 0x7BFF);
    case 2: return kk_minifloat_bits(a, 7, 127, -126, 0x7F7F);
    case 3: return kk_e4m4_bits(a);
    case 4: {
        if (a == 0.0f) return 0;
        long long E = kk_floor_log2(a) - emax + 127;
        return E < 0 ? 0 : (E > 254 ? 254 : E);
    }
    default: return kk_minifloat_bits(__fdiv_rn(a, ts), 3, 7, -6, 0x7E);
    }
}
KK float kk_decode(long long bits, int fmt, float ts) {
    switch (fmt) {
    case 0: return kk_bits_f32((uint32_t)bits);
    case 1: return kk_minifloat_value(bits, 10, 15, -14);
    case 2: return kk_minifloat_value(bits, 7, 127, -126);
    case 3: return kk_e4m4_value(bits);
    case 4: return kk_pow2f(bits - 127);
    default: return __fmul_rn(kk_minifloat_value(bits, 3, 7, -6), ts);
    }
}
KK float kk_load(const void* x, int kind, long long i) {
    if (kind == 0) return ((const float*)x)[i];
    uint16_t u = ((const uint16_t*)x)[i];
    return kind == 1 ? kk_bits_f32((uint32_t)u << 16) : __half2float(__ushort_as_half(u));
}
KK uint16_t kk_half_bits(int kind, float v) {
    return kind == 1 ? __bfloat16_as_ushort(__float2bfloat16_rn(v)) : __half_as_ushort(__float2half_rn(v));
}
KK bool kk_nonfinite(float v) { return (kk_f32_bits(v) & 0x7F800000u) == 0x7F800000u; }

// The stored scale: fp32 as its float, fp16/bf16 as 16 bits, the one-byte formats as a byte.
KK void kk_store_scale(void* scales, int fmt, long long b, long long bits) {
    if (fmt == 0) ((uint32_t*)scales)[b] = (uint32_t)bits;
    else if (fmt <= 2) ((uint16_t*)scales)[b] = (uint16_t)bits;
    else ((uint8_t*)scales)[b] = (uint8_t)bits;
}
KK long long kk_load_scale(const void* scales, int fmt, long long b) {
    if (fmt == 0) return ((const uint32_t*)scales)[b];
    if (fmt <= 2) return ((const uint16_t*)scales)[b];
    return ((const uint8_t*)scales)[b];
}
// e4m3's tensor scale from the max |x| (its float bits; every |x| >= 0 orders as an unsigned integer).
KK float kk_tensor_scale(int fmt, const uint32_t* gmax) {
    if (fmt != 5) return 1.0f;
    float g = kk_bits_f32(*gmax);
    return g > 0.0f ? __fdiv_rn(g, 448.0f) : 1.0f;
}
// The divisor q of a block with absmax a (sets its stored scale bits).
KK float kk_divisor(float a, int fmt, long long emax, int codes_decoded, float ts, long long* bits) {
    long long e = kk_encode(a, fmt, emax, ts);
    float d = kk_decode(e, fmt, ts);
    *bits = e;
    float base = codes_decoded ? d : a;
    return fmt == 4 ? d : (base > 1e-8f ? base : 1e-8f);
}
// Nearest entry of the sorted table c[0..m-1] (m = 2^k), the lowest index on ties.
KK int kk_nearest_pow2(float s, const float* c, int m) {
    int lo = 0;                                   // count of entries <= s, branch-free
    for (int half = m >> 1; half > 0; half >>= 1) lo += c[lo + half - 1] <= s ? half : 0;
    if (lo == 0) return 0;
    if (lo < m && fabsf(__fsub_rn(c[lo], s)) < fabsf(__fsub_rn(s, c[lo - 1]))) return lo;
    int j = lo - 1;
    float d = fabsf(__fsub_rn(s, c[j]));
    while (j > 0 && fabsf(__fsub_rn(s, c[j - 1])) == d) j--;
    return j;
}

// The codebook's search table (kbit_plan): entries e[size] (bound bits, code below | above << 8), cells of s's
// magnitude bits >> sh clamped to [kbase, kbase + half), negative s in the upper half; valid for |s| in
// [KK_TINY, safe) and s = +-0. size 0: no table (safe 0 sends every element to the exact path).
struct KkPlan {
    const uint2* e;
    int size, sh, kbase, half;
    float safe;
    int lane_bytes;               // the lane quantizer's budget for its table copies (KK_LANE_BYTES unless tuned)
};
#define KK_TINY 9.094947017729282e-13f   // 2^-40: the reciprocal division's residual stays normal above it

// The exact path: IEEE division, the full search. Not inlined: 32 copies per unrolled group otherwise.
static __device__ __noinline__ uint32_t kk_code_exact(float x, float q, const float* c, int m) {
    return (uint32_t)kk_nearest_pow2(__fdiv_rn(x, q), c, m);
}
// Code of x in a block with divisor q (r = 1/q rounded; exact: the block's divisor is outside [2^-60, 2^100]).
// s: q0 = x r, then two corrections q' = q + (x - q q) r with exact FMA residuals. With r the rounded reciprocal,
// a faithful quotient corrected once is the rounded quotient (Markstein); x r is within 2 ulp, so the first
// correction makes it faithful and the second exact. The residuals are exact while they stay normal: |x| >=
// 2^-100, which |s| >= 2^-40 and q >= 2^-60 give. tests/test_kbit_gpu.py checks it against __fdiv_rn.
KK float kk_quotient(float x, float q, float r) {
    const float s0 = __fmul_rn(x, r);
    const float s1 = __fmaf_rn(__fmaf_rn(-s0, q, x), r, s0);
    return __fmaf_rn(__fmaf_rn(-s1, q, x), r, s1);
}
// The same with one correction, exact where x and q have at most 11 significant bits (16-bit input; q a 16-bit
// value, as the absmax of such a block is, KK_SHORT_Q): with s0 within 1.5 ulp of x / q, s1 before its rounding is
// within (x/q - s0)(qr - 1), below 2^-23 ulp, of x / q, while a quotient of such significands lies at least 2^-12
// ulp from every rounding midpoint (X 2^a / Q - odd / 2^24 has a nonzero integer numerator over Q 2^24), so both
// round alike. tests/test_kbit_plan.py checks every bf16 pair; tests/test_kbit_gpu.py the kernels.
KK float kk_quotient1(float x, float q, float r) {
    const float s0 = __fmul_rn(x, r);
    return __fmaf_rn(__fmaf_rn(-s0, q, x), r, s0);
}
#define KK_SHORT_Q(q) ((__float_as_uint(q) & 0x1FFFu) == 0u)   // at most 11 significant bits
KK uint32_t kk_code(float x, float q, float r, bool exact, const uint2* T, const KkPlan& P, const float* c, int m) {
    const float s = kk_quotient(x, q, r);
    const float a = fabsf(s);
    if (exact || !(a < P.safe) || (a < KK_TINY && a != 0.0f)) return kk_code_exact(x, q, c, m);
    const uint32_t bits = __float_as_uint(s);
    const int cell = min(max((int)((bits & 0x7FFFFFFFu) >> P.sh), P.kbase), P.kbase + P.half - 1) - P.kbase;
    const uint2 e = T[cell + (int)(bits >> 31) * P.half];
    return s > __uint_as_float(e.x) ? (e.y >> 8) : (e.y & 0xFFu);
}
// The block's reciprocal and whether it must take the exact path.
KK float kk_recip(float q, bool* exact) {
    *exact = !(q >= 8.673617379884035e-19f && q <= 1.2676506002282294e30f);   // [2^-60, 2^100]; NaN too
    return __frcp_rn(q);
}

extern __shared__ uint2 kk_smem[];   // the fused quantizers' table, then their codebook

// The lane kernel's table (kk_stage_lane): the plan's cells, each entry (bound bits, code below), so that
// code = below + (bound - s < 0), i.e. below + (s > bound): the codebook's distinct values are consecutive codes
// (no repeated value), so the code above a bound is the one below plus one; a cell without a bound stores +inf.
// Entry 2 cell + sign (one funnel shift makes the index); cells are |s| bits >> sh clamped below at kbase only:
// the hx cells reach 4x the plan's top cell edge (or its safe bound), and a group whose largest quotient (its
// absmax over its divisor) reaches their end takes the exact path. That per-group test stands in for per-element
// range checks and an upper clamp: the quantizer is bound by instruction issue, mostly ALU instructions
// (reports/kbit-h200/). Quotients below 2^-40 (possibly inexact) code as exact ones do, since the table is
// refused when a bound lies within 2^-38 of zero or the merged first cell ends below that.
struct KkLane {
    int sh, kbase, hx, rep;
    uint32_t top;                 // bits of the first |s| past the table
    bool ok;                      // false: every element takes the exact path
    uint32_t mine, stride;        // this thread's copy: entry i at shared address mine + i * stride
};
#define KK_LANE_TINY_BITS 0x2C800000u   // 2^-38
#define KK_LANE_BYTES (44 << 10)        // the copies' shared memory: the codebook fits beside them in 48 KB
// hx of a plan (host and device: the launch sizes the kernel's shared memory with it)
static __host__ __device__ __forceinline__ int kk_lane_cells(const KkPlan& P) {
    if (P.size <= 0) return 0;
    const uint32_t topb = (uint32_t)(P.kbase + P.half) << P.sh;
    uint32_t safe;
    memcpy(&safe, &P.safe, 4);
    const uint32_t ext = topb + (2u << 23) < safe ? topb + (2u << 23) : safe;
    const int hx = (int)(ext >> P.sh) - P.kbase;
    return hx > 0 ? hx : 0;
}
// Copies of the table, interleaved entry by entry, lane l reading copy l % rep: with 16 copies the 16 lanes of a
// half-warp read 16 different bank pairs whatever entries they want, so an 8-byte load takes its two wavefronts
// and no more (one copy: 4-6 on normal data, ncu; the quantizer is then bound by L1 throughput at K = 8).
// As many copies (16, 8, .. 1) as KK_LANE_BYTES holds: K <= 6 16, K = 7 8, K = 8 4 (normal-float codebooks).
static __host__ __device__ __forceinline__ int kk_lane_rep(int hx, int bytes) {
    int rep = 16;
    while (rep > 1 && (long long)2 * hx * rep * 8 > bytes) rep >>= 1;
    return rep;
}
static __host__ __device__ __forceinline__ long long kk_lane_smem(const KkPlan& P, int m) {
    const int hx = kk_lane_cells(P);
    return (long long)2 * hx * kk_lane_rep(hx, P.lane_bytes) * 8 + (long long)m * 4;
}
KK KkLane kk_stage_lane(const KkPlan& P, const float* cb, int m, float** c_out) {
    KkLane L{P.sh, P.kbase, kk_lane_cells(P), 1, 0u, false, 0u, 8u};
    L.rep = kk_lane_rep(L.hx, P.lane_bytes);
    L.top = (uint32_t)(L.kbase + L.hx) << L.sh;
    L.stride = 8u * L.rep;
    L.mine = (uint32_t)__cvta_generic_to_shared(kk_smem) + 8u * (threadIdx.x & (L.rep - 1));
    float* c = (float*)(kk_smem + 2 * L.hx * L.rep);
    int bad = L.hx == 0 || ((uint32_t)(L.kbase + 1) << L.sh) - 1u < KK_LANE_TINY_BITS;
    for (int j = threadIdx.x; j < 2 * L.hx * L.rep; j += blockDim.x) {
        const int t = j / L.rep, h = t & 1, i = min(t >> 1, P.half - 1);   // cells past the plan's: its top cell
        const uint2 e = P.e[i + h * P.half];
        const uint32_t lo = e.y & 0xFFu, hi = e.y >> 8, mag = e.x & 0x7FFFFFFFu;
        if (mag < 0x7F800000u) bad |= hi != lo + 1u || mag < KK_LANE_TINY_BITS;
        kk_smem[j] = make_uint2(e.x, lo);
    }
    for (int j = threadIdx.x; j < m; j += blockDim.x) c[j] = cb[j];
    L.ok = !__syncthreads_or(bad);
    *c_out = c;
    return L;
}
// The code of x from the lane table (x / q as in kk_code; SHORT: one correction, kk_quotient1).
template <bool SHORT> KK uint32_t kk_code_lane(float x, float q, float r, const KkLane& L) {
    const float s = SHORT ? kk_quotient1(x, q, r) : kk_quotient(x, q, r);
    const uint32_t bits = __float_as_uint(s);
    const int cell = max((int)((bits << 1) >> (L.sh + 1)) - L.kbase, 0);
    // one multiply-add for the address (in C the compiler splits it into a multiply and a shift-add)
    uint32_t a, b, lo;
    asm("mad.lo.u32 %0, %1, %2, %3;" : "=r"(a) : "r"(2u * cell + (bits >> 31)), "r"(L.stride), "r"(L.mine));
    asm("ld.shared.v2.u32 {%0, %1}, [%2];" : "=r"(b), "=r"(lo) : "r"(a));
    return lo + (__float_as_uint(__fsub_rn(__uint_as_float(b), s)) >> 31);
}

// The 8x8 bit transpose of an octet held as two words (rows: the 8 bytes, a's then b's; columns: their bits): swap
// the off-diagonal 4x4 blocks, then the 2x2 and 1x1 ones inside each, about 21 instructions. Planes x elements
// becomes elements x planes (the dequantizer: element e's code is byte e) and back (the quantizer).
KK void kk_transpose8(uint32_t& a, uint32_t& b) {
    uint32_t t = ((a >> 4) ^ b) & 0x0F0F0F0Fu;
    b ^= t; a ^= t << 4;
    t = (a ^ (a >> 14)) & 0x0000CCCCu; a ^= t ^ (t << 14);
    t = (b ^ (b >> 14)) & 0x0000CCCCu; b ^= t ^ (t << 14);
    t = (a ^ (a >> 7)) & 0x00AA00AAu; a ^= t ^ (t << 7);
    t = (b ^ (b >> 7)) & 0x00AA00AAu; b ^= t ^ (t << 7);
}

// Packing one 32-element group's codes in registers (the lane kernel). Bit-plane: the codes are packed densely
// in P-bit fields (P = 2, 4 or 8, the power of two >= K), code j in field j / P of word j % P (one shift-add an
// element), then log2(P) delta swaps exchange the word index with the low bits of the bit index: bit b of code j
// moves to bit j of word b, so word b is plane b. P = 8 costs 12 swaps (60 instructions a group) where an 8x8
// transpose per octet and three byte permutes per plane took about 105 at K = 7; K = 2, one swap where a spread
// multiply per code took two instructions an element.
template <int K, int LAYOUT> struct KkPack {
    static constexpr int P = K <= 2 ? 2 : (K <= 4 ? 4 : 8);
    static constexpr int NW = LAYOUT == 0 ? P : K;
    uint32_t a[NW];
    __device__ __forceinline__ KkPack() {
#pragma unroll
        for (int i = 0; i < NW; i++) a[i] = 0u;
    }
    // j: a constant after unrolling (a[] stays in registers)
    __device__ __forceinline__ void add(int j, uint32_t code) {
        if (LAYOUT == 0) {
            a[j % P] += code << (P * (j / P));   // codes < 2^K <= 2^P: the add is an OR
        } else {                                  // stream bits [J*K, J*K + K): word and shift known at compile time
            const int p = j * K, wi = p >> 5, sh = p & 31;
            a[wi] += code << sh;                  // an add (the bits are free): one shift-add, where an OR took two
            if (sh + K > 32) a[wi + 1] += code >> (32 - sh);
        }
    }
    // after the last add: swap bit d of the word index with bit d of the bit index, d = 1, 2, 4
    __device__ __forceinline__ void seal() {
#pragma unroll
        for (int d = 1; d < (LAYOUT == 0 ? P : 1); d <<= 1) {
            const uint32_t m = d == 1 ? 0x55555555u : (d == 2 ? 0x33333333u : 0x0F0F0F0Fu);
#pragma unroll
            for (int r = 0; r < P; r++) {
                if (r & d) continue;
                const uint32_t t = ((a[r] >> d) ^ a[r | d]) & m;
                a[r | d] ^= t;
                a[r] ^= t << d;
            }
        }
    }
    // word b of the group (bit plane b, or stream word b)
    __device__ __forceinline__ uint32_t word(int b) const { return a[b]; }
};

// The warp and long quantizers' shared memory: the plan's table, then the codebook (sizes from the launch).
KK float* kk_stage(const KkPlan& P, const float* cb, int m) {
    float* c = (float*)(kk_smem + P.size);
    for (int j = threadIdx.x; j < P.size; j += blockDim.x) kk_smem[j] = P.e[j];
    for (int j = threadIdx.x; j < m; j += blockDim.x) c[j] = cb[j];
    __syncthreads();
    return c;
}
// The integer max of magnitude bits over a warp (sm_80+: one redux instruction).
KK uint32_t kk_warp_umax(uint32_t v) {
#if __CUDA_ARCH__ >= 800
    return __reduce_max_sync(0xFFFFFFFFu, v);
#else
    for (int o = 16; o > 0; o >>= 1) v = max(v, __shfl_xor_sync(0xFFFFFFFFu, v, o));
    return v;
#endif
}
#define KK_MAG(v) (__float_as_uint(v) & 0x7FFFFFFFu)
#define KK_NONFINITE_BITS 0x7F800000u

// floor(log2(max |c|)): e8m0's element emax, from the shared table (a warp reduction; every lane gets it).
KK long long kk_codebook_emax(const float* c, int m) {
    float g = 0.0f;
    for (int j = threadIdx.x & 31; j < m; j += 32) g = fmaxf(g, fabsf(c[j]));
    for (int o = 16; o > 0; o >>= 1) g = fmaxf(g, __shfl_xor_sync(0xFFFFFFFFu, g, o));
    return kk_floor_log2(g);
}

KK uint32_t kk_warp_or(uint32_t v) {
#if __CUDA_ARCH__ >= 800
    return __reduce_or_sync(0xFFFFFFFFu, v);
#else
    for (int o = 16; o > 0; o >>= 1) v |= __shfl_xor_sync(0xFFFFFFFFu, v, o);
    return v;
#endif
}

// The k words of the 32-element group starting at element 32g, written by lanes 0..k-1 (code: this lane's).
KK void kk_pack_group(uint32_t code, int lane, int k, int layout, long long g, uint32_t* out, long long nw) {
    uint32_t mine = 0;
    if (layout == 0) {
        for (int b = 0; b < k; b++) {
            uint32_t w = __ballot_sync(0xFFFFFFFFu, (code >> b) & 1u);
            if (lane == b) mine = w;
        }
    } else {                                      // the group's 32k stream bits are exactly words g*k .. g*k+k-1
        int p = lane * k, wi = p >> 5, sh = p & 31;
        uint32_t lo = code << sh, hi = sh + k > 32 ? code >> (32 - sh) : 0u;
        for (int j = 0; j < k; j++) {
            uint32_t w = kk_warp_or((wi == j ? lo : 0u) | (wi + 1 == j ? hi : 0u));
            if (lane == j) mine = w;
        }
    }
    long long w = g * k + lane;
    if (lane < k && w < nw) out[w] = mine;
}

// Latency, not bandwidth or instructions, bounds a warp-per-block quantizer: one block's chain (load, warp
// reduction, scale encode, division, code search, K ballots) took ~1500 cycles with the earlier K-step search and
// IEEE division. So each warp works on 8
// chunks of 32 elements at once, all loads issued first: R units of CH chunks (R * CH = 8) for blocks of up to
// 256 elements, and 8-chunk batches of one block for longer ones.
#define KK_BATCH 8

// Blocksizes 64, 128, 256: a warp per block of CH = bs / 32 chunks, R = 8 / CH blocks at once.
template <int CH>
__global__ void __launch_bounds__(256) kk_quantize_warp_kernel(
        const void* x, int kind, long long n, int bs, const float* cb, KkPlan P, int m, int k, int layout, int fmt,
        int codes_decoded, const uint32_t* gmax, void* scales, float* ts_out, uint32_t* out, long long nw,
        int* nonfinite) {
    constexpr int R = KK_BATCH / CH;
    const float* c = kk_stage(P, cb, m);
    const long long emax = fmt == 4 ? kk_codebook_emax(c, m) : 0;
    const int lane = threadIdx.x & 31;
    const long long U = 32 * CH, units = (n + U - 1) / U;
    const float ts = kk_tensor_scale(fmt, gmax);
    if (fmt == 5 && blockIdx.x == 0 && threadIdx.x == 0) ts_out[0] = ts;
    const long long step = (long long)gridDim.x * (blockDim.x >> 5) * R;
    bool bad = false;
    for (long long u0 = ((long long)blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5)) * R; u0 < units; u0 += step) {
        float v[R][CH];
#pragma unroll
        for (int r = 0; r < R; r++)
#pragma unroll
            for (int ch = 0; ch < CH; ch++) {
                long long i = (u0 + r) * U + ch * 32 + lane;
                v[r][ch] = i < n ? kk_load(x, kind, i) : 0.0f;
            }
        float q[R], rq[R];
        bool ex[R];
#pragma unroll
        for (int r = 0; r < R; r++) {
            uint32_t am = 0u;
#pragma unroll
            for (int ch = 0; ch < CH; ch++) am = max(am, KK_MAG(v[r][ch]));
            am = kk_warp_umax(am);
            bad |= am >= KK_NONFINITE_BITS;
            long long sbits;
            q[r] = kk_divisor(__uint_as_float(am), fmt, emax, codes_decoded, ts, &sbits);
            rq[r] = kk_recip(q[r], &ex[r]);
            if (lane == 0 && (u0 + r) * U < n) kk_store_scale(scales, fmt, u0 + r, sbits);
        }
#pragma unroll
        for (int r = 0; r < R; r++)
#pragma unroll
            for (int ch = 0; ch < CH; ch++) {
                const long long i0 = (u0 + r) * U + ch * 32, i = i0 + lane;
                if (i0 < n) {                      // warp-uniform
                    uint32_t code = i < n ? kk_code(v[r][ch], q[r], rq[r], ex[r], kk_smem, P, c, m) : 0u;
                    kk_pack_group(code, lane, k, layout, i0 >> 5, out, nw);
                }
            }
    }
    if (bad) *nonfinite = 1;
}

// Blocksizes 16 and 32 (the k-bit defaults): a thread per 32-element group. The block's absmax, scale and
// divisor are computed once (a warp per block would encode the scale 32 times over), the group arrives in
// 16-byte loads, and with K a template parameter the search and both packings unroll into registers.

// 32 16-bit elements (bf16: kind 1, fp16: kind 2) from four 16-byte words, widened exactly.
KK void kk_unpack32(const uint4* u, int kind, float* v) {
#pragma unroll
    for (int j = 0; j < 4; j++) {
        const uint32_t w[4] = {u[j].x, u[j].y, u[j].z, u[j].w};
#pragma unroll
        for (int e = 0; e < 4; e++) {
            if (kind == 1) {
                v[8 * j + 2 * e] = kk_bits_f32(w[e] << 16);
                v[8 * j + 2 * e + 1] = kk_bits_f32(w[e] & 0xFFFF0000u);
            } else {
                v[8 * j + 2 * e] = __half2float(__ushort_as_half((uint16_t)(w[e] & 0xFFFFu)));
                v[8 * j + 2 * e + 1] = __half2float(__ushort_as_half((uint16_t)(w[e] >> 16)));
            }
        }
    }
}
// Each 16-element half's largest magnitude, as the bits of its float32 value, from the group's packed 16-bit words
// (two elements per max instruction): the max over the widened values' magnitude bits, NaN and Inf included.
KK void kk_absmax16(const uint4* u, int kind, uint32_t* am) {
    const uint32_t M = 0x7FFF7FFFu;
#pragma unroll
    for (int h = 0; h < 2; h++) {
        const uint4 a = u[2 * h], b = u[2 * h + 1];
        const uint32_t t = __vimax3_u16x2(__vimax3_u16x2(a.x & M, a.y & M, a.z & M),
                                          __vimax3_u16x2(a.w & M, b.x & M, b.y & M), __vmaxu2(b.z & M, b.w & M));
        const uint32_t m16 = max(t & 0xFFFFu, t >> 16);
        am[h] = kind == 1 ? m16 << 16 : __float_as_uint(__half2float(__ushort_as_half((uint16_t)m16)));
    }
}
KK void kk_load32(const void* x, int kind, long long base, long long n, bool vec, float* v) {
    if (vec && base + 32 <= n) {
        if (kind == 0) {
            const float4* p = (const float4*)((const float*)x + base);
#pragma unroll
            for (int j = 0; j < 8; j++) {
                float4 f = p[j];
                v[4 * j] = f.x; v[4 * j + 1] = f.y; v[4 * j + 2] = f.z; v[4 * j + 3] = f.w;
            }
        } else {
            const uint4* p = (const uint4*)((const uint16_t*)x + base);
            uint4 u[4];
#pragma unroll
            for (int j = 0; j < 4; j++) u[j] = __ldcs(p + j);
            kk_unpack32(u, kind, v);
        }
    } else {
#pragma unroll
        for (int j = 0; j < 32; j++) v[j] = base + j < n ? kk_load(x, kind, base + j) : 0.0f;
    }
}

// DEF: the defaults of quantize_kbit on bf16 input (blocksize 32, e4m4, codes against the exact scale, aligned):
// with them compile-time constants the per-group switches on format, input kind and blocksize fold away (about
// 2.6 executed instructions an element of control, tuning/ncu_source_k4_d8f0869.txt).
// Three CTAs per SM (80 registers): without the bound one instance took 98 and two CTAs; four CTAs (64 registers,
// spills) measured no faster at K <= 4 and 9-16 % slower at K = 7, 8 (reports/kbit-h200/tuning/launch_bounds_ab/).
// Input staging for the lane kernel at K = 8, bound by L1 there: a thread's four 16-byte loads of its 64 bytes
// span 16 lines of 128 bytes per warp instruction, 64 wavefronts per 2 KB where 16 suffice. Coalesced copies into
// a 2 KB buffer per warp, then four conflict-free shared reads, take 32. Not at K <= 7, where the kernel is
// bound by instruction issue (staging there was not measured).
#define KK_STAGE_BYTES (8 * 2048)   // 8 warps per CTA
// this warp's buffer: past the table and the codebook (kk_lane_smem's bytes), 16-byte aligned
KK uint32_t kk_stage_buffer(const KkPlan& P, int m) {
    const uint32_t off = ((uint32_t)kk_lane_smem(P, m) + 15u) & ~15u;
    return (uint32_t)__cvta_generic_to_shared(kk_smem) + off + (threadIdx.x >> 5) * 2048u;
}
// 16-byte unit j of lane l's 64 bytes sits at unit 4 l + (j ^ ((l >> 1) & 3)): in each of the owners' four
// reads the 32 lanes then cover the 8 bank groups 4 times each, the least a 512-byte access takes
KK uint32_t kk_stage_slot(uint32_t u) { return 16u * ((u & ~3u) | ((u ^ (u >> 3)) & 3u)); }
// the warp's 2 KB at xw - lane (lane t copies units t, t + 32, t + 64, t + 96), one commit group
KK void kk_stage_in(const uint4* xw, uint32_t stg, int lane) {
#pragma unroll
    for (int k = 0; k < 4; k++)
        asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(stg + kk_stage_slot(lane + 32 * k)),
                     "l"(xw + 32 * k));
    asm volatile("cp.async.commit_group;\n" ::: "memory");
}
// this lane's 64 bytes, once the warp's copies have landed; the buffer is free for the next span after it
KK void kk_stage_out(uint32_t stg, int lane, uint4* u) {
    asm volatile("cp.async.wait_group 0;\n" ::: "memory");
    __syncwarp();
#pragma unroll
    for (int j = 0; j < 4; j++)
        asm volatile("ld.shared.v4.u32 {%0, %1, %2, %3}, [%4];" : "=r"(u[j].x), "=r"(u[j].y), "=r"(u[j].z),
                     "=r"(u[j].w) : "r"(stg + kk_stage_slot(4 * lane + j)));
    __syncwarp();
}

template <int K, int LAYOUT, bool DEF>
__global__ void __launch_bounds__(256, 3) kk_quantize_lane_kernel(
        const void* x, int kind_arg, long long n, int bs_arg, bool vec_arg, const float* cb, KkPlan P, int fmt_arg,
        int codes_decoded_arg, const uint32_t* gmax, void* scales, float* ts_out, uint32_t* out, long long nw,
        int* nonfinite) {
    const int kind = DEF ? 1 : kind_arg, bs = DEF ? 32 : bs_arg, fmt = DEF ? 3 : fmt_arg;
    const int codes_decoded = DEF ? 0 : codes_decoded_arg;
    const bool vec = DEF || vec_arg;
    constexpr int M = 1 << K;
    constexpr bool STAGE = K == 8;
    float* c;
    const KkLane L = kk_stage_lane(P, cb, M, &c);
    const long long emax = fmt == 4 ? kk_codebook_emax(c, M) : 0;
    const float ts = kk_tensor_scale(fmt, gmax);
    if (fmt == 5 && blockIdx.x == 0 && threadIdx.x == 0) ts_out[0] = ts;
    const long long groups = (n + 31) / 32, step = (long long)gridDim.x * blockDim.x;
    const long long whole = n >> 5, stored = nw / K;   // groups of 32 elements; groups whose K words all fit
    bool bad = false;
    // 16-bit input: the next group's four 16-byte loads are issued before this group's codes (one thread's loads
    // would otherwise wait a full memory latency after each group). Pointers advance by the grid's stride, so
    // the loop carries no 64-bit index arithmetic beyond one add each.
    const bool pf = vec && kind != 0;
    uint4 nx[4];
    long long g = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    const int lane = threadIdx.x & 31;
    // STAGE: the warp's next 32 groups (2 KB) come by coalesced 16-byte cp.async into its shared buffer, each
    // lane's 64 bytes swizzled so that its four 16-byte reads are conflict-free (see kk_stage_in)
    const uint4* xn = (const uint4*)x + (STAGE ? (g - lane) * 4 + lane : g * 4);   // the next input
    const uint32_t stg = STAGE ? kk_stage_buffer(P, M) : 0u;
    uint32_t* o = out + g * K;                         // this group's words
    const bool ovec = ((uintptr_t)out & 15) == 0;      // then group g's words are (K % 4 ? 8 : 16)-byte aligned
    // STAGE: only spans whose 32 groups are all whole (warp-uniform); the last partial span loads directly
    bool have = pf && (STAGE ? g - lane + 32 <= whole : g < whole);
    if (have) {
        if (STAGE) kk_stage_in(xn, stg, lane);
        else {
#pragma unroll
            for (int j = 0; j < 4; j++) nx[j] = __ldcs(xn + j);
        }
    }
    for (; g < groups; g += step, o += step * K) {
        const long long base = g * 32;
        float v[32];
        uint32_t am[2] = {0u, 0u};
        if (STAGE && have) kk_stage_out(stg, lane, nx);
        if (have) {
            kk_unpack32(nx, kind, v);
            kk_absmax16(nx, kind, am);
        } else {
            kk_load32(x, kind, base, n, vec, v);
#pragma unroll
            for (int j = 0; j < 32; j++) am[j >> 4] = max(am[j >> 4], KK_MAG(v[j]));
        }
        have = pf && (STAGE ? g - lane + step + 32 <= whole : g + step < whole);
        xn += step * 4;
        if (have) {
            if (STAGE) kk_stage_in(xn, stg, lane);
            else {
#pragma unroll
                for (int j = 0; j < 4; j++) nx[j] = __ldcs(xn + j);
            }
        }
        bad |= max(am[0], am[1]) >= KK_NONFINITE_BITS;
        if (bs == 32) am[0] = am[1] = max(am[0], am[1]);
        float q[2], rq[2];
        bool ex[2];
        long long sbits;
        if (bs == 32) {
            q[0] = q[1] = kk_divisor(__uint_as_float(am[0]), fmt, emax, codes_decoded, ts, &sbits);
            rq[0] = rq[1] = kk_recip(q[0], &ex[0]);
            ex[1] = ex[0];
            kk_store_scale(scales, fmt, g, sbits);
        } else {
#pragma unroll
            for (int h = 0; h < 2; h++) {
                q[h] = kk_divisor(__uint_as_float(am[h]), fmt, emax, codes_decoded, ts, &sbits);
                rq[h] = kk_recip(q[h], &ex[h]);
                if (base + 16 * h < n) kk_store_scale(scales, fmt, 2 * g + h, sbits);
            }
        }
        // Full groups of ordinary blocks whose largest quotient (the absmax's) lies inside the table: every code
        // from it, no branch. Anything else (the tail, divisors outside [2^-60, 2^100], large quotients, a
        // codebook the table refuses) takes the exact search, element by element.
        // (the absmax's quotient by one multiply: within 2 ulps of the IEEE one for a divisor in range, so 4 ulps
        // below the table's end keep every element's quotient inside it)
        bool full = L.ok && g < whole && !ex[0] && !ex[1];
#pragma unroll
        for (int h = 0; h < 2; h++)
            if (h == 0 || bs != 32)
                full = full && __float_as_uint(__fmul_rn(__uint_as_float(am[h]), rq[h])) + 4u < L.top;
        // 16-bit input and 16-bit divisors (the absmax itself, or a decoded e4m4 / e8m0 / fp16 / bf16 scale): one
        // correction of the quotient is exact (kk_quotient1), two instructions an element fewer: 9-12 % faster
        // where issue bound (K <= 6), 4 % at bit-plane K = 8 once its input is staged (before that 5 % slower:
        // reports/kbit-h200/tuning/one_correction_ab/, input_staging_ab/).
        const bool shortq = kind != 0 && KK_SHORT_Q(q[0]) && KK_SHORT_Q(q[1]);
        KkPack<K, LAYOUT> pk;
        if (full && shortq) {
#pragma unroll
            for (int j = 0; j < 32; j++) pk.add(j, kk_code_lane<true>(v[j], q[j >> 4], rq[j >> 4], L));
        } else if (full) {
#pragma unroll
            for (int j = 0; j < 32; j++) pk.add(j, kk_code_lane<false>(v[j], q[j >> 4], rq[j >> 4], L));
        } else {
#pragma unroll
            for (int j = 0; j < 32; j++) pk.add(j, base + j < n ? kk_code_exact(v[j], q[j >> 4], c, M) : 0u);
        }
        pk.seal();
        if (g < stored && K % 2 == 0 && ovec) {   // even K: the words in 16- or 8-byte stores (a warp's scalar
            if (K % 4 == 0) {                          // stores put 4 bytes in each 32-byte sector they touch)
#pragma unroll
                for (int b = 0; b < K; b += 4)
                    *(uint4*)(o + b) = make_uint4(pk.word(b), pk.word(b + 1), pk.word(b + 2), pk.word(b + 3));
            } else {
#pragma unroll
                for (int b = 0; b < K; b += 2) *(uint2*)(o + b) = make_uint2(pk.word(b), pk.word(b + 1));
            }
        } else if (g < stored) {   // every group but a short last one: K stores at constant offsets, no compares
#pragma unroll
            for (int b = 0; b < K; b++) o[b] = pk.word(b);
        } else {
#pragma unroll
            for (int b = 0; b < K; b++)
                if (g * K + b < nw) o[b] = pk.word(b);
        }
    }
    if (bad) *nonfinite = 1;
}

// chunks c0 .. c0 + KK_BATCH - 1 of the block at base, this lane's element of each (0 past the block or n)
KK void kk_load_batch(const void* x, int kind, long long n, long long base, int c0, int chunks, int lane, float* v) {
#pragma unroll
    for (int j = 0; j < KK_BATCH; j++) {
        long long i = base + (long long)(c0 + j) * 32 + lane;
        v[j] = (c0 + j < chunks && i < n) ? kk_load(x, kind, i) : 0.0f;
    }
}

// Any other multiple of 32 (512..4096, 96, 384, rows): one warp per block, 8-chunk batches, the block read twice
// (the second read hits L1/L2).
__global__ void __launch_bounds__(256) kk_quantize_long_kernel(
        const void* x, int kind, long long n, int bs, const float* cb, KkPlan P, int m, int k, int layout, int fmt,
        int codes_decoded, const uint32_t* gmax, void* scales, float* ts_out, uint32_t* out, long long nw,
        int* nonfinite) {
    const float* c = kk_stage(P, cb, m);
    const long long emax = fmt == 4 ? kk_codebook_emax(c, m) : 0;
    const int lane = threadIdx.x & 31, chunks = bs / 32;
    const long long units = (n + bs - 1) / bs;
    const float ts = kk_tensor_scale(fmt, gmax);
    if (fmt == 5 && blockIdx.x == 0 && threadIdx.x == 0) ts_out[0] = ts;
    const long long step = (long long)gridDim.x * (blockDim.x >> 5);
    bool bad = false;
    for (long long u = (long long)blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5); u < units; u += step) {
        const long long base = u * bs;
        uint32_t am = 0u;
        for (int c0 = 0; c0 < chunks; c0 += KK_BATCH) {
            float v[KK_BATCH];
            kk_load_batch(x, kind, n, base, c0, chunks, lane, v);
#pragma unroll
            for (int j = 0; j < KK_BATCH; j++) am = max(am, KK_MAG(v[j]));
        }
        am = kk_warp_umax(am);
        bad |= am >= KK_NONFINITE_BITS;
        long long sbits;
        bool ex;
        const float q = kk_divisor(__uint_as_float(am), fmt, emax, codes_decoded, ts, &sbits), rq = kk_recip(q, &ex);
        if (lane == 0) kk_store_scale(scales, fmt, u, sbits);
        for (int c0 = 0; c0 < chunks; c0 += KK_BATCH) {
            float v[KK_BATCH];
            kk_load_batch(x, kind, n, base, c0, chunks, lane, v);
#pragma unroll
            for (int j = 0; j < KK_BATCH; j++) {
                const long long i0 = base + (long long)(c0 + j) * 32, i = i0 + lane;
                if (c0 + j < chunks && i0 < n) {   // warp-uniform
                    uint32_t code = i < n ? kk_code(v[j], q, rq, ex, kk_smem, P, c, m) : 0u;
                    kk_pack_group(code, lane, k, layout, i0 >> 5, out, nw);
                }
            }
        }
    }
    if (bad) *nonfinite = 1;
}

__global__ void kk_write_ts_kernel(const uint32_t* gmax, float* ts) { ts[0] = kk_tensor_scale(5, gmax); }

// max |x| over the tensor (NaN ignored) for e4m3's tensor scale, and the non-finite flag.
__global__ void __launch_bounds__(256) kk_tensor_max_kernel(const void* x, int kind, long long n, uint32_t* gmax,
                                                            int* nonfinite) {
    float am = 0.0f;
    bool bad = false;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (long long)gridDim.x * blockDim.x) {
        float xv = kk_load(x, kind, i), a = fabsf(xv);
        bad |= kk_nonfinite(xv);
        am = a > am ? a : am;
    }
    for (int o = 16; o > 0; o >>= 1) { float t = __shfl_xor_sync(0xFFFFFFFFu, am, o); am = t > am ? t : am; }
    if ((threadIdx.x & 31) == 0) atomicMax(gmax, kk_f32_bits(am));
    if (bad) *nonfinite = 1;
}

// The simple path for any other blocksize: a thread per block for absmax + scale, a lane per element for codes.
__global__ void kk_absmax_kernel(const void* x, int kind, long long n, int bs, long long nb, const float* cb, int m,
                                 int fmt, int codes_decoded, const uint32_t* gmax, void* scales, float* q,
                                 int* nonfinite) {
    __shared__ float c[256];
    for (int j = threadIdx.x; j < m; j += blockDim.x) c[j] = cb[j];
    __syncthreads();
    const long long emax = fmt == 4 ? kk_codebook_emax(c, m) : 0;
    long long b = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (b >= nb) return;
    long long start = b * bs, end = start + bs < n ? start + bs : n;
    float am = 0.0f;
    bool bad = false;
    for (long long i = start; i < end; i++) {
        float xv = kk_load(x, kind, i), a = fabsf(xv);
        bad |= kk_nonfinite(xv);
        am = a > am ? a : am;
    }
    long long sbits;
    q[b] = kk_divisor(am, fmt, emax, codes_decoded, kk_tensor_scale(fmt, gmax), &sbits);
    kk_store_scale(scales, fmt, b, sbits);
    if (bad) *nonfinite = 1;
}

__global__ void __launch_bounds__(256) kk_codes_kernel(const void* x, int kind, long long n, int bs, const float* q,
                                                       const float* cb, int m, int k, int layout, uint32_t* out,
                                                       long long nw) {
    __shared__ float c[256];
    for (int j = threadIdx.x; j < m; j += blockDim.x) c[j] = cb[j];
    __syncthreads();
    const int lane = threadIdx.x & 31;
    const long long groups = (n + 31) / 32, warps = (long long)gridDim.x * (blockDim.x >> 5);
    for (long long g = (long long)blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5); g < groups; g += warps) {
        long long i = g * 32 + lane;
        uint32_t code = i < n ? (uint32_t)kk_nearest_pow2(__fdiv_rn(kk_load(x, kind, i), q[i / bs]), c, m) : 0u;
        kk_pack_group(code, lane, k, layout, g, out, nw);
    }
}

// Dequantize: thread t writes elements 8t .. 8t+7 (inside one 32-element group; one block's scale when
// bs % 8 == 0) with one 16-byte store (two for float32). One pass per thread: the GPU hides the load latency
// across many resident CTAs rather than a grid-stride loop.
__global__ void __launch_bounds__(256) kk_dequantize_kernel(
        const uint32_t* words, long long nw, long long n, int k, int layout, int bs, int bs_shift,
        const void* scales, int fmt, const float* ts_p, const float* cb, int m, int kind, void* out) {
    __shared__ float c[256];
    for (int j = threadIdx.x; j < m; j += blockDim.x) c[j] = cb[j];
    __syncthreads();
    const long long i0 = ((long long)blockIdx.x * blockDim.x + threadIdx.x) * 8;
    if (i0 >= n) return;
    const float ts = ts_p ? ts_p[0] : 1.0f;
    uint32_t codes[8];
    if (layout == 0) {
        const int j = (int)(i0 & 31);
        const uint32_t* w = words + (i0 >> 5) * k;
        uint32_t wb[8];
#pragma unroll
        for (int b = 0; b < 8; b++) wb[b] = b < k ? w[b] >> j : 0u;
#pragma unroll
        for (int e = 0; e < 8; e++) {
            uint32_t code = 0;
#pragma unroll
            for (int b = 0; b < 8; b++) code |= ((wb[b] >> e) & 1u) << b;
            codes[e] = code;
        }
    } else {                                       // 8k <= 64 stream bits from an offset < 32: three words
        const long long p = i0 * k, wi = p >> 5;
        const uint32_t w0 = words[wi], w1 = wi + 1 < nw ? words[wi + 1] : 0u, w2 = wi + 2 < nw ? words[wi + 2] : 0u;
        const unsigned long long lo = w0 | ((unsigned long long)w1 << 32), hi = w1 | ((unsigned long long)w2 << 32);
        const int sh = (int)(p & 31);
        const uint32_t mask = (1u << k) - 1u;
#pragma unroll
        for (int e = 0; e < 8; e++) {
            int o = sh + e * k;                    // < 32 + 56: from lo below bit 32 + ..., else from hi
            codes[e] = (uint32_t)((o < 32 ? lo >> o : hi >> (o - 32))) & mask;
        }
    }
    float vals[8];
    if ((bs & 7) == 0) {
        float d = kk_decode(kk_load_scale(scales, fmt, bs_shift >= 0 ? i0 >> bs_shift : i0 / bs), fmt, ts);
#pragma unroll
        for (int e = 0; e < 8; e++) vals[e] = __fmul_rn(c[codes[e]], d);
    } else {
#pragma unroll
        for (int e = 0; e < 8; e++) {
            long long i = i0 + e < n ? i0 + e : n - 1;
            long long b = bs_shift >= 0 ? i >> bs_shift : i / bs;
            vals[e] = __fmul_rn(c[codes[e]], kk_decode(kk_load_scale(scales, fmt, b), fmt, ts));
        }
    }
    if (i0 + 8 <= n) {
        if (kind == 0) {
            float4* o = (float4*)((float*)out + i0);
            o[0] = make_float4(vals[0], vals[1], vals[2], vals[3]);
            o[1] = make_float4(vals[4], vals[5], vals[6], vals[7]);
        } else {
            uint32_t h[4];
#pragma unroll
            for (int e = 0; e < 4; e++)
                h[e] = (uint32_t)kk_half_bits(kind, vals[2 * e]) | ((uint32_t)kk_half_bits(kind, vals[2 * e + 1]) << 16);
            *(uint4*)((uint16_t*)out + i0) = make_uint4(h[0], h[1], h[2], h[3]);
        }
    } else {
        for (int e = 0; i0 + e < n; e++) {
            if (kind == 0) ((float*)out)[i0 + e] = vals[e];
            else ((uint16_t*)out)[i0 + e] = kk_half_bits(kind, vals[e]);
        }
    }
}

// Dequantize, blocksize 16 or a multiple of 32 (every default): a thread per 32-element group. Its K words load
// together, the codes come out with constant shifts (bit-plane: plane bytes regrouped per octet by byte permutes,
// then one multiply gathers an element's bits, or for K > 4 an 8x8 bit transpose per octet), the block scale is
// decoded once (twice for blocksize 16), and the group leaves in 16-byte stores (bf16/fp16 pairs converted two at
// a time).
// Copies of the dequantizer's codebook: 16 KB at K = 8 and dense K = 7, the most beside the 32 KB output stage in
// 48 KB of static shared memory (4 CTAs per SM, not 6); their grid is capped (KK_DQ_PER_SM) so that each CTA's
// copies serve many groups. 3-4 % faster there; bit-plane K = 7 was 4 % slower with them
// (reports/kbit-h200/tuning/dequantize_copies_ab/).
#define KK_DQ_COPIES(K, LAYOUT) ((K) == 8 ? 16 : ((K) == 7 && (LAYOUT) == 1 ? 32 : 1))
#define KK_DQ_PER_SM 8
template <int K, int LAYOUT>
__global__ void __launch_bounds__(256) kk_dequantize_group_kernel(
        const uint32_t* __restrict__ words, long long nw, long long n, int bs, int bs_shift,
        const void* __restrict__ scales, int fmt, const float* ts_p, const float* __restrict__ cb, int kind, bool vec,
        bool wvec, void* __restrict__ out) {
    constexpr int M = 1 << K;
    // K = 7, 8: the codebook in C copies, interleaved entry by entry, lane l reading copy l % C. With one copy a
    // warp's 32 lookups of normal data take 2.8-3.1 wavefronts; with 16 copies 2, with 32 one (KK_DQ_COPIES).
    // One copy: the grid is not capped and each thread has one group.
    constexpr int C = KK_DQ_COPIES(K, LAYOUT);
    __shared__ float c[M * C];
    __shared__ uint4 stage[256 * 8];               // the output of each warp's groups (below)
    for (int j = threadIdx.x; j < M * C; j += blockDim.x) c[j] = cb[j / C];
    __syncthreads();
    const float* cl = c + (threadIdx.x & (C - 1));
    const float ts = ts_p ? ts_p[0] : 1.0f;
    const long long step = (long long)gridDim.x * blockDim.x;   // a grid-stride loop where the grid is capped
    for (long long g = (long long)blockIdx.x * blockDim.x + threadIdx.x; g * 32 < n; g += step) {
        const long long base = g * 32;
        uint32_t w[K];
        const uint32_t* wp = words + g * K;
        if (wvec && g * K + K <= nw && K % 2 == 0) {  // the group's words at 8K bytes: 16-byte loads when 4 | K
#pragma unroll
            for (int b = 0; b < K; b += K % 4 == 0 ? 4 : 2) {
                if (K % 4 == 0) {
                    const uint4 u = __ldcs((const uint4*)(wp + b));
                    w[b] = u.x; w[(b + 1) % K] = u.y; w[(b + 2) % K] = u.z; w[(b + 3) % K] = u.w;
                } else {
                    const uint2 u = __ldcs((const uint2*)(wp + b));
                    w[b] = u.x; w[(b + 1) % K] = u.y;
                }
            }
        } else {
#pragma unroll
            for (int b = 0; b < K; b++) w[b] = g * K + b < nw ? __ldcs(wp + b) : 0u;
        }
        float d[2];
#pragma unroll
        for (int h = 0; h < 2; h++) {
            const long long i = base + 16 * h < n ? base + 16 * h : base;
            d[h] = kk_decode(kk_load_scale(scales, fmt, bs_shift >= 0 ? i >> bs_shift : i / bs), fmt, ts);
        }
        uint32_t lo[4], hi[4];                         // bit-plane: octet o's byte b = plane b's byte o
        if (LAYOUT == 0) {
#pragma unroll
            for (int o = 0; o < 4; o++) {
                const uint32_t sel = (uint32_t)o | (uint32_t)(4 + o) << 4;
                const uint32_t p2 = K > 2 ? w[2 < K ? 2 : 0] : 0u, p3 = K > 3 ? w[3 < K ? 3 : 0] : 0u;
                lo[o] = __byte_perm(__byte_perm(w[0], w[1], sel), __byte_perm(p2, p3, sel), 0x5410);
                if (K > 4) {
                    const uint32_t p4 = w[4 < K ? 4 : 0], p5 = K > 5 ? w[5 < K ? 5 : 0] : 0u,
                                   p6 = K > 6 ? w[6 < K ? 6 : 0] : 0u, p7 = K > 7 ? w[7 < K ? 7 : 0] : 0u;
                    hi[o] = __byte_perm(__byte_perm(p4, p5, sel), __byte_perm(p6, p7, sel), 0x5410);
                    // rows: planes 0-3 in lo, 4-7 in hi; columns: its 8 elements. Element e's code is then byte e of
                    // lo (e < 4) or byte e - 4 of hi: ~3.6 instructions an element, not ~9.
                    kk_transpose8(lo[o], hi[o]);
                }
            }
        }
        float v[32];
#pragma unroll
        for (int j = 0; j < 32; j++) {
            uint32_t code;
            if (LAYOUT == 0) {
                const int o = j >> 3, e = j & 7;
                if (K > 4) code = __byte_perm(e < 4 ? lo[o] : hi[o], 0u, 0x4440u | (e & 3));   // transposed above
                else code = (((lo[o] >> e) & 0x01010101u) * 0x01020408u) >> 24;   // bits e of the four bytes
            } else {
                const int p = j * K, wi = p >> 5, sh = p & 31;
                code = (sh + K <= 32 ? w[wi] >> sh : __funnelshift_r(w[wi], w[wi + 1 < K ? wi + 1 : wi], sh))
                       & (M - 1u);
            }
            v[j] = __fmul_rn(cl[code * C], d[j >> 4]);
        }
        // A warp of 32 whole groups stores through shared memory, 512 contiguous bytes per store (ncu on per-thread
        // 64-byte stores: L2 86 %, DRAM 47 %).
        const int lane = threadIdx.x & 31;
        if (vec && (g - lane + 32) * 32 <= n) {
            uint4* st = stage + (threadIdx.x - lane) * 8;
            if (kind == 0) {
                uint4 o[8];
#pragma unroll
                for (int q = 0; q < 8; q++)
                    o[q] = make_uint4(__float_as_uint(v[4 * q]), __float_as_uint(v[4 * q + 1]),
                                      __float_as_uint(v[4 * q + 2]), __float_as_uint(v[4 * q + 3]));
                kbit_store_warp_staged<8>((uint4*)((float*)out + (g - lane) * 32), o, st, lane);
            } else {
                uint32_t h[16];
#pragma unroll
                for (int e = 0; e < 16; e++) {
                    if (kind == 1) {
                        __nv_bfloat162 t = __floats2bfloat162_rn(v[2 * e], v[2 * e + 1]);
                        h[e] = *(uint32_t*)&t;
                    } else {
                        __half2 t = __floats2half2_rn(v[2 * e], v[2 * e + 1]);
                        h[e] = *(uint32_t*)&t;
                    }
                }
                uint4 o[4];
#pragma unroll
                for (int q = 0; q < 4; q++) o[q] = make_uint4(h[4 * q], h[4 * q + 1], h[4 * q + 2], h[4 * q + 3]);
                kbit_store_warp_staged<4>((uint4*)((uint16_t*)out + (g - lane) * 32), o, st, lane);
            }
        } else {
#pragma unroll
            for (int j = 0; j < 32; j++)
                if (base + j < n) {
                    if (kind == 0) ((float*)out)[base + j] = v[j];
                    else ((uint16_t*)out)[base + j] = kk_half_bits(kind, v[j]);
                }
        }
        if (C == 1) break;
    }
}

// Grid-stride grids: enough CTAs to fill the GPU many times over, never more than the work.
static unsigned grid_for(long long items, int per_cta, int per_sm = 64) {
    long long g = (items + per_cta - 1) / per_cta, cap = (long long)kbit_num_sms() * per_sm;
    return (unsigned)(g < 1 ? 1 : (g < cap ? g : cap));
}

// The A/B knob of studies/probes/kbit_kernel_ab.py (the default is what production runs; the next-group prefetch,
// an earlier knob, gained 4-8 % at every K, tuning/kbit_kernel_ab_f80a385.json, and is always on).
// The lane quantizer's grid cap: 16 CTAs per SM (kbit_kernel_ab: the best or within 2 % of it for K = 2..8;
// 64 CTAs per SM copied each CTA's table, up to 44 KB, for every 4 groups a thread coded: K = 6 15 % slower).
// Its table copies' budget: KK_LANE_BYTES keeps three CTAs per SM in the default 48 KB of shared memory, which
// holds only 4 copies at K = 8 and 8 at K = 7 (those stay L1-bound on bank conflicts); more bytes buy more copies
// at fewer CTAs per SM (K = 8: 8 copies in 82 KB, 2 CTAs; 16 in 164 KB, 1 CTA). Measured on the H200 from 11 to
// 176 KB, the default is the fastest at K = 7 and 8 (reports/kbit-h200/tuning/lane_table_budget_ab/), and so it
// was against 16 / 8 copies at three CTAs per SM in 72 KB with a shorter table (tuning/vector_stores_ab/): the knob
// stays for that A/B.
static int kk_lane_per_sm = 16, kk_lane_bytes = KK_LANE_BYTES;
extern "C" void kbit_kbit_tuning(int lane_per_sm, int lane_kb) {
    kk_lane_per_sm = lane_per_sm > 0 ? lane_per_sm : 16;
    kk_lane_bytes = lane_kb > 0 ? (lane_kb < 208 ? lane_kb : 208) << 10 : KK_LANE_BYTES;   // + K = 8's staging
}

// A tuned budget past 48 KB: the lane kernel must be allowed that much dynamic shared memory first, once per
// instance and device (not inside a CUDA-graph capture, where the first call has set it already). A refusal shows
// as the launch's error.
template <int K, int L, bool DEF> static cudaError_t kk_lane_allow(size_t bytes) {
    static size_t allowed[64];
    if (bytes <= (48u << 10)) return cudaSuccess;   // the default budget: no runtime call on the launch path
    int dev = 0;
    cudaError_t e = cudaGetDevice(&dev);
    if (e != cudaSuccess || dev < 0 || dev >= 64 || bytes <= allowed[dev]) return e;
    e = cudaFuncSetAttribute(kk_quantize_lane_kernel<K, L, DEF>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                             (int)bytes);
    if (e == cudaSuccess) allowed[dev] = bytes;
    return e;
}

// scratch: e4m3's tensor max (word 0) and the two-kernel path's divisors (after it); null when neither runs.
extern "C" int kbit_kbit_quantize(const void* x, int kind, long long n, int blocksize, const float* cb, int m, int k,
                                  const void* plan, int plan_size, int plan_sh, int plan_kbase, int plan_half,
                                  float plan_safe, int layout, int fmt, int codes_decoded, void* scales, float* ts,
                                  uint32_t* out, long long nw, int* nonfinite, float* scratch, void* stream) {
    cudaStream_t s = (cudaStream_t)stream;
    const KkPlan P{(const uint2*)plan, plan ? plan_size : 0, plan_sh, plan_kbase, plan_half, plan ? plan_safe : 0.0f,
                   kk_lane_bytes};
    // dynamic shared memory of the fused kernels; a large table is copied by fewer, persistent CTAs
    const size_t smem = (size_t)P.size * sizeof(uint2) + (size_t)m * sizeof(float);
    const int per_sm = P.size > 512 ? 8 : 64;
    cudaError_t err = cudaMemsetAsync(nonfinite, 0, sizeof(int), s);
    if (err != cudaSuccess) return (int)err;
    uint32_t* gmax = (uint32_t*)scratch;         // scratch[0]; the simple path's q[nb] follows
    if (fmt == 5) {
        if ((err = cudaMemsetAsync(gmax, 0, sizeof(uint32_t), s)) != cudaSuccess) return (int)err;
        kk_tensor_max_kernel<<<grid_for(n, 256), 256, 0, s>>>(x, kind, n, gmax, nonfinite);
    }
    if (blocksize == 16 || blocksize % 32 == 0) {
        long long U = blocksize < 32 ? 32 : blocksize, units = (n + U - 1) / U;
#define KK_Q(CH) kk_quantize_warp_kernel<CH><<<grid_for(units, 8 * (KK_BATCH / CH), per_sm), 256, smem, s>>>( \
            x, kind, n, blocksize, cb, P, m, k, layout, fmt, codes_decoded, gmax, scales, ts, out, nw, nonfinite)
        const bool vec = ((uintptr_t)x & 15) == 0;
        const size_t lsmem0 = (size_t)kk_lane_smem(P, m), lsmem8 = ((lsmem0 + 15) & ~(size_t)15) + KK_STAGE_BYTES;
        const unsigned lgrid = grid_for((n + 31) / 32, 256, kk_lane_per_sm);
#define KK_LPF(K, L, DEF) ((void)kk_lane_allow<K, L, DEF>(K == 8 ? lsmem8 : lsmem0), \
            kk_quantize_lane_kernel<K, L, DEF><<<lgrid, 256, K == 8 ? lsmem8 : lsmem0, s>>>( \
            x, kind, n, blocksize, vec, cb, P, fmt, codes_decoded, gmax, scales, ts, out, nw, nonfinite))
        const bool def = kind == 1 && blocksize == 32 && fmt == 3 && !codes_decoded && vec;
#define KK_L(K) (layout == 0 ? (def ? KK_LPF(K, 0, true) : KK_LPF(K, 0, false)) \
                             : (def ? KK_LPF(K, 1, true) : KK_LPF(K, 1, false)))
        if (blocksize <= 32) {
            switch (k) {
            case 2: KK_L(2); break;
            case 3: KK_L(3); break;
            case 4: KK_L(4); break;
            case 5: KK_L(5); break;
            case 6: KK_L(6); break;
            case 7: KK_L(7); break;
            default: KK_L(8); break;
            }
        } else switch (blocksize) {
        case 64: KK_Q(2); break;
        case 128: KK_Q(4); break;
        case 256: KK_Q(8); break;
        default:
            kk_quantize_long_kernel<<<grid_for(units, 8, per_sm), 256, smem, s>>>(
                x, kind, n, blocksize, cb, P, m, k, layout, fmt, codes_decoded, gmax, scales, ts, out, nw, nonfinite);
        }
#undef KK_Q
#undef KK_L
#undef KK_LPF
    } else {
        long long nb = (n + blocksize - 1) / blocksize;
        float* q = scratch + 1;
        kk_absmax_kernel<<<(unsigned)((nb + 255) / 256), 256, 0, s>>>(x, kind, n, blocksize, nb, cb, m, fmt,
                                                                      codes_decoded, gmax, scales, q, nonfinite);
        kk_codes_kernel<<<grid_for((n + 31) / 32, 8), 256, 0, s>>>(x, kind, n, blocksize, q, cb, m, k, layout, out, nw);
        if (fmt == 5) kk_write_ts_kernel<<<1, 1, 0, s>>>(gmax, ts);
    }
    return (int)cudaGetLastError();
}

extern "C" int kbit_kbit_dequantize(const uint32_t* words, long long nw, long long n, int k, int layout, int blocksize,
                                    const void* scales, int fmt, const float* ts, const float* cb, int m, int kind,
                                    void* out, void* stream) {
    cudaStream_t s = (cudaStream_t)stream;
    int shift = -1;
    if ((blocksize & (blocksize - 1)) == 0) for (shift = 0; (1 << shift) < blocksize; shift++) {}
    if (blocksize == 16 || blocksize % 32 == 0) {
        const unsigned grid = (unsigned)(((n + 31) / 32 + 255) / 256);
        const unsigned gcap = grid_for((n + 31) / 32, 256, KK_DQ_PER_SM);   // kernels with codebook copies
        const bool vec = ((uintptr_t)out & 15) == 0, wvec = ((uintptr_t)words & 15) == 0;
#define KK_D(K) (layout == 0 ? kk_dequantize_group_kernel<K, 0><<<KK_DQ_COPIES(K, 0) > 1 ? gcap : grid, 256, 0, s>>>( \
            words, nw, n, blocksize, shift, scales, fmt, ts, cb, kind, vec, wvec, out) \
                              : kk_dequantize_group_kernel<K, 1><<<KK_DQ_COPIES(K, 1) > 1 ? gcap : grid, 256, 0, s>>>( \
            words, nw, n, blocksize, shift, scales, fmt, ts, cb, kind, vec, wvec, out))
        switch (k) {
        case 2: KK_D(2); break;
        case 3: KK_D(3); break;
        case 4: KK_D(4); break;
        case 5: KK_D(5); break;
        case 6: KK_D(6); break;
        case 7: KK_D(7); break;
        default: KK_D(8); break;
        }
#undef KK_D
        return (int)cudaGetLastError();
    }
    kk_dequantize_kernel<<<(unsigned)((n + 8 * 256 - 1) / (8 * 256)), 256, 0, s>>>(words, nw, n, k, layout, blocksize, shift, scales,
                                                                     fmt, ts, cb, m, kind, out);
    return (int)cudaGetLastError();
}
