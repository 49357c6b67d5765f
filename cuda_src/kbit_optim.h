/* kbit-workbench: fused optimizer updates with 32-bit or 8-bit blockwise state (family "optim").
 *
 * Built into cuda_src/build/libkbit_optim.so by workbench/cuda_build.py (python -m workbench.cuda_build optim).
 * Every entry point returns the cudaError_t of its launch (cudaSuccess = 0) and runs on the given stream.
 * The update rules are workbench/optim/functional.py's, operation by operation, in IEEE float32 (the
 * library is built with -fmad=false -prec-div=true -prec-sqrt=true -ftz=false), so results equal the
 * reference bit for bit. Constants arrive as KBIT_OPT_NK floats rounded once on the host (HOST pointer,
 * copied into the kernel parameters), in the order of KBIT_K_* below.
 *
 * 8-bit state: blocksize 256, absmax per block; dequantize table[code] * absmax, update, requantize
 * with the spec of docs/ARCHITECTURE.md (reciprocal for full blocks, divide in the tail, clamp to [-1,1],
 * code = bucket_codes[#{bounds < s}]). The rounding plan of each state is a "cell plan" (workbench/optim/
 * _gpu_plan.py): cell[384 << m] (uint8), bounds[264] (float32, clamp folded in, +inf padded), codes[257]
 * (uint8) -- DEVICE pointers, like the tables -- and m <= 4, S <= 8: pos = cell[bits(s) >> (23 - m)],
 * then an S-step binary search over bounds from pos; code = codes[pos].
 */
#ifndef KBIT_OPTIM_H
#define KBIT_OPTIM_H

#include "kbit_api_types.h"

#include "kbit_dtypes.h" /* KBIT_F32 / KBIT_F16 / KBIT_BF16: element types of the dtype arguments */

#ifdef __cplusplus
extern "C" {
#endif


/* optimizer ids (lamb = adam rule, lars = momentum rule; the trust ratio is folded into KBIT_K_UPD_MUL) */
#define KBIT_OPT_ADAM 0
#define KBIT_OPT_ADEMAMIX 1
#define KBIT_OPT_MOMENTUM 2
#define KBIT_OPT_LION 3
#define KBIT_OPT_RMSPROP 4
#define KBIT_OPT_ADAGRAD 5

/* constant indices */
#define KBIT_K_B1 0
#define KBIT_K_B2 1
#define KBIT_K_B3 2
#define KBIT_K_ALPHA 3
#define KBIT_K_EPS 4
#define KBIT_K_OMB1 5
#define KBIT_K_OMB2 6
#define KBIT_K_OMB3 7
#define KBIT_K_WD 8
#define KBIT_K_DECAY 9
#define KBIT_K_GS 10
#define KBIT_K_C1 11
#define KBIT_K_C2 12
#define KBIT_K_EPS_C2 13
#define KBIT_K_NEG_LR 14
#define KBIT_K_NEG_LR_C1 15
#define KBIT_K_UPD_MUL 16
#define KBIT_OPT_NK 17

/* 32-bit state, in place on p, s1 (m2 = AdEMAMix's second EMA, s2 = second moment; NULL when unused). */
cudaError_t kbit_optimizer_update_32bit(int opt, int first, int skip_zeros, const void* g, int gdtype, void* p,
                                        int pdtype, float* s1, float* m2, float* s2, long long n, const float* k,
                                        cudaStream_t stream);

/* sum over i of u_i^2 (double) of the 32-bit update direction (adam/momentum/rmsprop), ADDED to *out (device). */
cudaError_t kbit_optimizer_update_norm_sq(int opt, int first, const void* g, int gdtype, const void* p, int pdtype,
                                          const float* s1, const float* s2, long long n, const float* k, double* out,
                                          cudaStream_t stream);

/* 8-bit blockwise state (blocksize 256): c1/a1 state1 codes/absmax, c1b/a1b AdEMAMix's second EMA
 * (same map), c2/a2 state2 (NULL when unused). table*: 256 floats; cell*, bounds*, codes*: the plans.
 * codes* == NULL means identity bucket codes (sorted tables such as the dynamic maps); with S1 == 2 and
 * S2 == 3 that selects an unrolled fast path. */
cudaError_t kbit_optimizer_update_8bit_blockwise(int opt, int first, int skip_zeros, const void* g, int gdtype,
                                                 void* p, int pdtype, unsigned char* c1, float* a1,
                                                 unsigned char* c1b, float* a1b, unsigned char* c2, float* a2,
                                                 const float* table1, const unsigned char* cell1, const float* bounds1,
                                                 const unsigned char* codes1, int m1, int S1, const float* table2,
                                                 const unsigned char* cell2, const float* bounds2,
                                                 const unsigned char* codes2, int m2, int S2, long long n,
                                                 const float* k, cudaStream_t stream);

/* 1 if built with the spec's IEEE flags. */
int kbit_optim_ieee_build(void);

#ifdef __cplusplus
}
#endif

#endif
