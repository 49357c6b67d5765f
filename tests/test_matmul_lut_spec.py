"""The unscaled-lookup GEMM's numerics on CPU (the CUDA kernel is cuda_src/matmul_lut.cuh): its order emulated in
float64/float32 -- per 64-element chunk the exact sum of dtype(table[c]) * A (the tensor core's products are exact
and its float32 sum of 64 products is within the float32 part of the bound), times the block scale, fused into a
float32 accumulator -- stays within the reference's error_bound_unscaled, and that bound is needed: the rule-2
bound (error_bound) alone is exceeded."""
from __future__ import annotations

import pytest
import torch

import workbench as wb
from workbench.backends.reference import matmul as R
from workbench.backends.reference.quant import unpack_4bit


def _emulate(A, P, N, K, table, S32, dtype):
    codes = unpack_4bit(P.reshape(-1).view(torch.uint8), N * K).long().view(N, K)
    T = table.to(dtype).double()[codes]
    acc = torch.zeros(A.shape[0], N, dtype=torch.float32)
    for c in range(K // 64):
        part = (A[:, 64 * c:64 * c + 64].double() @ T[:, 64 * c:64 * c + 64].t()).float()
        acc = (acc.double() + S32[:, 64 * c].double() * part.double()).float()  # one rounding: the FMA
    return acc.to(dtype)


@pytest.mark.parametrize("dtype", (torch.bfloat16, torch.float16))
@pytest.mark.parametrize("N, K, bs, M, nested", [(300, 640, 128, 3, True), (64, 4096, 64, 5, True),
                                                 (129, 1024, 256, 2, False)])
def test_emulated_order_within_unscaled_bound(rng, dtype, N, K, bs, M, nested):
    W = torch.randn(N, K, generator=rng).to(dtype)
    A = torch.randn(M, K, generator=rng).to(dtype)
    P, qs = wb.quantize_4bit(W, blocksize=bs, quant_type="nf4", compress_statistics=nested, backend="reference")
    if nested:
        a2, a8, c2, off = qs.state2.absmax, qs.absmax, qs.state2.code, qs.offset
    else:
        a2, a8, c2, off = qs.absmax, None, None, None
    s = R.resolve_absmax(a2, a8, c2, off)
    S32 = R.dequantize_weight(P, (N, K), s, torch.ones(16), bs, torch.float32)
    ref = R.gemm_4bit(A, P, (N, K), a2, qs.code, bs, None, a8, c2, off)
    got = _emulate(A, P, N, K, qs.code, S32, dtype)
    err = (got.float() - ref.float()).abs()
    assert (err <= R.unscaled_bound_of(A, P, (N, K), a2, qs.code, bs, None, a8, c2, off, ref=ref)).all()


def test_rule2_bound_alone_is_too_tight(rng):
    """Unscaled lookups round the codebook, not the product: in bf16 that moves a few outputs past error_bound."""
    N, K, bs, M = 300, 640, 128, 3
    W = torch.randn(N, K, generator=rng).to(torch.bfloat16)
    A = torch.randn(M, K, generator=rng).to(torch.bfloat16)
    P, qs = wb.quantize_4bit(W, blocksize=bs, quant_type="nf4", backend="reference")
    s = qs.absmax.float()
    S32 = R.dequantize_weight(P, (N, K), s, torch.ones(16), bs, torch.float32)
    ref = R.gemm_4bit(A, P, (N, K), qs.absmax, qs.code, bs)
    got = _emulate(A, P, N, K, qs.code, S32, torch.bfloat16)
    Wd = R.dequantize_weight(P, (N, K), s, qs.code, bs, torch.bfloat16)
    assert ((got.float() - ref.float()).abs() > R.error_bound(A, Wd, None, torch.bfloat16, ref)).any()
