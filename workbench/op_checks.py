"""What ``torch.ops.workbench.<op>`` checks before any backend's kernel runs (workbench/library.py calls ``check``).

The public API (workbench.ops, int8, kbit, matmul, optim) validates states, codebooks and dtypes, then in eager mode
calls the kernels itself. These checks guard the ops when they are called directly: every size a kernel indexes by is
checked against the tensor it indexes, so a short absmax, table, stats, scales or bias tensor is a ValueError naming
the op and the argument, never a read past its end (the compiled CPU kernels do not bounds-check). Metadata only
(sizes, ranks, dtypes): no pass over the data. The optimizer ops check their states in their adapters
(workbench/optim/state_check.py), the quantizers' codebook arrays are rebuilt by content (codebook_tables).
"""
from __future__ import annotations

import torch

from .backends.reference.kbit import LAYOUTS, SCALE_DTYPES, SCALE_FORMATS, nblocks, packed_words
from .backends.reference.kbit_affine import AFFINE_SCALE_FORMATS, CLIPS
from .backends.reference.quant import NESTED_BLOCKSIZE


class _Op:
    """The checks of one call: each raises ``ValueError("<op>: <arg>: expected ..., got ...")``."""

    def __init__(self, op: str):
        self.op = op

    def fail(self, arg: str, expected: str, got) -> None:
        raise ValueError(f"{self.op}: {arg}: expected {expected}, got {got}")

    def positive(self, arg: str, v: int) -> None:
        if v < 1:
            self.fail(arg, "a positive int", v)

    def count(self, arg: str, t: torch.Tensor, want: int, dtype: torch.dtype | None = None, at_least=False) -> None:
        n = t.numel()
        if (n < want) if at_least else (n != want):
            self.fail(arg, f"{'at least ' if at_least else ''}{want} values", n)
        if dtype is not None and t.dtype != dtype:
            self.fail(arg, f"dtype {dtype}", t.dtype)

    def matrix(self, arg: str, t: torch.Tensor, dtype: torch.dtype | None = None) -> tuple[int, int]:
        if t.dim() != 2:
            self.fail(arg, "a 2-D tensor", f"shape {tuple(t.shape)}")
        if dtype is not None and t.dtype != dtype:
            self.fail(arg, f"dtype {dtype}", t.dtype)
        return t.shape[0], t.shape[1]

    def bias(self, bias: torch.Tensor | None, n: int) -> None:
        if bias is not None:
            self.count("bias", bias, n)

    def one_of(self, arg: str, v, allowed) -> None:
        if v not in allowed:
            self.fail(arg, f"one of {tuple(allowed)}", repr(v))

    def packed_bytes(self, arg: str, t: torch.Tensor, n: int) -> None:
        """4-bit codes, two per byte, in any storage dtype."""
        got = t.numel() * t.element_size()
        if got != (n + 1) // 2:
            self.fail(arg, f"{(n + 1) // 2} bytes of packed 4-bit codes for {n} values", f"{got} bytes")

    def k(self, k: int) -> None:
        if not 2 <= k <= 8:
            self.fail("k", "an int in 2..8", k)


# ------------------------------------------------------------------ quant family

def _quantize(op):
    def check(A, table, bounds, bucket_codes, blocksize, *rest):
        c = _Op(op)
        c.positive("blocksize", blocksize)
        if rest:   # stochastic rounding: one uniform per element
            c.count("rand", rest[0], A.numel(), torch.float32)
    return check


def _dequantize_blockwise(codes, absmax, table, blocksize, dtype):
    c = _Op("dequantize_blockwise")
    c.positive("blocksize", blocksize)
    if codes.dtype != torch.uint8:
        c.fail("codes", "dtype torch.uint8", codes.dtype)
    c.count("absmax", absmax, nblocks(codes.numel(), blocksize), torch.float32)
    c.count("table", table, 256, at_least=True)   # a uint8 code indexes it


def _absmax(c: _Op, nb: int, absmax, absmax_8bit, absmax_code, absmax_offset, dtype=None) -> None:
    """``nb`` block scales: float32 ``absmax``, or double-quantized (a uint8 code per block into ``absmax_code``,
    one ``absmax`` per NESTED_BLOCKSIZE blocks, ``absmax_offset``)."""
    if absmax_8bit is None:
        c.count("absmax", absmax, nb, dtype)
        return
    c.count("absmax_8bit", absmax_8bit, nb, torch.uint8)
    c.count("absmax", absmax, nblocks(nb, NESTED_BLOCKSIZE), dtype)
    if absmax_code is None or absmax_offset is None:
        c.fail("absmax_code", "the nested code table and offset with absmax_8bit", None)
    c.count("absmax_code", absmax_code, 256, at_least=True)   # a uint8 code indexes it
    c.count("absmax_offset", absmax_offset, 1, at_least=True)


def _dequantize_4bit(packed, absmax, table, blocksize, n, dtype, absmax_8bit, absmax_code, absmax_offset):
    c = _Op("dequantize_4bit")
    c.positive("blocksize", blocksize)
    if n < 0:
        c.fail("n", "a count >= 0", n)
    c.packed_bytes("packed", packed, n)
    _absmax(c, nblocks(n, blocksize), absmax, absmax_8bit, absmax_code, absmax_offset, torch.float32)
    c.count("table", table, 16, at_least=True)    # a 4-bit code indexes it


# ------------------------------------------------------------------ int8 family

def _int8_rows(op):
    def check(A, threshold):
        _Op(op).matrix("A", A)
    return check


def _int8_vectorwise_dequant(A, stats):
    c = _Op("int8_vectorwise_dequant")
    rows, _ = c.matrix("A", A, torch.int8)
    c.count("stats", stats, rows)


def _int8_linear_matmul(A, B):
    c = _Op("int8_linear_matmul")
    _, k = c.matrix("A", A, torch.int8)
    _, kb = c.matrix("B", B, torch.int8)
    if kb != k:
        c.fail("B", f"{k} columns (A's inner dimension)", kb)


def _int8_mm_dequant(A, row_stats, col_stats, bias, dtype):
    c = _Op("int8_mm_dequant")
    m, n = c.matrix("A", A, torch.int32)
    c.count("row_stats", row_stats, m)
    c.count("col_stats", col_stats, n)
    c.bias(bias, n)


def _scaled_mm(c: _Op, CA, CB, SCA, SCB, bias) -> None:
    m, k = c.matrix("CA", CA, torch.int8)
    n, kb = c.matrix("CB", CB, torch.int8)
    if kb != k:
        c.fail("CB", f"{k} columns (CA's inner dimension)", kb)
    c.count("SCA", SCA, m)
    c.count("SCB", SCB, n)
    c.bias(bias, n)


def _int8_scaled_mm(CA, CB, SCA, SCB, bias, dtype):
    _scaled_mm(_Op("int8_scaled_mm"), CA, CB, SCA, SCB, bias)


def _int8_mixed_scaled_mm(A, CA, CB, SCA, SCB, outlier_cols, bias):
    c = _Op("int8_mixed_scaled_mm")
    _scaled_mm(c, CA, CB, SCA, SCB, bias)
    if tuple(A.shape) != tuple(CA.shape):
        c.fail("A", f"CA's shape {tuple(CA.shape)}", f"{tuple(A.shape)}")
    if outlier_cols is not None and outlier_cols.dim() != 1:   # its values are indices torch's indexing checks
        c.fail("outlier_cols", "a 1-D tensor of column indices", f"shape {tuple(outlier_cols.shape)}")


# ------------------------------------------------------------------ matmul family

def _weight(c: _Op, A, B, shapeB, absmax, table, blocksize) -> tuple[int, int]:
    if len(shapeB) != 2 or min(shapeB) < 0:
        c.fail("shapeB", "[N, K]", list(shapeB))
    N, K = int(shapeB[0]), int(shapeB[1])
    c.positive("blocksize", blocksize)
    if A.dim() < 1 or A.shape[-1] != K:
        c.fail("A", f"a last dimension of {K} (shapeB[1])", f"shape {tuple(A.shape)}")
    c.packed_bytes("B", B, N * K)
    c.count("table", table, 16, at_least=True)
    return N, K


def _gemv_4bit(A, B, shapeB, absmax, table, blocksize):
    c = _Op("gemv_4bit")
    N, K = _weight(c, A, B, shapeB, absmax, table, blocksize)
    c.count("absmax", absmax, nblocks(N * K, blocksize))


def _gemm_4bit(A, B, shapeB, absmax, table, blocksize, bias, absmax_8bit, absmax_code, absmax_offset):
    c = _Op("gemm_4bit")
    N, K = _weight(c, A, B, shapeB, absmax, table, blocksize)
    _absmax(c, nblocks(N * K, blocksize), absmax, absmax_8bit, absmax_code, absmax_offset)
    c.bias(bias, N)


# ------------------------------------------------------------------ k-bit family

def _kbit_format(c: _Op, k, blocksize, layout, scale_format) -> None:
    c.k(k)
    c.positive("blocksize", blocksize)
    c.one_of("layout", layout, LAYOUTS)
    c.one_of("scale_format", scale_format, SCALE_FORMATS)


def _quantize_kbit(A, codebook, k, blocksize, layout, scale_format, codes_against):
    c = _Op("quantize_kbit")
    _kbit_format(c, k, blocksize, layout, scale_format)
    c.one_of("codes_against", codes_against, ("exact", "decoded"))
    c.count("codebook", codebook, 2 ** k)


def _dequantize_kbit(packed, scales, tensor_scale, codebook, k, blocksize, n, layout, scale_format, dtype):
    c = _Op("dequantize_kbit")
    _kbit_format(c, k, blocksize, layout, scale_format)
    c.count("packed", packed, packed_words(n, k, layout), torch.int32)
    c.count("scales", scales, nblocks(n, blocksize), SCALE_DTYPES[scale_format])
    c.count("tensor_scale", tensor_scale, 1 if scale_format == "e4m3" else 0, at_least=True)
    c.count("codebook", codebook, 2 ** k)


def _quantize_kbit_affine(A, k, groupsize, layout, scale_format, clip):
    c = _Op("quantize_kbit_affine")
    c.k(k)
    c.positive("groupsize", groupsize)
    c.one_of("layout", layout, LAYOUTS)
    c.one_of("scale_format", scale_format, AFFINE_SCALE_FORMATS)
    c.one_of("clip", clip, CLIPS)


def _dequantize_kbit_affine(packed, scales, zeros, k, groupsize, n, layout, dtype):
    c = _Op("dequantize_kbit_affine")
    c.k(k)
    c.positive("groupsize", groupsize)
    c.one_of("layout", layout, LAYOUTS)
    c.count("packed", packed, packed_words(n, k, layout), torch.int32)
    c.count("scales", scales, nblocks(n, groupsize))
    c.count("zeros", zeros, nblocks(n, groupsize), torch.uint8)


# the op's arguments without ``backend``; ops absent here take only data and host-built tables
CHECKS = {
    "quantize_blockwise": _quantize("quantize_blockwise"),
    "quantize_blockwise_stochastic": _quantize("quantize_blockwise_stochastic"),
    "quantize_4bit": _quantize("quantize_4bit"),
    "dequantize_blockwise": _dequantize_blockwise,
    "dequantize_4bit": _dequantize_4bit,
    "int8_vectorwise_quant": _int8_rows("int8_vectorwise_quant"),
    "outlier_columns": _int8_rows("outlier_columns"),
    "int8_double_quant": _int8_rows("int8_double_quant"),
    "int8_vectorwise_dequant": _int8_vectorwise_dequant,
    "int8_linear_matmul": _int8_linear_matmul,
    "int8_mm_dequant": _int8_mm_dequant,
    "int8_scaled_mm": _int8_scaled_mm,
    "int8_mixed_scaled_mm": _int8_mixed_scaled_mm,
    "gemv_4bit": _gemv_4bit,
    "gemm_4bit": _gemm_4bit,
    "quantize_kbit": _quantize_kbit,
    "dequantize_kbit": _dequantize_kbit,
    "quantize_kbit_affine": _quantize_kbit_affine,
    "dequantize_kbit_affine": _dequantize_kbit_affine,
}
