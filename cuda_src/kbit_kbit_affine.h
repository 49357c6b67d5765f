/* k-bit affine groups (issue 19): extern "C" API of cuda_src/kbit_affine.cu -> libkbit_kbit_affine.so.
 * Rules: workbench/backends/reference/kbit_affine.py, bit for bit. The split is the numba_cuda backend's: the
 * kernels find each group's range (min-max, or the MSE clip search), the adapter computes the per-group scale and
 * zero point with the spec's torch code (qparams), the kernels code + pack and dequantize.
 * Element kinds: 0 float32, 1 bfloat16, 2 float16. Scale formats: 0 fp32, 1 fp16, 2 bf16. Layouts: 0 bitplane,
 * 1 dense. G: the group size (any >= 1); nb = ceil(n / G). All pointers are device pointers; stream is a
 * cudaStream_t. Returns cudaError_t (0 = success). */
#ifndef KBIT_KBIT_AFFINE_H
#define KBIT_KBIT_AFFINE_H
#include <stdint.h>
#ifdef __cplusplus
extern "C" {
#endif

/* lo[b] = min(0, min x), hi[b] = max(0, max x) over group b's real elements */
int kbit_affine_range(const void* x, int kind, long long n, long long G, long long nb, float* lo, float* hi,
                      void* stream);

/* the "mse" clip: per group the (p lo, p hi), p = grid[0..ngrid) (float32), of least error sum, first on ties */
int kbit_affine_mse(const void* x, int kind, long long n, long long G, long long nb, int k, int fmt,
                    const float* grid, int ngrid, float* lo, float* hi, void* stream);

/* codes clamp(rint(x r[b]) + z[b], 0, 2^k - 1) packed into out[nw] (uint32 words; codes past n are 0) */
int kbit_affine_codes(const void* x, int kind, long long n, long long G, const float* r, const uint8_t* z, int k,
                      int layout, uint32_t* out, long long nw, void* stream);

/* out[i] = kind(float32(code_i - z[b]) * D[b]) */
int kbit_affine_dequantize(const uint32_t* words, long long nw, long long n, int k, int layout, long long G,
                           const float* D, const uint8_t* z, int kind, void* out, void* stream);

#ifdef __cplusplus
}
#endif
#endif
