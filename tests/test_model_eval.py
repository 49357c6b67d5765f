"""Model-level evaluation (issue 20): MiniLM metrics, sensitivity, mixed precision, GPTQ, user weights, causal LMs.

Small on purpose (a dozen sentences, one or two layers): the full sweeps run in the model study."""
import json

import numpy as np
import pytest
import torch

from workbench import model_eval as me

N_SENT = 12


@pytest.fixture(scope="module")
def ev():
    from studies import model_study
    return model_study.evaluator(N_SENT)


def test_embedding_metrics_identity_and_noise():
    g = torch.Generator().manual_seed(0)
    e = torch.nn.functional.normalize(torch.randn(40, 16, generator=g), dim=1)
    m = me.embedding_metrics(e, e)
    assert m["cos_mean"] == pytest.approx(1) and m["top10_overlap"] == 1 and m["spearman"] == pytest.approx(1)
    noisy = me.embedding_metrics(e, e + 0.5 * torch.randn(40, 16, generator=g))
    assert noisy["cos_min"] <= noisy["cos_p01"] <= noisy["cos_mean"] < 1 and noisy["top10_overlap"] < 1


def test_codebook_specs_and_honest_bits():
    w = torch.randn(64, 128)
    for k in (2, 3, 4):
        spec = me.QuantSpec(codebook=f"nf{k}", blocksize=64)
        assert spec.cb.size == 1 << k and me.code_bits(spec.cb) == k
        y, bits = me.fake_quantize(w, spec)
        assert bits == pytest.approx(k + 32 / 64)
        assert len(torch.unique(y[0, :64] / w[0, :64].abs().max())) <= 1 << k
    _, b = me.fake_quantize(w, me.QuantSpec("nf4", blocksize=64, double_quant=True))
    assert 4.12 < b < 4.2
    custom = me.resolve_codebook(torch.linspace(-1, 1, 8))
    assert custom.size == 8 and me.fake_quantize(w, me.QuantSpec(custom))[1] == pytest.approx(3.5)


def test_minilm_spec_metrics_and_swap_restores(ev):
    lin = dict(ev.model.named_modules())["encoder.layer.5.output.dense"]
    before = lin.weight.detach().clone()
    nf4 = ev.evaluate(me.QuantSpec("nf4", blocksize=64))
    assert 0.9 < nf4["cos_mean"] < 1 and nf4["bits_per_param"] == pytest.approx(4.5)
    assert torch.equal(lin.weight, before)
    assert torch.allclose(ev._encode_from(0), ev.ref, atol=1e-6)
    one = {b: ev.evaluate(me.QuantSpec(f"nf{b}"), layers=["encoder.layer.5.output.dense"])["one_minus_cos"]
           for b in (2, 3, 4)}
    assert one[2] > one[3] > one[4] > 0  # steadily worse from 4 to 3 to 2 bits
    act = ev.evaluate(me.QuantSpec("nf4", act_threshold=6.0), layers=["encoder.layer.5.output.dense"])
    assert 0.9 < act["cos_mean"] < 1 and torch.equal(lin.weight, before)
    assert type(dict(ev.model.named_modules())["encoder.layer.5.output.dense"]) is torch.nn.Linear


def test_greedy_allocator_respects_budget_and_prefers_sensitive_layers():
    params = {"a": 100, "b": 100, "c": 200}
    loss = {"a": {2: 1.0, 3: 0.2, 4: 0.05}, "b": {2: 0.01, 3: 0.005, 4: 0.001}, "c": {2: 0.3, 3: 0.1, 4: 0.02}}
    for budget in (2.0, 2.5, 3.0, 3.5, 4.0):
        alloc = me.greedy_allocate(loss, params, budget)
        assert sum(alloc[n] * p for n, p in params.items()) <= budget * 400 + 1e-9
    alloc = me.greedy_allocate(loss, params, 2.5)
    assert alloc["a"] > alloc["b"]
    assert me.greedy_allocate(loss, params, 4.0) == {"a": 4, "b": 4, "c": 4}


def test_gptq_beats_rtn_in_the_output_error():
    g = torch.Generator().manual_seed(1)
    X = torch.randn(512, 128, generator=g) @ torch.randn(128, 128, generator=g)  # correlated inputs
    W = torch.randn(32, 128, generator=g)
    spec = me.QuantSpec("nf3", blocksize=64)
    rtn, b1 = me.fake_quantize(W, spec)
    gq, b2 = me.gptq_quantize(W, X.double().T @ X.double(), spec)
    assert b1 == b2
    err = lambda Q: float(((X @ (Q - W).T) ** 2).mean())  # noqa: E731
    assert err(gq) < 0.8 * err(rtn)
    scale = W.view(32, 2, 64).abs().amax(-1, keepdim=True)
    vals = torch.tensor(np.unique(spec.cb.values), dtype=torch.float32)
    norm = (gq.view(32, 2, 64) / scale).reshape(-1, 1)
    assert float((norm - vals[None]).abs().min(1).values.max()) < 1e-5


def _save_weights(tmp_path):
    from safetensors.torch import save_file
    g = torch.Generator().manual_seed(2)
    a = {"layers.0.mlp.up.weight": torch.randn(64, 128, generator=g), "layers.0.attn.q.weight": torch.randn(64, 64, generator=g),
         "layers.0.norm.weight": torch.ones(64)}
    b = {"layers.1.mlp.up.weight": torch.randn(64, 128, generator=g).to(torch.bfloat16)}
    d = tmp_path / "ck"
    d.mkdir()
    save_file(a, str(d / "model-00001-of-00002.safetensors"))
    save_file(b, str(d / "model-00002-of-00002.safetensors"))
    wm = {k: "model-00001-of-00002.safetensors" for k in a} | {k: "model-00002-of-00002.safetensors" for k in b}
    (d / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": wm}))
    return d, a, b


def test_user_weights_memory_mapped_with_filter(tmp_path):
    from studies import error_study
    from workbench import weights
    d, a, b = _save_weights(tmp_path)
    names = [n for _, n, _ in weights.tensor_index(d)]
    assert "layers.0.norm.weight" not in names and len(names) == 3
    v = weights.weight_vector(d, r"mlp")
    assert v.size == 2 * 64 * 128
    assert np.array_equal(v[:8192], a["layers.0.mlp.up.weight"].numpy().ravel())
    assert weights.weight_vector(d / "model-00001-of-00002.safetensors", None, 4096).size == 4096
    src = weights.source_name(d, "mlp")
    rows = error_study.evaluate(src, "nf4", 8192, [64])
    assert rows[0]["source"] == src and 15 < rows[0]["sqnr_db"] < 30
    with pytest.raises(ValueError):
        weights.tensor_index(d, "nothing-matches")


def test_model_study_tiny(ev):
    from studies import model_study
    df, figs = model_study.run(n_sentences=N_SENT, codebooks=("nf4", "fp4"), blocksizes=(64,),
                               layers=r"encoder\.layer\.5\.(output|intermediate)\.dense", bits=(2, 4),
                               budgets=(3.0,), gptq=False, act_thresholds=(6.0,),
                               kbit=(("NF e4m4 g64", "nf{k}@64/e4m4", (3,)),))  # the full k-bit part: test_model_kbit_spec
    assert {"codebooks", "activations", "sensitivity", "mixed", "kbit"} <= set(df["part"])
    assert df["skipped"].isna().all()
    assert {"model_metric_vs_bits", "model_layer_sensitivity", "model_mixed_precision"} <= set(figs)
    assert model_study.summarize(df) and model_study.notes(df)
    m = df[df["part"] == "mixed"].set_index("spec")
    assert m.loc["greedy@3", "code_bits_avg"] <= 3.0 + 1e-9


def test_causal_lm_ppl_and_kl(tmp_path):
    transformers = pytest.importorskip("transformers")
    from workbench import llm_eval
    cfg = transformers.LlamaConfig(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128)
    torch.manual_seed(0)
    transformers.LlamaForCausalLM(cfg).save_pretrained(str(tmp_path / "ck"), max_shard_size="100KB")
    assert (tmp_path / "ck" / "model.safetensors.index.json").exists()  # sharded
    text = tmp_path / "t.txt"
    text.write_text("The quick brown fox jumps over the lazy dog. " * 20)
    rows = llm_eval.evaluate_checkpoint(tmp_path / "ck", text, [me.QuantSpec("nf4"), me.QuantSpec("nf2")],
                                        seq_len=64, max_windows=2, progress=False)
    f, q4, q2 = rows
    assert f["spec"] == "float" and f["kl"] == 0 and f["tokenizer"] == "utf8-bytes"
    assert 0 < q4["kl"] < q2["kl"] and q4["top1_agree"] >= q2["top1_agree"]
    assert q4["bits_per_param"] == pytest.approx(4.5) and q4["n_layers"] == 14  # lm_head kept float


@pytest.mark.parametrize("argv,needle", [
    (["study", "model", "--weights", "."], "only the error study"),
    (["study", "error", "--layers", "mlp"], "--layers"),
    (["study", "error", "--weights", "/nonexistent/x.safetensors"], "does not exist"),
])
def test_cli_weights_refusals(argv, needle, capsys):
    from workbench import cli
    rc = cli.main(argv + ["--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2 and needle in err and "Traceback" not in err
