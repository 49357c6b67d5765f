"""A/B of the tensor-core GEMM's chunk loop (cuda_src/matmul_mma.cuh LOOP, ``kbit_gemm_loop``): 0 hands the next
chunk's codes and scales to the current chunk by register copies (45 moves in the 833 instructions of a chunk at
M = 16); 1 lets two register sets take turns in a loop unrolled by two and computes each row's flat index once;
2 is 1 held to loop 0's resident CTAs where 1 needs more registers (TM <= 2, two row tiles).

bf16, NF4 blocksize 64 with double quant, the five shapes of issue 18, M = 1 (the GEMM forced; the GEMV timed
beside it), 4, 16 and 64. Variants alternate in two passes; parity: with one split every variant's output equals
the default's bit for bit (same arithmetic; the timed split plans follow each variant's resident CTAs and may
differ). Kernel time by CUDA-graph replay; % of the device copy measured
in the same run.

usage (GPU): python -m studies.probes.gemm_loop_ab [--out DIR]"""
from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import torch

import workbench as wb
from workbench import bench
from workbench.backends.cuda import matmul as CM
from workbench.matmul import matmul_4bit

SHAPES = ((28672, 8192), (8192, 28672), (14336, 4096), (4096, 14336), (4096, 4096))
MS = (1, 4, 16, 64)
VARIANTS = (0, 1, 2)  # LOOP: 0 copies, 1 two register sets taking turns, 2 the same at loop 0's occupancy
NAMES = {0: "copies", 1: "two sets", 2: "two sets, 4 CTAs/SM"}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=None)
    ap.add_argument("--passes", type=int, default=2)
    args = ap.parse_args(argv)
    L = CM.lib()
    copy = bench.copy_bandwidth("cuda")
    g = torch.Generator(device="cuda").manual_seed(0)
    rows, bad = [], 0
    real_min, real_plan = CM.MMA_MIN_M, CM.plan_splits
    try:
        for N, K in SHAPES:
            W = torch.randn(N, K, device="cuda", dtype=torch.bfloat16, generator=g)
            P, qs = wb.quantize_4bit(W, blocksize=64, quant_type="nf4", compress_statistics=True)
            del W
            for M in MS:
                A = torch.randn(M, K, device="cuda", dtype=torch.bfloat16, generator=g)
                nbytes = bench.tensor_bytes(P, qs.absmax, qs.state2.absmax, A)
                call = lambda: matmul_4bit(A, P, qs, backend="cuda")  # noqa: E731
                CM.MMA_MIN_M = 1
                times = {v: [] for v in VARIANTS}
                ref = None
                for _ in range(args.passes):
                    for v in VARIANTS:
                        L.kbit_gemm_loop(v)
                        CM.forget_plans()
                        CM.plan_splits = lambda *a, **k: 1  # parity at one split: the plans may differ
                        out = call()
                        CM.plan_splits = real_plan
                        CM.forget_plans()
                        if ref is None:
                            ref = out.view(torch.int16).clone()
                        elif not torch.equal(out.view(torch.int16), ref):
                            bad += 1
                            print(f"  variant {v} differs from variant {VARIANTS[0]} at {N}x{K} M={M}", flush=True)
                        times[v].append(bench.graph_replay_ms(call, calls=20))
                L.kbit_gemm_loop(-1)
                CM.forget_plans()
                CM.MMA_MIN_M = real_min
                gemv_ms = bench.graph_replay_ms(call, calls=20) if M == 1 else None
                line = f"{N:>6}x{K:<6} M={M:<3}"
                for v in VARIANTS:
                    ms = statistics.median(times[v])
                    pct = 100 * nbytes / (ms * 1e-3) / (copy * 1e9)
                    rows.append(dict(N=N, K=K, M=M, variant=v, name=NAMES[v], kernel_ms=ms, runs_ms=times[v],
                                     pct_copy=pct))
                    line += f" | {NAMES[v]} {ms * 1e3:6.1f} us {pct:4.0f}%"
                if gemv_ms is not None:
                    rows.append(dict(N=N, K=K, M=M, variant=None, name="GEMV (M = 1 default path)",
                                     kernel_ms=gemv_ms, pct_copy=100 * nbytes / (gemv_ms * 1e-3) / (copy * 1e9)))
                    line += f" | GEMV {gemv_ms * 1e3:6.1f} us"
                print(line, flush=True)
    finally:
        CM.MMA_MIN_M, CM.plan_splits = real_min, real_plan
        L.kbit_gemm_loop(-1)
        CM.forget_plans()
    print(f"copy {copy:.0f} GB/s; outputs differing from the first variant's: {bad}")
    if args.out:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        Path(args.out, "gemm_loop_ab.json").write_text(json.dumps(dict(copy_gbps=copy, rows=rows), indent=1))
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
