/* kbit-workbench: LLM.int8() kernels (family "int8"), built into cuda_src/build/libkbit_int8.so.
 *
 * Numerics follow workbench/backends/reference/int8.py (bitsandbytes 0.50.2 torch rules) bit for
 * bit: threshold pre-rounded to A's dtype by the caller; row absmax over non-outliers in float32;
 * codes = rne(float(a) * ((1.0f / row_stat) * 127.0f)) (torch's scalar/tensor is reciprocal-then-
 * multiply: two IEEE roundings), non-finite -> 0; int32 matmul exact;
 * mm dequant = dtype(f32(f32(f32(acc) * f32(rs*cs)) * 6.200124e-05f) + bias).
 * Every entry point returns the cudaError_t of its launches and runs on the given stream.
 * dtype codes: 0 float32, 1 float16, 2 bfloat16 (KBIT_F32/F16/BF16 of kbit_dtypes.h). */
#ifndef KBIT_INT8_H
#define KBIT_INT8_H

#include "kbit_api_types.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Row-wise int8 quantization of a contiguous rows x cols matrix. If use_thr, elements with
 * |a| >= thr are outliers: excluded from the row stats and coded 0, and every row of a column holding
 * one is coded 0. col_flags: the outlier work buffer, 2 * P + 16 + 4 * cols bytes (P = cols rounded up
 * to a multiple of 16), 16-byte aligned, its first 2 * P + 16 bytes zeroed by this function: column flags,
 * the flags of the columns a probe of a few rows found (zeroed in every row by the row kernel), their
 * count and list. col_index (int64, cols + 2 entries) receives the ascending indices of all outlier
 * columns, their count in col_index[cols] and the count of "late" columns (outliers only in rows the
 * probe did not read) in col_index[cols + 1]; the two counts also go to host_counts[0..1] when it is
 * not null (pinned host memory, readable after a stream sync). If the late count is > 0 and rows > 1, the
 * caller must then run kbit_int8_zero_late_cols on the same stream before the codes are final. */
cudaError_t kbit_int8_vectorwise_quant(const void* A, int dtype, long long rows, long long cols, float thr,
                                       int use_thr, signed char* codes, float* row_stats,
                                       unsigned char* col_flags, long long* col_index, long long* host_counts,
                                       cudaStream_t stream);

/* Zero every row of the late columns (col_flags: kbit_int8_vectorwise_quant's work buffer after it ran);
 * scratch: int64, cols + 1 entries. */
cudaError_t kbit_int8_zero_late_cols(signed char* codes, long long rows, long long cols,
                                     const unsigned char* col_flags, long long* scratch, cudaStream_t stream);

/* Column side of double quant: col_stats[c] = max |a| over non-outliers (float32); col_codes =
 * rne(float(dtype(a*127)) / col_stat) with outlier elements and non-finite quotients -> 0. */
cudaError_t kbit_int8_col_quant(const void* A, int dtype, long long rows, long long cols, float thr, int use_thr,
                                signed char* col_codes, float* col_stats, cudaStream_t stream);

/* out[r, c] = f32(f32(q * stats[r]) * 0.007874016f) */
cudaError_t kbit_int8_vectorwise_dequant(const signed char* q, const float* stats, long long rows, long long cols,
                                         float* out, cudaStream_t stream);

/* C[m, n] = sum_k A[m, k] * B[n, k] in int32 (A @ B.T), A: M x K, B: N x K int8 row-major. */
cudaError_t kbit_int8_linear_matmul(const signed char* A, const signed char* B, int* C, int M, int N, int K,
                                    cudaStream_t stream);

/* out = dtype(f32(f32(f32(C) * f32(rs[m]*cs[n])) * 6.200124e-05f) + bias[n]); bias float32 or NULL. */
cudaError_t kbit_int8_mm_dequant(const int* C, const float* row_stats, const float* col_stats, const float* bias,
                                 int M, int N, void* out, int out_dtype, cudaStream_t stream);

/* fused int8_linear_matmul + int8_mm_dequant (same numerics, no int32 intermediate in memory). */
cudaError_t kbit_int8_scaled_mm(const signed char* A, const signed char* B, const float* row_stats,
                                const float* col_stats, const float* bias, int M, int N, int K, void* out,
                                int out_dtype, cudaStream_t stream);

#ifdef __cplusplus
}
#endif
#endif
