"""The parity harness: registry, comparison levels, tolerance of missing modules, and that it catches bugs."""
import sys

import pandas as pd
import pytest
import torch

from workbench import parity
from workbench.backends import list_backends, status

HAS_BNB = status("bnb")[0]
OTHER = [b.name for b in list_backends() if b.available and b.name != "reference" and "cpu" in b.devices
         and "quantize_4bit" in b.ops]


def test_quant_family_is_registered():
    names = {c.name for c in parity.cases("quant")}
    assert names == {"quantize_blockwise", "dequantize_blockwise", "quantize_4bit", "dequantize_4bit"}


def test_bit_equal_sees_signed_zero_nan_bits_and_shape():
    a = torch.tensor([0.0, 1.0, float("nan")])
    b = torch.tensor([-0.0, 1.0, float("nan")])
    ok, n, md = parity.bit_equal(a, b)
    assert not ok and n == 1 and md == 0.0
    assert parity.bit_equal(a, b, signed_zero=False)[0]
    assert parity.bit_equal(a.half(), a.half())[0]
    assert not parity.bit_equal(a, a.half())[0]
    assert not parity.bit_equal(a, a[:2])[0]
    c = a.clone()
    c[1] = torch.nextafter(torch.tensor(1.0), torch.tensor(2.0))
    assert parity.bit_equal(a, c)[1] == 1


@pytest.mark.skipif(not HAS_BNB, reason="needs bitsandbytes 0.50.2")
def test_bnb_matches_reference_at_declared_levels(rng):
    seed = int(torch.randint(0, 2 ** 31, (1,), generator=rng))
    df = parity.run_parity("cpu", backends=["bnb"], ops=["quantize_4bit", "quantize_blockwise", "dequantize_blockwise"],
                           quick=True, seed=seed)
    assert set(df["op"]) == {"quantize_4bit", "quantize_blockwise", "dequantize_blockwise"}
    assert df["ok"].all(), parity.failures(df).to_string()
    assert set(df["dtype"]) == {"float32", "float16", "bfloat16"}
    assert (df["n"] % 2 == 1).any() and (df["n"] == 1).any()  # odd sizes and a single element
    assert set(df.loc[df.op == "quantize_blockwise", "level"]) == {"LUT cell"}
    assert set(df.loc[df.op == "quantize_4bit", "level"]) == {"exact"}
    m = parity.matrix(df)
    assert list(m.index) == ["bnb"] and all(v.endswith(f"/{v.split('/')[-1]}") for v in m.iloc[0])
    assert "bnb" in parity.format_matrix(df)


@pytest.mark.skipif(not HAS_BNB, reason="needs bitsandbytes 0.50.2")
def test_harness_catches_a_one_bit_error(monkeypatch):
    real_get_op = parity.get_op  # the harness's op lookup (ops are resolved once: patch the lookup, not a module)

    def get_op(backend, op, device):
        real = real_get_op(backend, op, device)
        if (backend, op) != ("bnb", "quantize_4bit"):
            return real

        def broken(A, codebook, blocksize):
            packed, absmax = real(A, codebook, blocksize)
            packed = packed.clone()
            packed[-1] ^= 1  # the last nibble: a tail element
            return packed, absmax
        return broken

    monkeypatch.setattr(parity, "get_op", get_op)
    df = parity.run_parity("cpu", backends=["bnb"], ops=["quantize_4bit"], quick=True, sizes=[1, 3, 1001],
                           blocksizes=[64])
    assert set(df["n"]) == {1, 3, 1001}
    assert not df["ok"].any()
    assert parity.matrix(df).loc["bnb", "quantize_4bit"].startswith("FAIL")


@pytest.mark.skipif(not OTHER, reason="needs a non-reference CPU backend")
def test_registered_cases_crash_into_failed_rows(monkeypatch):
    monkeypatch.setattr(parity, "_CASES", dict(parity._CASES))  # registrations end with the test
    def good(backend, device, gen, quick):
        yield {"op": "quantize_4bit", "ok": True, "n": 5}

    def crashes(backend, device, gen, quick):
        yield {"op": "quantize_4bit", "ok": True}
        raise RuntimeError("kernel exploded")

    parity.register_case("zz-test", "good", good, ops=("quantize_4bit",), overwrite=True)
    parity.register_case("zz-test", "crashes", crashes, ops=("quantize_4bit",), overwrite=True)
    with pytest.raises(ValueError, match="already registered"):
        parity.register_case("zz-test", "good", crashes)
    df = parity.run_parity("cpu", backends=OTHER[:1], families=["zz-test"])
    bad = parity.failures(df)
    assert len(df) == 3 and len(bad) == 1
    assert "kernel exploded" in bad["detail"].iloc[0] and bad["level"].iloc[0] == "error"


def test_case_modules_are_optional_and_hooks_register(tmp_path, monkeypatch):
    monkeypatch.setattr(parity, "_CASES", dict(parity._CASES))
    (tmp_path / "kbit_fake_cases.py").write_text(
        "def register_parity_cases(register):\n"
        "    def case(backend, device, gen, quick):\n"
        "        yield {'op': 'quantize_4bit', 'ok': True}\n"
        "    register('fakefam', 'fake', case, ops=('quantize_4bit',))\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(parity, "CASE_MODULES", ["kbit_no_such_module_xyz", "kbit_fake_cases"])
    monkeypatch.setattr(parity, "_MODULE_STATUS", {})
    st = parity.load_case_modules()
    assert st["kbit_no_such_module_xyz"].startswith("absent")
    assert st["kbit_fake_cases"] == "loaded"
    assert [c.name for c in parity.cases("fakefam")] == ["fake"]
    sys.modules.pop("kbit_fake_cases", None)


def test_cuda_request_without_gpu_is_a_clear_error():
    if torch.cuda.is_available():
        pytest.skip("has a GPU")
    with pytest.raises(RuntimeError, match="device: 'cuda'"):
        parity.run_parity("cuda")


def test_empty_result_has_columns():
    df = parity.run_parity("cpu", backends=["cuda"] if not torch.cuda.is_available() else ["bnb"], ops=["int8_double_quant"])
    assert isinstance(df, pd.DataFrame) and df.empty and "ok" in df
    assert parity.matrix(df).empty
    assert parity.summary_line(df).startswith("FAIL: passed 0, failed 0, total 0")


@pytest.mark.skipif(not HAS_BNB, reason="needs bitsandbytes 0.50.2")
def test_bnb_native_8bit_all_zero_block_is_counted_not_failed():
    df = parity.run_parity("cpu", backends=["bnb"], ops=["quantize_blockwise"], sizes=[96, 97], blocksizes=[32])
    assert df["ok"].all(), parity.failures(df).to_string()
    assert df["detail"].str.contains("all-zero blocks").any()


@pytest.mark.skipif(not OTHER, reason="needs a non-reference CPU backend")
def test_parity_as_a_report_study():
    df = parity.run_parity("cpu", backends=OTHER[:1], ops=["dequantize_4bit"], quick=True)
    tables = parity.summarize(df)
    assert tables[0][0].startswith("backend x op")
    assert parity.notes(df)
