"""torch.ops.workbench.<op> called directly checks every size a kernel indexes by (workbench/op_checks.py): a short
absmax, table, stats, scales, bias or packed tensor is a ValueError naming the op and the argument on every backend,
raised before any kernel (the compiled CPU kernels do not bounds-check: without the check they read past the end)."""
from __future__ import annotations

import pytest
import torch

import workbench as wb
from workbench import kbit, library, op_checks
from workbench.backends import NAMES, devices_of, registered, status

ops = torch.ops.workbench
g = torch.Generator().manual_seed(3)
A = torch.randn(4096, generator=g)
W = torch.randn(64, 128, generator=g)
X = torch.randn(3, 128, generator=g)
P4, S4 = wb.quantize_4bit(A, blocksize=64, quant_type="nf4")
PW, SW = wb.quantize_4bit(W, blocksize=64, quant_type="nf4")
C8, S8 = wb.quantize_blockwise(A, blocksize=256)
KP, KS = kbit.quantize_kbit(A, 4)
AP, AS = kbit.quantize_kbit(A, 3, affine="minmax")
I8A = torch.randint(-127, 127, (5, 128), dtype=torch.int8, generator=g)
I8B = torch.randint(-127, 127, (7, 128), dtype=torch.int8, generator=g)
NF4 = wb.codebooks.get("nf4").tensors("cpu")
PN, SN = wb.quantize_4bit(A, blocksize=64, quant_type="nf4", compress_statistics=True)
NESTED = (SN.state2.absmax, SN.code, SN.absmax, SN.state2.code, SN.offset)   # absmax, table, the nested three

# (op, the arguments but the backend, the argument the error names)
BAD = [
    ("quantize_4bit", (A, *NF4, 0), "blocksize"),
    ("quantize_blockwise_stochastic", (A, *wb.codebooks.get("dynamic").tensors("cpu"), 256, torch.rand(10)), "rand"),
    ("dequantize_4bit", (P4.view(-1), S4.absmax[:10], S4.code, 64, 4096, torch.float32, None, None, None), "absmax"),
    ("dequantize_4bit", (P4.view(-1)[:100], S4.absmax, S4.code, 64, 4096, torch.float32, None, None, None), "packed"),
    ("dequantize_4bit", (P4.view(-1), S4.absmax, S4.code[:4], 64, 4096, torch.float32, None, None, None), "table"),
    ("dequantize_4bit", (P4.view(-1), *NESTED[:2], 64, 4096, torch.float32, NESTED[2][:63], *NESTED[3:]), "absmax_8bit"),
    ("dequantize_4bit", (P4.view(-1), NESTED[0][:0], *NESTED[1:2], 64, 4096, torch.float32, *NESTED[2:]), "absmax"),
    ("dequantize_4bit", (P4.view(-1), *NESTED[:2], 64, 4096, torch.float32, NESTED[2], NESTED[3][:128], NESTED[4]),
     "absmax_code"),
    ("dequantize_4bit", (P4.view(-1), *NESTED[:2], 64, 4096, torch.float32, *NESTED[2:4], None), "absmax_code"),
    ("dequantize_blockwise", (C8, S8.absmax[:3], S8.code, 256, torch.float32), "absmax"),
    ("dequantize_blockwise", (C8, S8.absmax, S8.code[:10], 256, torch.float32), "table"),
    ("int8_vectorwise_quant", (A, 0.0), "A"),
    ("int8_vectorwise_dequant", (I8A, torch.ones(2)), "stats"),
    ("int8_linear_matmul", (I8A, I8B[:, :64].contiguous()), "B"),
    ("int8_mm_dequant", (torch.ones(5, 7, dtype=torch.int32), torch.ones(5), torch.ones(3), None, torch.float16),
     "col_stats"),
    ("int8_mm_dequant", (torch.ones(5, 7, dtype=torch.int32), torch.ones(5), torch.ones(7), torch.ones(2),
                         torch.float16), "bias"),
    ("int8_scaled_mm", (I8A, I8B, torch.ones(5), torch.ones(2), None, torch.float16), "SCB"),
    ("gemv_4bit", (X[:1], PW.view(-1), [64, 128], SW.absmax[:5], SW.code, 64), "absmax"),
    ("gemv_4bit", (X[:1], PW.view(-1)[:100], [64, 128], SW.absmax, SW.code, 64), "B"),
    ("gemv_4bit", (X[:1, :64], PW.view(-1), [64, 128], SW.absmax, SW.code, 64), "A"),
    ("gemm_4bit", (X, PW.view(-1), [64, 128], SW.absmax, SW.code[:3], 64, None, None, None, None), "table"),
    ("gemm_4bit", (X, PW.view(-1), [64, 128], SW.absmax, SW.code, 64, torch.zeros(3), None, None, None), "bias"),
    ("gemm_4bit", (X, PW.view(-1), [64, 128], SW.absmax, SW.code, 64, None, torch.zeros(3, dtype=torch.uint8),
                   torch.zeros(256), torch.zeros(1)), "absmax_8bit"),
    ("quantize_kbit", (A, KS.codebook[:4], 4, 32, "bitplane", "e4m4", "exact"), "codebook"),
    ("quantize_kbit", (A, KS.codebook, 9, 32, "bitplane", "e4m4", "exact"), "k"),
    ("quantize_kbit", (A, KS.codebook, 4, 32, "planes", "e4m4", "exact"), "layout"),
    ("dequantize_kbit", (KP, KS.scales[:3], KS.tensor_scale, KS.codebook, 4, 32, 4096, "bitplane", "e4m4",
                         torch.float32), "scales"),
    ("dequantize_kbit", (KP[:10], KS.scales, KS.tensor_scale, KS.codebook, 4, 32, 4096, "bitplane", "e4m4",
                         torch.float32), "packed"),
    ("dequantize_kbit", (KP, KS.scales, KS.tensor_scale, KS.codebook[:4], 4, 32, 4096, "bitplane", "e4m4",
                         torch.float32), "codebook"),
    ("quantize_kbit_affine", (A, 3, 32, "bitplane", "fp16", "maxabs"), "clip"),
    ("dequantize_kbit_affine", (AP, AS.scales, AS.zeros[:5], 3, 32, 4096, "bitplane", torch.float32), "zeros"),
]


def _cpu_backends(op):
    return [b for b in NAMES if b not in ("bnb", "numba_cuda") and status(b)[0] and "cpu" in devices_of(b)
            and b in registered(op)]


@pytest.mark.parametrize("op,args,arg", BAD, ids=[f"{op}-{arg}" for op, _, arg in BAD])
def test_a_size_that_does_not_fit_is_an_error_naming_the_argument_on_every_backend(op, args, arg):
    backends = _cpu_backends(op)
    assert backends, op
    for b in backends:
        with pytest.raises(ValueError, match=f"^{op}: {arg}: expected"):
            getattr(ops, op)(*args, b)


def test_the_same_calls_with_fitting_sizes_run():
    """The checks reject nothing a public call passes (the public calls go through the ops under a dispatch mode)."""
    from _modes import DispatchSeen
    with DispatchSeen() as mode:
        out = wb.dequantize_4bit(P4, S4)
        nested = wb.dequantize_4bit(PN, SN)
        kbit.dequantize_kbit(KP, KS)
        wb.matmul_4bit(X, PW.t(), SW)
    assert torch.equal(out, wb.dequantize_4bit(P4, S4)) and any("dequantize_kbit" in s for s in mode.seen)
    assert torch.equal(nested, wb.dequantize_4bit(PN, SN))


def test_every_op_that_takes_sizes_has_a_check():
    """Every declared op is checked, except the optimizers, whose adapters check their states
    (workbench/optim/state_check.py; tests/test_optim_state_safety.py)."""
    unchecked = set(library.DECLARED) - set(op_checks.CHECKS)
    assert unchecked == {"optimizer_update_32bit", "optimizer_update_8bit_blockwise"}, unchecked


@pytest.mark.gpu
def test_the_checks_come_before_the_cuda_kernels():
    """The same bad calls on CUDA tensors and the cuda backend: the error, never a launch that reads past an end."""
    seen = 0
    for op, args, arg in BAD:
        if "cuda" not in registered(op):
            continue
        cuda_args = tuple(a.cuda() if isinstance(a, torch.Tensor) else a for a in args)
        with pytest.raises(ValueError, match=f"^{op}: {arg}: expected"):
            getattr(ops, op)(*cuda_args, "cuda")
        seen += 1
    torch.cuda.synchronize()   # and no kernel fault was left behind
    assert seen >= 20
