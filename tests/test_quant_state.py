"""QuantState: from_dict on malformed dicts and QuantState.validate give QuantInputError naming the
key or field and what was expected (issue 17)."""
import json

import pytest
import torch

import workbench as wb
from workbench.quant_state import QuantState, pack_dict_to_tensor
from workbench.validation import QuantInputError


def _state(nested=True, n=1000):
    A = torch.randn(n, generator=torch.Generator().manual_seed(0))
    return wb.quantize_4bit(A, blocksize=64, quant_type="nf4", compress_statistics=nested, backend="reference")


def _packed_key(d):
    return next(k for k in d if "quant_state" in k)


def _with_inner(d, **changes):
    d = dict(d)
    k = _packed_key(d)
    inner = json.loads(bytes(d[k].numpy()).decode())
    for key, v in changes.items():
        if v is KeyError:
            inner.pop(key)
        else:
            inner[key] = v
    d[k] = pack_dict_to_tensor(inner)
    return d


@pytest.mark.parametrize("nested", [False, True])
@pytest.mark.parametrize("packed", [False, True])
def test_from_dict_round_trip(nested, packed):
    p, s = _state(nested)
    s2 = QuantState.from_dict(s.as_dict(packed=packed))
    assert s2.nested == nested and tuple(s2.shape) == (1000,) and s2.blocksize == 64 and s2.dtype == torch.float32
    assert torch.equal(wb.dequantize_4bit(p, s2, backend="reference"), wb.dequantize_4bit(p, s, backend="reference"))
    prefixed = {f"layer.weight.{k}": v for k, v in s.as_dict(packed=packed).items()}
    assert QuantState.from_dict(prefixed).blocksize == 64


def test_from_dict_blockwise_state():
    c, s = wb.quantize_blockwise(torch.randn(700), blocksize=256, nested=True, backend="reference")
    s2 = QuantState.from_dict(s.as_dict())
    assert torch.equal(wb.dequantize_blockwise(c, s2, backend="reference"),
                       wb.dequantize_blockwise(c, s, backend="reference"))


def test_from_dict_bad_packed_item():
    _, s = _state()
    d = s.as_dict(packed=True)
    k = _packed_key(d)
    for bad, match in [(d[k][:-7], "not a JSON object .*truncated"), (torch.tensor([255, 0, 1], dtype=torch.uint8), "not a JSON object"),
                       (d[k][:0], "not a JSON object"), (pack_dict_to_tensor([1, 2]), "expected a JSON object .* got list"),
                       (d[k].float(), "expected a 1-D uint8 tensor"), (d[k].view(1, -1), "expected a 1-D uint8 tensor")]:
        with pytest.raises(QuantInputError, match=rf"qs_dict\['{k}'\]: {match}"):
            QuantState.from_dict({**d, k: bad})


@pytest.mark.parametrize("key,value,match", [
    ("dtype", "float128", r"qs_dict\['dtype'\]: expected one of \['float32', 'float16', 'bfloat16'\], got 'float128'"),
    ("dtype", 3, r"qs_dict\['dtype'\]: expected one of"),
    ("nested_dtype", "float16", r"qs_dict\['nested_dtype'\]: expected one of \['float32'\]"),
    ("shape", "abc", r"qs_dict\['shape'\]: expected a tuple of non-negative ints, got 'abc'"),
    ("shape", [-1, 4], r"qs_dict\['shape'\]: expected a tuple of non-negative ints, got \(-1, 4\)"),
    ("shape", [2.5], r"qs_dict\['shape'\]: expected a tuple of non-negative ints"),
    ("shape", [True], r"qs_dict\['shape'\]: expected a tuple of non-negative ints"),
    ("shape", [999], r"quant_state.absmax: 16 values for 999 elements .*expected ceil\(999 / 64\) = 16|"),
    ("shape", [2000], r"quant_state.absmax: 16 values for 2000 elements at blocksize 64; expected ceil\(2000 / 64\) = 32"),
    ("blocksize", 63, r"qs_dict\['blocksize'\]: 63 not supported; expected a power of two in 32..4096"),
    ("blocksize", "64", r"qs_dict\['blocksize'\]: expected an int, got '64'"),
    ("nested_blocksize", 0, r"qs_dict\['nested_blocksize'\]: 0 not supported"),
    ("nested_offset", "x", r"qs_dict\['nested_offset'\]: expected a finite number, got 'x'"),
    ("nested_offset", float("inf"), r"qs_dict\['nested_offset'\]: expected a finite number"),
    ("quant_type", 4, r"qs_dict\['quant_type'\]: expected a str or None, got int"),
    ("dtype", KeyError, r"qs_dict: missing key\(s\) \['dtype'\]"),
    ("nested_offset", KeyError, r"qs_dict: missing key\(s\) \['nested_offset'\]; a nested state needs"),
])
def test_from_dict_bad_items(key, value, match):
    _, s = _state()
    d = _with_inner(s.as_dict(packed=True), **{key: value})
    if key == "shape" and value == [999]:  # ceil(999 / 64) == 16: consistent, accepted
        assert tuple(QuantState.from_dict(d).shape) == (999,)
        return
    with pytest.raises(QuantInputError, match=match):
        QuantState.from_dict(d)


@pytest.mark.parametrize("key,value,match", [
    ("absmax", [1.0, 2.0], r"qs_dict\['absmax'\]: expected a 1-D uint8 torch.Tensor, got list"),
    ("absmax", "abc", r"qs_dict\['absmax'\]: expected a 1-D uint8 torch.Tensor, got str"),
    ("absmax", torch.zeros(2, 8, dtype=torch.uint8), r"qs_dict\['absmax'\]: expected a 1-D tensor, got shape \(2, 8\)"),
    ("absmax", torch.zeros(16), r"qs_dict\['absmax'\]: expected dtype uint8 \(uint8\), got float32"),
    ("nested_absmax", torch.zeros(1, dtype=torch.float64), r"qs_dict\['nested_absmax'\]: expected dtype float32"),
    ("quant_map", torch.zeros(16, dtype=torch.float64), r"qs_dict\['quant_map'\]: expected dtype float32"),
    ("quant_map", torch.zeros(4, 4), r"qs_dict\['quant_map'\]: expected a 1-D tensor"),
    ("quant_map", torch.zeros(7), r"quant_state.code: expected 2\*\*k entries with 1 <= k <= 8, got 7"),
    ("absmax", torch.zeros(15, dtype=torch.uint8), r"quant_state.absmax: 15 values for 1000 elements at blocksize 64"),
    ("nested_absmax", torch.zeros(2), r"quant_state.state2.absmax: 2 values for 16 absmax codes at nested blocksize 256; expected 1"),
])
def test_from_dict_bad_tensors(key, value, match):
    _, s = _state()
    d = s.as_dict(packed=True)
    with pytest.raises(QuantInputError, match=match):
        QuantState.from_dict({**d, key: value})


def test_from_dict_structure_errors():
    _, s = _state(nested=False)
    d = s.as_dict(packed=True)
    with pytest.raises(QuantInputError, match="qs_dict: expected a dict of quant-state items, got list"):
        QuantState.from_dict([1, 2])
    with pytest.raises(QuantInputError, match="expected exactly one 'quant_state.bitsandbytes__<type>' item"):
        QuantState.from_dict({k: v for k, v in d.items() if "quant_state" not in k})
    with pytest.raises(QuantInputError, match=r"qs_dict: unknown keys \['bogus'\]"):
        QuantState.from_dict({**d, "bogus": 1})
    with pytest.raises(QuantInputError, match=r"qs_dict: missing key\(s\) \['absmax'\]"):
        QuantState.from_dict({k: v for k, v in d.items() if k != "absmax"})
    with pytest.raises(QuantInputError, match="two items name 'absmax'"):
        QuantState.from_dict({**d, "other.absmax": d["absmax"]})
    with pytest.raises(QuantInputError, match="device"):
        QuantState.from_dict(d, device="no-such-device")


# -------------------------------------------------------------------------------- validate()


def test_validate_accepts_states_the_ops_make():
    for nested in (False, True):
        _, s = _state(nested)
        assert s.validate() is s and s.validate(1000, bits=4) is s and s.validate((10, 100), bits=4) is s
        c, s8 = wb.quantize_blockwise(torch.randn(3, 333), blocksize=128, nested=nested, backend="reference")
        s8.validate(999, bits=8)
        c, s16 = wb.quantize_blockwise(torch.randn(50), blocksize=32, codebook="nf4", backend="reference")
        s16.validate(50, bits=8)


def _broken(change, nested=True):
    _, s = _state(nested)
    change(s)
    return s


@pytest.mark.parametrize("change,args,match", [
    (lambda s: setattr(s, "absmax", s.absmax[:-1]), (), r"quant_state.absmax: 15 values for 1000 elements at blocksize 64; expected ceil\(1000 / 64\) = 16"),
    (lambda s: setattr(s, "absmax", s.absmax.float()), (), r"quant_state.absmax: expected dtype uint8 \(uint8 codes \(nested\)\), got float32"),
    (lambda s: setattr(s, "absmax", s.absmax.view(4, 4)), (), r"quant_state.absmax: expected a 1-D tensor, got shape \(4, 4\)"),
    (lambda s: setattr(s, "absmax", s.absmax.tolist()), (), r"quant_state.absmax: expected a 1-D .* torch.Tensor, got list"),
    (lambda s: setattr(s.state2, "absmax", s.state2.absmax[:0]), (), r"quant_state.state2.absmax: 0 values for 16 absmax codes at nested blocksize 256; expected 1"),
    (lambda s: setattr(s.state2, "code", s.state2.code[:255]), (), r"quant_state.state2.code: expected 2\*\*k entries .* got 255"),
    (lambda s: setattr(s.state2, "code", s.state2.code.double()), (), r"quant_state.state2.code: expected dtype float32"),
    (lambda s: setattr(s.state2, "blocksize", 100), (), r"quant_state.state2.blocksize: 100 not supported"),
    (lambda s: setattr(s.state2, "dtype", torch.float16), (), r"quant_state.state2.dtype: expected float32"),
    (lambda s: setattr(s, "offset", None), (), r"quant_state.offset: expected a one-element float tensor"),
    (lambda s: setattr(s, "offset", torch.zeros(2)), (), r"quant_state.offset: expected a one-element float tensor"),
    (lambda s: setattr(s, "state2", None), (), r"quant_state.nested: is True but state2 is None"),
    (lambda s: setattr(s, "blocksize", 48), (), r"quant_state.blocksize: 48 not supported; expected a power of two in 32..4096"),
    (lambda s: setattr(s, "blocksize", "64"), (), r"quant_state.blocksize: expected an int"),
    (lambda s: setattr(s, "blocksize", 128), (), r"quant_state.absmax: 16 values for 1000 elements at blocksize 128; expected ceil\(1000 / 128\) = 8"),
    (lambda s: setattr(s, "code", s.code[:8]), (), r"quant_state.code: expected a 16-entry table \(4-bit codes\), got 8 entries"),
    (lambda s: setattr(s, "code", None), (), r"quant_state.code: expected a 1-D float32 code table torch.Tensor, got NoneType"),
    (lambda s: setattr(s, "code", torch.zeros(16, dtype=torch.float16)), (), r"quant_state.code: expected dtype float32"),
    (lambda s: setattr(s, "dtype", torch.float64), (), r"quant_state.dtype: expected one of float32/float16/bfloat16, got torch.float64"),
    (lambda s: setattr(s, "dtype", "float32"), (), r"quant_state.dtype: expected one of"),
    (lambda s: setattr(s, "shape", "abc"), (), r"quant_state.shape: expected a tuple of non-negative ints, got 'abc'"),
    (lambda s: setattr(s, "shape", (-1, 1000)), (), r"quant_state.shape: expected a tuple of non-negative ints, got \(-1, 1000\)"),
    (lambda s: None, (999 * 3,), r"quant_state.absmax: 16 values for 2997 elements"),
    (lambda s: None, (-1,), r"n_or_shape: expected a non-negative element count, got -1"),
    (lambda s: None, ("abc",), r"n_or_shape: expected a tuple of non-negative ints"),
])
def test_validate_names_the_field(change, args, match):
    s = _broken(change)
    with pytest.raises(QuantInputError, match=match):
        s.validate(*args, bits=4)


def test_validate_bits_and_blockwise_tables():
    _, s = _state(nested=False)
    with pytest.raises(QuantInputError, match="bits: expected 4, 8 or None, got 3"):
        s.validate(bits=3)
    s.code = torch.linspace(-1, 1, 256)
    s.validate(bits=8)  # a 256-entry table is a blockwise code
    with pytest.raises(QuantInputError, match="expected a 16-entry table"):
        s.validate(bits=4)
    s.code = torch.linspace(-1, 1, 300)
    with pytest.raises(QuantInputError, match="expected 2\\*\\*k entries with 1 <= k <= 8, got 300"):
        s.validate(bits=8)
    s.code, s.shape = torch.linspace(-1, 1, 16), None
    s.validate()  # no shape and no n: the count is not checked
    with pytest.raises(QuantInputError, match="16 values for 2000 elements"):
        s.validate(2000)


def test_validate_is_metadata_only():
    """No pass over the data: works on meta tensors (which have no data at all)."""
    _, s = _state(nested=True)
    s.absmax = torch.empty(16, dtype=torch.uint8, device="meta")
    s.code = torch.empty(16, device="meta")
    s.offset = torch.empty((), device="meta")
    s.state2.absmax = torch.empty(1, device="meta")
    s.state2.code = torch.empty(256, device="meta")
    assert s.validate(1000, bits=4) is s


def test_dequantizers_revalidate_a_state_changed_after_use():
    """The dequantizers remember a state's validation between calls (ops._prepared); any change to what
    was checked is seen: a replaced or resized absmax, another blocksize, an edited table."""
    A = torch.randn(1000)
    for quantize, dequantize in ((lambda a: wb.quantize_4bit(a, blocksize=64, quant_type="nf4"), wb.dequantize_4bit),
                                 (lambda a: wb.quantize_blockwise(a, blocksize=64), wb.dequantize_blockwise)):
        q, qs = quantize(A)
        first = dequantize(q, qs)
        assert torch.equal(dequantize(q, qs), first)
        qs.code[:] = qs.code * 2  # in place: the kernels read the state's own table
        assert torch.allclose(dequantize(q, qs), first * 2)
        qs.code[:] = qs.code / 2
        keep = qs.absmax
        qs.absmax = keep[:-1].clone()
        with pytest.raises(QuantInputError, match="absmax"):
            dequantize(q, qs)
        qs.absmax = keep
        assert torch.equal(dequantize(q, qs), first)
        qs.absmax.resize_(3)
        with pytest.raises(QuantInputError, match="absmax"):
            dequantize(q, qs)
        q, qs = quantize(A)
        dequantize(q, qs)
        qs.blocksize = 128
        with pytest.raises(QuantInputError, match="absmax"):
            dequantize(q, qs)
        qs.blocksize = 64
        dequantize(q, qs)
        qs.state2 = qs  # a nested part set by hand, nested left False: inconsistent
        with pytest.raises(QuantInputError, match="nested"):
            dequantize(q, qs)


def test_each_state_owns_its_table():
    """Quantizers hand out the codebook's table lazily, but each state gets its own copy."""
    A = torch.randn(256)
    _, s1 = wb.quantize_4bit(A, quant_type="nf4")
    _, s2 = wb.quantize_4bit(A, quant_type="nf4")
    s1.code[0] = 123.0
    assert s2.code[0] != 123.0 and wb.quantize_4bit(A, quant_type="nf4")[1].code[0] != 123.0
