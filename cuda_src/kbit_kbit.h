/* k-bit family (issue 19): extern "C" API of cuda_src/kbit.cu -> libkbit_kbit.so.
 * Rules: workbench/backends/reference/kbit.py, bit for bit (the same passes and helpers as
 * workbench/_native/kbit_cpu.pyx). Element kinds: 0 float32, 1 bfloat16, 2 float16.
 * Scale formats: 0 fp32, 1 fp16, 2 bf16, 3 e4m4, 4 e8m0, 5 e4m3. Layouts: 0 bitplane, 1 dense.
 * All pointers are device pointers; stream is a cudaStream_t. Returns cudaError_t (0 = success). */
#ifndef KBIT_KBIT_H
#define KBIT_KBIT_H
#include <stdint.h>
#ifdef __cplusplus
extern "C" {
#endif

/* scales[nb] in the format's storage (fp32: 4 bytes, fp16/bf16: 2, e4m4/e8m0/e4m3: 1), ts[1] (e4m3 tensor scale,
 * written for fmt 5 only), packed out[nw] (uint32 words), nonfinite[1] (1 if x holds NaN/Inf, else 0),
 * scratch: 1 float, plus nb floats when blocksize is neither 16 nor a multiple of 32. cb: m = 2^k floats.
 * plan: the codebook's search table (numba_kernels/cell_plan.py:kbit_plan; plan_size 8-byte entries, at most
 * 4000) and its scalars, or NULL (every element takes the exact search). */
int kbit_kbit_quantize(const void* x, int kind, long long n, int blocksize, const float* cb, int m, int k,
                       const void* plan, int plan_size, int plan_sh, int plan_kbase, int plan_half,
                       float plan_safe, int layout, int fmt, int codes_decoded, void* scales, float* ts,
                       uint32_t* out, long long nw, int* nonfinite, float* scratch, void* stream);

/* scales[ceil(n / blocksize)] as stored; ts: e4m3's tensor scale (NULL otherwise); out[n] in kind */
int kbit_kbit_dequantize(const uint32_t* words, long long nw, long long n, int k, int layout, int blocksize,
                         const void* scales, int fmt, const float* ts, const float* cb, int m, int kind,
                         void* out, void* stream);

#ifdef __cplusplus
}
#endif
#endif
