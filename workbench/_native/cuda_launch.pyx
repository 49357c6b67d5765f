# cython: language_level=3
"""The launches of the CUDA families' kernels (cuda_src/<family>.cu -> libkbit_<family>.so), one function per
extern "C" entry point, named as it and taking its arguments in its order: device pointers and the stream as
Python ints (0 for NULL), sizes and flags as ints, float arguments as floats. It returns the cudaError_t.

Why not ctypes: it converts a call's 8 to 27 arguments in microseconds (12 arguments: 2.0 us, against 0.2 us here, on
a Xeon core), host time before the launch while the GPU waits for it (reports/public-api-h200/README.md).
The prototypes come from the families' headers (cuda_entry_points.h), so the C compiler checks each call
below against them. ``bind(path)`` resolves every entry point a library holds; workbench/backends/cuda.load
calls it once per family. A family's knobs and queries (tuning, build flags, tiles) stay on its ctypes handle.
"""
from libc.stdint cimport uintptr_t, uint8_t, uint32_t
from posix.dlfcn cimport dlopen, dlsym, dlerror, RTLD_NOW, RTLD_LOCAL

ctypedef uintptr_t P   # a device pointer, a host pointer or a stream handle, as torch gives it (data_ptr())

cdef extern from "cuda_entry_points.h":
    ctypedef struct CUstream_st
    ctypedef CUstream_st* cudaStream_t
    ctypedef int (*kbit_quantize_blockwise_fn)(const void*, int, long long, int, const float*, int,
                                               const unsigned char*, int, unsigned char*, float*, int,
                                               cudaStream_t) nogil
    ctypedef int (*kbit_quantize_4bit_fn)(const void*, int, long long, int, const float*, int, const unsigned char*,
                                          int, unsigned char*, float*, int, cudaStream_t) nogil
    ctypedef int (*kbit_dequantize_blockwise_fn)(const unsigned char*, const float*, const float*, int, long long,
                                                 int, void*, int, cudaStream_t) nogil
    ctypedef int (*kbit_dequantize_4bit_fn)(const unsigned char*, const float*, const float*, long long, int, void*,
                                            int, cudaStream_t) nogil
    ctypedef int (*kbit_dequantize_4bit_nested_fn)(const unsigned char*, const float*, const unsigned char*,
                                                   const float*, const float*, const float*, long long, int, void*,
                                                   int, cudaStream_t) nogil
    ctypedef int (*kbit_int8_vectorwise_quant_fn)(const void*, int, long long, long long, float, int, signed char*,
                                                  float*, unsigned char*, long long*, long long*, cudaStream_t) nogil
    ctypedef int (*kbit_int8_zero_late_cols_fn)(signed char*, long long, long long, const unsigned char*, long long*,
                                                cudaStream_t) nogil
    ctypedef int (*kbit_int8_col_quant_fn)(const void*, int, long long, long long, float, int, signed char*, float*,
                                           cudaStream_t) nogil
    ctypedef int (*kbit_int8_vectorwise_dequant_fn)(const signed char*, const float*, long long, long long, float*,
                                                    cudaStream_t) nogil
    ctypedef int (*kbit_int8_linear_matmul_fn)(const signed char*, const signed char*, int*, int, int, int,
                                               cudaStream_t) nogil
    ctypedef int (*kbit_int8_mm_dequant_fn)(const int*, const float*, const float*, const float*, int, int, void*,
                                            int, cudaStream_t) nogil
    ctypedef int (*kbit_int8_scaled_mm_fn)(const signed char*, const signed char*, const float*, const float*,
                                           const float*, int, int, int, void*, int, cudaStream_t) nogil
    ctypedef int (*kbit_gemv_4bit_fn)(const void*, int, int, long long, long long, const unsigned char*,
                                      const float*, const unsigned char*, const float*, const float*, const float*,
                                      int, const void*, void*, cudaStream_t) nogil
    ctypedef int (*kbit_gemm_4bit_mma_fn)(const void*, int, int, long long, long long, const unsigned char*,
                                          const float*, const unsigned char*, const float*, const float*,
                                          const float*, int, const void*, void*, float*, int*, int, int,
                                          cudaStream_t) nogil
    ctypedef int (*kbit_gemm_4bit_lut_fn)(const void*, int, int, long long, long long, const unsigned char*,
                                          const float*, const unsigned char*, const float*, const float*,
                                          const float*, int, const void*, void*, float*, int*, int, int,
                                          cudaStream_t) nogil
    ctypedef int (*kbit_optimizer_update_32bit_fn)(int, int, int, const void*, int, void*, int, float*, float*,
                                                   float*, long long, const float*, cudaStream_t) nogil
    ctypedef int (*kbit_optimizer_update_norm_sq_fn)(int, int, const void*, int, const void*, int, const float*,
                                                     const float*, long long, const float*, double*,
                                                     cudaStream_t) nogil
    ctypedef int (*kbit_optimizer_update_8bit_blockwise_fn)(
        int, int, int, const void*, int, void*, int, unsigned char*, float*, unsigned char*, float*, unsigned char*,
        float*, const float*, const unsigned char*, const float*, const unsigned char*, int, int, const float*,
        const unsigned char*, const float*, const unsigned char*, int, int, long long, const float*,
        cudaStream_t) nogil
    ctypedef int (*kbit_kbit_quantize_fn)(const void*, int, long long, int, const float*, int, int, const void*, int,
                                          int, int, int, float, int, int, int, void*, float*, uint32_t*, long long,
                                          int*, float*, void*) nogil
    ctypedef int (*kbit_kbit_dequantize_fn)(const uint32_t*, long long, long long, int, int, int, const void*, int,
                                            const float*, const float*, int, int, void*, void*) nogil
    ctypedef int (*kbit_affine_range_fn)(const void*, int, long long, long long, long long, float*, float*,
                                         void*) nogil
    ctypedef int (*kbit_affine_mse_fn)(const void*, int, long long, long long, long long, int, int, const float*, int,
                                       float*, float*, void*) nogil
    ctypedef int (*kbit_affine_codes_fn)(const void*, int, long long, long long, const float*, const uint8_t*, int,
                                         int, uint32_t*, long long, void*) nogil
    ctypedef int (*kbit_affine_dequantize_fn)(const uint32_t*, long long, long long, int, int, long long,
                                              const float*, const uint8_t*, int, void*, void*) nogil
    # the pointers the launches call through, NULL until bind() finds them (cuda_entry_points.h)
    kbit_quantize_blockwise_fn kb_kbit_quantize_blockwise
    kbit_quantize_4bit_fn kb_kbit_quantize_4bit
    kbit_dequantize_blockwise_fn kb_kbit_dequantize_blockwise
    kbit_dequantize_4bit_fn kb_kbit_dequantize_4bit
    kbit_dequantize_4bit_nested_fn kb_kbit_dequantize_4bit_nested
    kbit_int8_vectorwise_quant_fn kb_kbit_int8_vectorwise_quant
    kbit_int8_zero_late_cols_fn kb_kbit_int8_zero_late_cols
    kbit_int8_col_quant_fn kb_kbit_int8_col_quant
    kbit_int8_vectorwise_dequant_fn kb_kbit_int8_vectorwise_dequant
    kbit_int8_linear_matmul_fn kb_kbit_int8_linear_matmul
    kbit_int8_mm_dequant_fn kb_kbit_int8_mm_dequant
    kbit_int8_scaled_mm_fn kb_kbit_int8_scaled_mm
    kbit_gemv_4bit_fn kb_kbit_gemv_4bit
    kbit_gemm_4bit_mma_fn kb_kbit_gemm_4bit_mma
    kbit_gemm_4bit_lut_fn kb_kbit_gemm_4bit_lut
    kbit_optimizer_update_32bit_fn kb_kbit_optimizer_update_32bit
    kbit_optimizer_update_norm_sq_fn kb_kbit_optimizer_update_norm_sq
    kbit_optimizer_update_8bit_blockwise_fn kb_kbit_optimizer_update_8bit_blockwise
    kbit_kbit_quantize_fn kb_kbit_kbit_quantize
    kbit_kbit_dequantize_fn kb_kbit_kbit_dequantize
    kbit_affine_range_fn kb_kbit_affine_range
    kbit_affine_mse_fn kb_kbit_affine_mse
    kbit_affine_codes_fn kb_kbit_affine_codes
    kbit_affine_dequantize_fn kb_kbit_affine_dequantize
    ctypedef struct kb_slot:
        const char* name
        void** fn
    const kb_slot kb_slots[]
    const int kb_nslots


def bind(str path):
    """Resolve the entry points that the library at ``path`` holds (dlopen of the path ctypes opened: the same
    loaded object, so its knobs and these launches share state). Returns the names bound."""
    cdef bytes p = path.encode()
    cdef void* h = dlopen(p, RTLD_NOW | RTLD_LOCAL)
    cdef const char* err
    cdef void* f
    cdef int i
    if h == NULL:
        err = dlerror()
        raise OSError(f"dlopen {path}: {(<bytes>err).decode() if err != NULL else 'failed'}")
    bound = []
    for i in range(kb_nslots):
        f = dlsym(h, kb_slots[i].name)
        if f != NULL:
            kb_slots[i].fn[0] = f
            bound.append((<bytes>kb_slots[i].name).decode())
    return bound


cdef int _unbound(const char* name) except -1:
    raise RuntimeError(f"{name.decode()}: its library is not loaded (workbench.backends.cuda.load(family) binds it)")


# ------------------------------------------------------------------------------------------------- quant
def kbit_quantize_blockwise(P A, int dtype, long long n, int blocksize, P bounds, int nbounds, P bucket_codes,
                            int nbuckets, P codes, P absmax, int flags, P stream):
    if kb_kbit_quantize_blockwise == NULL: _unbound(b"kbit_quantize_blockwise")
    cdef int r
    with nogil:
        r = kb_kbit_quantize_blockwise(<const void*>A, dtype, n, blocksize, <const float*>bounds, nbounds,
            <const unsigned char*>bucket_codes, nbuckets, <unsigned char*>codes, <float*>absmax, flags,
            <cudaStream_t>stream)
    return r


def kbit_quantize_4bit(P A, int dtype, long long n, int blocksize, P bounds, int nbounds, P bucket_codes,
                       int nbuckets, P packed, P absmax, int flags, P stream):
    if kb_kbit_quantize_4bit == NULL: _unbound(b"kbit_quantize_4bit")
    cdef int r
    with nogil:
        r = kb_kbit_quantize_4bit(<const void*>A, dtype, n, blocksize, <const float*>bounds, nbounds,
            <const unsigned char*>bucket_codes, nbuckets, <unsigned char*>packed, <float*>absmax, flags,
            <cudaStream_t>stream)
    return r


def kbit_dequantize_blockwise(P codes, P absmax, P table, int ntable, long long n, int blocksize, P out, int dtype,
                              P stream):
    if kb_kbit_dequantize_blockwise == NULL: _unbound(b"kbit_dequantize_blockwise")
    cdef int r
    with nogil:
        r = kb_kbit_dequantize_blockwise(<const unsigned char*>codes, <const float*>absmax, <const float*>table,
            ntable, n, blocksize, <void*>out, dtype, <cudaStream_t>stream)
    return r


def kbit_dequantize_4bit(P packed, P absmax, P table, long long n, int blocksize, P out, int dtype, P stream):
    if kb_kbit_dequantize_4bit == NULL: _unbound(b"kbit_dequantize_4bit")
    cdef int r
    with nogil:
        r = kb_kbit_dequantize_4bit(<const unsigned char*>packed, <const float*>absmax, <const float*>table, n,
            blocksize, <void*>out, dtype, <cudaStream_t>stream)
    return r


def kbit_dequantize_4bit_nested(P packed, P absmax2, P absmax_8bit, P absmax_code, P absmax_offset, P table,
                                long long n, int blocksize, P out, int dtype, P stream):
    if kb_kbit_dequantize_4bit_nested == NULL: _unbound(b"kbit_dequantize_4bit_nested")
    cdef int r
    with nogil:
        r = kb_kbit_dequantize_4bit_nested(<const unsigned char*>packed, <const float*>absmax2,
            <const unsigned char*>absmax_8bit, <const float*>absmax_code, <const float*>absmax_offset,
            <const float*>table, n, blocksize, <void*>out, dtype, <cudaStream_t>stream)
    return r


# -------------------------------------------------------------------------------------------------- int8
def kbit_int8_vectorwise_quant(P A, int dtype, long long rows, long long cols, float thr, int use_thr, P codes,
                               P row_stats, P col_flags, P col_index, P host_counts, P stream):
    if kb_kbit_int8_vectorwise_quant == NULL: _unbound(b"kbit_int8_vectorwise_quant")
    cdef int r
    with nogil:
        r = kb_kbit_int8_vectorwise_quant(<const void*>A, dtype, rows, cols, thr, use_thr, <signed char*>codes,
            <float*>row_stats, <unsigned char*>col_flags, <long long*>col_index, <long long*>host_counts,
            <cudaStream_t>stream)
    return r


def kbit_int8_zero_late_cols(P codes, long long rows, long long cols, P col_flags, P scratch, P stream):
    if kb_kbit_int8_zero_late_cols == NULL: _unbound(b"kbit_int8_zero_late_cols")
    cdef int r
    with nogil:
        r = kb_kbit_int8_zero_late_cols(<signed char*>codes, rows, cols, <const unsigned char*>col_flags,
            <long long*>scratch, <cudaStream_t>stream)
    return r


def kbit_int8_col_quant(P A, int dtype, long long rows, long long cols, float thr, int use_thr, P col_codes,
                        P col_stats, P stream):
    if kb_kbit_int8_col_quant == NULL: _unbound(b"kbit_int8_col_quant")
    cdef int r
    with nogil:
        r = kb_kbit_int8_col_quant(<const void*>A, dtype, rows, cols, thr, use_thr, <signed char*>col_codes,
            <float*>col_stats, <cudaStream_t>stream)
    return r


def kbit_int8_vectorwise_dequant(P q, P stats, long long rows, long long cols, P out, P stream):
    if kb_kbit_int8_vectorwise_dequant == NULL: _unbound(b"kbit_int8_vectorwise_dequant")
    cdef int r
    with nogil:
        r = kb_kbit_int8_vectorwise_dequant(<const signed char*>q, <const float*>stats, rows, cols, <float*>out,
            <cudaStream_t>stream)
    return r


def kbit_int8_linear_matmul(P A, P B, P C, int M, int N, int K, P stream):
    if kb_kbit_int8_linear_matmul == NULL: _unbound(b"kbit_int8_linear_matmul")
    cdef int r
    with nogil:
        r = kb_kbit_int8_linear_matmul(<const signed char*>A, <const signed char*>B, <int*>C, M, N, K,
            <cudaStream_t>stream)
    return r


def kbit_int8_mm_dequant(P C, P row_stats, P col_stats, P bias, int M, int N, P out, int out_dtype, P stream):
    if kb_kbit_int8_mm_dequant == NULL: _unbound(b"kbit_int8_mm_dequant")
    cdef int r
    with nogil:
        r = kb_kbit_int8_mm_dequant(<const int*>C, <const float*>row_stats, <const float*>col_stats,
            <const float*>bias, M, N, <void*>out, out_dtype, <cudaStream_t>stream)
    return r


def kbit_int8_scaled_mm(P A, P B, P row_stats, P col_stats, P bias, int M, int N, int K, P out, int out_dtype,
                        P stream):
    if kb_kbit_int8_scaled_mm == NULL: _unbound(b"kbit_int8_scaled_mm")
    cdef int r
    with nogil:
        r = kb_kbit_int8_scaled_mm(<const signed char*>A, <const signed char*>B, <const float*>row_stats,
            <const float*>col_stats, <const float*>bias, M, N, K, <void*>out, out_dtype, <cudaStream_t>stream)
    return r


# ------------------------------------------------------------------------------------------------ matmul
def kbit_gemv_4bit(P A, int dtype, int M, long long N, long long K, P B, P absmax, P absmax_8bit, P absmax_code,
                   P absmax_offset, P table, int blocksize, P bias, P out, P stream):
    if kb_kbit_gemv_4bit == NULL: _unbound(b"kbit_gemv_4bit")
    cdef int r
    with nogil:
        r = kb_kbit_gemv_4bit(<const void*>A, dtype, M, N, K, <const unsigned char*>B, <const float*>absmax,
            <const unsigned char*>absmax_8bit, <const float*>absmax_code, <const float*>absmax_offset,
            <const float*>table, blocksize, <const void*>bias, <void*>out, <cudaStream_t>stream)
    return r


def kbit_gemm_4bit_mma(P A, int dtype, int M, long long N, long long K, P B, P absmax, P absmax_8bit,
                       P absmax_code, P absmax_offset, P table, int blocksize, P bias, P out, P partial, P counters,
                       int splits, int lookup, P stream):
    if kb_kbit_gemm_4bit_mma == NULL: _unbound(b"kbit_gemm_4bit_mma")
    cdef int r
    with nogil:
        r = kb_kbit_gemm_4bit_mma(<const void*>A, dtype, M, N, K, <const unsigned char*>B, <const float*>absmax,
            <const unsigned char*>absmax_8bit, <const float*>absmax_code, <const float*>absmax_offset,
            <const float*>table, blocksize, <const void*>bias, <void*>out, <float*>partial, <int*>counters, splits,
            lookup, <cudaStream_t>stream)
    return r


def kbit_gemm_4bit_lut(P A, int dtype, int M, long long N, long long K, P B, P absmax, P absmax_8bit,
                       P absmax_code, P absmax_offset, P table, int blocksize, P bias, P out, P partial, P counters,
                       int splits, int tiled, P stream):
    if kb_kbit_gemm_4bit_lut == NULL: _unbound(b"kbit_gemm_4bit_lut")
    cdef int r
    with nogil:
        r = kb_kbit_gemm_4bit_lut(<const void*>A, dtype, M, N, K, <const unsigned char*>B, <const float*>absmax,
            <const unsigned char*>absmax_8bit, <const float*>absmax_code, <const float*>absmax_offset,
            <const float*>table, blocksize, <const void*>bias, <void*>out, <float*>partial, <int*>counters, splits,
            tiled, <cudaStream_t>stream)
    return r


# ------------------------------------------------------------------------------------------------- optim
def kbit_optimizer_update_32bit(int opt, int first, int skip_zeros, P g, int gdtype, P p, int pdtype, P s1, P m2,
                                P s2, long long n, P k, P stream):
    if kb_kbit_optimizer_update_32bit == NULL: _unbound(b"kbit_optimizer_update_32bit")
    cdef int r
    with nogil:
        r = kb_kbit_optimizer_update_32bit(opt, first, skip_zeros, <const void*>g, gdtype, <void*>p, pdtype,
            <float*>s1, <float*>m2, <float*>s2, n, <const float*>k, <cudaStream_t>stream)
    return r


def kbit_optimizer_update_norm_sq(int opt, int first, P g, int gdtype, P p, int pdtype, P s1, P s2, long long n,
                                  P k, P out, P stream):
    if kb_kbit_optimizer_update_norm_sq == NULL: _unbound(b"kbit_optimizer_update_norm_sq")
    cdef int r
    with nogil:
        r = kb_kbit_optimizer_update_norm_sq(opt, first, <const void*>g, gdtype, <const void*>p, pdtype,
            <const float*>s1, <const float*>s2, n, <const float*>k, <double*>out, <cudaStream_t>stream)
    return r


def kbit_optimizer_update_8bit_blockwise(int opt, int first, int skip_zeros, P g, int gdtype, P p, int pdtype,
                                         P c1, P a1, P c1b, P a1b, P c2, P a2, P table1, P cell1, P bounds1,
                                         P codes1, int m1, int S1, P table2, P cell2, P bounds2, P codes2, int m2,
                                         int S2, long long n, P k, P stream):
    if kb_kbit_optimizer_update_8bit_blockwise == NULL: _unbound(b"kbit_optimizer_update_8bit_blockwise")
    cdef int r
    with nogil:
        r = kb_kbit_optimizer_update_8bit_blockwise(opt, first, skip_zeros, <const void*>g, gdtype, <void*>p, pdtype,
            <unsigned char*>c1, <float*>a1, <unsigned char*>c1b, <float*>a1b, <unsigned char*>c2, <float*>a2,
            <const float*>table1, <const unsigned char*>cell1, <const float*>bounds1, <const unsigned char*>codes1,
            m1, S1, <const float*>table2, <const unsigned char*>cell2, <const float*>bounds2,
            <const unsigned char*>codes2, m2, S2, n, <const float*>k, <cudaStream_t>stream)
    return r


# -------------------------------------------------------------------------------------------------- kbit
def kbit_kbit_quantize(P x, int kind, long long n, int blocksize, P cb, int m, int k, P plan, int plan_size,
                       int plan_sh, int plan_kbase, int plan_half, float plan_safe, int layout, int fmt,
                       int codes_decoded, P scales, P ts, P out, long long nw, P nonfinite, P scratch, P stream):
    if kb_kbit_kbit_quantize == NULL: _unbound(b"kbit_kbit_quantize")
    cdef int r
    with nogil:
        r = kb_kbit_kbit_quantize(<const void*>x, kind, n, blocksize, <const float*>cb, m, k, <const void*>plan,
            plan_size, plan_sh, plan_kbase, plan_half, plan_safe, layout, fmt, codes_decoded, <void*>scales,
            <float*>ts, <uint32_t*>out, nw, <int*>nonfinite, <float*>scratch, <void*>stream)
    return r


def kbit_kbit_dequantize(P words, long long nw, long long n, int k, int layout, int blocksize, P scales, int fmt,
                         P ts, P cb, int m, int kind, P out, P stream):
    if kb_kbit_kbit_dequantize == NULL: _unbound(b"kbit_kbit_dequantize")
    cdef int r
    with nogil:
        r = kb_kbit_kbit_dequantize(<const uint32_t*>words, nw, n, k, layout, blocksize, <const void*>scales, fmt,
            <const float*>ts, <const float*>cb, m, kind, <void*>out, <void*>stream)
    return r


def kbit_affine_range(P x, int kind, long long n, long long G, long long nb, P lo, P hi, P stream):
    if kb_kbit_affine_range == NULL: _unbound(b"kbit_affine_range")
    cdef int r
    with nogil:
        r = kb_kbit_affine_range(<const void*>x, kind, n, G, nb, <float*>lo, <float*>hi, <void*>stream)
    return r


def kbit_affine_mse(P x, int kind, long long n, long long G, long long nb, int k, int fmt, P grid, int ngrid, P lo,
                    P hi, P stream):
    if kb_kbit_affine_mse == NULL: _unbound(b"kbit_affine_mse")
    cdef int r
    with nogil:
        r = kb_kbit_affine_mse(<const void*>x, kind, n, G, nb, k, fmt, <const float*>grid, ngrid, <float*>lo,
            <float*>hi, <void*>stream)
    return r


def kbit_affine_codes(P x, int kind, long long n, long long G, P r_, P z, int k, int layout, P out, long long nw,
                      P stream):
    if kb_kbit_affine_codes == NULL: _unbound(b"kbit_affine_codes")
    cdef int r
    with nogil:
        r = kb_kbit_affine_codes(<const void*>x, kind, n, G, <const float*>r_, <const uint8_t*>z, k, layout,
            <uint32_t*>out, nw, <void*>stream)
    return r


def kbit_affine_dequantize(P words, long long nw, long long n, int k, int layout, long long G, P D, P z, int kind,
                           P out, P stream):
    if kb_kbit_affine_dequantize == NULL: _unbound(b"kbit_affine_dequantize")
    cdef int r
    with nogil:
        r = kb_kbit_affine_dequantize(<const uint32_t*>words, nw, n, k, layout, G, <const float*>D, <const uint8_t*>z,
            kind, <void*>out, <void*>stream)
    return r
