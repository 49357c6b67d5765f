/* kbit-workbench: blockwise 8-bit and 4-bit quantization kernels (family "quant").
 *
 * Built into cuda_src/build/libkbit_quant.so by workbench/cuda_build.py. Every entry point
 * returns the cudaError_t of its launch (cudaSuccess = 0) and runs on the given stream.
 * Numerics follow docs/ARCHITECTURE.md bit for bit: float32 absmax per block; full blocks
 * scale by the IEEE reciprocal of max(absmax, 1e-38f), the tail block divides; codes are
 * bucket_codes[#{j : bounds[j] < s}]; dequantization is one float32 multiply, one rounding.
 * Non-finite input as the torch reference: absmax is NaN for a block holding a NaN, else +Inf for
 * one holding an Inf (so absmax is non-finite exactly where the block is); the tail's stored
 * max(absmax, 1e-38f) keeps NaN; NaN scaled values take the top bucket's code (torch.bucketize);
 * an odd 4-bit tail pads s = 0.
 *
 * Codebook arrays of the quantizers (bounds, bucket_codes) are HOST pointers. The search table
 * built from them is cached per codebook: the compact table (8-bit codes) or the fine table (the
 * usual cases) is uploaded once per device (<= 32 KB, kept for the process) and read through a
 * pointer; the fallbacks (cell plan, tree) travel in the kernel's parameters. No per-call device
 * allocation or copy. KBIT_QUANT_SEARCH=fine|clamped|cell|tree forces a search (tests, studies).
 * The dequantizers' table is a DEVICE pointer (it is an input tensor of the op).
 */
#ifndef KBIT_QUANT_H
#define KBIT_QUANT_H

#include "kbit_api_types.h"

#include "kbit_dtypes.h" /* KBIT_F32 / KBIT_F16 / KBIT_BF16: element types of the dtype arguments */

#ifdef __cplusplus
extern "C" {
#endif


/* quantizer flags */
#define KBIT_QFLAG_BNB_SCALE 1 /* bitsandbytes-CUDA scaling: approximate reciprocal (rcp.approx.ftz), flush-to-zero
                                  multiply, no 1e-38 clamp, no [-1,1] clamp, tail block multiplies too. For parity
                                  studies only; the default (0) is the spec. */

/* codes[n] (uint8), absmax[ceil(n/blocksize)] (float32). nbounds <= 255, nbuckets = nbounds + 1. */
cudaError_t kbit_quantize_blockwise(const void* A, int dtype, long long n, int blocksize, const float* bounds,
                                    int nbounds, const unsigned char* bucket_codes, int nbuckets, unsigned char* codes,
                                    float* absmax, int flags, cudaStream_t stream);

/* packed[(n+1)/2] (uint8, element 2k in the high nibble), absmax[ceil(n/blocksize)]. nbounds <= 15. */
cudaError_t kbit_quantize_4bit(const void* A, int dtype, long long n, int blocksize, const float* bounds, int nbounds,
                               const unsigned char* bucket_codes, int nbuckets, unsigned char* packed, float* absmax,
                               int flags, cudaStream_t stream);

/* out[n] = (dtype)(table[codes[i]] * absmax[i / blocksize]); table: ntable <= 256 floats on the device. */
cudaError_t kbit_dequantize_blockwise(const unsigned char* codes, const float* absmax, const float* table, int ntable,
                                      long long n, int blocksize, void* out, int dtype, cudaStream_t stream);

/* out[n] from packed[(n+1)/2]; table: 16 floats on the device. */
cudaError_t kbit_dequantize_4bit(const unsigned char* packed, const float* absmax, const float* table, long long n,
                                 int blocksize, void* out, int dtype, cudaStream_t stream);

/* kbit_dequantize_4bit with double-quantized absmax decoded in the kernel: block b's scale is
 * (absmax_code[absmax_8bit[b]] * absmax2[b / 256]) + *absmax_offset, each step rounded to float32 (the nested
 * blocksize is 256; absmax_code: 256 floats). */
cudaError_t kbit_dequantize_4bit_nested(const unsigned char* packed, const float* absmax2,
                                        const unsigned char* absmax_8bit, const float* absmax_code,
                                        const float* absmax_offset, const float* table, long long n, int blocksize,
                                        void* out, int dtype, cudaStream_t stream);

/* 1 if this library was built with the spec's IEEE flags (no FMA contraction, IEEE division, no FTZ). */
int kbit_quant_ieee_build(void);
/* A/B knob for the dequantizers' per-warp shared-memory stage: 1 on, 0 off, -1 the default (on for 4-bit codes) */
void kbit_quant_tuning(int staged_dequant);

#ifdef __cplusplus
}
#endif

#endif
