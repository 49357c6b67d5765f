"""Model quality: what a codebook, bit width and blocksize do to all-MiniLM-L6-v2 (the packaged real model).

Every Linear of the encoder is quantized as its ``QuantSpec`` says (``workbench.model_eval``): 4-bit codes with
float32 absmax as ``workbench.nn.Linear4bit`` modules, everything else as the dequantized weight; the sentence embeddings of the shipped sentences are compared with the float
model's: mean cosine and its worst 1 % (1st percentile), top-10 nearest-neighbour overlap and the Spearman
correlation of the pairwise-similarity matrix. Parts (column ``part``):

* ``codebooks``: 12 codebooks (NF4, FP4, AF4, E2M1, affine int4, linear4, Student-t, Lloyd-Max and quantile
  fitted on the MiniLM Linear weights, the k-bit normal-float codes NF2/NF3, dynamic 8-bit) x blocksizes,
  all Linears, plus double quantization for NF4; over the sweep executor (process pool or dask);
* ``kbit``: the k-bit options (``workbench.kbit``) at K = 2, 3, 4 (and up to 8 for two configs): the k-bit NF codes
  with e4m4 scales at groups 32 / 64, per-row fp16 scales, Hadamard rotation, affine int-k groups (min-max and
  MSE clip), MXFP4 (E2M1 + e8m0, group 32) and NVFP4 (E2M1 + e4m3, group 16); column ``config`` names the series;
* ``activations``: the same with activations quantized too (LLM.int8() through ``workbench.int8.int8_linear``,
  thresholds 0 = plain int8 and 6);
* ``sensitivity``: one Linear at a time at 2, 3 and 4 bits (bitsandbytes' k-bit normal-float codes of 4, 8 and
  16 entries through the blockwise kernels; ``code_bits`` = k), ranked by the loss ``1 - cos_mean``;
* ``mixed``: a greedy allocator (bits per layer under a bits-per-parameter budget, from the single-layer losses)
  against uniform widths, each measured on the model;
* ``gptq`` (full run, or ``gptq=True``): GPTQ-style Hessian-aware rounding next to round-to-nearest, per codebook;
  calibration: the float inputs of each layer on held-out sentences (those after the evaluated ones; with all
  sentences evaluated, the same sentences: ``calibration`` says which).

* ``llm`` (with ``llm_checkpoint=`` or ``KBIT_LLM_CHECKPOINT=DIR``, text ``KBIT_LLM_TEXT``, default the shipped
  sentences): perplexity, next-token KL and top-1 agreement of a local causal LM (``workbench.llm_eval``).

``bits_per_param`` counts code bits plus the stored scales and zero points, over the quantized weights.
"""
from __future__ import annotations

import os

import numpy as np
import pandas as pd

TITLE = "Model quality: codebooks on all-MiniLM-L6-v2"
DESCRIPTION = __doc__.split("\n\n", 1)[1]

CODEBOOKS = ("nf4", "fp4", "af4", "e2m1", "int4-asym", "linear4", "student-t5", "lloyd-max4", "quantile4",
             "nf3", "nf2", "dynamic")
QUICK_CODEBOOKS = ("nf4", "fp4", "af4", "int4-asym", "lloyd-max4", "nf3", "nf2")
BLOCKSIZES = (64, 128, 256)
QUICK_BLOCKSIZES = (64, 256)
N_QUICK = 32
QUICK_LAYERS = r"encoder\.layer\.(0|5)\."
BUDGETS = (2.25, 2.5, 2.75, 3.0, 3.25, 3.5, 3.75)
QUICK_BUDGETS = (2.5, 3.0, 3.5)
GPTQ_CODEBOOKS = ("nf4", "fp4", "af4", "nf3")
# the k-bit part: (config label, spec text with {k}, bit widths)
KBIT_CONFIGS = (
    ("NF fp32 absmax g64", "nf{k}@64", (2, 3, 4, 5, 6, 8)),
    ("NF e4m4 g64", "nf{k}@64/e4m4", (2, 3, 4, 5, 6, 8)),
    ("NF e4m4 g32", "nf{k}@32/e4m4", (2, 3, 4)),
    ("NF e4m4 g64 rot64", "nf{k}@64/e4m4/rot64", (2, 3, 4)),
    ("NF fp16 per row", "nf{k}@row/fp16", (2, 3, 4)),
    ("NF fp16 per row rot128", "nf{k}@row/fp16/rot128", (2, 3, 4)),
    ("affine minmax g32", "int{k}-minmax@32", (2, 3, 4)),
    ("affine minmax g64", "int{k}-minmax@64", (2, 3, 4, 5, 6, 8)),
    ("affine mse g64", "int{k}-mse@64", (2, 3, 4)),
    ("affine minmax g64 rot64", "int{k}-minmax@64/rot64", (2, 3, 4)),
    ("MXFP4 (E2M1 e8m0 g32)", "e2m1@32/e8m0", (4,)),
    ("NVFP4 (E2M1 e4m3 g16)", "e2m1@16/e4m3", (4,)),
)
QUICK_KBIT_CONFIGS = tuple((lab, t, (2, 3, 4)) for lab, t, _ in KBIT_CONFIGS
                           if lab in ("NF e4m4 g64", "NF e4m4 g64 rot64", "affine minmax g32"))

_EV: dict = {}


def evaluator(n_sentences):
    """One MiniLMEvaluator per process and sentence count (workers build their own)."""
    from workbench.model_eval import MiniLMEvaluator
    from workbench.models import load_sentences
    if n_sentences not in _EV:
        _EV.clear()
        held_out = load_sentences()[n_sentences:][:128] if n_sentences else None  # GPTQ calibration
        _EV[n_sentences] = MiniLMEvaluator(n_sentences=n_sentences, calib_sentences=held_out)
    return _EV[n_sentences]


def fitted_codebook(name: str):
    """Lloyd-Max / quantile 4-bit codes fitted on the MiniLM Linear weights (an even sample) at blocksize 64."""
    from workbench import codebooks as cbs
    from workbench.models import load_minilm_weights
    w = load_minilm_weights()
    v = np.concatenate([t.numpy().ravel() for k, t in sorted(w.items())
                        if t.ndim == 2 and "embeddings" not in k and not k.startswith("pooler")])
    chunk = 4096
    starts = np.linspace(0, v.size - chunk, 64).astype(np.int64) // chunk * chunk
    calib = np.concatenate([v[s:s + chunk] for s in starts])
    builder = cbs.lloyd_max if name == "lloyd-max4" else cbs.quantile
    return builder(calib, bits=4, blocksize=64, name=name)


def resolve(name: str):
    from workbench.model_eval import resolve_codebook
    if name in ("lloyd-max4", "quantile4"):
        return fitted_codebook(name)
    return resolve_codebook(name)


def evaluate(n_sentences, spec: dict, codebook: dict | None = None, part: str = "codebooks",
             label: str | None = None, weights_float: bool = False, extra: dict | None = None) -> list[dict]:
    """One spec on the whole model (a picklable sweep task; a fitted code comes by value)."""
    from workbench import codebooks as cbs
    from workbench.model_eval import QuantSpec
    s = QuantSpec(**{**spec, "codebook": cbs.from_dict(codebook) if codebook else spec.get("codebook")})
    ev = evaluator(n_sentences)
    try:
        r = ev.evaluate(s, layers=[] if weights_float else None)
    except Exception as e:  # noqa: BLE001  (one bad spec is a skipped row, not a failed study)
        return [{"part": part, **s.columns(), **(extra or {}), "skipped": f"{type(e).__name__}: {e}"}]
    r.update(s.columns(), part=part)
    r.update(extra or {})
    if label:
        r["spec"] = label
    if weights_float:
        r.update(codebook="float", code_bits=32, bits_per_param=32.0)
    return [r]


def spec_kwargs(text: str) -> dict:
    """A picklable sweep task's spec: the QuantSpec fields of a spec text (checked here, in the parent)."""
    from dataclasses import asdict

    from workbench.model_eval import QuantSpec
    return {k: v for k, v in asdict(QuantSpec.parse(text)).items() if v is not None}


def run(quick: bool = False, executor=None, *, n_sentences=None, codebooks=None, blocksizes=None, layers=None,
        bits=(2, 3, 4), budgets=None, gptq=None, sensitivity: bool | None = None, act_thresholds=None,
        llm_checkpoint=None, llm_text=None, kbit=None, specs=None):
    """``kbit``: the k-bit part's (label, spec text with ``{k}``, widths) configs (default KBIT_CONFIGS; () skips
    it); ``specs``: QuantSpec texts (e.g. ``"nf3@64/e4m4/rot64"``), each evaluated on every Linear (part
    ``specs``; ``workbench study model --spec``). With ``specs`` the other parts run only when asked for:
    NF4 at blocksize 64 is the reference row."""
    if specs:
        codebooks, blocksizes = codebooks or ("nf4",), blocksizes or (64,)
        kbit = () if kbit is None else kbit
        act_thresholds = () if act_thresholds is None else act_thresholds
    if sensitivity is None:
        sensitivity = not specs
    if gptq is None:
        gptq = not quick and not specs
    from workbench.model_eval import QuantSpec, layer_sensitivity, mixed_precision_curve
    from workbench.sweep import run_tasks
    n = n_sentences if n_sentences is not None else (N_QUICK if quick else None)
    cbn = tuple(codebooks or (QUICK_CODEBOOKS if quick else CODEBOOKS))
    bss = tuple(blocksizes or (QUICK_BLOCKSIZES if quick else BLOCKSIZES))
    fitted = {c: resolve(c).to_dict() for c in cbn if c in ("lloyd-max4", "quantile4")}
    tasks = [dict(n_sentences=n, spec=dict(codebook=c, blocksize=b), codebook=fitted.get(c)) for c in cbn for b in bss]
    if "nf4" in cbn:
        tasks += [dict(n_sentences=n, spec=dict(codebook="nf4", blocksize=b, double_quant=True)) for b in bss]
    for t in (act_thresholds if act_thresholds is not None else ((6.0,) if quick else (0.0, 6.0))):
        tasks.append(dict(n_sentences=n, spec=dict(codebook="nf4", blocksize=64, act_threshold=t), part="activations"))
        tasks.append(dict(n_sentences=n, spec=dict(codebook="nf4", blocksize=64, act_threshold=t), part="activations",
                          label=f"float-weights/a8t{t:g}", weights_float=True))
    for lab, text, ks in (kbit if kbit is not None else (QUICK_KBIT_CONFIGS if quick else KBIT_CONFIGS)):
        tasks += [dict(n_sentences=n, spec=spec_kwargs(text.format(k=k)), part="kbit", extra={"config": lab})
                  for k in ks]
    tasks += [dict(n_sentences=n, spec=spec_kwargs(t), part="specs") for t in (specs or ())]
    parts = run_tasks(evaluate, tasks, executor, desc="model study: codebooks")
    rows = [r for p in parts for r in p]

    ev = evaluator(n)
    if sensitivity:
        from workbench.model_eval import linear_names
        lay = linear_names(ev.model, layers if layers is not None else (QUICK_LAYERS if quick else None))
        sens = layer_sensitivity(ev, bits=bits, blocksize=64, layers=lay)
        rows += [dict(r, part="sensitivity") for r in sens]
        mixed = mixed_precision_curve(ev, sens, budgets=budgets or (QUICK_BUDGETS if quick else BUDGETS),
                                      bits=bits, blocksize=64)
        rows += [dict(r, part="mixed", spec=f"{r['allocation']}@{r['budget']:g}",
                      layers_scope=("blocks 0,5" if quick and layers is None else "all")) for r in mixed]
    if gptq:
        from tqdm.auto import tqdm
        for c in tqdm([c for c in GPTQ_CODEBOOKS if c in cbn or quick], desc="model study: gptq", leave=False):
            for method in ("rtn", "gptq"):
                s = QuantSpec(codebook=c, blocksize=64, method=method)
                r = ev.evaluate(s)
                r.update(s.columns(), part="gptq", calibration=ev.calibration)
                rows.append(r)
    llm_checkpoint = llm_checkpoint or os.environ.get("KBIT_LLM_CHECKPOINT")  # a local HF causal-LM directory
    llm_text = llm_text or os.environ.get("KBIT_LLM_TEXT")
    if llm_checkpoint:
        from workbench.llm_eval import evaluate_checkpoint
        specs = [QuantSpec(codebook=c, blocksize=64) for c in ("nf4", "fp4", "af4", "nf3")]
        text = llm_text or str(__import__("workbench.models", fromlist=["SENTENCES_PATH"]).SENTENCES_PATH)
        rows += [dict(r, part="llm") for r in evaluate_checkpoint(llm_checkpoint, text, specs)]
    df = pd.DataFrame(rows)
    if "skipped" not in df:
        df["skipped"] = None
    for c in ("act_threshold",):
        if c in df:
            df[c] = df[c].astype(float)
    return df, figures(df)


def _ok(df):
    return df[df["skipped"].isna()] if "skipped" in df else df


def figures(df: pd.DataFrame) -> dict:
    import matplotlib.pyplot as plt
    ok = _ok(df)
    figs = {}
    cb = ok[ok["part"] == "codebooks"] if "part" in ok else ok.iloc[:0]
    if not cb.empty:
        fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
        names = list(dict.fromkeys(cb["codebook"]))
        colors = {n: plt.cm.tab20(i / max(1, len(names) - 1) * 0.999) for i, n in enumerate(names)}
        for name, g in cb.groupby("codebook", sort=False):
            for dq, gg in g.groupby("double_quant"):
                gg = gg.sort_values("bits_per_param")
                lab = name + (" +dq" if dq else "")
                for ax, m in zip(axes, ("one_minus_cos", "top10_overlap")):
                    ax.plot(gg["bits_per_param"], gg[m], marker="o" if not dq else "s", ms=4, label=lab,
                            ls="-" if not dq else "--", color=colors[name])
        _label_metric_axes(axes, "bits per parameter (code bits + block scales)", legend_size=7)
        fig.suptitle("all-MiniLM-L6-v2, every Linear quantized (blocksizes 256 / 128 / 64 from left)")
        fig.tight_layout()
        figs["model_metric_vs_bits"] = fig
    kb = ok[ok["part"] == "kbit"] if "part" in ok else ok.iloc[:0]
    if not kb.empty:
        figs["model_kbit_vs_bits"] = _kbit_figure(kb)
    sens = ok[ok["part"] == "sensitivity"] if "part" in ok else ok.iloc[:0]
    if not sens.empty:
        t = sens.assign(bits=sens["bits"].astype(int)).pivot_table(index="layer", columns="bits", values="loss")
        order = [n for n in dict.fromkeys(sens["layer"])]
        t = t.reindex(order)
        fig, ax = plt.subplots(figsize=(5.5, 0.22 * len(t) + 1.5))
        im = ax.imshow(np.log10(t.values.clip(1e-7)), aspect="auto", cmap="viridis")
        ax.set_yticks(range(len(t)), [s.replace("encoder.layer.", "L") for s in t.index], fontsize=7)
        ax.set_xticks(range(len(t.columns)), [f"{b}-bit" for b in t.columns])
        fig.colorbar(im, ax=ax, label="log10(1 - cos_mean), one layer quantized")
        ax.set_title("layer sensitivity (k-bit NF, blocksize 64)")
        fig.tight_layout()
        figs["model_layer_sensitivity"] = fig
    mixed = ok[ok["part"] == "mixed"] if "part" in ok else ok.iloc[:0]
    if not mixed.empty:
        fig, ax = plt.subplots(figsize=(6, 4.2))
        for kind, g in mixed.groupby("allocation"):
            g = g.sort_values("bits_per_param")
            ax.plot(g["bits_per_param"], g["cos_mean"], marker="o", label=kind)
        ax.set_xlabel("bits per parameter (quantized Linears)")
        ax.set_ylabel("embedding cosine to float (mean)")
        ax.set_title("greedy mixed precision vs uniform widths")
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        figs["model_mixed_precision"] = fig
    return figs


def _label_metric_axes(axes, xlabel: str, legend_size: float) -> None:
    """The two metric panels (1 - cosine, log scale; top-10 overlap) against bits per parameter."""
    axes[0].set_yscale("log")
    axes[0].set_ylabel("1 - mean embedding cosine to float (lower is better)")
    axes[1].set_ylabel("top-10 neighbour overlap")
    for ax in axes:
        ax.set_xlabel(xlabel)
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=legend_size, ncol=2)


def _kbit_figure(kb: pd.DataFrame):
    """Metric vs bits per parameter, one line per k-bit config, each point labelled with its K."""
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.6))
    labels = list(dict.fromkeys(kb["config"]))
    for i, lab in enumerate(labels):
        g = kb[kb["config"] == lab].sort_values("bits_per_param")
        color = plt.cm.tab10(i) if i < 10 else ("k", "0.55")[(i - 10) % 2]   # twelve distinguishable lines
        style = dict(color=color, marker="o", ms=4, label=lab,
                     ls="--" if "rot" in lab else (":" if lab.startswith("affine") else "-"))
        for ax, m in zip(axes, ("one_minus_cos", "top10_overlap")):
            ax.plot(g["bits_per_param"], g[m], **style)
            if i == 0:
                for _, r in g.iterrows():
                    ax.annotate(f"K={int(r['code_bits'])}", (r["bits_per_param"], r[m]), fontsize=6,
                                xytext=(3, 3), textcoords="offset points")
    _label_metric_axes(axes, "bits per parameter (codes + scales + zero points)", legend_size=6.5)
    fig.suptitle("all-MiniLM-L6-v2, every Linear quantized: k-bit codes, scale formats, groups, rotation, affine")
    fig.tight_layout()
    return fig


def kbit_table(kb: pd.DataFrame, value: str = "cos_mean", bits: bool = True) -> pd.DataFrame:
    """config x K: the metric (and, in the ``bits@K`` columns, bits per parameter)."""
    kb = kb.assign(code_bits=kb["code_bits"].astype(int))
    t = kb.pivot_table(index="config", columns="code_bits", values=value, sort=False)
    t.columns = [f"{value}@K{k}" for k in t.columns]
    if not bits:
        return t
    b = kb.pivot_table(index="config", columns="code_bits", values="bits_per_param", sort=False)
    b.columns = [f"bits@K{k}" for k in b.columns]
    return pd.concat([t, b], axis=1)


def kbit_findings(kb: pd.DataFrame) -> list[str]:
    """What the k-bit rows say: is 4 -> 3 -> 2 monotone per config, and what rotation / affine do at equal K."""
    out = []
    cos = kb.assign(code_bits=kb["code_bits"].astype(int)).pivot_table(index="config", columns="code_bits",
                                                                       values="cos_mean", sort=False)
    if {2, 3, 4} <= set(cos.columns):
        steady = [c for c in cos.index if cos.loc[c, 4] > cos.loc[c, 3] > cos.loc[c, 2]]
        other = [c for c in cos.index if c not in steady and cos.loc[c, [2, 3, 4]].notna().all()]
        out.append(f"4 -> 3 -> 2 bits worsens steadily in {len(steady)} of {len(steady) + len(other)} k-bit configs"
                   + (f" (not: {', '.join(other)})" if other else ""))
    pairs = [("NF e4m4 g64 rot64", "NF e4m4 g64"), ("NF fp16 per row rot128", "NF fp16 per row"),
             ("affine minmax g64 rot64", "affine minmax g64"), ("affine minmax g64", "NF e4m4 g64"),
             ("affine mse g64", "affine minmax g64")]
    for a, b in pairs:
        if a in cos.index and b in cos.index:
            ks = [k for k in (2, 3, 4) if k in cos.columns and pd.notna(cos.loc[a, k]) and pd.notna(cos.loc[b, k])]
            if ks:
                out.append(f"{a} vs {b}: cos " + ", ".join(f"K={k} {cos.loc[a, k]:.4f} vs {cos.loc[b, k]:.4f}"
                                                           for k in ks))
    return out


def summarize(df: pd.DataFrame) -> list[tuple[str, pd.DataFrame]]:
    ok = _ok(df)
    out = []
    cols = ["cos_mean", "cos_p01", "top10_overlap", "spearman", "bits_per_param"]
    cb = ok[ok["part"] == "codebooks"]
    if not cb.empty:
        t = cb.set_index("spec")[cols].sort_values("cos_mean", ascending=False)
        out.append(("Every Linear quantized: embedding agreement with the float model", t.round(4)))
    kb = ok[ok["part"] == "kbit"] if "part" in ok else ok.iloc[:0]
    if not kb.empty:
        out.append(("k-bit options, every Linear: mean embedding cosine and bits per parameter by K",
                    kbit_table(kb).round(4)))
        out.append(("k-bit options: top-10 neighbour overlap by K", kbit_table(kb, "top10_overlap", bits=False).round(3)))
    sp = ok[ok["part"] == "specs"] if "part" in ok else ok.iloc[:0]
    if not sp.empty:
        out.append(("Requested specs, every Linear", sp.set_index("spec")[cols].round(4)))
    a = ok[ok["part"] == "activations"]
    if not a.empty:
        out.append(("Activations quantized too (LLM.int8(), threshold in the spec)", a.set_index("spec")[cols].round(4)))
    s = ok[ok["part"] == "sensitivity"]
    if not s.empty:
        t = s.assign(bits=s["bits"].astype(int)).pivot_table(index="layer", columns="bits", values="loss")
        t.columns = [f"loss@{b}bit" for b in t.columns]
        t = t.sort_values(t.columns[0], ascending=False)
        out.append(("Layer sensitivity: 1 - cos_mean with only this layer quantized (most sensitive first)", t.head(40)))
    m = ok[ok["part"] == "mixed"]
    if not m.empty:
        keep = [c for c in ["allocation", "budget", "bits_per_param", "cos_mean", "top10_overlap", "spearman",
                            "n_2bit", "n_3bit", "n_4bit"] if c in m]
        out.append(("Mixed precision (greedy) vs uniform", m[keep].set_index(["allocation", "budget"]).round(4)))
    g = ok[ok["part"] == "gptq"]
    if not g.empty:
        t = g.pivot_table(index="codebook", columns="method", values=["cos_mean", "top10_overlap"])
        t.columns = [f"{a}:{b}" for a, b in t.columns]
        out.append(("RTN vs GPTQ-style rounding (blocksize 64, all Linears)", t.round(4)))
    llm = ok[ok["part"] == "llm"] if "part" in ok else ok.iloc[:0]
    if not llm.empty:
        out.append(("Causal LM", llm.set_index("spec")[["ppl", "kl", "top1_agree", "bits_per_param"]].round(5)))
    return out


def notes(df: pd.DataFrame) -> list[str]:
    ok = _ok(df)
    out = []
    if "skipped" in df:
        for reason, g in df[df["skipped"].notna()].groupby("skipped"):
            out.append(f"skipped {len(g)} rows: {reason}")
    if not ok.empty and "n_sentences" in ok:
        sens = ("; sensitivity and mixed precision use bitsandbytes' k-bit normal-float codes (4, 8, 16 entries) "
                "at blocksize 64" if (ok["part"] == "sensitivity").any() else "")
        out.append(f"{int(ok['n_sentences'].max())} sentences{sens}; 'worst 1 %' is the 1st percentile "
                   "of the per-sentence cosine")
    kb = ok[ok["part"] == "kbit"] if "part" in ok else ok.iloc[:0]
    if not kb.empty:
        out += kbit_findings(kb)
    m = ok[ok["part"] == "mixed"]
    if not m.empty:
        u = m[m["allocation"] == "uniform"].sort_values("bits_per_param")
        for _, r in m[m["allocation"] == "greedy"].iterrows():
            same = u[np.isclose(u["bits_per_param"], r["bits_per_param"], atol=0.02)]
            if not same.empty:
                out.append(f"at {r['bits_per_param']:.2f} bits/param: greedy cos {r['cos_mean']:.4f} vs uniform "
                           f"{same['cos_mean'].iloc[0]:.4f}")
    return out


if __name__ == "__main__":  # pragma: no cover
    d, _ = run(quick=os.environ.get("KBIT_QUICK") == "1")
    print(d.to_string())
