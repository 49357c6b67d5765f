"""Figure of a 4-bit matmul benchmark (issue 18): time vs M per shape -- ours, bitsandbytes, the dense baseline
(cuBLAS bf16 on a GPU, torch's bf16 ``linear`` on a CPU) and the bandwidth line (the bytes our fused kernel reads
at the copy bandwidth measured in the same run).

    python -m studies.bench.plot_matmul reports/matmul-cpu/bench.parquet            (-> reports/matmul-cpu/time_vs_m.png)
    python -m studies.bench.plot_matmul reports/matmul-gpu/bench.csv --time kernel --out fig.png

Reads what studies/bench/bench_matmul.py (and bench_matmul_gpu.py) write: rows with impl, N, K, M, public_ms,
kernel_ms, bytes, copy_gbps and the ``run_*`` metadata columns. ``--time auto`` plots kernel_ms where the file has it
for every plotted implementation at that point, else public_ms. The figure's footer, and the PNG's text chunks,
name the device, the versions, the git revision and time of the run (and the load average, for CPU runs).
"""
from __future__ import annotations

import argparse
import textwrap
from pathlib import Path

import pandas as pd

OURS = "ours"
BNB = "bnb"
DENSE = ("cublas_bf16", "dense_bf16")
STYLE = {OURS: ("o-", "C0"), BNB: ("s--", "C3"), "dense": ("^-.", "C2")}
META_KEYS = ("run_device", "run_sm", "run_cpu", "run_threads", "run_torch", "run_bitsandbytes", "run_numba",
             "run_numba_cuda", "run_cuda", "run_git", "run_time")


def read(path) -> pd.DataFrame:
    path = Path(path)
    return pd.read_parquet(path) if path.suffix == ".parquet" else pd.read_csv(path)


def _time(e: pd.DataFrame, which: str) -> pd.Series:
    if which == "public":
        return e.public_ms
    k = e.kernel_ms if "kernel_ms" in e else pd.Series(float("nan"), index=e.index)
    if which == "kernel":
        return k.fillna(e.public_ms)
    return k if k.notna().all() else e.public_ms


def metadata(df: pd.DataFrame) -> dict:
    """The run's metadata (first row), plus the load average columns of CPU runs."""
    meta = {k: str(df[k].iloc[0]) for k in META_KEYS if k in df and str(df[k].iloc[0]) not in ("", "nan", "None")}
    if "load_start" in df:
        meta["load_1min"] = f"{float(df.load_start.iloc[0]):.1f} -> {float(df.load_end.iloc[0]):.1f}"
    return meta


def plot(df: pd.DataFrame, path=None, which: str = "auto"):
    """The figure (one panel per shape); saved to ``path`` (PNG with the metadata as text chunks) when given."""
    import matplotlib.pyplot as plt
    shapes = list(dict.fromkeys(zip(df.N, df.K)))
    fig, axes = plt.subplots(1, len(shapes), figsize=(4.4 * len(shapes), 4.0), squeeze=False)
    dense = next((d for d in DENSE if (df.impl == d).any()), None)
    labels = {OURS: "ours (matmul_4bit)", BNB: "bitsandbytes", dense: f"dense bf16 ({dense})"}
    for ax, (N, K) in zip(axes[0], shapes):
        d = df[(df.N == N) & (df.K == K)]
        for impl, key in ((OURS, OURS), (BNB, BNB), (dense, "dense")):
            e = d[d.impl == impl].sort_values("M")
            if len(e):
                style, color = STYLE[key]
                ax.plot(e.M, _time(e, which), style, color=color, label=labels[impl])
        e = d[d.impl == OURS].sort_values("M")
        if len(e) and "copy_gbps" in e:
            ax.plot(e.M, e.bytes / (e.copy_gbps * 1e9) * 1e3, ":x", color="gray", label="our bytes at copy bandwidth")
        if d.M.nunique() > 1:
            ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_title(f"{N}x{K} (out x in)")
        ax.set_xlabel("M (tokens)")
        ax.grid(True, which="both", alpha=0.3)
    axes[0][0].set_ylabel({"public": "public call ms", "kernel": "kernel ms"}.get(which, "ms (kernel where timed)"))
    axes[0][0].legend(fontsize=8)
    meta = metadata(df)
    footer = textwrap.fill(" | ".join(f"{k.removeprefix('run_')} {v}" for k, v in meta.items()),
                           width=int(fig.get_figwidth() * 21))
    fig.text(0.01, 0.005, footer, fontsize=6, color="dimgray", va="bottom")
    fig.tight_layout(rect=(0, 0.03 * (footer.count("\n") + 1) + 0.01, 1, 1))
    if path is not None:
        fig.savefig(path, dpi=110, metadata={"Software": "studies/bench/plot_matmul.py",
                                             "Comment": "; ".join(f"{k}={v}" for k, v in meta.items())})
    return fig


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("bench", help="bench.parquet or bench.csv written by bench_matmul")
    ap.add_argument("--out", default=None, help="PNG path (default: time_vs_m.png beside the input)")
    ap.add_argument("--time", choices=("auto", "public", "kernel"), default="auto")
    args = ap.parse_args(argv)
    out = Path(args.out) if args.out else Path(args.bench).with_name("time_vs_m.png")
    plot(read(args.bench), out, args.time)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
