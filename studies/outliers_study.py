"""Outlier study: LLM.int8() on real all-MiniLM-L6-v2 activations and on planted outliers.

``run(quick)`` -> (tidy DataFrame, figures):
* MiniLM (packaged weights) on the shipped sentences: the input of every nn.Linear layer is
  captured; per layer, outlier dimensions and their share at thresholds 1..10;
* threshold sweep 1..10 vs share of 16-bit columns vs int8 matmul error (relative to float64),
  for each captured layer against its own weight, and for synthetic activations with planted
  outlier features;
* a heatmap of max |x| per feature channel for the 384-wide layer inputs.
"""
from __future__ import annotations

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch

from workbench import outliers as O

THRESHOLDS = tuple(float(t) for t in range(1, 11))

TITLE = "Outliers: LLM.int8() on all-MiniLM-L6-v2 activations"
DESCRIPTION = """LLM.int8() keeps every input column that holds a value with |x| >= threshold in 16-bit and
multiplies the rest in int8. This study captures the input of every `nn.Linear` of all-MiniLM-L6-v2 on the
packaged sentences and asks three questions: which layers have outlier features, and how many (the per-layer
table and the channel heatmap); how the share of 16-bit columns and the int8 matmul error move with the
threshold (the sweep table and figure, each layer against its own weight, relative error vs float64); and whether
the detector finds planted outlier features in synthetic activations (the black line). The default threshold
of bitsandbytes is 6.0."""


def _minilm_acts(n_sentences: int):
    from workbench.models import load_minilm, load_sentences
    model = load_minilm()
    sentences = load_sentences()[:n_sentences]
    with O.capture_linear_inputs(model) as store:
        model.encode(sentences)
    weights = {name: mod.weight.detach() for name, mod in model.named_modules()
               if isinstance(mod, torch.nn.Linear)}
    return O.stacked(store), weights, len(sentences)


def run(quick: bool = False, executor=None):
    figs, frames, notes = {}, [], []
    try:
        acts, weights, n_sent = _minilm_acts(48 if quick else 300)
    except Exception as e:  # the packaged model is an optional install
        acts, weights, n_sent = {}, {}, 0
        notes.append(f"MiniLM unavailable ({type(e).__name__}: {e}); synthetic data only")
    if acts:
        summ = O.outlier_summary(acts, THRESHOLDS).assign(source="minilm", kind="summary")
        frames.append(summ)
        sweep_layers = list(acts)[: 4 if quick else len(acts)]
        for name in sweep_layers:
            X = acts[name][: 512 if quick else 2048]
            sw = O.matmul_error_sweep(X, weights[name], THRESHOLDS).assign(source="minilm", layer=name, kind="sweep")
            frames.append(sw)
        figs["outliers_heatmap"] = _heatmap(acts)
        figs["outlier_dims_by_layer"] = _dims_by_layer(summ)
    X, dims = O.planted_outliers(tokens=256 if quick else 1024, features=768, n_outlier_dims=6)
    W = torch.randn(512, 768, generator=torch.Generator().manual_seed(1)) * 0.05
    syn = O.matmul_error_sweep(X, W, THRESHOLDS).assign(source="planted", layer="synthetic", kind="sweep")
    found = O.outlier_summary({"synthetic": X}, (6.0,))
    syn["planted_dims"] = len(dims)
    syn["found_dims_at_6"] = int(found.outlier_dims.iloc[0])
    frames.append(syn)
    df = pd.concat(frames, ignore_index=True)
    figs["threshold_sweep"] = _sweep_figure(df[df.kind == "sweep"])
    df.attrs["notes"] = notes + [f"MiniLM sentences: {n_sent}; planted outlier dims: {len(dims)}, "
                                 f"found at threshold 6: {int(found.outlier_dims.iloc[0])}"]
    return df, figs


def summarize(df: pd.DataFrame) -> list[tuple[str, pd.DataFrame]]:
    out = []
    summ = df[df["kind"] == "summary"] if "kind" in df else pd.DataFrame()
    if not summ.empty:
        t = summ[summ["threshold"] == 6.0].set_index("layer")[
            ["features", "outlier_dims", "outlier_value_share", "outlier_token_share", "max_abs", "top_dims"]]
        out.append(("MiniLM layers at threshold 6: outlier feature dimensions (columns with any |x| >= 6), the "
                    "share of values and tokens involved, the largest |x| and the top-5 channels by max |x|",
                    t.sort_values("outlier_dims", ascending=False).round(4)))
    sw = df[df["kind"] == "sweep"] if "kind" in df else pd.DataFrame()
    if not sw.empty:
        g = sw.assign(data=np.where(sw["source"] == "planted", "planted", "MiniLM (median over layers)"))
        t = g.groupby(["threshold", "data"])[["fp16_col_share", "rel_error"]].median().unstack("data")
        t.columns = [f"{'16-bit column share' if a == 'fp16_col_share' else 'relative error'}: {b}" for a, b in t.columns]
        t.index = ["0 (no decomposition)" if v == 0 else f"{v:g}" for v in t.index]
        t.index.name = "threshold"
        out.append(("Threshold sweep: share of columns kept in 16-bit and int8 matmul error (relative to float64)",
                    t.round(5)))
    return out


def notes(df: pd.DataFrame) -> list[str]:
    out = []
    summ = df[df["kind"] == "summary"] if "kind" in df else pd.DataFrame()
    if not summ.empty:
        s6 = summ[summ["threshold"] == 6.0]
        hit = s6[s6["outlier_dims"] > 0]
        top = s6.loc[s6["outlier_dims"].idxmax()]
        out.append(f"at threshold 6, {len(hit)} of {len(s6)} MiniLM layer inputs have outlier features; most: "
                   f"{top['layer']} with {int(top['outlier_dims'])} of {int(top['features'])} columns "
                   f"(max |x| {top['max_abs']:.1f})")
    sw = df[(df["kind"] == "sweep") & (df["source"] == "minilm")] if "kind" in df else pd.DataFrame()
    if not sw.empty:
        e0 = sw[sw["threshold"] == 0]["rel_error"].median()
        e6 = sw[sw["threshold"] == 6.0]["rel_error"].median()
        c6 = sw[sw["threshold"] == 6.0]["fp16_col_share"].median()
        out.append(f"int8 matmul relative error, median over layers: {e0:.2e} without decomposition, {e6:.2e} at "
                   f"threshold 6 with {100 * c6:.2f} % of columns in 16-bit")
    out += list(df.attrs.get("notes", []))
    return out


def _heatmap(acts):
    names = [k for k, v in acts.items() if v.shape[1] == 384]
    M = np.stack([acts[k].abs().amax(0).numpy() for k in names])
    fig, ax = plt.subplots(figsize=(12, 0.28 * len(names) + 1.5))
    im = ax.imshow(M, aspect="auto", cmap="magma", norm=matplotlib.colors.LogNorm(vmin=max(M.min(), 1e-3)))
    ax.set_yticks(range(len(names)), names, fontsize=6)
    ax.set_xlabel("feature channel")
    ax.set_title("max |x| per channel of each 384-wide nn.Linear input, all-MiniLM-L6-v2")
    fig.colorbar(im, ax=ax, label="max |x|")
    fig.tight_layout()
    return fig


def _dims_by_layer(summ):
    fig, ax = plt.subplots(figsize=(10, 4))
    for t in (3.0, 4.0, 6.0):
        s = summ[summ.threshold == t]
        ax.plot(range(len(s)), s.outlier_dims, marker="o", label=f"threshold {t:g}")
    s = summ[summ.threshold == 6.0]
    ax.set_xticks(range(len(s)), [n.replace("layers.", "L").replace("encoder.layer.", "L") for n in s.layer],
                  rotation=90, fontsize=6)
    ax.set_ylabel("outlier dimensions")
    ax.set_title("columns holding an |x| >= threshold, per layer input")
    ax.legend()
    fig.tight_layout()
    return fig


def _sweep_figure(sw):
    fig, axes = plt.subplots(1, 2, figsize=(12, 4))
    for (src, layer), g in sw.groupby(["source", "layer"], sort=False):
        g = g[g.threshold > 0]
        style = dict(lw=2.5, color="k") if src == "planted" else dict(lw=0.8, alpha=0.6)
        axes[0].plot(g.threshold, g.fp16_col_share * 100, **style, label="planted" if src == "planted" else None)
        axes[1].plot(g.threshold, g.rel_error, **style, label="planted" if src == "planted" else None)
    base = sw[sw.threshold == 0].rel_error
    axes[1].axhline(base.median(), ls="--", color="gray", label="no decomposition (median)")
    axes[0].set(xlabel="threshold", ylabel="16-bit columns (%)", title="share of columns kept in 16-bit")
    axes[1].set(xlabel="threshold", ylabel="relative error vs float64", yscale="log", title="int8 matmul error")
    for a in axes:
        a.grid(alpha=0.3)
        a.legend(fontsize=8)
    fig.tight_layout()
    return fig


if __name__ == "__main__":
    df, figs = run(quick=True)
    print(df.head(30).to_string())
