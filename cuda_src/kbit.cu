// k-bit family (issue 19): quantize/dequantize with K = 2..8, bit-plane or dense packing, six scale formats.
// A first, simple and exact version: one thread per quantization block for the absmax and the scales, one
// thread per 32-element group for codes + packing, one thread per element for dequantization. Same helpers
// as workbench/_native/kbit_cpu.pyx; IEEE float32 (cuda_build: -fmad=false, IEEE division), rintf = round
// half to even, floor(log2) from the float's bits. Speed work (warp ballots, vector loads) comes later.
#include <cuda_runtime.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <stdint.h>
#include "kbit_kbit.h"

#define KK static __device__ __forceinline__

KK float kk_bits_f32(uint32_t u) { return __uint_as_float(u); }
KK uint32_t kk_f32_bits(float f) { return __float_as_uint(f); }

KK long long kk_floor_log2(float a) {
    uint32_t u = kk_f32_bits(a);
    long long ex = (long long)(u >> 23);
    if (ex > 0) return ex - 127;
    return (long long)(32 - __clz(u)) - 150;
}
KK float kk_pow2f(long long e) {
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
KK long long kk_e4m4_bits(float a) {
    if (a == 0.0f) return 0;
    long long e = kk_floor_log2(a), m;
    if (e + 11 <= 0) { m = (long long)rintf(__fmul_rn(a, 16384.0f)); return m < 15 ? m : 15; }
    if (e + 11 > 15) return 0xFF;
    m = (long long)rintf(__fmul_rn(__fsub_rn(__fdiv_rn(a, kk_pow2f(e)), 1.0f), 16.0f));
    m = m < 15 ? m : 15;
    return ((e + 11) << 4) | m;
}
KK float kk_e4m4_value(long long b) {
    long long e = b >> 4, m = b & 15;
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
KK void kk_store(void* out, int kind, long long i, float v) {
    if (kind == 0) ((float*)out)[i] = v;
    else if (kind == 1) ((__nv_bfloat16*)out)[i] = __float2bfloat16_rn(v);
    else ((__half*)out)[i] = __float2half_rn(v);
}
KK long long kk_nearest(float s, const float* cb, long long m) {
    long long lo = 0, hi = m;
    while (lo < hi) { long long mid = (lo + hi) >> 1; if (cb[mid] <= s) lo = mid + 1; else hi = mid; }
    if (lo == 0) return 0;
    if (lo < m && fabsf(__fsub_rn(cb[lo], s)) < fabsf(__fsub_rn(s, cb[lo - 1]))) return lo;
    long long j = lo - 1;
    float d = fabsf(__fsub_rn(s, cb[j]));
    while (j > 0 && fabsf(__fsub_rn(s, cb[j - 1])) == d) j--;
    return j;
}

__global__ void kk_absmax_kernel(const void* x, int kind, long long n, int bs, long long nb, float* absmax) {
    long long b = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (b >= nb) return;
    long long start = b * bs, end = start + bs < n ? start + bs : n;
    float am = 0.0f;
    for (long long i = start; i < end; i++) { float v = fabsf(kk_load(x, kind, i)); am = v > am ? v : am; }
    absmax[b] = am;
}

__global__ void kk_tensor_scale_kernel(const float* absmax, long long nb, int fmt, float* ts) {
    __shared__ float red[1024];
    float g = 0.0f;
    for (long long b = threadIdx.x; b < nb; b += blockDim.x) g = absmax[b] > g ? absmax[b] : g;
    red[threadIdx.x] = g;
    __syncthreads();
    for (int s = blockDim.x / 2; s > 0; s >>= 1) {
        if (threadIdx.x < s) red[threadIdx.x] = red[threadIdx.x + s] > red[threadIdx.x] ? red[threadIdx.x + s] : red[threadIdx.x];
        __syncthreads();
    }
    if (threadIdx.x == 0) ts[0] = (fmt == 5 && red[0] > 0.0f) ? __fdiv_rn(red[0], 448.0f) : 1.0f;
}

__global__ void kk_encode_kernel(const float* absmax, long long nb, int fmt, long long emax, int codes_decoded,
                                 const float* ts, uint32_t* bits, float* D, float* q) {
    long long b = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (b >= nb) return;
    float a = absmax[b], t = ts[0];
    long long e = kk_encode(a, fmt, emax, t);
    float d = kk_decode(e, fmt, t);
    bits[b] = (uint32_t)e;
    D[b] = d;
    float base = codes_decoded ? d : a;
    q[b] = fmt == 4 ? d : (base > 1e-8f ? base : 1e-8f);
}

__global__ void kk_decode_kernel(const uint32_t* bits, long long nb, int fmt, const float* ts, float* D) {
    long long b = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (b < nb) D[b] = kk_decode(bits[b], fmt, ts ? ts[0] : 1.0f);
}

__global__ void kk_quantize_kernel(const void* x, int kind, long long n, int bs, const float* q, const float* cb,
                                   int m, int k, int layout, uint32_t* out, long long nw) {
    long long g = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (g >= (n + 31) / 32) return;
    unsigned long long words[9] = {0, 0, 0, 0, 0, 0, 0, 0, 0};
    long long base = g * 32;
    for (int j = 0; j < 32; j++) {
        long long i = base + j;
        long long c = i < n ? kk_nearest(__fdiv_rn(kk_load(x, kind, i), q[i / bs]), cb, m) : 0;
        if (layout == 0) {
            for (int b = 0; b < k; b++) words[b] |= (unsigned long long)((c >> b) & 1) << j;
        } else {
            int p = j * k, wi = p >> 5;
            unsigned long long v = (unsigned long long)c << (p & 31);
            words[wi] |= v & 0xFFFFFFFFull;
            words[wi + 1] |= v >> 32;
        }
    }
    for (int b = 0; b < k; b++) { long long w = g * k + b; if (w < nw) out[w] = (uint32_t)words[b]; }
}

__global__ void kk_dequantize_kernel(const uint32_t* words, long long nw, long long n, int k, int layout, int bs,
                                     const float* D, const float* cb, int kind, void* out) {
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    long long g = i / 32;
    int j = (int)(i % 32);
    long long c = 0;
    if (layout == 0) {
        for (int b = 0; b < k; b++) c |= (long long)((words[g * k + b] >> j) & 1u) << b;
    } else {
        long long p = i * k, wi = p >> 5;
        unsigned long long both = words[wi] | (wi + 1 < nw ? (unsigned long long)words[wi + 1] << 32 : 0ull);
        c = (long long)((both >> (p & 31)) & ((1ull << k) - 1));
    }
    kk_store(out, kind, i, __fmul_rn(cb[c], D[i / bs]));
}

static unsigned grid(long long n, int threads) { return (unsigned)((n + threads - 1) / threads); }

extern "C" int kbit_kbit_quantize(const void* x, int kind, long long n, int blocksize, const float* cb, int m, int k,
                                  int layout, int fmt, int emax, int codes_decoded, float* absmax, uint32_t* bits,
                                  float* D, float* q, float* ts, uint32_t* out, long long nw, void* stream) {
    cudaStream_t s = (cudaStream_t)stream;
    long long nb = (n + blocksize - 1) / blocksize, groups = (n + 31) / 32;
    kk_absmax_kernel<<<grid(nb, 256), 256, 0, s>>>(x, kind, n, blocksize, nb, absmax);
    kk_tensor_scale_kernel<<<1, 1024, 0, s>>>(absmax, nb, fmt, ts);
    kk_encode_kernel<<<grid(nb, 256), 256, 0, s>>>(absmax, nb, fmt, emax, codes_decoded, ts, bits, D, q);
    kk_quantize_kernel<<<grid(groups, 128), 128, 0, s>>>(x, kind, n, blocksize, q, cb, m, k, layout, out, nw);
    return (int)cudaGetLastError();
}

extern "C" int kbit_kbit_dequantize(const uint32_t* words, long long nw, long long n, int k, int layout, int blocksize,
                                    const uint32_t* bits, long long nb, int fmt, const float* ts, const float* cb,
                                    int kind, float* D, void* out, void* stream) {
    cudaStream_t s = (cudaStream_t)stream;
    kk_decode_kernel<<<grid(nb, 256), 256, 0, s>>>(bits, nb, fmt, ts, D);
    kk_dequantize_kernel<<<grid(n, 256), 256, 0, s>>>(words, nw, n, k, layout, blocksize, D, cb, kind, out);
    return (int)cudaGetLastError();
}
