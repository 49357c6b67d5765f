"""Issue 21: the bitsandbytes boundary is honest. bitsandbytes 0.50.2 runs only its own NF4/FP4 4-bit tables
(picked by quant_type; quant_map is ignored), so to_bnb()/from_bnb() refuse anything else with a CodebookError
that says why, instead of a state that bitsandbytes silently dequantizes with NF4 values."""
import pytest
import torch

import workbench as wb
from workbench import codebooks as cbs

bnb = pytest.importorskip("bitsandbytes")
F = pytest.importorskip("bitsandbytes.functional")
pytestmark = pytest.mark.bnb


@pytest.mark.parametrize("quant_type", ["nf4", "fp4"])
def test_nf4_fp4_states_convert_and_load_into_linear4bit(quant_type):
    """The README's example: a workbench state drives bitsandbytes.nn.Linear4bit."""
    g = torch.Generator().manual_seed(0)
    W = (torch.randn(64, 128, generator=g) * 0.05).to(torch.bfloat16)
    packed, state = wb.quantize_4bit(W, blocksize=64, quant_type=quant_type, compress_statistics=True)
    lin = bnb.nn.Linear4bit(128, 64, bias=False, compute_dtype=torch.bfloat16, quant_type=quant_type)
    lin.weight = bnb.nn.Params4bit(packed, requires_grad=False, quant_state=state.to_bnb(), quant_type=quant_type,
                                   blocksize=64, compress_statistics=True, bnb_quantized=True)
    x = torch.randn(3, 128, generator=g).to(torch.bfloat16)
    assert torch.equal(lin(x), x @ wb.dequantize_4bit(packed, state).t())


@pytest.mark.parametrize("code", ["af4", "e2m1", "int4-asym", "three-bit"])
def test_to_bnb_refuses_codes_bitsandbytes_cannot_run(code):
    cb = (cbs.from_values([-1, -0.5, -0.2, 0, 0.2, 0.5, 1], "three-bit", pad_to_pow2=True) if code == "three-bit"
          else cbs.get(code))
    if cb.size < 16:
        import numpy as np
        cb = cbs.Codebook(cb.name, np.concatenate([cb.table, np.full(16 - cb.size, cb.table[-1], np.float32)]),
                          cb.bounds, cb.bucket_codes)
    _, state = wb.quantize_4bit(torch.randn(256), codebook=cb)
    with pytest.raises(cbs.CodebookError, match="only its NF4 and FP4"):
        state.to_bnb()


def test_nf4_named_state_with_another_table_is_refused_both_ways():
    """The silent-NF4 trap: quant_type 'nf4' with a custom quant_map dequantizes with NF4 values in bnb."""
    _, state = wb.quantize_4bit(torch.randn(256), quant_type="nf4")
    state.code = torch.from_numpy(cbs.get("af4").table.copy())
    with pytest.raises(cbs.CodebookError, match="not bitsandbytes' NF4 table"):
        state.to_bnb()
    _, theirs = F.quantize_4bit(torch.randn(256), quant_type="nf4")
    theirs.code = torch.from_numpy(cbs.get("af4").table.copy())     # hand-built: bnb ignores it
    with pytest.raises(cbs.CodebookError, match="ignore the table"):
        wb.QuantState.from_bnb(theirs)


def test_8bit_blockwise_states_carry_any_table():
    """bitsandbytes' dequantize_blockwise reads the state's table, so 8-bit states of any code convert."""
    A = torch.randn(4096)
    codes, state = wb.quantize_blockwise(A, codebook=cbs.get("linear8"), blocksize=256)
    assert torch.equal(F.dequantize_blockwise(codes, state.to_bnb()), wb.dequantize_blockwise(codes, state))
