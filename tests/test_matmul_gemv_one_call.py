"""The one-call path (workbench.matmul._gemv_one_call): matmul_4bit / gemm_4bit call a kernel directly, with a plan
remembered on the QuantState (ops._remembered): on CPU the cython_cpu byte-plane kernel (bf16/fp16 A of at most 32
rows), on CUDA the fused GEMV (one row of fp16/bf16 A, up to four of float32), the tensor-core GEMM (2..64 rows of
fp16/bf16 A, K % 32 == 0) or, above those rows, the weight dequantized by one launch and cuBLAS: the rows the cuda
backend's dispatch gives each.

Held here, on both devices: it computes what the general path (custom op -> backend adapter, same kernel) computes,
bit for bit, and the reference within its bound; a state changed in place is read at the next call; a replaced,
resized or re-pointed state tensor is checked again (errors naming the argument before any kernel runs); A, B and
bias that do not match raise the general path's errors; inputs are never written; a compile trace and a dispatch
mode still see the custom op."""
from __future__ import annotations

import copy

import pytest
import torch

import workbench as wb
from workbench import matmul as mm
from workbench.matmul import gemm_4bit, matmul_4bit
from workbench.validation import QuantInputError

from test_matmul import _case as _cpu_case, _cython_bound as _cpu_bound
from test_matmul_gpu import _within as _cuda_bound


@pytest.fixture(params=["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
def device(request):
    if request.param == "cpu" and not mm._planes_kernel():
        pytest.skip("no cython_cpu byte-plane kernel here (not built, no AVX2/F16C/FMA, or the debug build)")
    return request.param


def _case(rng, device, N, K, M, dtype, bs, **kw):
    """test_matmul's case on ``device``, with rows that device's one-call kernels take (CUDA, fp16/bf16: the GEMM's
    2..64 when K % 32 == 0, else the GEMV's one)."""
    if device == "cuda" and dtype != torch.float32 and not (K % 32 == 0 and 2 <= M <= 64):
        M = 1
    A, P, qs, b = _cpu_case(rng, N, K, M, dtype, bs, **kw)
    if device == "cpu":
        return A, P, qs, b
    return A.to(device), P.to(device), qs.to(device), None if b is None else b.to(device)


def _check_bound(got, ref, A, P, qs, b):
    """The bound of the kernel that ran: on CUDA the unscaled-lookup GEMM's where the dispatch takes it."""
    (_cuda_bound if A.is_cuda else _cpu_bound)(got, ref, A, P, qs, b)


def _general(A, P, qs, bias=None):
    """The general path on the same kernel: ``out=`` keeps matmul_4bit off the GEMV path."""
    N = qs.shape[0]
    out = torch.empty((*A.shape[:-1], N), dtype=A.dtype, device=A.device)
    return matmul_4bit(A, P, qs, bias=bias, out=out)


def _fast(A, P, qs, bias=None):
    y = mm._gemv_one_call(A, P, qs, bias, "auto")
    assert y is not None, "the GEMV path did not take this call"
    return y


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize("nested", [False, True])
def test_equals_general_path_and_reference(rng, device, dtype, nested):
    if device == "cpu" and dtype == torch.float32:
        pytest.skip("the CPU one-call kernel takes bf16/fp16 activations")
    for i, (N, K, M, bs) in enumerate([(64, 128, 1, 64), (33, 4096, 1, 64), (70, 768, 3, 128), (17, 1024, 1, 4096),
                                       (40, 192, 32, 64), (9, 8192, 2, 64), (300, 4160, 1, 64), (5, 100, 1, 32)]):
        if device == "cpu" and K % 64:
            continue      # the byte-plane kernel's unit; the CUDA GEMV takes any K
        if device == "cuda" and dtype == torch.float32:
            M = min(M, 4)
        A, P, qs, b = _case(rng, device, N, K, M, dtype, bs, nested=nested, bias=i % 2 == 1)
        M = A.shape[0]
        got = _fast(A, P, qs, b)
        assert got.dtype == dtype and got.shape == (M, N)
        assert torch.equal(got, _general(A, P, qs, b))
        assert torch.equal(matmul_4bit(A, P, qs, bias=b), got)          # the public call takes it
        assert torch.equal(gemm_4bit(A, P, qs, bias=b), got)
        _check_bound(got, matmul_4bit(A, P, qs, bias=b, backend="reference"), A, P, qs, b)
        A3 = A.reshape(1, M, K)                                            # leading dimensions
        assert torch.equal(matmul_4bit(A3, P, qs, bias=b), got.reshape(1, M, N))


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize("nested", [False, True])
def test_rows_above_the_fused_kernels_in_one_call(rng, dtype, nested):
    """CUDA, rows past the fused kernels': the weight dequantized by one launch (the nested absmax decoded in it),
    then cuBLAS: the general path's bits (the backend adapter's launch of the same kernels), the reference's bound,
    a state changed in place read at the next call. The kernel's own bits against the two-step decode:
    test_gpu_quant.py::test_dequantize_nested_equals_its_scales_then_dequantize."""
    for i, (N, K, M, bs) in enumerate([(33, 4096, 65, 64), (70, 768, 130, 128), (17, 1024, 300, 4096),
                                       (301, 4160, 97, 64), (5, 100, 66, 32)]):
        A, P, qs, b = _cpu_case(rng, N, K, M, dtype, bs, nested=nested, bias=i % 2 == 1)
        A, P, qs, b = A.cuda(), P.cuda(), qs.to("cuda"), None if b is None else b.cuda()
        got = _fast(A, P, qs, b)
        assert got.dtype == dtype and got.shape == (M, N)
        assert torch.equal(got, _general(A, P, qs, b))
        assert torch.equal(matmul_4bit(A.reshape(1, M, K), P, qs, bias=b), got.reshape(1, M, N))
        _check_bound(got, matmul_4bit(A, P, qs, bias=b, backend="reference"), A, P, qs, b)
        if nested:
            qs.state2.absmax.mul_(2)
            qs.absmax[:3].fill_(7)
            qs.offset.add_(0.25)
        else:
            qs.absmax[:3].mul_(4)
        changed = _fast(A, P, qs, b)
        assert torch.equal(changed, _general(A, P, qs, b)) and not torch.equal(changed, got)


def test_state_changed_in_place_is_read(rng, device):
    A, P, qs, _ = _case(rng, device, 96, 512, 1, torch.bfloat16, 64, nested=True)
    first = _fast(A, P, qs)

    def align_row0():
        # W[0, :200] becomes the code's extreme of A's sign (nibbles high-first): output 0 moves by ~200, never by
        # less than half a bf16 step, as a fixed byte such as 0x5a can by chance
        a = A.reshape(-1)[:200].cpu()
        idx = torch.where(a > 0, qs.code.argmax().cpu(), qs.code.argmin().cpu()).to(torch.uint8)
        P.view(-1)[:100].copy_(idx[0::2] * 16 + idx[1::2])

    for change in (lambda: qs.state2.absmax.mul_(2), lambda: qs.absmax[:7].fill_(3), lambda: qs.offset.add_(0.5),
                   lambda: qs.code.mul_(-1), lambda: qs.state2.code.mul_(0.5), align_row0):
        change()
        got = _fast(A, P, qs)
        assert torch.equal(got, _general(A, P, qs))
        assert not torch.equal(got, first)
        first = got
    # not nested: the float32 absmax and the table
    A, P, qs, _ = _case(rng, device, 96, 512, 1, torch.float16, 64)
    first = _fast(A, P, qs)
    qs.absmax[3:9] *= 4
    got = _fast(A, P, qs)
    assert torch.equal(got, _general(A, P, qs)) and not torch.equal(got, first)


def test_replaced_or_resized_state_tensors_are_checked_again(rng, device):
    A, P, qs, _ = _case(rng, device, 64, 256, 1, torch.bfloat16, 64, nested=True)
    _fast(A, P, qs)
    # replaced by a good tensor with other values: the new one is read
    qs.state2.absmax = qs.state2.absmax * 3
    assert torch.equal(_fast(A, P, qs), _general(A, P, qs))
    # same object, new storage (set_): the new address is read
    a8 = qs.absmax
    a8.set_(a8.flip(0).clone())
    assert torch.equal(_fast(A, P, qs), _general(A, P, qs))
    keep = qs.absmax
    for field, bad, msg in ((qs, ("absmax", keep[:-1].clone()), "quant_state.absmax"),
                            (qs.state2, ("absmax", torch.zeros(2, device=device)), "quant_state.state2.absmax"),
                            (qs, ("code", qs.code[:15].clone()), "quant_state.code"),
                            (qs, ("blocksize", 128), "quant_state.absmax"),
                            (qs, ("shape", (128, 128)), "A: inner dimension 256")):
        name, value = bad
        old = getattr(field, name)
        setattr(field, name, value)
        assert mm._gemv_one_call(A, P, qs, None, "auto") is None
        with pytest.raises(QuantInputError, match=msg):
            matmul_4bit(A, P, qs)
        setattr(field, name, old)
        assert torch.equal(_fast(A, P, qs), _general(A, P, qs))
    data = keep.clone()
    qs.absmax.resize_(3)                  # in place, same object: the plan's size no longer holds
    assert mm._gemv_one_call(A, P, qs, None, "auto") is None
    with pytest.raises(QuantInputError, match="quant_state.absmax"):
        matmul_4bit(A, P, qs)
    qs.absmax = data
    want = _fast(A, P, qs)
    c = qs.state2.code
    qs.state2.code = torch.stack([c, c], 1).reshape(-1)[::2]   # the same values, strided: the general path copies
    assert mm._gemv_one_call(A, P, qs, None, "auto") is None
    assert torch.equal(matmul_4bit(A, P, qs), want)


def test_mismatched_arguments_raise_naming_them(rng, device):
    A, P, qs, b = _case(rng, device, 32, 128, 1, torch.bfloat16, 64, nested=True, bias=True)
    _fast(A, P, qs, b)                    # the plan is remembered: the per-call checks still apply
    with pytest.raises(QuantInputError, match="A: inner dimension 64"):
        matmul_4bit(A[:, :64].contiguous(), P, qs)
    with pytest.raises(QuantInputError, match="B: 4096 packed bytes"):
        matmul_4bit(A, torch.cat([P, P]), qs)
    with pytest.raises(QuantInputError, match="B: 1024 packed bytes"):
        matmul_4bit(A, P[:1024], qs)
    with pytest.raises(QuantInputError, match="bias: expected a 1-D tensor of 32"):
        matmul_4bit(A, P, qs, bias=b[:31])
    with pytest.raises(QuantInputError, match="bias: dtype"):
        matmul_4bit(A, P, qs, bias=b.float())
    with pytest.raises(QuantInputError, match="quant_state: expected a workbench QuantState"):
        matmul_4bit(A, P, "nf4")
    with pytest.raises(QuantInputError, match="A: dtype"):
        matmul_4bit(A.to(torch.int16), P, qs)
    # a state or weight on the meta device (no data: no kernel may read it) takes the general path and its errors
    meta = copy.deepcopy(qs).to("meta")
    assert mm._gemv_one_call(A, P, meta, b, "auto") is None
    with pytest.raises(QuantInputError, match="absmax: on meta"):
        matmul_4bit(A, P, meta)
    assert mm._gemv_one_call(A, P.to("meta"), qs, b, "auto") is None
    with pytest.raises(QuantInputError, match="B: on meta"):
        matmul_4bit(A, P.to("meta"), qs)
    if device != "cpu":   # the weight or the state elsewhere than A
        with pytest.raises(QuantInputError, match="B: on cpu"):
            matmul_4bit(A, P.cpu(), qs)
        with pytest.raises(QuantInputError, match="absmax: on cpu"):
            matmul_4bit(A, P, copy.deepcopy(qs).to("cpu"))   # QuantState.to moves in place
    # taken elsewhere, same result: non-contiguous A, more rows than the one-call kernels take (CPU), float32 A
    At = torch.randn(128, 2, generator=rng).to(torch.bfloat16).to(device).t()
    assert mm._gemv_one_call(At, P, qs, b, "auto") is None
    assert torch.equal(matmul_4bit(At, P, qs, bias=b), _general(At.contiguous(), P, qs, b))
    many = torch.randn(33 if device == "cpu" else 65, 128, generator=rng).to(torch.bfloat16).to(device)
    if device == "cpu":
        assert mm._gemv_one_call(many, P, qs, b, "auto") is None
        assert mm._gemv_one_call(A.float(), P, qs, b.float(), "auto") is None
    else:   # above 64 rows: dequantize + cuBLAS in one call; 2..64: the tensor-core GEMM; as the general path
        for bias in (b, None):
            assert torch.equal(_fast(many, P, qs, bias), _general(many, P, qs, bias))
            assert torch.equal(_fast(many.reshape(5, 13, 128), P, qs, bias),
                               _general(many, P, qs, bias).reshape(5, 13, 32))
        A2 = torch.cat([A, A])
        assert torch.equal(_fast(A2, P, qs, b), _general(A2, P, qs, b))
        unaligned = torch.empty(2 * 128 + 8, dtype=A.dtype, device=device)[3:3 + 2 * 128].view(2, 128)
        unaligned.copy_(A2)
        assert mm._gemv_one_call(unaligned, P, qs, b, "auto") is None   # the GEMM reads A in 16-byte vectors
    assert mm._gemv_one_call(A, P, qs, b, "reference") is None


def test_inputs_not_written(rng, device):
    A, P, qs, b = _case(rng, device, 48, 256, 2, torch.bfloat16, 64, nested=True, bias=True)
    before = [t.clone() for t in (A, P, b, qs.absmax, qs.code, qs.offset, qs.state2.absmax, qs.state2.code)]
    for _ in range(2):
        _fast(A, P, qs, b)
    after = (A, P, b, qs.absmax, qs.code, qs.offset, qs.state2.absmax, qs.state2.code)
    assert all(torch.equal(x, y) for x, y in zip(before, after))


def test_autograd_compile_and_dispatch_modes_see_the_op(rng, device):
    from _modes import DispatchSeen

    A, P, qs, _ = _case(rng, device, 64, 128, 1, torch.bfloat16, 64, nested=True)
    want = _fast(A, P, qs)
    with DispatchSeen() as mode:
        assert torch.equal(matmul_4bit(A, P, qs), want)
    assert "workbench.gemm_4bit.default" in mode.seen
    A1 = A.clone().requires_grad_(True)
    y = matmul_4bit(A1, P, qs)
    assert y.requires_grad and torch.equal(y.detach(), want)
    torch._dynamo.reset()
    f = torch.compile(lambda a: matmul_4bit(a, P, qs), fullgraph=True, backend="aot_eager")
    assert torch.equal(f(A), want)
