"""Bad input gets a clear error naming the argument; inputs are never mutated."""
import pytest
import torch

import workbench as wb
from workbench import codebooks as cbs
from workbench.backends import BackendUnavailable
from workbench.codebooks import CodebookError
from workbench.validation import QuantInputError

QUANTIZERS = {
    "blockwise": lambda A, **kw: wb.quantize_blockwise(A, blocksize=kw.pop("blocksize", 256), **kw),
    "4bit": lambda A, **kw: wb.quantize_4bit(A, blocksize=kw.pop("blocksize", 64), quant_type="nf4", **kw),
}


@pytest.fixture(params=sorted(QUANTIZERS))
def quantize(request):
    return QUANTIZERS[request.param]


@pytest.mark.parametrize("dtype", [torch.int32, torch.float64, torch.uint8, torch.bool])
def test_wrong_dtype(quantize, dtype):
    with pytest.raises(QuantInputError, match=r"^A: dtype"):
        quantize(torch.ones(10, dtype=dtype))


def test_not_a_tensor(quantize):
    with pytest.raises(QuantInputError, match="A: expected a torch.Tensor"):
        quantize([1.0, 2.0])


def test_empty(quantize):
    with pytest.raises(QuantInputError, match="A: tensor is empty"):
        quantize(torch.empty(0, 5))


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_raises_when_asked(quantize, bad):
    A = torch.randn(300)
    A[17] = bad
    with pytest.raises(QuantInputError, match="A: contains 1 non-finite"):
        quantize(A, nan_policy="raise")


@pytest.mark.parametrize("nested", [False, True])
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), None])
def test_default_propagates_and_flags(bad, nested):
    """The default makes no host sync: non-finite input is reported through the state's flag."""
    A = torch.randn(300)
    if bad is not None:
        A[17] = bad
    for quantize in (lambda a: wb.quantize_4bit(a, blocksize=64, compress_statistics=nested)[1],
                     lambda a: wb.quantize_blockwise(a, blocksize=64, nested=nested)[1]):
        assert quantize(A).has_nonfinite() == (bad is not None)


def test_nan_policy_propagate_and_invalid(quantize):
    A = torch.randn(300)
    A[3] = float("nan")
    quantize(A, nan_policy="propagate")  # accepted; codes of that block are undefined
    with pytest.raises(QuantInputError, match="nan_policy"):
        quantize(torch.randn(10), nan_policy="ignore")


@pytest.mark.parametrize("bs", [0, 16, 100, 8192, -64, "64", 64.0, True])
def test_invalid_blocksize(quantize, bs):
    with pytest.raises(QuantInputError, match="blocksize"):
        quantize(torch.randn(500), blocksize=bs)


def test_unsorted_and_duplicate_codebook():
    code = torch.linspace(-1, 1, 256)
    with pytest.raises(CodebookError, match="sorted ascending"):
        wb.quantize_blockwise(torch.randn(100), code=code.flip(0))
    dup = code.clone()
    dup[10] = dup[11]
    with pytest.raises(CodebookError, match="duplicate value"):
        wb.quantize_blockwise(torch.randn(100), code=dup)
    with pytest.raises(CodebookError, match="finite"):
        cbs.from_values([0.0, float("nan")])
    with pytest.raises(CodebookError, match=r"\[-1, 1\]"):
        cbs.from_values([-2.0, 0.0, 1.0, 2.0])


def test_codebook_size_checks():
    with pytest.raises(QuantInputError, match="needs exactly 16"):
        wb.quantize_4bit(torch.randn(100), codebook="dynamic")
    with pytest.raises(CodebookError, match="2\\*\\*k values"):
        cbs.from_values([-1.0, 0.0, 0.5])
    with pytest.raises(QuantInputError, match="quant_type"):
        wb.quantize_4bit(torch.randn(100), quant_type="int4")


def test_wrong_device_and_backend():
    with pytest.raises(QuantInputError, match="device meta"):
        wb.quantize_4bit(torch.empty(100, device="meta"), quant_type="nf4")
    with pytest.raises(BackendUnavailable, match="unknown name"):
        wb.quantize_4bit(torch.randn(100), backend="tpu")
    if not torch.cuda.is_available():
        with pytest.raises(BackendUnavailable, match="cuda"):
            wb.quantize_4bit(torch.randn(100), backend="cuda")


def test_dequantize_shape_checks():
    p, s = wb.quantize_4bit(torch.randn(101), quant_type="nf4")
    with pytest.raises(QuantInputError, match="packed bytes"):
        wb.dequantize_4bit(p[:-1], s)
    with pytest.raises(QuantInputError, match="quant_state"):
        wb.dequantize_4bit(p, s.as_dict())
    c, s8 = wb.quantize_blockwise(torch.randn(1000), blocksize=256)
    with pytest.raises(QuantInputError, match="absmax: 4 values for 999 "):
        wb.dequantize_blockwise(c[:-1].contiguous()[:999], absmax=s8.absmax, blocksize=128)
    with pytest.raises(QuantInputError, match="A: dtype float32"):
        wb.dequantize_blockwise(c.float(), s8)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_inputs_never_mutated_and_strides_respected(rng, dtype):
    A = (torch.randn(96, 130, generator=rng) * 2).to(dtype).t()  # non-contiguous
    before = A.clone()
    for compress in (False, True):
        p, s = wb.quantize_4bit(A, blocksize=64, quant_type="fp4", compress_statistics=compress)
        p2, _ = wb.quantize_4bit(A.contiguous(), blocksize=64, quant_type="fp4", compress_statistics=compress)
        assert torch.equal(p, p2)
        absmax_before = s.absmax.clone()
        out = wb.dequantize_4bit(p, s)
        assert out.shape == A.shape and out.dtype == dtype
        assert torch.equal(s.absmax, absmax_before)
    c, s8 = wb.quantize_blockwise(A, blocksize=128, nested=True)
    assert c.shape == A.shape
    a8 = s8.absmax.clone()
    wb.dequantize_blockwise(c, s8)
    assert torch.equal(s8.absmax, a8)
    assert torch.equal(A, before)


@pytest.mark.parametrize("backend", ["reference", "numba_cpu", "cython_cpu"])
def test_dequantize_rejects_inconsistent_states_before_any_kernel(backend):
    """The public ops check a state (QuantState.validate) before a kernel can read past absmax."""
    for compress in (False, True):
        p, s = wb.quantize_4bit(torch.randn(1000), blocksize=64, quant_type="nf4", compress_statistics=compress)
        s.absmax = s.absmax[:3]
        with pytest.raises(QuantInputError, match=r"quant_state.absmax: 3 values for 1000 elements"):
            wb.dequantize_4bit(p, s, backend=backend)
    p, s = wb.quantize_4bit(torch.randn(1000), blocksize=64, quant_type="nf4", compress_statistics=True)
    s.state2.absmax = s.state2.absmax[:0]
    with pytest.raises(QuantInputError, match=r"quant_state.state2.absmax: 0 values"):
        wb.dequantize_4bit(p, s, backend=backend)
    c, s8 = wb.quantize_blockwise(torch.randn(1000), blocksize=64)
    s8.absmax = s8.absmax.view(2, 8)
    with pytest.raises(QuantInputError, match=r"quant_state.absmax: expected a 1-D tensor"):
        wb.dequantize_blockwise(c, s8, backend=backend)
    s8.absmax, s8.blocksize = s8.absmax.reshape(-1), 128
    with pytest.raises(QuantInputError, match=r"quant_state.absmax: 16 values for 1000 elements at blocksize 128"):
        wb.dequantize_blockwise(c, s8, backend=backend)


def test_quantize_4bit_sees_a_name_registered_again():
    """quantize_4bit remembers name -> codebook; registering a name again must reach it."""
    A = torch.randn(512)
    vals = sorted(set(torch.linspace(-1, 1, 16).tolist()))
    cbs.register("test_reregistered4", cbs.from_values(vals, name="test_reregistered4"), overwrite=True)
    _, s1 = wb.quantize_4bit(A, codebook="test_reregistered4")
    cbs.register("test_reregistered4", cbs.from_values([v ** 3 for v in vals], name="test_reregistered4"), overwrite=True)
    _, s2 = wb.quantize_4bit(A, codebook="test_reregistered4")
    assert not torch.equal(s1.code, s2.code)
