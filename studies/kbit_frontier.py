"""k-bit frontier: quantization error vs bits per parameter for K = 2..8 (issue 19).

Each method is one way to store a k-bit tensor -- a codebook with a block scale format (normal-float codes, a
Lloyd-Max code fitted on a calibration sample of the same source), affine int-k groups with a scale and a zero
point (min-max, or the MSE-searched clip), per-row scales, and the same with a randomized Hadamard rotation
(block 128) -- run through ``workbench.kbit`` (backend auto) for every K in 2..8, quantize -> dequantize, on
normal, Laplace, Student-t (3 degrees of freedom) data and on the all-MiniLM-L6-v2 weights (2-D matrices,
embeddings excluded; rows of 384 kept whole). Bits per parameter count every stored bit per element: the K code
bits plus each group's scale (E4M4/E8M0/E4M3: 8, fp16/bf16: 16, fp32: 32, dq8: 8 + 32/256) and affine zero
point (8) over the group size; per-tensor constants (E4M3's float32, a rotation seed) are not counted.
Error: MSE against the float32 input, SQNR = 10 log10(mean x^2 / MSE). ``pareto`` marks the rows that no other
row of the same data beats on both bits and MSE.

The second part reproduces bitsandbytes issue #2086's comparison on MiniLM: per-layer RMSE of affine int4 at
group 32 (min-max, fp32 scale) vs NF4 at blocksize 32 (bitsandbytes' NF4 table, fp32 absmax), and how many
layers each wins.
"""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import torch

TITLE = "k-bit frontier: error vs bits per parameter, K = 2..8"
DESCRIPTION = __doc__.split("\n\n", 1)[1]

SOURCES = ("normal", "laplace", "student-t", "minilm")
KS = tuple(range(2, 9))
ROW = 384                      # MiniLM's hidden size: synthetic data is shaped (n / 384, 384) too
N_FULL, N_QUICK = 384 * 512, 384 * 128
ROTATE = 128
STUDENT_T_DF = 3.0

# name -> quantize_kbit keyword arguments (k added per row); "fit" marks a code fitted on calibration data
METHODS = {
    "nf e4m4 bs32": dict(blocksize=32, scale_format="e4m4"),                   # bitsandbytes' k-bit default
    "nf e4m4 bs32 decoded": dict(blocksize=32, scale_format="e4m4", codes_against="decoded"),
    "nf fp16 bs64": dict(blocksize=64, scale_format="fp16"),
    "nf dq8 bs64": dict(blocksize=64, scale_format="dq8"),
    "nf e4m3 bs16": dict(blocksize=16, scale_format="e4m3"),
    "nf bf16 bs128": dict(blocksize=128, scale_format="bf16"),
    "nf fp16 row": dict(blocksize="row", scale_format="fp16"),
    "lloyd-max e4m4 bs32": dict(blocksize=32, scale_format="e4m4", fit="lloyd_max"),
    "affine minmax g32": dict(blocksize=32, affine="minmax"),
    "affine minmax g128": dict(blocksize=128, affine="minmax"),
    "affine mse g64": dict(blocksize=64, affine="mse"),
    "nf e4m4 bs32 +rot": dict(blocksize=32, scale_format="e4m4", rotate=ROTATE),
    "affine minmax g64 +rot": dict(blocksize=64, affine="minmax", rotate=ROTATE),
    "mxfp4 (k=4)": dict(blocksize=32, scale_format="e8m0", codebook="e2m1_mx", only_k=4),
}
QUICK_METHODS = ("nf e4m4 bs32", "nf fp16 bs64", "nf fp16 row", "lloyd-max e4m4 bs32", "affine minmax g32",
                 "affine mse g64", "nf e4m4 bs32 +rot", "affine minmax g64 +rot", "mxfp4 (k=4)")


def _minilm_matrices() -> dict[str, torch.Tensor]:
    from workbench.models import load_minilm_weights
    return {name: w.float() for name, w in sorted(load_minilm_weights().items())
            if w.dim() == 2 and "embeddings" not in name}


def make_data(source: str, n: int, seed: int) -> torch.Tensor:
    """(n / ROW, ROW) float32: synthetic draws, or MiniLM's weight rows (evenly spaced rows of every matrix
    whose rows are ROW long; the matrices with 1536-long rows are cut into rows of ROW)."""
    if source == "minilm":
        rows = torch.cat([w.reshape(-1, ROW) for w in _minilm_matrices().values()])
        pick = torch.linspace(0, rows.shape[0] - 1, n // ROW).round().long()
        return rows[pick].contiguous()
    g = np.random.default_rng(seed)
    x = {"normal": lambda: g.standard_normal(n), "laplace": lambda: g.laplace(size=n),
         "student-t": lambda: g.standard_t(STUDENT_T_DF, size=n)}[source]()
    return torch.from_numpy(x.astype(np.float32)).view(-1, ROW)


def _codebook(spec: dict, k: int, calib: torch.Tensor):
    from workbench import codebooks as cbs
    if spec.get("codebook") == "e2m1_mx":
        return cbs.kbit_e2m1_mx()
    if spec.get("fit") == "lloyd_max":
        return cbs.kbit_lloyd_max(calib.reshape(-1).numpy(), k, blocksize=spec["blocksize"], iters=20)
    return None


def measure(method: str, source: str, x: torch.Tensor, calib: torch.Tensor) -> list[dict]:
    from workbench import kbit as K
    spec = METHODS[method]
    kw = {a: b for a, b in spec.items() if a not in ("fit", "codebook", "only_k")}
    power = float(x.double().pow(2).mean())
    rows = []
    for k in ([spec["only_k"]] if "only_k" in spec else KS):
        packed, st = K.quantize_kbit(x, k, _codebook(spec, k, calib), **kw)
        err = (K.dequantize_kbit(packed, st, dtype=torch.float32) - x).double()
        mse = float(err.pow(2).mean())
        bits = (packed.numel() * 32 + st.scales.numel() * K._SCALE_BITS[st.scale_format]
                + (st.zeros.numel() * 8 if st.zeros is not None else 0)) / x.numel()
        rows.append(dict(source=source, method=method, k=k, blocksize=st.blocksize, scale_format=st.scale_format,
                         affine=st.affine or "", rotate=st.rotate,
                         bits_per_param=K.bits_per_param(k, st.blocksize, st.scale_format, st.affine),
                         stored_bits_per_param=bits, mse=mse, rel_mse=mse / power,
                         sqnr_db=10 * math.log10(power / max(mse, 1e-300)), max_abs_err=float(err.abs().max()),
                         n=x.numel()))
    return rows


def layer_comparison() -> pd.DataFrame:
    """bitsandbytes #2086 on MiniLM: per-layer RMSE, affine int4 g32 (min-max, fp32 scale) vs NF4 bs32."""
    from workbench import kbit as K
    rows = []
    for name, w in _minilm_matrices().items():
        p, st = K.quantize_kbit(w, 4, "nf4", blocksize=32, scale_format="fp32")
        nf4 = float((K.dequantize_kbit(p, st) - w).double().pow(2).mean().sqrt())
        p, st = K.quantize_kbit(w, 4, blocksize=32, affine="minmax", scale_format="fp32")
        aff = float((K.dequantize_kbit(p, st) - w).double().pow(2).mean().sqrt())
        kurt = float(((w - w.mean()) ** 4).mean() / w.var(unbiased=False) ** 2)
        rows.append(dict(source="minilm-layers", method="#2086", layer=name, shape=str(tuple(w.shape)),
                         kurtosis=kurt, rmse_nf4_bs32=nf4, rmse_affine_int4_g32=aff, ratio=aff / nf4))
    return pd.DataFrame(rows)


def _mark_pareto(df: pd.DataFrame) -> pd.DataFrame:
    df["pareto"] = False
    for src, g in df.groupby("source"):
        b, e = g["bits_per_param"].to_numpy(), g["mse"].to_numpy()
        dominated = [bool(((b <= b[i]) & (e < e[i])).any() or ((b < b[i]) & (e <= e[i])).any()) for i in range(len(g))]
        df.loc[g.index, "pareto"] = [not d for d in dominated]
    return df


def run(quick: bool = False, *, sources=SOURCES, methods=None):
    n = N_QUICK if quick else N_FULL
    methods = list(methods or (QUICK_METHODS if quick else METHODS))
    rows = []
    for i, src in enumerate(sources):
        try:
            x, calib = make_data(src, n, seed=i), make_data(src, n // 4, seed=100 + i)
        except Exception as e:  # noqa: BLE001  (the packaged weights may be missing)
            rows.append(dict(source=src, method="*", skipped=f"data: {type(e).__name__}: {e}"))
            continue
        for m in methods:
            rows += measure(m, src, x, calib)
    df = pd.DataFrame(rows)
    ok = df[df["skipped"].isna()] if "skipped" in df else df
    df.loc[ok.index, "pareto"] = _mark_pareto(ok.copy())["pareto"]
    if "minilm" in sources:
        try:
            df = pd.concat([df, layer_comparison()], ignore_index=True)
        except Exception as e:  # noqa: BLE001
            df = pd.concat([df, pd.DataFrame([dict(source="minilm-layers", method="#2086",
                                                   skipped=f"{type(e).__name__}: {e}")])], ignore_index=True)
    return df, figures(df)


# ------------------------------------------------------------------ tables, notes, figures

def _frontier(df: pd.DataFrame) -> pd.DataFrame:
    out = df[df["method"] != "#2086"]
    return out[out["sqnr_db"].notna()] if "sqnr_db" in out else out.iloc[:0]


def _layers(df: pd.DataFrame) -> pd.DataFrame:
    out = df[df["method"] == "#2086"]
    return out[out["ratio"].notna()] if "ratio" in out else out.iloc[:0]


def summarize(df: pd.DataFrame) -> list[tuple[str, pd.DataFrame]]:
    f, out = _frontier(df), []
    if f.empty:
        return out
    for src in [s for s in SOURCES if s in set(f["source"])]:
        t = f[f["source"] == src].pivot_table(index="method", columns="k", values="sqnr_db", sort=False)
        out.append((f"SQNR (dB), {src} data (rows: method, columns: K)", t.round(2)))
    t = f[f["pareto"] == True].sort_values(["source", "bits_per_param"])  # noqa: E712
    out.append(("The Pareto frontier per data source (no other row has fewer bits and less error)",
                t[["source", "method", "k", "bits_per_param", "sqnr_db", "rel_mse"]].round(4)))
    bits = f.drop_duplicates("method").set_index("method")[["blocksize", "scale_format", "affine"]]
    bits["overhead_bits"] = [round(r - k, 4) for r, k in
                             f.drop_duplicates("method").set_index("method")[["bits_per_param", "k"]].to_numpy()]
    out.append(("Bits per parameter above K (scale + zero point per element)", bits))
    lay = _layers(df)
    if len(lay):
        t = lay[["layer", "shape", "kurtosis", "rmse_nf4_bs32", "rmse_affine_int4_g32", "ratio"]]
        out.append(("bitsandbytes #2086 on MiniLM: per-layer RMSE, affine int4 g32 vs NF4 bs32 (ratio < 1: affine "
                    "wins)", t.sort_values("ratio").round(6)))
    return out


def notes(df: pd.DataFrame) -> list[str]:
    f, out = _frontier(df), []
    for src in ("normal", "student-t", "minilm") if len(f) else ():
        s = f[(f["source"] == src) & (f["k"] == 3)]
        if len(s):
            best = s.loc[s["sqnr_db"].idxmax()]
            nf = s[s["method"] == "nf e4m4 bs32"]
            out.append(f"3-bit, {src}: best {best['method']} ({best['sqnr_db']:.2f} dB at "
                       f"{best['bits_per_param']:.3f} bits)" +
                       (f"; bitsandbytes' default nf e4m4 bs32 {nf['sqnr_db'].iloc[0]:.2f} dB at 3.25 bits"
                        if len(nf) else ""))
    lay = _layers(df)
    if len(lay):
        wins = int((lay["ratio"] < 1).sum())
        out.insert(0, f"bitsandbytes #2086 on MiniLM: affine int4 g32 has lower RMSE than NF4 bs32 on {wins} of "
                      f"{len(lay)} layers (median ratio {lay['ratio'].median():.3f}; #2086 reports 316 of 322 "
                      f"on Qwen2.5/TinyLlama, median 0.94)")
    if "skipped" in df:
        for _, r in df[df["skipped"].notna()].iterrows():
            out.append(f"skipped: {r['source']}: {r['skipped']}")
    return out


def figures(df: pd.DataFrame) -> dict:
    import matplotlib.pyplot as plt
    f, figs = _frontier(df), {}
    if f.empty:
        return figs
    sources = [s for s in SOURCES if s in set(f["source"])]
    methods = list(dict.fromkeys(f["method"]))
    cmap = plt.get_cmap("tab20")
    markers = "os^vDPX*<>hpd8"
    fig, axes = plt.subplots(1, len(sources), figsize=(4.6 * len(sources), 4.4), squeeze=False)
    for ax, src in zip(axes[0], sources):
        sub = f[f["source"] == src]
        for i, m in enumerate(methods):
            g = sub[sub["method"] == m].sort_values("bits_per_param")
            ax.plot(g["bits_per_param"], g["sqnr_db"], marker=markers[i % len(markers)], ms=4, lw=1,
                    color=cmap(i % 20), ls="--" if "+rot" in m else "-", label=m)
        p = sub[sub["pareto"] == True].sort_values("bits_per_param")  # noqa: E712
        ax.step(p["bits_per_param"], p["sqnr_db"], where="post", color="k", lw=2, alpha=0.35, label="Pareto frontier")
        ax.set_title(src)
        ax.set_xlabel("bits per parameter (codes + scales + zero points)")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("SQNR (dB)")
    axes[0][-1].legend(fontsize=6, loc="lower right")
    fig.tight_layout()
    figs["kbit_frontier"] = fig
    lay = _layers(df)
    if len(lay):
        fig, ax = plt.subplots(figsize=(6.5, 4))
        s = lay.sort_values("ratio")
        ax.bar(range(len(s)), s["ratio"], color=["tab:green" if r < 1 else "tab:red" for r in s["ratio"]])
        ax.axhline(1.0, color="k", lw=1)
        ax.set_xlabel("MiniLM layer (sorted)")
        ax.set_ylabel("RMSE affine int4 g32 / NF4 bs32")
        ax.set_title("bitsandbytes #2086 on all-MiniLM-L6-v2")
        fig.tight_layout()
        figs["kbit_affine_vs_nf4_layers"] = fig
    return figs
