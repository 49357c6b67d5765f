"""A/B of the tensor-core GEMM's m16 row tiles per warp (cuda_src/matmul_mma.cuh, ``kbit_gemm_tuning``): 2 tiles
(128 weight rows per CTA) against 1 (64 rows, fewer registers, more resident CTAs), each with the split-K plan
the dispatch makes for it. bf16, NF4 blocksize 64 with double quant, the five shapes of issue 18, M = 8..64.
Parity: with one split each output equals the other tiling's bit for bit (a row's accumulation order does not
depend on the tiling); the planned splits are held to the reference's error bound by the GPU tests. Kernel time by
CUDA-graph replay; GB/s of the bytes a fused kernel reads and % of the device copy measured in the same run.

usage (GPU): python -m studies.probes.gemm_row_tiles_ab [--out DIR]"""
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
TILES = (2, 1)


def _set_tiles(L, rt: int) -> None:
    L.kbit_gemm_tuning(rt)
    CM._tiles.clear()  # block_n and the resident CTAs follow the tiling


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
                for rt in TILES:
                    _set_tiles(L, rt)
                    CM.plan_splits = lambda *a, **k: 1
                    one_split[rt] = matmul_4bit(A, P, qs, backend="cuda")
                    CM.plan_splits = real_plan
                    bm, bn, occ = CM.mma_tile(M, A.device)
                    splits = real_plan(M, N, K, bm, bn, occ * CM._sm_count(A.device))
                    ms = bench.graph_replay_ms(lambda: matmul_4bit(A, P, qs, backend="cuda"), calls=20)
                    pct = 100 * nbytes / (ms * 1e-3) / (copy * 1e9)
                    rows.append(dict(N=N, K=K, M=M, row_tiles=rt, block_n=bn, ctas_per_sm=occ, splits=splits,
                                     kernel_ms=ms, pct_copy=pct))
                    print(f"{N:>6}x{K:<6} M={M:<3} row_tiles={rt} (block_n {bn}, {occ} CTAs/SM, {splits} splits) "
                          f"{ms * 1e3:7.1f} us  {pct:5.1f} % of copy", flush=True)
                same = bool(torch.equal(one_split[1].view(torch.int16), one_split[2].view(torch.int16)))
                bad += not same
                rows[-1]["one_split_equal"] = rows[-2]["one_split_equal"] = same
                if not same:
                    print(f"  one split: the two tilings differ at {N}x{K} M={M}")
    finally:
        CM.plan_splits = real_plan
        _set_tiles(L, 0)
    print(f"copy {copy:.0f} GB/s; shapes where the tilings differ with one split: {bad}")
    if args.out:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        Path(args.out, "gemm_row_tiles_ab.json").write_text(json.dumps(dict(copy_gbps=copy, rows=rows), indent=1))
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
