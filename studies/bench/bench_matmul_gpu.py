"""4-bit matmul on CUDA (issue 18 §4): ours beside bitsandbytes 0.50.2 and cuBLAS bf16, per shape and M.

    python -m studies.bench.bench_matmul_gpu --out DIR          (writes DIR/bench.{parquet,csv} and DIR/time_vs_m.png)
    python -m studies.bench.bench_matmul_gpu --plot DIR/bench.csv  (the figure only, from a saved CSV)

Weights NF4, blocksize 64, double quant; bf16 activations (M, K); out x in = (N, K). Implementations:
  * ours_module: ``workbench.nn.Linear4bit`` forward (defaults: backend auto), no bias;
  * ours: ``workbench.matmul.matmul_4bit(A, P, qs)`` (defaults);
  * ours_mma / ours_dequant: the cuda backend's rule-2 tensor-core GEMM / dequantize + cuBLAS forced, whatever M
    (crossover rows: against the GEMV and the unscaled-lookup GEMM at M <= 8, against dequant + cuBLAS at
    M >= 128);
  * numba_cuda (M <= 4, the GEMV's range): ``matmul_4bit(A, P, qs, backend="numba_cuda")``, the Numba CUDA
    GEMV beside the production one (issue 18: >= 60 % of its speed);
  * bnb: ``bitsandbytes.matmul_4bit(A, P, bqs)``;
  * cublas_bf16: ``torch.matmul(A, W.t())`` on the dequantized bf16 weight (the dense baseline).
Per row: public_ms, the event-timed median of one call after warm-up (what a user sees, host time included);
loop_ms, per call of LOOP_CALLS calls issued back to back with no sync, the median of LOOP_REPEATS runs (as a
model's layers issue them: host work overlaps the previous call's kernel, so max(host, kernel) plus launch gaps);
kernel_ms, CUDA-graph replay of GRAPH_CALLS calls captured back to back, median / calls; gbps and pct_copy, the
bytes read (4-bit: packed weight + uint8 absmax + nested float32 absmax + activations; dense: bf16 weight +
activations) over kernel_ms, against a device-to-device copy (read + write counted) measured in the same run.
"""
from __future__ import annotations

import argparse
import warnings
from pathlib import Path

import pandas as pd
import torch

from studies.bench import oracle
from workbench import results

SHAPES = ((4096, 4096), (28672, 8192), (8192, 28672), (14336, 4096), (4096, 14336))
MS = (1, 4, 16, 64, 256, 2048)
GEMV_CROSSOVER_MS = (2, 8)  # extra M for ours_mma vs the GEMV (M <= 4) on every shape
CROSSOVER_MS = (128, 256, 512, 1024, 2048)  # ours_mma vs ours_dequant, on CROSSOVER_SHAPES
CROSSOVER_SHAPES = ((28672, 8192), (4096, 4096))
GRAPH_CALLS = 20
LOOP_CALLS = 50
LOOP_REPEATS = 5   # loop_ms: the median of this many runs of LOOP_CALLS calls
NUMBA_MAX_M = 4  # numba_cuda rows: the GEMV's range (above it the backend runs a simple tiled GEMM)


def graph_ms(fn, calls: int = GRAPH_CALLS, reps: int = 7) -> float | None:
    """Kernel time per call: CUDA-graph replay of ``calls`` back-to-back calls (workbench.bench.graph_replay_ms)."""
    from workbench import bench
    return bench.graph_replay_ms(fn, calls, reps)


def _forced(name: str, A, P, qs):
    """The cuda backend's mma or dequant+cuBLAS path regardless of M (crossover rows)."""
    from workbench.backends.cuda import matmul as CM
    from workbench.matmul import matmul_4bit

    def fn():
        old = CM.GEMV_MAX_M, CM.MMA_MIN_M, CM.MMA_MAX_M, CM.LUT_MIN_M
        CM.GEMV_MAX_M, CM.MMA_MIN_M, CM.MMA_MAX_M, CM.LUT_MIN_M = 0, 1, (1 << 30 if name == "ours_mma" else 0), 1 << 30
        try:
            return matmul_4bit(A, P, qs, backend="cuda")
        finally:
            CM.GEMV_MAX_M, CM.MMA_MIN_M, CM.MMA_MAX_M, CM.LUT_MIN_M = old
    return fn


def run(shapes=SHAPES, ms=MS, reps: int = 20) -> pd.DataFrame:
    import workbench as wb
    from workbench import bench, nn as wnn
    from workbench.matmul import matmul_4bit, weight_bytes
    bnb = oracle.bitsandbytes()
    copy = bench.copy_bandwidth("cuda", nbytes=1 << 28)
    print(f"copy bandwidth {copy:.0f} GB/s")
    rows = []
    g = torch.Generator(device="cuda").manual_seed(0)
    for N, K in shapes:
        W = torch.randn(N, K, device="cuda", dtype=torch.bfloat16, generator=g)
        module = wnn.Linear4bit(K, N, bias=False, quant_type="nf4", compress_statistics=True, blocksize=64, weight=W)
        P, qs = module.weight, module.quant_state
        Wdq = wb.dequantize_4bit(P, qs).to(torch.bfloat16)
        bqs = qs.to_bnb() if bnb else None
        wbytes = weight_bytes((N, K), 64, True)
        full = tuple(ms) == MS  # the crossover probes ride along with the full sweep only
        extra = CROSSOVER_MS if full and (N, K) in CROSSOVER_SHAPES else ()
        for M in sorted(set(ms) | set(extra) | (set(GEMV_CROSSOVER_MS) if full else set())):
            A = torch.randn(M, K, device="cuda", dtype=torch.bfloat16, generator=g)
            cases = {}
            if M in ms:
                cases["ours_module"] = (lambda: module(A), wbytes)
                cases["ours"] = (lambda: matmul_4bit(A, P, qs), wbytes)
                cases["cublas_bf16"] = (lambda: torch.matmul(A, Wdq.t()), 2 * N * K)
                if bnb:
                    cases["bnb"] = (lambda: bnb.matmul_4bit(A, P, bqs), wbytes)
                if M <= NUMBA_MAX_M:
                    cases["numba_cuda"] = (lambda: matmul_4bit(A, P, qs, backend="numba_cuda"), wbytes)
            if M in extra or M in (1, 2, 4, 8):  # crossovers: mma vs dequant + cuBLAS, mma vs the GEMV
                cases["ours_mma"] = (_forced("ours_mma", A, P, qs), wbytes)
            if M in extra:
                cases["ours_dequant"] = (_forced("ours_dequant", A, P, qs), wbytes)
            for name, (fn, wb_) in cases.items():
                nbytes = wb_ + 2 * M * K
                with torch.no_grad(), warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    t = bench.time_fn(fn, "cuda", warmup=3, reps=reps)
                    loop = bench.back_to_back_ms(fn, reps=LOOP_CALLS, repeats=LOOP_REPEATS)
                    kms = graph_ms(fn)
                ms_ = kms if kms is not None else t.median_ms
                rows.append(dict(impl=name, N=N, K=K, M=M, dtype="bfloat16", public_ms=t.median_ms, loop_ms=loop,
                                 kernel_ms=kms, bytes=nbytes, gbps=nbytes / (ms_ * 1e-3) / 1e9, copy_gbps=copy,
                                 pct_copy=100 * nbytes / (ms_ * 1e-3) / 1e9 / copy))
                print(f"{name:>12} {N}x{K} M={M}: public {t.median_ms:.4f} ms, loop {loop:.4f} ms, kernel "
                      f"{'-' if kms is None else f'{kms:.4f}'} ms, {rows[-1]['gbps']:.0f} GB/s "
                      f"({rows[-1]['pct_copy']:.0f} % of copy)", flush=True)
            del A
        del W, Wdq, module, P, qs
        torch.cuda.empty_cache()
    return speedups(pd.DataFrame(rows))


def speedups(df: pd.DataFrame) -> pd.DataFrame:
    """ours' kernel (and public) time against cuBLAS bf16 and bitsandbytes on the same (shape, M)."""
    from .bench_matmul import speedups as ratios
    return ratios(df, ("cublas_bf16", "bnb", "numba_cuda"), "x_{other}_{what}",
                  ("public_ms", "loop_ms", "kernel_ms"))


def table_md(df: pd.DataFrame) -> str:
    """One markdown row per (shape, M): ours (module and function public call, kernel), bitsandbytes, cuBLAS."""
    def get(d, impl, col):
        if col not in d:   # a column an older bench.csv lacks
            return None
        e = d[d.impl == impl]
        return e[col].iloc[0] if len(e) and e[col].iloc[0] == e[col].iloc[0] else None

    def f(v, fmt="{:.4f}"):
        return "-" if v is None else fmt.format(v)
    lines = ["| out x in | M | module public ms | ours public ms | ours loop ms | ours kernel ms | GB/s | % copy "
             "| bnb kernel ms | cuBLAS bf16 kernel ms | x cuBLAS (kernel) | x cuBLAS (loop) | x bnb (kernel) "
             "| x bnb (public) | numba_cuda kernel ms | numba_cuda % of ours (kernel) |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for (N, K, M), d in df[df.impl.isin(["ours", "ours_module", "bnb", "cublas_bf16", "numba_cuda"])].groupby(
            ["N", "K", "M"]):
        nk = get(d, "numba_cuda", "kernel_ms")
        ok, bk, ck = get(d, "ours", "kernel_ms"), get(d, "bnb", "kernel_ms"), get(d, "cublas_bf16", "kernel_ms")
        op, bp = get(d, "ours", "public_ms"), get(d, "bnb", "public_ms")
        ol, cl = get(d, "ours", "loop_ms"), get(d, "cublas_bf16", "loop_ms")
        lines.append(f"| {N}x{K} | {M} | {f(get(d, 'ours_module', 'public_ms'))} | {f(op)} | {f(ol)} | {f(ok)} "
                     f"| {f(get(d, 'ours', 'gbps'), '{:.0f}')} | {f(get(d, 'ours', 'pct_copy'), '{:.0f}')} | {f(bk)} "
                     f"| {f(ck)} | {f(ck / ok if ck and ok else None, '{:.2f}')} "
                     f"| {f(cl / ol if cl and ol else None, '{:.2f}')} "
                     f"| {f(bk / ok if bk and ok else None, '{:.2f}')} "
                     f"| {f(bp / op if bp and op else None, '{:.2f}')} | {f(nk)} "
                     f"| {f(100 * ok / nk if nk and ok else None, '{:.0f}')} |")
    return "\n".join(lines)


def plot(df: pd.DataFrame, path) -> Path | None:
    """Kernel time vs M per shape: ours, bitsandbytes, cuBLAS bf16, the forced paths where measured (ours_mma,
    ours_dequant) and the time to stream the 4-bit weights at copy bandwidth."""
    try:
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib unavailable: no figure")
        return None
    shapes = list(dict.fromkeys(zip(df.N, df.K)))
    fig, axes = plt.subplots(1, len(shapes), figsize=(4.2 * len(shapes), 3.8), squeeze=False)
    for ax, (N, K) in zip(axes[0], shapes):
        d = df[(df.N == N) & (df.K == K)]
        for impl, style, lw in (("ours", "o-", 1.8), ("bnb", "s--", 1.5), ("cublas_bf16", "^-.", 1.5),
                                ("numba_cuda", "d:", 1.2),
                                ("ours_mma", "x:", 1.0), ("ours_dequant", "+:", 1.0)):
            e = d[d.impl == impl].sort_values("M")
            if len(e):
                ax.plot(e.M, e.kernel_ms.fillna(e.public_ms), style, lw=lw, label=impl)
        e = d[d.impl == "ours"].sort_values("M")
        if len(e):
            ax.plot(e.M, e.bytes / (e.copy_gbps * 1e9) * 1e3, ":", color="gray", label="4-bit bytes at copy speed")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_title(f"{N}x{K} (out x in)")
        ax.set_xlabel("M (tokens)")
        ax.grid(True, which="both", alpha=0.3)
    axes[0][0].set_ylabel("kernel ms (CUDA-graph replay)")
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return Path(path)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=None, help="folder for bench.csv and time_vs_m.png")
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--ms", default=None, help="comma-separated M values (default: %s)" % ",".join(map(str, MS)))
    ap.add_argument("--plot", default=None, help="only draw the figure from this bench.csv")
    args = ap.parse_args(argv)
    if args.plot:
        df = pd.read_csv(args.plot)
        print(plot(df, Path(args.plot).with_name("time_vs_m.png")))
        print(table_md(df))
        return 0
    df = run(reps=args.reps, ms=tuple(int(m) for m in args.ms.split(",")) if args.ms else MS)
    with pd.option_context("display.width", 220, "display.max_columns", 30):
        print(df.drop(columns=["copy_gbps", "dtype"]).to_string(index=False))
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        # bench.parquet + bench.csv with the run's metadata (device, driver, versions, git): the speed study's
        # inference rows read them (studies/speed.py: load_inference)
        results.save(df, out / "bench", meta=results.run_metadata("cuda"))
        (out / "table.md").write_text(table_md(df) + "\n")
        plot(df, out / "time_vs_m.png")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
