"""4-bit matmul (issue 18): ours beside bitsandbytes 0.50.2 and dense bf16 (cuBLAS / torch CPU), per shape and M.

    python -m studies.bench.bench_matmul --out reports/matmul-gpu          (CUDA: the issue's shapes, M = 1..2048)
    python -m studies.bench.bench_matmul --device cpu --out reports/matmul-cpu  (CPU: M = 1, 4096x4096, 11008x4096;
                                                                                 ours = auto, ours_numba_cpu, ours_cython_cpu)

Weights: NF4, blocksize 64, double quant, bf16 activations. Per row:
  * public_ms: event timing (median) of the public call as a user writes it
    (``workbench.matmul.matmul_4bit(A, P, qs)``, ``bitsandbytes.matmul_4bit(A, P, bqs)``, ``F.linear(A, W)``);
  * kernel_ms (CUDA): CUDA-graph replay of GRAPH_CALLS calls captured back to back, time / calls
    (bitsandbytes' k-bit benches time kernels this way: no host time, no launch gaps);
  * gbps / pct_copy: bytes read by a fused kernel (packed weight + uint8 absmax + nested float32 absmax +
    activations; dense: the bf16 weight + activations) over kernel_ms, against the copy bandwidth measured in the
    same run (read + write counted).
"""
from __future__ import annotations

import argparse
import warnings

import pandas as pd
import torch

import workbench as wb
from workbench import bench
from workbench.matmul import matmul_4bit, weight_bytes

GPU_SHAPES = [((4096, 4096), (1,)), ((28672, 8192), (1, 4, 16, 64, 256, 2048)), ((8192, 28672), (1,)),
              ((14336, 4096), (1,)), ((4096, 14336), (1,))]
CPU_SHAPES = [((4096, 4096), (1,)), ((11008, 4096), (1,))]
GRAPH_CALLS = 50


def _bnb():
    try:
        import bitsandbytes
        return bitsandbytes
    except Exception as e:  # noqa: BLE001
        print(f"bitsandbytes unavailable: {e}")
        return None


def graph_ms(fn, calls: int = GRAPH_CALLS, reps: int = 10) -> float | None:
    """Kernel time per call: replay of a CUDA graph of ``calls`` back-to-back calls (median of ``reps``)."""
    try:
        s = torch.cuda.Stream()
        s.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(s):
            fn()
            g = torch.cuda.CUDAGraph()
            with torch.cuda.graph(g):
                for _ in range(calls):
                    fn()
        torch.cuda.current_stream().wait_stream(s)
        g.replay()
        torch.cuda.synchronize()
        t = bench.time_fn(g.replay, "cuda", warmup=2, reps=reps)
        return t.median_ms / calls
    except Exception as e:  # noqa: BLE001  (a call that cannot be captured: no kernel time)
        print(f"graph capture failed: {type(e).__name__}: {e}")
        return None


def run(device: str = "cuda", shapes=None, reps: int = 20) -> pd.DataFrame:
    bnb = _bnb()
    shapes = shapes or (GPU_SHAPES if device == "cuda" else CPU_SHAPES)
    copy = bench.copy_bandwidth(device, nbytes=1 << (28 if device == "cuda" else 26))
    rows = []
    g = torch.Generator(device=device).manual_seed(0)
    for (N, K), Ms in shapes:
        W = torch.randn(N, K, device=device, dtype=torch.bfloat16, generator=g)
        P, qs = wb.quantize_4bit(W, blocksize=64, quant_type="nf4", compress_statistics=True)
        bqs = qs.to_bnb() if bnb else None
        wbytes = weight_bytes((N, K), 64, True)
        for M in Ms:
            A = torch.randn(M, K, device=device, dtype=torch.bfloat16, generator=g)
            cases = {"ours": (lambda: matmul_4bit(A, P, qs), wbytes + 2 * M * K),
                     **({f"ours_{b}": ((lambda b=b: matmul_4bit(A, P, qs, backend=b)), wbytes + 2 * M * K)
                         for b in ("numba_cpu", "cython_cpu")} if device == "cpu" else {}),
                     "dense_bf16": (lambda: torch.nn.functional.linear(A, W), 2 * N * K + 2 * M * K)}
            if bnb:
                cases["bnb"] = (lambda: bnb.matmul_4bit(A, P, bqs), wbytes + 2 * M * K)
            for name, (fn, nbytes) in cases.items():
                with torch.no_grad(), warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    t = bench.time_fn(fn, device, warmup=3, reps=reps)
                    kms = graph_ms(fn) if device == "cuda" else None
                ms = kms if kms is not None else t.median_ms
                rows.append(dict(op="matmul_4bit", impl=name, N=N, K=K, M=M, dtype="bfloat16", public_ms=t.median_ms,
                                 kernel_ms=kms, bytes=nbytes, gbps=nbytes / (ms * 1e-3) / 1e9, copy_gbps=copy,
                                 pct_copy=100 * nbytes / (ms * 1e-3) / 1e9 / copy))
                print(f"{name:>10} {N}x{K} M={M}: public {t.median_ms:.4f} ms"
                      + (f", kernel {kms:.4f} ms" if kms is not None else "")
                      + f", {rows[-1]['gbps']:.0f} GB/s ({rows[-1]['pct_copy']:.0f} % of copy)")
    df = pd.DataFrame(rows)
    for (N, K, M), grp in df.groupby(["N", "K", "M"]):
        ours = grp[grp.impl == "ours"]
        for other in ("dense_bf16", "bnb"):
            o = grp[grp.impl == other]
            if len(ours) and len(o):
                for col in ("public_ms", "kernel_ms"):
                    a, b = ours[col].iloc[0], o[col].iloc[0]
                    if a and b and a == a and b == b:
                        df.loc[ours.index, f"speedup_vs_{other}_{col.split('_')[0]}"] = b / a
    return df


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--out", default=None, help="folder for bench.parquet/.csv (e.g. reports/matmul-gpu)")
    ap.add_argument("--reps", type=int, default=20)
    args = ap.parse_args(argv)
    if args.device == "cpu":
        torch.set_num_threads(max(1, torch.get_num_threads()))
    df = run(args.device, reps=args.reps)
    with pd.option_context("display.width", 200, "display.max_columns", 30):
        print(df.drop(columns=["copy_gbps"]).to_string(index=False))
    if args.out:
        from workbench import results
        p = results.save(df, f"{args.out}/bench", meta=results.run_metadata(args.device))
        print(f"wrote {p}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
