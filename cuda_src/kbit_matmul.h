/* kbit-workbench: fused 4-bit dequantize + GEMV for M = 1..4 activation rows, and fused dequantize + tensor-core
 * GEMM for any M (family "matmul").
 *
 * Built into cuda_src/build/libkbit_matmul.so by workbench/cuda_build.py. Every entry point returns the
 * cudaError_t of its launch and runs on the given stream. Numerics: workbench/backends/reference/matmul.py
 *   s[b]    = float32(absmax_code[absmax_8bit[b]] * absmax[b / 256]) + *absmax_offset   (nested; else absmax[b])
 *   W[n,k]  = dtype(table[code(n*K+k)] * s[(n*K+k) / blocksize])                        (one rounding)
 *   out[m,n]= dtype(float32(sum_k A[m,k] * W[n,k]) + bias[n])                            (float32 accumulation)
 * Accumulation order (the GEMV, explicit fused multiply-adds; for fp16/bf16 operands each product is exact in
 * float32, so an FMA rounds like a separate add): one warp per output row; lane l owns the row's CH-element chunks
 * l, l + 32, l + 64, ... (CH = 64 when blocksize >= 64 and K % 64 == 0, else 32), accumulated in element order
 * into two float32 partials per lane and row m (even and odd elements), added, then the 32 lane sums are combined
 * by a butterfly (__shfl_xor_sync, offsets 16, 8, 4, 2, 1). Rows whose K is not a multiple of 32 (or unaligned
 * A / B) take a per-element path: lane l owns elements l, l + 32, ... (one partial), then the same butterfly.
 * Any order is within the reference's bound (workbench/backends/reference/matmul.py).
 * All pointers are DEVICE pointers; absmax_8bit/absmax_code/absmax_offset are NULL when not nested; bias
 * may be NULL. table: 16 float32 values (any codebook), staged in shared memory per CTA.
 */
#ifndef KBIT_MATMUL_H
#define KBIT_MATMUL_H

#include "kbit_api_types.h"

#include "kbit_dtypes.h" /* KBIT_F32 / KBIT_F16 / KBIT_BF16: element types of the dtype arguments */

#ifdef __cplusplus
extern "C" {
#endif


#define KBIT_GEMV_MAX_M 4

/* A: M x K (row-major, dtype), B: packed 4-bit N x K ((N*K+1)/2 bytes, element 2i in the high nibble),
 * out: M x N (dtype). 1 <= M <= KBIT_GEMV_MAX_M; blocksize a power of two >= 32. */
cudaError_t kbit_gemv_4bit(const void* A, int dtype, int M, long long N, long long K, const unsigned char* B,
                           const float* absmax, const unsigned char* absmax_8bit, const float* absmax_code,
                           const float* absmax_offset, const float* table, int blocksize, const void* bias,
                           void* out, cudaStream_t stream);

/* Fused dequantize + tensor-core GEMM (mma.sync m16n8k16, float32 accumulators), any M >= 1; fp16/bf16 only.
 * Requires K % 32 == 0 and 16-byte aligned A and B (else cudaErrorInvalidValue; callers fall back).
 * Accumulation order: per 128-wide k chunk, 8 mma k-steps of 16 (the tensor core's own order inside a step),
 * chunks in order within a split; splits > 1 split K into equal chunk ranges, whose float32 partials
 * (partial: splits * M * N floats) are summed in split order 0, 1, ... then the bias is added.
 * counters: one int per (ceil(M / block_m) * ceil(N / block_n)) tile, zero on entry; the kernel leaves it zero.
 * lookup: how the codebook is read (0: one shared 16-float table, 1: a copy per lane, 3: a 256-entry pair table
 * indexed by bytes); same numerics, different speed (matmul_mma.cuh). */
cudaError_t kbit_gemm_4bit_mma(const void* A, int dtype, int M, long long N, long long K, const unsigned char* B,
                               const float* absmax, const unsigned char* absmax_8bit, const float* absmax_code,
                               const float* absmax_offset, const float* table, int blocksize, const void* bias,
                               void* out, float* partial, int* counters, int splits, int lookup, cudaStream_t stream);

/* Fused dequantize + tensor-core GEMM with UNSCALED codebook lookups (matmul_lut.cuh), 1 <= M <= 64, fp16/bf16.
 * Requires K % 64 == 0, blocksize >= 64 and 16-byte aligned A and B (else cudaErrorInvalidValue; callers fall
 * back). Numerics differ from rule 2: the weight is dtype(table[c]) and the block scale multiplies the partial sum,
 *   out[m,n] = dtype(sum_b fma(s[b], P_b, .) + bias[n]),  P_b = sum_{k in 64-chunk b} dtype(table[c_k]) * A[m,k]
 * with P_b by the tensor core (4 mma k-steps of 16 from zero, float32), chunks in order within a split, splits
 * summed in order 0, 1, ... (partial: splits * M * N floats; counters: one int per 16 weight rows, zero on entry
 * and on exit). Bound: workbench/backends/reference/matmul.py (error_bound_unscaled). tiled:
 * tiled = 1: B in the tiled layout, [ceil(N/16) tiles][K/64 chunks][32 lanes][16 bytes] (matmul_lut.cuh); 2: chunk-major,
 * [K/64 chunks][ceil(N/16) tiles][32 lanes][16 bytes]; 0: bitsandbytes' rows. */
#define KBIT_GEMM_LUT_MAX_M 64
cudaError_t kbit_gemm_4bit_lut(const void* A, int dtype, int M, long long N, long long K, const unsigned char* B,
                               const float* absmax, const unsigned char* absmax_8bit, const float* absmax_code,
                               const float* absmax_offset, const float* table, int blocksize, const void* bias,
                               void* out, float* partial, int* counters, int splits, int tiled, cudaStream_t stream);

/* A/B knob of kbit_gemm_4bit_lut (bf16, M <= 16, grouped nested scales): 0 = the default (the next chunk's
 * activations loaded while one is computed); 1 scales per chunk; 2, 3 diagnostics with wrong results (no scale loads,
 * no codebook lookup); 4, 5 the registers budgeted for 3 / 1 CTAs per SM; 6 a ring of 3 groups of chunks in flight;
 * 10 a diagnostic: the weight loads alone; 11 a group's activations loaded before its first mma; 12 a diagnostic: no
 * activation loads; 13 the activations loaded at their chunk; 14 the default (the pair table addressed by inline PTX,
 * no add per lookup: matmul_lut.cuh, lds_table); 15 the default before it, a generic pointer into the table; 16 two
 * 16-row tiles a warp multiplying each chunk's activations (the registers of 1 CTA per SM; of 2, or four tiles,
 * spill); the default on tile-major copies (tiled = 1) is the lean form of 14 (no per-chunk range checks,
 * predicated loads or zero fill: matmul_lut.cuh, lean_range); 18 the lean form with registers for 3 CTAs per SM;
 * 19 form 14's general loop on every layout. All but 2, 3, 10 and 12 give the same bits (matmul_lut.cuh;
 * reports/matmul-h200/lut_gemm). 20..22 (any
 * M, dtype and scales): the kernel's wgmma form, two (20; 22: 3 groups of codes in flight) or one (21) warpgroups a
 * CTA sharing each chunk's activations in shared memory (matmul_lut_wgmma.cuh): the same sums and bound, the tensor
 * core's bits not assumed equal. Variant 0 runs form 29 for M > 16 (lutwg::takes); 31 runs the mma.sync form
 * at any M (the default below 17 rows). 23, 24 (tile-major copies): the lean form with a ring of 3 / 4 groups of
 * chunks (2 / 3 in flight a warp); 25, 26: the lean form asking the group 4 / 8 groups ahead into L2
 * (prefetch.global.L2); 27: the lean form with its tasks dealt 8 a CTA (the default spreads them over every resident
 * CTA where that leaves fewer than 8 on the busiest, so that fewer tasks than warp slots fall evenly on the SMs):
 * the same bits. (A lean form with the
 * codes brought in by the TMA unit was slower and is gone: git f30bd8d, reports/matmul-h200/lean_lut_gemm.) 29, 30:
 * forms 20, 21 pipelined: activations copied three chunks ahead by cp.async, the next chunk decoded while the tensor
 * core runs this one (matmul_lut_wgmma.cuh, gemm_lut_wg_kernel with PIPE): variant 20's bits. */
void kbit_gemm_lut_tuning(int variant);

/* Resident CTAs per SM of the kernel that serves M rows of dtype against an (N, K) weight (its grid: at most that
 * many per SM). */
int kbit_gemm_4bit_lut_ctas(int M, long long N, long long K, int dtype, int* ctas_per_sm);

/* The kernel's tile for M activation rows (block_m x block_n of out^T) and how many CTAs fit on one SM. */
int kbit_gemm_4bit_mma_tile(int M, int lookup, int* block_m, int* block_n, int* ctas_per_sm);

/* 1 when the library was built with IEEE float flags (-fmad=false): the numerics above hold. */
int kbit_matmul_ieee_build(void);

/* A/B knob: the GEMV's rows per warp, 0 = the default (4 / M), 1/2/4 forced (results do not change). */
void kbit_gemv_tuning(int rows_per_warp);

/* A/B knobs of the tensor-core GEMM (results do not change for a given split plan; query kbit_gemm_4bit_mma_tile
 * again after a change: block_n and the resident CTAs follow): m16 row tiles per warp (0 = the default, 1 or 2
 * forced), and whether each thread reads its weights and scales into registers (1) or the CTA stages them in
 * shared memory (0; -1 = the default). */
void kbit_gemm_tuning(int row_tiles, int weights_in_registers);

#ifdef __cplusplus
}
#endif

#endif
