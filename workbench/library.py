"""Every op, declared once: a torch.library custom op in the ``workbench`` namespace.

Each declaration gives the op's schema (name, arguments, dtypes), its fake (the output shapes and
dtypes, for torch.compile and meta tensors) and one dispatching implementation: the ``backend``
argument names which registered kernel runs (``@register_kernel("workbench::<op>", backend)`` in
``workbench/backends/<backend>/<family>.py``). The public API (workbench.ops, workbench.int8,
workbench.optim, workbench.kbit) validates its arguments, resolves ``backend="auto"`` and calls
``torch.ops.workbench.<op>`` (in plain eager mode the kernel that op dispatches to, directly:
``workbench.ops.call_op``). Inputs reach the kernels flat and contiguous (a direct call of an op with a
strided tensor gets a contiguous copy of it: ``_guarded``), and a direct call checks every size a kernel
indexes by against the tensor it indexes first (workbench/op_checks.py).

A codebook travels as its three arrays (``table``, ``bounds``, ``bucket_codes``; see
workbench.codebooks), normally host tensors: the kernel tables built from them are cached by
content in :mod:`workbench.codebook_tables`, once per codebook.
"""
from __future__ import annotations

import torch

from .backends.registry import kernel
from .codebook_tables import codebook_from_tensors

NS = "workbench"
_lib = torch.library.Library(NS, "DEF")
DECLARED: dict[str, str] = {}   # op -> schema


def _declare(qualname: str, schema: str, impl, fake) -> None:
    ns, name = qualname.split("::")
    assert ns == NS, qualname
    _lib.define(name + schema)
    _lib.impl(name, _guarded(name, schema, impl), "CompositeExplicitAutograd")
    torch.library.register_fake(qualname, fake, lib=_lib)
    DECLARED[name] = schema


def _guarded(name: str, schema: str, impl):
    """``impl`` behind the op's own guards, for ``torch.ops.workbench.<op>`` called directly (the public API
    validates more and, in eager mode, calls the kernels itself: workbench.ops._eager):
    - the op's size contract (workbench/op_checks.py): every size a kernel indexes by, against the tensor it indexes;
    - every tensor contiguous: the kernels read flat memory from ``data_ptr()``, so a strided or expanded tensor
      would be read out of place (past its storage, for an expanded one). Inputs get a contiguous copy; a tensor
      the op writes in place (``!`` in the schema) cannot, so it gets an error naming it."""
    params = [p.strip() for p in schema[schema.index("(") + 1:schema.rindex(") ->")].split(",")]
    names = [p.split()[-1] for p in params]
    written = {i for i, p in enumerate(params) if "!" in p.split()[0]}

    def run(*args):
        check = _checks().get(name)
        if check is not None:
            check(*args[:-1])    # the last argument names the backend
        if all(not isinstance(a, torch.Tensor) or a.is_contiguous() for a in args):
            return impl(*args)
        fixed = list(args)
        for i, a in enumerate(args):
            if isinstance(a, torch.Tensor) and not a.is_contiguous():
                if i in written:
                    raise ValueError(f"{name}: {names[i]} is written in place and must be contiguous, got strides "
                                     f"{a.stride()} for shape {tuple(a.shape)}")
                fixed[i] = a.contiguous()
        return impl(*fixed)
    return run


def _checks() -> dict:
    global _CHECKS
    if _CHECKS is None:      # imported on first call: op_checks reads the reference kernels, which register here
        from .op_checks import CHECKS
        _CHECKS = CHECKS
    return _CHECKS


_CHECKS = None


def _nblocks(n: int, blocksize: int) -> int:
    return -(-n // blocksize)


# ------------------------------------------------------------------ quant family

def _quantize_blockwise(A, table, bounds, bucket_codes, blocksize, backend):
    return kernel("quantize_blockwise", backend)(A, codebook_from_tensors(table, bounds, bucket_codes), blocksize)


def _quantize_blockwise_fake(A, table, bounds, bucket_codes, blocksize, backend):
    n = A.numel()
    return A.new_empty(n, dtype=torch.uint8), A.new_empty(_nblocks(n, blocksize), dtype=torch.float32)


_declare("workbench::quantize_blockwise",
         "(Tensor A, Tensor table, Tensor bounds, Tensor bucket_codes, int blocksize, str backend) -> (Tensor, Tensor)",
         _quantize_blockwise, _quantize_blockwise_fake)


def _quantize_blockwise_stochastic(A, table, bounds, bucket_codes, blocksize, rand, backend):
    cb = codebook_from_tensors(table, bounds, bucket_codes)
    return kernel("quantize_blockwise_stochastic", backend)(A, cb, blocksize, rand)


def _quantize_blockwise_stochastic_fake(A, table, bounds, bucket_codes, blocksize, rand, backend):
    return _quantize_blockwise_fake(A, table, bounds, bucket_codes, blocksize, backend)


_declare("workbench::quantize_blockwise_stochastic",
         "(Tensor A, Tensor table, Tensor bounds, Tensor bucket_codes, int blocksize, Tensor rand, str backend)"
         " -> (Tensor, Tensor)",
         _quantize_blockwise_stochastic, _quantize_blockwise_stochastic_fake)


def _dequantize_blockwise(codes, absmax, table, blocksize, dtype, backend):
    return kernel("dequantize_blockwise", backend)(codes, absmax, table, blocksize, dtype)


def _dequantize_blockwise_fake(codes, absmax, table, blocksize, dtype, backend):
    return codes.new_empty(codes.numel(), dtype=dtype)


_declare("workbench::dequantize_blockwise",
         "(Tensor codes, Tensor absmax, Tensor table, int blocksize, ScalarType dtype, str backend) -> Tensor",
         _dequantize_blockwise, _dequantize_blockwise_fake)


def _quantize_4bit(A, table, bounds, bucket_codes, blocksize, backend):
    return kernel("quantize_4bit", backend)(A, codebook_from_tensors(table, bounds, bucket_codes), blocksize)


def _quantize_4bit_fake(A, table, bounds, bucket_codes, blocksize, backend):
    n = A.numel()
    return A.new_empty((n + 1) // 2, dtype=torch.uint8), A.new_empty(_nblocks(n, blocksize), dtype=torch.float32)


_declare("workbench::quantize_4bit",
         "(Tensor A, Tensor table, Tensor bounds, Tensor bucket_codes, int blocksize, str backend) -> (Tensor, Tensor)",
         _quantize_4bit, _quantize_4bit_fake)


def _dequantize_4bit(packed, absmax, table, blocksize, n, dtype, absmax_8bit, absmax_code, absmax_offset, backend):
    return kernel("dequantize_4bit", backend)(packed, absmax, table, blocksize, n, dtype, absmax_8bit, absmax_code,
                                              absmax_offset)


def _dequantize_4bit_fake(packed, absmax, table, blocksize, n, dtype, absmax_8bit, absmax_code, absmax_offset,
                          backend):
    return packed.new_empty(n, dtype=dtype)


# absmax_8bit, absmax_code, absmax_offset: a double-quantized absmax, decoded by the kernel (gemm_4bit's arguments)
_declare("workbench::dequantize_4bit",
         "(Tensor packed, Tensor absmax, Tensor table, int blocksize, int n, ScalarType dtype, Tensor? absmax_8bit,"
         " Tensor? absmax_code, Tensor? absmax_offset, str backend) -> Tensor",
         _dequantize_4bit, _dequantize_4bit_fake)


# ------------------------------------------------------------------ int8 family (A: rows x cols)

def _outlier_cols_fake(A, threshold):
    return A.new_empty(torch.library.get_ctx().new_dynamic_size(), dtype=torch.int64)


def _int8_vectorwise_quant(A, threshold, backend):
    return kernel("int8_vectorwise_quant", backend)(A, threshold)


def _int8_vectorwise_quant_fake(A, threshold, backend):
    codes = A.new_empty(A.shape, dtype=torch.int8)
    stats = A.new_empty(A.shape[0], dtype=torch.float32)
    return codes, stats, (_outlier_cols_fake(A, threshold) if threshold > 0 else None)


_declare("workbench::int8_vectorwise_quant", "(Tensor A, float threshold, str backend) -> (Tensor, Tensor, Tensor?)",
         _int8_vectorwise_quant, _int8_vectorwise_quant_fake)


def _outlier_columns(A, threshold, backend):
    return kernel("outlier_columns", backend)(A, threshold)


_declare("workbench::outlier_columns", "(Tensor A, float threshold, str backend) -> Tensor", _outlier_columns,
         lambda A, threshold, backend: _outlier_cols_fake(A, threshold))


def _int8_double_quant(A, threshold, backend):
    return kernel("int8_double_quant", backend)(A, threshold)


def _int8_double_quant_fake(A, threshold, backend):
    rows, cols = A.shape
    return (A.new_empty(A.shape, dtype=torch.int8), A.new_empty(A.shape, dtype=torch.int8),
            A.new_empty(rows, dtype=torch.float32), A.new_empty(cols, dtype=torch.float32),
            _outlier_cols_fake(A, threshold) if threshold > 0 else None)


_declare("workbench::int8_double_quant", "(Tensor A, float threshold, str backend) -> (Tensor, Tensor, Tensor, Tensor, Tensor?)",
         _int8_double_quant, _int8_double_quant_fake)


def _int8_vectorwise_dequant(A, stats, backend):
    return kernel("int8_vectorwise_dequant", backend)(A, stats)


_declare("workbench::int8_vectorwise_dequant", "(Tensor A, Tensor stats, str backend) -> Tensor", _int8_vectorwise_dequant,
         lambda A, stats, backend: A.new_empty(A.shape, dtype=torch.float32))


def _int8_linear_matmul(A, B, backend):
    return kernel("int8_linear_matmul", backend)(A, B)


_declare("workbench::int8_linear_matmul", "(Tensor A, Tensor B, str backend) -> Tensor", _int8_linear_matmul,
         lambda A, B, backend: A.new_empty((A.shape[0], B.shape[0]), dtype=torch.int32))


def _int8_mm_dequant(A, row_stats, col_stats, bias, dtype, backend):
    return kernel("int8_mm_dequant", backend)(A, row_stats, col_stats, bias, dtype)


_declare("workbench::int8_mm_dequant",
         "(Tensor A, Tensor row_stats, Tensor col_stats, Tensor? bias, ScalarType dtype, str backend) -> Tensor",
         _int8_mm_dequant, lambda A, row_stats, col_stats, bias, dtype, backend: A.new_empty(A.shape, dtype=dtype))


# ------------------------------------------------------------------ optim family (in place on p and the states)

def _optimizer_update_32bit(optimizer_name, g, p, state1, state2, unorm_vec, max_unorm, param_norm, beta1, beta2,
                            beta3, alpha, eps, weight_decay, step, lr, gnorm_scale, skip_zeros, backend):
    kernel("optimizer_update_32bit", backend)(optimizer_name, g, p, state1, state2, unorm_vec, max_unorm, param_norm,
                                              beta1, beta2, beta3, alpha, eps, weight_decay, step, lr,
                                              gnorm_scale=gnorm_scale, skip_zeros=skip_zeros)


_declare("workbench::optimizer_update_32bit",
         "(str optimizer_name, Tensor g, Tensor(a!) p, Tensor(b!) state1, Tensor(c!)? state2, Tensor(d!)? unorm_vec,"
         " float max_unorm, float param_norm, float beta1, float beta2, float beta3, float alpha, float eps,"
         " float weight_decay, int step, float lr, float gnorm_scale, bool skip_zeros, str backend) -> ()",
         _optimizer_update_32bit, lambda *args: None)


def _optimizer_update_8bit_blockwise(optimizer_name, g, p, state1, state2, beta1, beta2, beta3, alpha, eps, step,
                                     lr, qmap1, qmap2, absmax1, absmax2, weight_decay, gnorm_scale, skip_zeros,
                                     backend):
    kernel("optimizer_update_8bit_blockwise", backend)(optimizer_name, g, p, state1, state2, beta1, beta2, beta3,
                                                       alpha, eps, step, lr, qmap1, qmap2, absmax1, absmax2,
                                                       weight_decay, gnorm_scale=gnorm_scale, skip_zeros=skip_zeros)


_declare("workbench::optimizer_update_8bit_blockwise",
         "(str optimizer_name, Tensor g, Tensor(a!) p, Tensor(b!) state1, Tensor(c!)? state2, float beta1, float beta2,"
         " float beta3, float alpha, float eps, int step, float lr, Tensor qmap1, Tensor? qmap2, Tensor(d!) absmax1,"
         " Tensor(e!)? absmax2, float weight_decay, float gnorm_scale, bool skip_zeros, str backend) -> ()",
         _optimizer_update_8bit_blockwise, lambda *args: None)


def _int8_scaled_mm(CA, CB, SCA, SCB, bias, dtype, backend):
    return kernel("int8_scaled_mm", backend)(CA, CB, SCA, SCB, bias, dtype)


_declare("workbench::int8_scaled_mm",
         "(Tensor CA, Tensor CB, Tensor SCA, Tensor SCB, Tensor? bias, ScalarType dtype, str backend) -> Tensor",
         _int8_scaled_mm,
         lambda CA, CB, SCA, SCB, bias, dtype, backend: CA.new_empty((CA.shape[0], CB.shape[0]), dtype=dtype))


def _int8_mixed_scaled_mm(A, CA, CB, SCA, SCB, outlier_cols, bias, backend):
    return kernel("int8_mixed_scaled_mm", backend)(A, CA, CB, SCA, SCB, outlier_cols, bias)


def _int8_mixed_scaled_mm_fake(A, CA, CB, SCA, SCB, outlier_cols, bias, backend):
    k = outlier_cols.shape[0] if outlier_cols is not None else 0
    return A.new_empty((CA.shape[0], CB.shape[0])), A.new_empty((A.shape[0], k))


_declare("workbench::int8_mixed_scaled_mm",
         "(Tensor A, Tensor CA, Tensor CB, Tensor SCA, Tensor SCB, Tensor? outlier_cols, Tensor? bias, str backend)"
         " -> (Tensor, Tensor)",
         _int8_mixed_scaled_mm, _int8_mixed_scaled_mm_fake)


# ------------------------------------------------------------------ matmul family (A: M x K, B: packed 4-bit N x K)

def _gemv_4bit(A, B, shapeB, absmax, table, blocksize, backend):
    return kernel("gemv_4bit", backend)(A, B, shapeB, absmax, table, blocksize)


_declare("workbench::gemv_4bit",
         "(Tensor A, Tensor B, int[] shapeB, Tensor absmax, Tensor table, int blocksize, str backend) -> Tensor",
         _gemv_4bit, lambda A, B, shapeB, absmax, table, blocksize, backend: A.new_empty((A.shape[0], shapeB[0])))


def _gemm_4bit(A, B, shapeB, absmax, table, blocksize, bias, absmax_8bit, absmax_code, absmax_offset, backend):
    return kernel("gemm_4bit", backend)(A, B, shapeB, absmax, table, blocksize, bias, absmax_8bit, absmax_code,
                                        absmax_offset)


_declare("workbench::gemm_4bit",
         "(Tensor A, Tensor B, int[] shapeB, Tensor absmax, Tensor table, int blocksize, Tensor? bias,"
         " Tensor? absmax_8bit, Tensor? absmax_code, Tensor? absmax_offset, str backend) -> Tensor",
         _gemm_4bit, lambda A, B, shapeB, absmax, table, blocksize, bias, absmax_8bit, absmax_code, absmax_offset,
         backend: A.new_empty((A.shape[0], shapeB[0])))


# ------------------------------------------------------------------ kbit family (issue 19; spec: backends/reference/kbit.py)

_KBIT_SCALE_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def _quantize_kbit(A, codebook, k, blocksize, layout, scale_format, codes_against, backend):
    return kernel("quantize_kbit", backend)(A, codebook, k, blocksize, layout, scale_format, codes_against)


def _quantize_kbit_fake(A, codebook, k, blocksize, layout, scale_format, codes_against, backend):
    n = A.numel()
    words = _nblocks(n, 32) * k if layout == "bitplane" else _nblocks(n * k, 32)
    return (A.new_empty(words, dtype=torch.int32),
            A.new_empty(_nblocks(n, blocksize), dtype=_KBIT_SCALE_DTYPES.get(scale_format, torch.uint8)),
            A.new_empty(1 if scale_format == "e4m3" else 0, dtype=torch.float32),
            A.new_empty(1, dtype=torch.int32))


# outputs: packed words, scales, tensor scale, and a non-finite flag int32[1] (1 if A holds NaN/Inf), which
# the kernels raise in their absmax pass so the public API needs no pass of its own
_declare("workbench::quantize_kbit",
         "(Tensor A, Tensor codebook, int k, int blocksize, str layout, str scale_format, str codes_against,"
         " str backend) -> (Tensor, Tensor, Tensor, Tensor)",
         _quantize_kbit, _quantize_kbit_fake)


def _dequantize_kbit(packed, scales, tensor_scale, codebook, k, blocksize, n, layout, scale_format, dtype, backend):
    return kernel("dequantize_kbit", backend)(packed, scales, tensor_scale, codebook, k, blocksize, n, layout,
                                              scale_format, dtype)


def _dequantize_kbit_fake(packed, scales, tensor_scale, codebook, k, blocksize, n, layout, scale_format, dtype,
                          backend):
    return packed.new_empty(n, dtype=dtype)


_declare("workbench::dequantize_kbit",
         "(Tensor packed, Tensor scales, Tensor tensor_scale, Tensor codebook, int k, int blocksize, int n,"
         " str layout, str scale_format, ScalarType dtype, str backend) -> Tensor",
         _dequantize_kbit, _dequantize_kbit_fake)


# affine groups (scale + zero point, int-k; spec: backends/reference/kbit_affine.py)

def _quantize_kbit_affine(A, k, groupsize, layout, scale_format, clip, backend):
    return kernel("quantize_kbit_affine", backend)(A, k, groupsize, layout, scale_format, clip)


def _quantize_kbit_affine_fake(A, k, groupsize, layout, scale_format, clip, backend):
    n, nb = A.numel(), _nblocks(A.numel(), groupsize)
    words = _nblocks(n, 32) * k if layout == "bitplane" else _nblocks(n * k, 32)
    return (A.new_empty(words, dtype=torch.int32), A.new_empty(nb, dtype=_KBIT_SCALE_DTYPES[scale_format]),
            A.new_empty(nb, dtype=torch.uint8))


_declare("workbench::quantize_kbit_affine",
         "(Tensor A, int k, int groupsize, str layout, str scale_format, str clip, str backend)"
         " -> (Tensor, Tensor, Tensor)",
         _quantize_kbit_affine, _quantize_kbit_affine_fake)


def _dequantize_kbit_affine(packed, scales, zeros, k, groupsize, n, layout, dtype, backend):
    return kernel("dequantize_kbit_affine", backend)(packed, scales, zeros, k, groupsize, n, layout, dtype)


_declare("workbench::dequantize_kbit_affine",
         "(Tensor packed, Tensor scales, Tensor zeros, int k, int groupsize, int n, str layout, ScalarType dtype,"
         " str backend) -> Tensor",
         _dequantize_kbit_affine,
         lambda packed, scales, zeros, k, groupsize, n, layout, dtype, backend: packed.new_empty(n, dtype=dtype))
