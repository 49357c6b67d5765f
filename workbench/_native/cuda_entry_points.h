/* The CUDA families' entry points (cuda_src/kbit.h) as function-pointer types, for cuda_launch.pyx: the C
 * compiler checks each of its calls against the real prototype. KBIT_API_ONLY: no CUDA toolkit needed. */
#ifndef KB_CUDA_ENTRY_POINTS_H
#define KB_CUDA_ENTRY_POINTS_H
#define KBIT_API_ONLY
#include "kbit.h"

#define KB_ENTRY(name) typedef __typeof__(&name) name##_fn;
KB_ENTRY(kbit_quantize_blockwise)
KB_ENTRY(kbit_quantize_4bit)
KB_ENTRY(kbit_dequantize_blockwise)
KB_ENTRY(kbit_dequantize_4bit)
KB_ENTRY(kbit_int8_vectorwise_quant)
KB_ENTRY(kbit_int8_zero_late_cols)
KB_ENTRY(kbit_int8_col_quant)
KB_ENTRY(kbit_int8_vectorwise_dequant)
KB_ENTRY(kbit_int8_linear_matmul)
KB_ENTRY(kbit_int8_mm_dequant)
KB_ENTRY(kbit_int8_scaled_mm)
KB_ENTRY(kbit_gemv_4bit)
KB_ENTRY(kbit_gemm_4bit_mma)
KB_ENTRY(kbit_optimizer_update_32bit)
KB_ENTRY(kbit_optimizer_update_norm_sq)
KB_ENTRY(kbit_optimizer_update_8bit_blockwise)
KB_ENTRY(kbit_kbit_quantize)
KB_ENTRY(kbit_kbit_dequantize)
KB_ENTRY(kbit_affine_range)
KB_ENTRY(kbit_affine_mse)
KB_ENTRY(kbit_affine_codes)
KB_ENTRY(kbit_affine_dequantize)
#undef KB_ENTRY
#endif
