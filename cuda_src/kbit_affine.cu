// k-bit affine groups (issue 19): scale + zero point, int-k codes, K = 1..8, bit-plane or dense packing.
// Rules: workbench/backends/reference/kbit_affine.py, bit for bit; the kernels are numba_kernels/cuda/
// kbit_affine.py's (GPU-tested), in CUDA C++: IEEE float32 (cuda_build: -fmad=false, IEEE division),
// rintf = round half to even, the MSE error sums in float64 in element order.
//
// * kb_range_kernel: a thread per group, lo = min(0, min x), hi = max(0, max x) in element order.
// * kb_mse_kernel: a thread per group, the min-max range, then for each p of the clip grid the qparams of
//   (p lo, p hi) (the scale stored in fp32 / fp16 / bf16, rounded to nearest even and saturating), the group's
//   float32 errors and E = sum of float64(e)^2 in element order; the first least E's range is kept.
// * kb_codes_kernel: a thread per 32-element chunk g, codes clamp(rint(x r[b]) + z[b], 0, 2^K - 1) packed into
//   its K words (bit-plane: word g K + b holds bit b of elements 32g..32g+31; dense: code i at stream bits
//   [iK, iK + K)), stored where below the word count. Codes past n are 0.
// * kb_dequantize_kernel: a thread per element, float32(code - z[b]) * D[b] rounded once to the output kind.
// A thread per group makes the range and MSE kernels latency-bound on long groups; they run once per weight.
#include <cuda_runtime.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <stdint.h>
#include "kbit_kbit_affine.h"

#define KB static __device__ __forceinline__

KB float kb_load(const void* x, int kind, long long i) {
    if (kind == 0) return ((const float*)x)[i];
    const uint16_t u = ((const uint16_t*)x)[i];
    return kind == 1 ? __uint_as_float((uint32_t)u << 16) : __half2float(__ushort_as_half(u));
}

// D = float32(s stored in fmt): fp32 itself, fp16 / bf16 rounded to nearest even, saturating at the largest
// finite value (reference.kbit_affine.store_scale); s > 0
KB float kb_stored(float s, int fmt) {
    if (fmt == 1) {
        uint32_t h = __half_as_ushort(__float2half_rn(s));
        if ((h & 0x7FFFu) == 0x7C00u) h = (h & 0x8000u) | 0x7BFFu;
        return __half2float(__ushort_as_half((uint16_t)h));
    }
    if (fmt == 2) {
        uint32_t b = __bfloat16_as_ushort(__float2bfloat16_rn(s));
        if ((b & 0x7FFFu) == 0x7F80u) b = (b & 0x8000u) | 0x7F7Fu;
        return __uint_as_float(b << 16);
    }
    return s;
}

KB void kb_group_range(const void* x, int kind, long long n, long long G, long long b, float* mn, float* mx) {
    const long long start = b * G, end = start + G < n ? start + G : n;
    float lo = 0.0f, hi = 0.0f;
    for (long long i = start; i < end; i++) {
        const float v = kb_load(x, kind, i);
        lo = v < lo ? v : lo;
        hi = v > hi ? v : hi;
    }
    *mn = lo;
    *mx = hi;
}

__global__ void kb_range_kernel(const void* x, int kind, long long n, long long G, long long nb, float* lo,
                                float* hi) {
    for (long long b = (long long)blockIdx.x * blockDim.x + threadIdx.x; b < nb; b += (long long)gridDim.x * blockDim.x)
        kb_group_range(x, kind, n, G, b, lo + b, hi + b);
}

__global__ void kb_mse_kernel(const void* x, int kind, long long n, long long G, long long nb, int k, int fmt,
                              const float* grid, int ngrid, float* lo, float* hi) {
    const float qmax = (float)((1 << k) - 1), eps = 1.1920928955078125e-07f;   // torch.finfo(float32).eps
    for (long long b = (long long)blockIdx.x * blockDim.x + threadIdx.x; b < nb; b += (long long)gridDim.x * blockDim.x) {
        float mn, mx;
        kb_group_range(x, kind, n, G, b, &mn, &mx);
        const long long start = b * G, end = start + G < n ? start + G : n;
        double best = __longlong_as_double(0x7FF0000000000000LL);   // +inf
        float blo = mn, bhi = mx;
        for (int c = 0; c < ngrid; c++) {
            const float p = grid[c], plo = __fmul_rn(mn, p), phi = __fmul_rn(mx, p);
            float s = __fdiv_rn(__fsub_rn(phi, plo), qmax);
            s = s > eps ? s : eps;
            float z = -rintf(__fdiv_rn(plo, s));
            z = z < 0.0f ? 0.0f : (z > qmax ? qmax : z);
            const float D = kb_stored(s, fmt), r = __fdiv_rn(1.0f, D);
            double acc = 0.0;
            for (long long i = start; i < end; i++) {
                const float v = kb_load(x, kind, i);
                float q = __fadd_rn(rintf(__fmul_rn(v, r)), z);
                q = q < 0.0f ? 0.0f : (q > qmax ? qmax : q);
                const double e = (double)__fsub_rn(__fmul_rn(__fsub_rn(q, z), D), v);
                acc = __dadd_rn(acc, __dmul_rn(e, e));
            }
            if (acc < best) {
                best = acc;
                blo = plo;
                bhi = phi;
            }
        }
        lo[b] = blo;
        hi[b] = bhi;
    }
}

__global__ void kb_codes_kernel(const void* x, int kind, long long n, long long G, const float* r, const uint8_t* z,
                                int k, int layout, uint32_t* out, long long nw) {
    const float qmax = (float)((1 << k) - 1);
    const long long groups = (n + 31) / 32;
    for (long long g = (long long)blockIdx.x * blockDim.x + threadIdx.x; g < groups; g += (long long)gridDim.x * blockDim.x) {
        uint32_t w[9] = {0u, 0u, 0u, 0u, 0u, 0u, 0u, 0u, 0u};
        const long long base = g * 32;
        for (int j = 0; j < 32 && base + j < n; j++) {
            const long long i = base + j, b = i / G;
            float c = __fadd_rn(rintf(__fmul_rn(kb_load(x, kind, i), r[b])), (float)z[b]);
            c = c < 0.0f ? 0.0f : (c > qmax ? qmax : c);
            const uint32_t code = (uint32_t)c;
            if (layout == 0) {
                for (int bit = 0; bit < k; bit++) w[bit] |= ((code >> bit) & 1u) << j;
            } else {
                const int p = j * k, wi = p >> 5, sh = p & 31;
                w[wi] |= code << sh;
                if (sh + k > 32) w[wi + 1] |= code >> (32 - sh);
            }
        }
        for (int bit = 0; bit < k; bit++)
            if (g * k + bit < nw) out[g * k + bit] = w[bit];
    }
}

__global__ void kb_dequantize_kernel(const uint32_t* words, long long nw, long long n, int k, int layout,
                                     long long G, const float* D, const uint8_t* z, int kind, void* out) {
    const uint32_t mask = (1u << k) - 1u;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (long long)gridDim.x * blockDim.x) {
        uint32_t code = 0u;
        if (layout == 0) {
            const uint32_t* w = words + (i >> 5) * k;
            const int j = (int)(i & 31);
            for (int bit = 0; bit < k; bit++) code |= ((w[bit] >> j) & 1u) << bit;
        } else {
            const long long p = i * k, wi = p >> 5;
            uint64_t both = words[wi];
            if (wi + 1 < nw) both |= (uint64_t)words[wi + 1] << 32;
            code = (uint32_t)(both >> (p & 31)) & mask;
        }
        const long long b = i / G;
        const float v = __fmul_rn((float)((int)code - (int)z[b]), D[b]);
        if (kind == 0) ((float*)out)[i] = v;
        else if (kind == 1) ((uint16_t*)out)[i] = __bfloat16_as_ushort(__float2bfloat16_rn(v));
        else ((uint16_t*)out)[i] = __half_as_ushort(__float2half_rn(v));
    }
}

// A thread per work item up to a grid-stride cap.
static unsigned kb_grid(long long items) {
    const long long g = (items + 255) / 256, cap = 1LL << 20;
    return (unsigned)(g < 1 ? 1 : (g < cap ? g : cap));
}

extern "C" int kbit_affine_range(const void* x, int kind, long long n, long long G, long long nb, float* lo, float* hi,
                                 void* stream) {
    if (n < 0 || G < 1 || kind < 0 || kind > 2) return (int)cudaErrorInvalidValue;
    if (nb == 0) return 0;
    kb_range_kernel<<<kb_grid(nb), 256, 0, (cudaStream_t)stream>>>(x, kind, n, G, nb, lo, hi);
    return (int)cudaGetLastError();
}

extern "C" int kbit_affine_mse(const void* x, int kind, long long n, long long G, long long nb, int k, int fmt,
                               const float* grid, int ngrid, float* lo, float* hi, void* stream) {
    if (n < 0 || G < 1 || kind < 0 || kind > 2 || k < 1 || k > 8 || fmt < 0 || fmt > 2 || ngrid < 1)
        return (int)cudaErrorInvalidValue;
    if (nb == 0) return 0;
    kb_mse_kernel<<<kb_grid(nb), 256, 0, (cudaStream_t)stream>>>(x, kind, n, G, nb, k, fmt, grid, ngrid, lo, hi);
    return (int)cudaGetLastError();
}

extern "C" int kbit_affine_codes(const void* x, int kind, long long n, long long G, const float* r, const uint8_t* z,
                                 int k, int layout, uint32_t* out, long long nw, void* stream) {
    if (n < 0 || G < 1 || kind < 0 || kind > 2 || k < 1 || k > 8 || layout < 0 || layout > 1)
        return (int)cudaErrorInvalidValue;
    if (n == 0) return 0;
    kb_codes_kernel<<<kb_grid((n + 31) / 32), 256, 0, (cudaStream_t)stream>>>(x, kind, n, G, r, z, k, layout, out, nw);
    return (int)cudaGetLastError();
}

extern "C" int kbit_affine_dequantize(const uint32_t* words, long long nw, long long n, int k, int layout, long long G,
                                      const float* D, const uint8_t* z, int kind, void* out, void* stream) {
    if (n < 0 || G < 1 || kind < 0 || kind > 2 || k < 1 || k > 8 || layout < 0 || layout > 1)
        return (int)cudaErrorInvalidValue;
    if (n == 0) return 0;
    kb_dequantize_kernel<<<kb_grid(n), 256, 0, (cudaStream_t)stream>>>(words, nw, n, k, layout, G, D, z, kind, out);
    return (int)cudaGetLastError();
}
