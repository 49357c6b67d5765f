"""The Numba CUDA GEMV's variants (workbench/backends/numba_cuda/matmul.py knobs) beside the production GEMV, in one
process: kernel time by CUDA-graph replay, NF4 blocksize 64 double quant, bf16, issue 18's shapes at M = 1 and 4.

    python -m studies.probes.numba_gemv_ab [--out DIR]     (DIR/numba_gemv_ab.csv)

Variants: lanes as rows (32 rows per CTA, warps splitting K) or as chunks of one row (a warp per row), each
without launch bounds and with 4 (M = 1) resident CTAs per SM. Every variant's outputs are checked equal to the
default's first (same order of sums for a given mapping; the two mappings are held to the reference's bound)."""
from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd
import torch

SHAPES = ((28672, 8192), (8192, 28672), (14336, 4096), (4096, 14336), (4096, 4096))
VARIANTS = (("rows", True, 0), ("rows_lb4", True, 4), ("chunks", False, 0), ("chunks_lb4", False, 4))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", default=None)
    ap.add_argument("--ms", default="1,4")
    args = ap.parse_args(argv)
    import workbench as wb
    from workbench import bench
    from workbench.backends.numba_cuda import matmul as NM
    from workbench.backends.reference import matmul as R
    from workbench.matmul import matmul_4bit
    g = torch.Generator(device="cuda").manual_seed(1)
    rows = []
    for N, K in SHAPES:
        W = torch.randn(N, K, device="cuda", dtype=torch.bfloat16, generator=g)
        P, qs = wb.quantize_4bit(W, blocksize=64, quant_type="nf4", compress_statistics=True)
        for M in (int(m) for m in args.ms.split(",")):
            A = torch.randn(M, K, device="cuda", dtype=torch.bfloat16, generator=g)
            ref = matmul_4bit(A, P, qs, backend="cuda")
            Wd = wb.dequantize_4bit(P, qs).to(torch.bfloat16)
            bound = R.error_bound(A, Wd, None, torch.bfloat16, ref.float())
            t = bench.graph_replay_ms(lambda: matmul_4bit(A, P, qs, backend="cuda"), 20, 7)
            rows.append(dict(N=N, K=K, M=M, impl="cuda", kernel_ms=t))
            print(f"{N}x{K} M={M} cuda {t:.4f} ms", flush=True)
            for name, r, mb in VARIANTS:
                if mb and M > 1:
                    continue
                NM._ROWS, NM._MIN_BLOCKS = r, mb
                got = matmul_4bit(A, P, qs, backend="numba_cuda")
                ok = bool(((got.float() - ref.float()).abs() <= 2 * bound).all())
                t = bench.graph_replay_ms(lambda: matmul_4bit(A, P, qs, backend="numba_cuda"), 20, 7)
                rows.append(dict(N=N, K=K, M=M, impl=name, kernel_ms=t, within_bound=ok))
                print(f"{N}x{K} M={M} {name} {t:.4f} ms ok={ok}", flush=True)
        del W, P, qs
        torch.cuda.empty_cache()
    df = pd.DataFrame(rows)
    base = df[df.impl == "cuda"].set_index(["N", "K", "M"]).kernel_ms
    df["pct_of_cuda"] = [100 * base[(r.N, r.K, r.M)] / r.kernel_ms for r in df.itertuples()]
    print(df.to_string(index=False))
    if args.out:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        df.to_csv(Path(args.out) / "numba_gemv_ab.csv", index=False)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
