"""``matmul_4bit`` above the fused kernels' M (dequantize + cuBLAS) against cuBLAS bf16 and bitsandbytes, timed in
turn: at M = 256 and 2048 every call runs for a millisecond near full power, and the bench's one-after-another
timing drifts by more than the gap being measured (reports/matmul-h200/README.md). Here the calls alternate,
in the opposite order every other round (``bench.interleaved_ms``: a synchronized wall time per call, median),
and each is also timed by CUDA-graph replay in two alternating passes.

NF4, blocksize 64, double quant, bf16, the public calls with default arguments; cuBLAS with torch's defaults.

usage (GPU): python -m studies.probes.matmul_large_m_interleaved [--shapes 28672x8192,...] [--ms 256,2048] [--out DIR]"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

import workbench as wb
from workbench import bench
from workbench.matmul import matmul_4bit


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shapes", default="28672x8192,8192x28672,14336x4096,4096x14336,4096x4096")
    ap.add_argument("--ms", default="256,2048")
    ap.add_argument("--reps", type=int, default=21)
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    try:
        import bitsandbytes as bnb
    except ImportError:
        bnb = None
    rows = []
    for shape in args.shapes.split(","):
        N, K = map(int, shape.split("x"))
        W = torch.randn(N, K, device="cuda", dtype=torch.bfloat16)
        P, qs = wb.quantize_4bit(W, blocksize=64, compress_statistics=True)
        Wdq = wb.dequantize_4bit(P, qs).to(torch.bfloat16)
        bqs = qs.to_bnb() if bnb else None
        del W
        for M in map(int, args.ms.split(",")):
            A = torch.randn(M, K, device="cuda", dtype=torch.bfloat16)
            fns = {"ours": lambda: matmul_4bit(A, P, qs), "cublas_bf16": lambda: torch.matmul(A, Wdq.t())}
            if bnb:
                fns["bnb"] = lambda: bnb.matmul_4bit(A, P, bqs)
            with torch.no_grad():
                wall = bench.interleaved_ms(fns, "cuda", reps=args.reps, warmup=2)
                graph = {k: [] for k in fns}
                for p in range(2):
                    for k in (list(fns) if p == 0 else list(fns)[::-1]):
                        graph[k].append(bench.graph_replay_ms(fns[k], calls=10, reps=5))
            g = {k: min(v for v in vs if v is not None) if any(v is not None for v in vs) else None
                 for k, vs in graph.items()}
            row = dict(shape=shape, M=M, wall_ms=wall, graph_ms=g,
                       x_cublas_wall=wall["cublas_bf16"] / wall["ours"],
                       x_cublas_graph=(g["cublas_bf16"] / g["ours"]) if g["ours"] and g["cublas_bf16"] else None)
            rows.append(row)
            print(f"{shape:>11} M={M:<5} " + "  ".join(f"{k} {wall[k]:.4f}/{g[k] or float('nan'):.4f}" for k in fns)
                  + f"  x cuBLAS {row['x_cublas_wall']:.3f} (wall) {row['x_cublas_graph'] or float('nan'):.3f} (graph)")
            del A
    if args.out:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        Path(args.out, "matmul_large_m_interleaved.json").write_text(json.dumps(
            dict(device=torch.cuda.get_device_name(), rows=rows), indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
