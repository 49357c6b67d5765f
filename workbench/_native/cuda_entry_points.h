/* The CUDA families' entry points (cuda_src/kbit.h) for cuda_launch.pyx: a function-pointer type per entry point,
 * taken from its prototype (so the C compiler checks each call the launcher makes against it), the pointer the
 * launcher calls through (NULL until bind() finds the symbol) and the table bind() fills by name.
 * KBIT_API_ONLY: no CUDA toolkit needed. */
#ifndef KB_CUDA_ENTRY_POINTS_H
#define KB_CUDA_ENTRY_POINTS_H
#define KBIT_API_ONLY
#include "kbit.h"

#define KB_ENTRY_POINTS(X) \
    X(kbit_quantize_blockwise) X(kbit_quantize_4bit) X(kbit_dequantize_blockwise) X(kbit_dequantize_4bit) \
    X(kbit_dequantize_4bit_nested) \
    X(kbit_int8_vectorwise_quant) X(kbit_int8_zero_late_cols) X(kbit_int8_col_quant) \
    X(kbit_int8_vectorwise_dequant) X(kbit_int8_linear_matmul) X(kbit_int8_mm_dequant) X(kbit_int8_scaled_mm) \
    X(kbit_gemv_4bit) X(kbit_gemm_4bit_mma) X(kbit_gemm_4bit_lut) \
    X(kbit_optimizer_update_32bit) X(kbit_optimizer_update_norm_sq) X(kbit_optimizer_update_8bit_blockwise) \
    X(kbit_kbit_quantize) X(kbit_kbit_dequantize) \
    X(kbit_affine_range) X(kbit_affine_mse) X(kbit_affine_codes) X(kbit_affine_dequantize)

#define KB_TYPE(name) typedef __typeof__(&name) name##_fn;
#define KB_POINTER(name) static name##_fn kb_##name = NULL;
#define KB_SLOT(name) {#name, (void**)&kb_##name},
KB_ENTRY_POINTS(KB_TYPE)
KB_ENTRY_POINTS(KB_POINTER)
typedef struct { const char* name; void** fn; } kb_slot;
static const kb_slot kb_slots[] = {KB_ENTRY_POINTS(KB_SLOT)};
static const int kb_nslots = (int)(sizeof(kb_slots) / sizeof(kb_slots[0]));
#undef KB_TYPE
#undef KB_POINTER
#undef KB_SLOT
#endif
