"""QuantSpec's k-bit options and routes (issue 20): bits 2..8, scale formats, groups, affine, rotation through
workbench.kbit; 4-bit codes through workbench.nn.Linear4bit; honest bits; bad specs name their argument."""
import math

import pytest
import torch

from workbench import kbit
from workbench import model_eval as me
from workbench.backends.reference.matmul import error_bound
from workbench.nn import Linear4bit
from workbench.quant_spec import QuantSpec, fake_quantize
from workbench.validation import QuantInputError

N_SENT = 12
LAYER = "encoder.layer.5.output.dense"


@pytest.fixture(scope="module")
def ev():
    from studies import model_study
    return model_study.evaluator(N_SENT)


@pytest.mark.parametrize("text,route", [
    ("nf4@64", "linear4bit"), ("nf4@64+dq", "linear4bit"), ("fp4@128", "linear4bit"), ("nf3@64", "blockwise"),
    ("nf3@64/e4m4", "kbit"), ("nf3@64/e4m4/rot64", "kbit"), ("int4-minmax@32", "kbit"), ("int3-mse@64/rot64s7", "kbit"),
    ("nf4@row/fp16", "kbit"), ("nf2@96", "kbit"), ("e2m1@32/e8m0", "kbit"), ("nf4@64/gptq", "gptq"),
    ("af4@64/a8t6", "linear4bit"),
])
def test_spec_text_round_trip_and_route(text, route):
    s = QuantSpec.parse(text)
    assert s.name == text and s.route == route
    assert QuantSpec.parse(s.name) == s
    cols = s.columns()
    assert cols["spec"] == text and cols["route"] == route and cols["group"] == text.split("@")[1].split("/")[0] \
        .removesuffix("+dq")


def test_dq8_is_double_quant_and_defaults():
    assert QuantSpec(scale_format="dq8") == QuantSpec(double_quant=True)
    assert QuantSpec().name == "nf4@64" and QuantSpec(bits=3).name == "nf3@64"
    assert QuantSpec(affine="minmax", bits=3).effective_scale_format == "fp16"
    assert QuantSpec("nf4", blocksize="row").effective_scale_format == "fp32"


@pytest.mark.parametrize("kw,arg", [
    (dict(codebook="nf4", affine="minmax"), "codebook"),
    (dict(affine="minmax", double_quant=True), "double_quant"),
    (dict(affine="minmax", scale_format="e4m4"), "scale_format"),
    (dict(scale_format="e4m4", double_quant=True), "double_quant"),
    (dict(scale_format="e8m0", blocksize=64), "scale_format"),
    (dict(scale_format="e4m3", blocksize="row"), "scale_format"),
    (dict(scale_format="fp8"), "scale_format"),
    (dict(bits=9), "bits"),
    (dict(bits=1), "bits"),
    (dict(codebook="nf4", bits=3), "bits"),
    (dict(method="gptq", rotate=64), "method"),
    (dict(method="gptq", scale_format="e4m4"), "method"),
    (dict(method="gptq", blocksize="row"), "method"),
    (dict(method="awq"), "method"),
    (dict(rotate=48), "rotate"),
    (dict(rotate=64, rotate_seed=-1), "rotate_seed"),
    (dict(blocksize=8), "blocksize"),
    (dict(blocksize="col"), "blocksize"),
    (dict(affine="absmax"), "affine"),
    (dict(act_threshold=-1.0), "act_threshold"),
    (dict(codebook="no-such-code"), "codebook"),
    (dict(codebook=[-1.0, 1.0], scale_format="fp16"), "codebook"),   # a 1-bit code: the k-bit ops take 2..8
])
def test_impossible_specs_name_the_argument(kw, arg):
    with pytest.raises(QuantInputError, match=rf"^{arg}:"):
        QuantSpec(**kw)


@pytest.mark.parametrize("text,arg", [("nf4@64/zz", "spec"), ("nf4@sixty", "blocksize"), ("nf4@64/a8tx", "spec")])
def test_bad_spec_text(text, arg):
    with pytest.raises(QuantInputError, match=rf"^{arg}:"):
        QuantSpec.parse(text)


def test_group_must_divide_the_row_at_quantize_time():
    with pytest.raises(QuantInputError, match=r"^blocksize:"):
        fake_quantize(torch.randn(8, 100), QuantSpec(blocksize=48))


@pytest.mark.parametrize("text,bits", [
    ("nf3@64/e4m4", 3 + 8 / 64),
    ("nf2@32/e4m4", 2 + 8 / 32),
    ("nf4@64/bf16/rot64", 4 + 16 / 64),
    ("int4-minmax@32", 4 + (16 + 8) / 32),                 # fp16 scale + uint8 zero point per group
    ("int3-mse@64/fp32", 3 + (32 + 8) / 64),
    ("nf4@row/fp16", 4 + 16 / 384),
    ("nf4@row+dq", 4 + (8 * 64 + 32 + 32) / (64 * 384)),   # 64 row scales, one nested absmax, the offset
    ("e2m1@16/e4m3", 4 + 8 / 16 + 32 / (64 * 384)),        # NVFP4: + the per-tensor float32
    ("nf8@64/e4m4", 8 + 8 / 64),
])
def test_honest_bits_per_param(text, bits):
    w = torch.randn(64, 384, generator=torch.Generator().manual_seed(0))
    y, b = fake_quantize(w, QuantSpec.parse(text))
    assert b == pytest.approx(bits) and y.shape == w.shape and y.dtype == torch.float32


def test_rotation_padding_is_counted():
    w = torch.randn(10, 10)                      # 100 weights, coded as 128 rotated ones
    _, b = fake_quantize(w, QuantSpec("nf4", blocksize=32, scale_format="e4m4", rotate=64))
    assert b == pytest.approx((128 * 4 + 4 * 8) / 100)


@pytest.mark.parametrize("text", ["nf3@64/e4m4/rot64", "int4-minmax@32", "fp4@64/fp16", "nf4@row/fp16"])
def test_kbit_route_is_the_public_kbit_api(text):
    s = QuantSpec.parse(text)
    w = torch.randn(32, 128, generator=torch.Generator().manual_seed(1))
    y, _ = fake_quantize(w, s)
    cb = None if s.affine else torch.sort(torch.from_numpy(s.cb.table.copy()).float()).values
    packed, st = kbit.quantize_kbit(w, k=s.k, codebook=cb, blocksize=s.blocksize, scale_format=s.effective_scale_format,
                                    affine=s.affine, rotate=s.rotate, rotate_seed=s.rotate_seed)
    assert torch.equal(y, kbit.dequantize_kbit(packed, st, dtype=torch.float32))


@pytest.mark.parametrize("text", ["nf4@64", "fp4@128+dq", "af4@64"])
def test_linear4bit_module_vs_dequantized_weight(text):
    """Same weight bit for bit; outputs differ only by float32 summation order (matmul_4bit's kernel vs torch's
    GEMM), so they are held to the matmul spec's error_bound."""
    s = QuantSpec.parse(text)
    g = torch.Generator().manual_seed(2)
    lin = torch.nn.Linear(384, 96)
    with torch.no_grad():
        lin.weight.copy_(torch.randn(96, 384, generator=g) * 0.05)
    mod = Linear4bit.from_linear(lin, **s.linear4bit_kwargs())
    w, bits = fake_quantize(lin.weight, s)
    assert torch.equal(mod.dequantize(torch.float32), w)
    x = torch.randn(300, 384, generator=g)
    y_mod, y_swap = mod(x), torch.nn.functional.linear(x, w, lin.bias)
    assert ((y_mod - y_swap).abs() <= error_bound(x, w, lin.bias, torch.float32, y_swap)).all()
    assert bits == pytest.approx(me.absmax_bits(s.cb, w.numel(), s))


def test_minilm_modules_vs_weight_swap(ev):
    """The whole model both ways: Linear4bit modules (quantize_model) and dequantized weights give the same
    embeddings up to float32 summation order (measured on 64 sentences: metrics within 2e-8; asserted 1e-5)."""
    s = QuantSpec("nf4", blocksize=64)
    block = ev.model.encoder.layer[5]
    seen = []
    hook = block.register_forward_pre_hook(lambda m, _a: seen.append(type(dict(m.named_modules())["output.dense"])))
    try:
        a = ev.evaluate(s)
    finally:
        hook.remove()
    b = ev.evaluate(s, use_modules=False)
    assert seen and set(seen) == {Linear4bit}
    for key in ("cos_mean", "cos_p01", "spearman"):
        assert a[key] == pytest.approx(b[key], abs=1e-5)
    assert a["top10_overlap"] == pytest.approx(b["top10_overlap"], abs=0.02)   # a tie may swap a neighbour
    assert a["bits_per_param"] == b["bits_per_param"] == pytest.approx(4.5)
    with me.swapped(ev.model, {}, modules={LAYER: s}):
        assert type(dict(ev.model.named_modules())[LAYER]) is Linear4bit
    assert type(dict(ev.model.named_modules())[LAYER]) is torch.nn.Linear


def test_minilm_kbit_options(ev):
    lin = dict(ev.model.named_modules())[LAYER]
    before = lin.weight.detach().clone()
    loss = {k: ev.evaluate(QuantSpec(bits=k, scale_format="e4m4"), layers=[LAYER])["one_minus_cos"] for k in (2, 3, 4)}
    assert loss[2] > loss[3] > loss[4] > 0
    rot = ev.evaluate(QuantSpec.parse("nf3@64/e4m4/rot64"), layers=[LAYER])
    aff = ev.evaluate(QuantSpec.parse("int4-minmax@32"), layers=[LAYER])
    assert 0 < rot["one_minus_cos"] < 0.5 and aff["bits_per_param"] == pytest.approx(4.75)
    assert torch.equal(lin.weight, before) and type(dict(ev.model.named_modules())[LAYER]) is torch.nn.Linear


def test_model_study_kbit_part(ev):
    from studies import model_study
    df, figs = model_study.run(n_sentences=N_SENT, codebooks=("nf4",), blocksizes=(64,), sensitivity=False, gptq=False,
                               act_thresholds=(), kbit=(("NF e4m4 g64", "nf{k}@64/e4m4", (2, 3)),
                                                        ("affine minmax g32", "int{k}-minmax@32", (2, 3))),
                               specs=("nf3@64/e4m4/rot64",))
    kb = df[df["part"] == "kbit"]
    assert len(kb) == 4 and df["skipped"].isna().all() and set(kb["config"]) == {"NF e4m4 g64", "affine minmax g32"}
    assert (df[df["part"] == "specs"]["spec"] == "nf3@64/e4m4/rot64").all()
    assert "model_kbit_vs_bits" in figs
    titles = [t for t, _ in model_study.summarize(df)]
    assert any(t.startswith("k-bit options") for t in titles) and any(t.startswith("Requested specs") for t in titles)
    df.to_parquet(__import__("io").BytesIO())   # mixed spec columns still store


def test_causal_lm_routes(tmp_path):
    """The tiny random Llama through both routes: nf4 as Linear4bit modules, k-bit specs as dequantized weights."""
    transformers = pytest.importorskip("transformers")
    from workbench import llm_eval
    cfg = transformers.LlamaConfig(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=1,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    torch.manual_seed(0)
    transformers.LlamaForCausalLM(cfg).save_pretrained(str(tmp_path / "ck"))
    text = tmp_path / "t.txt"
    text.write_text("a small text for a small model. " * 12)
    specs = [QuantSpec.parse(t) for t in ("nf4@64", "int4-minmax@32", "nf2@32/e4m4/rot64")]
    rows = llm_eval.evaluate_checkpoint(tmp_path / "ck", text, specs, seq_len=32, max_windows=2, progress=False)
    f, nf4, aff, nf2 = rows
    assert f["kl"] == 0 and nf4["route"] == "linear4bit" and aff["route"] == nf2["route"] == "kbit"
    assert 0 < nf4["kl"] < nf2["kl"] and 0 < aff["kl"] < nf2["kl"]
    assert aff["bits_per_param"] == pytest.approx(4.75) and nf2["bits_per_param"] == pytest.approx(2.25)
    assert math.isfinite(nf2["ppl"])


@pytest.mark.parametrize("argv,needle", [
    (["study", "model", "--spec", "nf3@64/e8m0"], "--spec 'nf3@64/e8m0': scale_format:"),
    (["study", "model", "--spec", "nf4@64/zz"], "spec: unknown option"),
    (["study", "error", "--spec", "nf4@64"], "only the model study"),
])
def test_cli_spec_refusals(argv, needle, capsys):
    from workbench import cli
    rc = cli.main(argv + ["--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2 and needle in err and "Traceback" not in err
