"""A/B of the tensor-core GEMM's two knobs (cuda_src/matmul_mma.cuh, ``kbit_gemm_tuning``): m16 row tiles per warp
(2: 128 weight rows per CTA; 1: 64 rows, fewer registers, more resident CTAs) and the weight path (each thread
reads its codes and scales into registers one chunk ahead, or the CTA stages them in shared memory by cp.async),
each with the split-K plan the dispatch makes for it. bf16, NF4 blocksize 64 with double quant, the five shapes of
issue 18, M = 8..64. Parity: with one split every variant's output equals the first's bit for bit (a row's
accumulation order depends on neither knob); the planned splits are held to the reference's error bound by the GPU
tests. Kernel time by CUDA-graph replay; GB/s of the bytes a fused kernel reads and % of the device copy measured
in the same run.

usage (GPU): python -m studies.probes.gemm_tiling_ab [--out DIR]"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

import workbench as wb
from workbench import bench
from workbench.backends.cuda import matmul as CM
from workbench.matmul import matmul_4bit

SHAPES = ((28672, 8192), (8192, 28672), (14336, 4096), (4096, 14336), (4096, 4096))
MS = (8, 16, 32, 64)
VARIANTS = ((2, 0), (2, 1), (1, 0), (1, 1))  # (row tiles, weights in registers)


def _set(L, rt: int, wr: int) -> None:
    L.kbit_gemm_tuning(rt, wr)
    CM.forget_plans()  # block_n, the resident CTAs and so the split plans follow the knobs


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    copy = bench.copy_bandwidth("cuda")
    g = torch.Generator(device="cuda").manual_seed(0)
    rows, bad = [], 0
    L = CM.lib()
    real_plan = CM.plan_splits
    try:
        for N, K in SHAPES:
            W = torch.randn(N, K, device="cuda", dtype=torch.bfloat16, generator=g)
            P, qs = wb.quantize_4bit(W, blocksize=64, quant_type="nf4", compress_statistics=True)
            for M in MS:
                A = torch.randn(M, K, device="cuda", dtype=torch.bfloat16, generator=g)
                nbytes = bench.tensor_bytes(P, qs.absmax, qs.state2.absmax, A)
                one_split = {}
                for rt, wr in VARIANTS:
                    _set(L, rt, wr)
                    CM.plan_splits = lambda *a, **k: 1
                    one_split[rt, wr] = matmul_4bit(A, P, qs, backend="cuda")
                    CM.plan_splits = real_plan
                    CM.forget_plans()
                    bm, bn, occ = CM.mma_tile(M, A.device)
                    splits = real_plan(M, N, K, bm, bn, occ * CM._sm_count(A.device))
                    ms = bench.graph_replay_ms(lambda: matmul_4bit(A, P, qs, backend="cuda"), calls=20)
                    pct = 100 * nbytes / (ms * 1e-3) / (copy * 1e9)
                    first = one_split[VARIANTS[0]].view(torch.int16)
                    same = bool(torch.equal(one_split[rt, wr].view(torch.int16), first))
                    bad += not same
                    rows.append(dict(N=N, K=K, M=M, row_tiles=rt, weights_in_registers=wr, block_n=bn,
                                     ctas_per_sm=occ, splits=splits, kernel_ms=ms, pct_copy=pct,
                                     one_split_equal_to_first=same))
                    print(f"{N:>6}x{K:<6} M={M:<3} row_tiles={rt} registers={wr} (block_n {bn}, {occ} CTAs/SM, "
                          f"{splits} splits) {ms * 1e3:7.1f} us  {pct:5.1f} % of copy"
                          + ("" if same else "  ONE-SPLIT OUTPUT DIFFERS"), flush=True)
    finally:
        CM.plan_splits = real_plan
        _set(L, 0, -1)
    print(f"copy {copy:.0f} GB/s; variants whose one-split output differs from the first's: {bad}")
    if args.out:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        Path(args.out, "gemm_tiling_ab.json").write_text(json.dumps(dict(copy_gbps=copy, rows=rows), indent=1))
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
