"""The executable spec of the 4-bit matmul family (plain torch; CPU and CUDA tensors).

bitsandbytes 0.50.2: ``gemv_4bit(A, B, shapeB, absmax, code, blocksize)`` and
``gemm_4bit(A, B, shapeB, absmax, blocksize, quant_type, bias, absmax_8bit, absmax_code, absmax_offset)``
both compute ``linear(A, dequantize_4bit(B).to(A.dtype), bias)``. Here the 16-entry ``table`` replaces
``quant_type`` (any codebook), the rest is theirs. Kernel arguments: ``A`` (M, K) contiguous
(fp32/fp16/bf16), ``B`` the flat packed bytes ((N*K+1)//2, element 2i in the high nibble),
``shapeB = (N, K)``, ``absmax`` float32 (per 4-bit block, or per 256 nested blocks when
``absmax_8bit`` is given), ``table`` float32[16].

The rules, in order (``dtype`` = A.dtype):

1. nested absmax (double quantization, bitsandbytes' scheme; :func:`workbench.backends.reference.quant.resolve_absmax`):
   ``s[b] = float32(absmax_code[absmax_8bit[b]] * absmax[b // 256]) + absmax_offset`` -- a float32 multiply
   and a float32 add, two roundings, no fused multiply-add (what ``dequantize_blockwise(...) + offset`` does).
2. weights: ``W[n, k] = dtype(table[c(n*K + k)] * s[(n*K + k) // blocksize])`` -- the float32 product rounded
   once to A's dtype, exactly ``dequantize_4bit(B, state).to(dtype)`` (bitsandbytes' ``B_dq``).
3. accumulation: ``y[m, n] = sum_k A[m, k] * W[n, k]``. The spec value is the exact sum rounded to float32.
   This reference forms it in float64 (for fp16/bf16 operands every product is exact in float64; the float64
   sum's error, <= K * 2**-53 * sum|A W|, is far below a float32 ulp), in torch's order, then rounds to float32.
4. bias: ``out = dtype(float32(y) + float32(bias[n]))`` -- one float32 add, one rounding to dtype.

Backends accumulate in float32 in their own order (each kernel states it). Order-dependent, so they are
held to the bound :func:`error_bound`: ``|out - ref| <= (K + 2) * 2**-24 * (sum_k |A W| + |bias|)``
+ 2 ulp_dtype(|ref|) -- the float32 summation error of any order (at most (K - 1) u sum|A W|, u = 2**-24),
the rounding of the bias add, and the final rounding: two float32 values that differ slightly may round to
neighbouring dtype values (one ulp; two at a binade edge, where the spacing halves). bitsandbytes' CPU path (torch ``linear`` in A's dtype: float32 accumulation in
oneDNN/BLAS order, bias in its epilogue) is held to the same bound; the dequantized weights (rule 2) are
equal bit for bit.

Kernels with unscaled lookups (the CUDA ``kbit_gemm_4bit_lut``, which the cuda backend runs for 1..64 rows by its
dispatch rule; the cython_cpu GEMV's vdpbf16ps loop for bf16 rows) do not
apply rule 2: a weight is ``dtype(table[c])`` and the block scale multiplies a float32 partial sum of its block.
They are held to :func:`error_bound_unscaled`, which adds the two weight roundings' difference,
``sum_k |A| 2 u_dtype |table[c] s|`` (u = 2**-8 bf16, 2**-11 fp16), and ``2**-125 sum_k |s|`` for products and
partial sums below 2**-126 that such a kernel may flush to zero (vdpbf16ps does, one flush of each at most per
product, each less than 2**-126 before the scale multiplies it).
"""
from __future__ import annotations

import torch

from .quant import NESTED_BLOCKSIZE, resolve_absmax, unpack_4bit  # noqa: F401  (rule 1 is the quant spec's)

__all__ = ["resolve_absmax", "dequantize_weight", "gemv_4bit", "gemm_4bit", "error_bound", "error_bound_unscaled",
           "unscaled_bound_of", "ulp"]


def dequantize_weight(B, shapeB, absmax, table, blocksize, dtype) -> torch.Tensor:
    """Rule 2: the (N, K) weight in ``dtype``."""
    N, K = int(shapeB[0]), int(shapeB[1])
    n = N * K
    vals = table.float()[unpack_4bit(B.reshape(-1).view(torch.uint8), n).long()]
    s = absmax.reshape(-1).float().repeat_interleave(blocksize)[:n]
    return (vals * s).to(dtype).view(N, K)


def _linear(A, W, bias, dtype):
    """Rules 3 and 4."""
    y = (A.double() @ W.double().t()).float()
    if bias is not None:
        y = y + bias.float()
    return y.to(dtype)


def gemv_4bit(A, B, shapeB, absmax, table, blocksize):
    """bitsandbytes' ``gemv_4bit``: no bias, ``absmax`` already resolved (functional.gemv_4bit decodes nesting)."""
    W = dequantize_weight(B, shapeB, absmax, table, blocksize, A.dtype)
    return _linear(A.reshape(A.shape[:-1].numel(), A.shape[-1]), W, None, A.dtype).view(*A.shape[:-1], W.shape[0])


def gemm_4bit(A, B, shapeB, absmax, table, blocksize, bias=None, absmax_8bit=None, absmax_code=None,
              absmax_offset=None):
    """bitsandbytes' ``gemm_4bit`` with a table instead of quant_type; nested absmax decoded here (rule 1)."""
    s = resolve_absmax(absmax, absmax_8bit, absmax_code, absmax_offset)
    W = dequantize_weight(B, shapeB, s, table, blocksize, A.dtype)
    return _linear(A.reshape(A.shape[:-1].numel(), A.shape[-1]), W, bias, A.dtype).view(*A.shape[:-1], W.shape[0])


def ulp(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """One unit in the last place of ``dtype`` at |x| (float32 result; subnormal spacing below the normal range)."""
    fi = torch.finfo(dtype)
    mant = {torch.float32: 23, torch.float16: 10, torch.bfloat16: 7}[dtype]
    ax = x.abs().float().clamp(min=fi.tiny)
    e = torch.floor(torch.log2(ax))
    return torch.exp2(e - mant).clamp(min=fi.smallest_normal * 2.0 ** -mant)


def error_bound(A, W, bias, dtype, ref) -> torch.Tensor:
    """The bound every float32-accumulating backend is held to, per output element (see the module docstring)."""
    K = A.shape[-1]
    S = A.reshape(-1, K).double().abs() @ W.double().abs().t()
    if bias is not None:
        S = S + bias.double().abs()
    u = 2.0 ** -24
    r = ref.reshape(S.shape)
    return ((K + 2) * u * S).float() + 2 * ulp(r.float(), dtype)



# half the unit roundoff of each dtype (round to nearest) and half its smallest subnormal spacing
_HALF_ULP1 = {torch.float16: 2.0 ** -11, torch.bfloat16: 2.0 ** -8}
_HALF_TINY = {torch.float16: 2.0 ** -25, torch.bfloat16: 2.0 ** -134}


def error_bound_unscaled(A, W, W32, S32, bias, dtype, ref) -> torch.Tensor:
    """The bound of the unscaled-lookup kernels (``kbit_gemm_4bit_lut``, cuda_src/matmul_lut.cuh): rule 2 rounds
    ``table[c] * s`` to ``dtype`` once; those kernels round ``table[c]`` to ``dtype`` and multiply the block's
    float32 partial sum by ``s``. Both roundings are within half a ``dtype`` ulp of the exact ``table[c] * s``
    (relative u = 2**-8 bf16, 2**-11 fp16; below the normal range, half the smallest subnormal spacing times |s|,
    or once for rule 2), so a weight differs from rule 2's by at most ``2 u |table[c] s| + tiny (|s| + 1)``. Bound:
    :func:`error_bound` (float32 order, on sums grown by that much) plus ``sum_k |A| (2 u |W32| + tiny (|S32| + 1))``
    plus the flush term ``2**-125 sum_k |S32|`` (module docstring).
    W: rule 2's weight; W32: ``table[c] * s`` in float32; S32: ``s`` per element."""
    K = A.shape[-1]
    a = A.reshape(-1, K).double().abs()
    u, tiny = _HALF_ULP1[dtype], _HALF_TINY[dtype]
    s_abs = S32.double().abs()
    dw = a @ (2 * u * W32.double().abs() + tiny * (s_abs + 1)).t()
    flush = 2.0 ** -125 * s_abs.sum(1)
    base = error_bound(A, W, bias, dtype, ref).double() * (1 + 4 * u)
    return (base + dw + flush).float()


def unscaled_bound_of(A, B, shapeB, absmax, table, blocksize, bias=None, absmax_8bit=None, absmax_code=None,
                      absmax_offset=None, ref=None) -> torch.Tensor:
    """:func:`error_bound_unscaled` from the kernel's arguments (those of :func:`gemm_4bit`); ``ref`` is computed
    when not given."""
    s = resolve_absmax(absmax, absmax_8bit, absmax_code, absmax_offset)
    W = dequantize_weight(B, shapeB, s, table, blocksize, A.dtype)
    W32 = dequantize_weight(B, shapeB, s, table, blocksize, torch.float32)
    S32 = dequantize_weight(B, shapeB, s, torch.ones_like(table, dtype=torch.float32), blocksize, torch.float32)
    if ref is None:
        ref = gemm_4bit(A, B, shapeB, absmax, table, blocksize, bias, absmax_8bit, absmax_code, absmax_offset)
    return error_bound_unscaled(A, W, W32, S32, bias, A.dtype, ref)

from ..registry import register_kernel

register_kernel("workbench::gemv_4bit", "reference")(gemv_4bit)
register_kernel("workbench::gemm_4bit", "reference")(gemm_4bit)
