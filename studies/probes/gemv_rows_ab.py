"""A/B of the fused GEMV's rows per warp (cuda_src/matmul.cu ``kbit_gemv_tuning``): M = 1, bf16, NF4 blocksize 64
with double quant, on the five shapes of issue 18; each output must equal the default's bit for bit (a row's order
does not depend on RW); kernel time by CUDA-graph replay, GB/s of the bytes a fused kernel reads (packed weight,
uint8 absmax, nested absmax, activations) and % of the device copy measured in the same run.

usage (GPU): python -m studies.probes.gemv_rows_ab [--out DIR]"""
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


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    copy = bench.copy_bandwidth("cuda")
    g = torch.Generator(device="cuda").manual_seed(0)
    rows, bad = [], 0
    L = CM.lib()
    try:
        for N, K in SHAPES:
            W = torch.randn(N, K, device="cuda", dtype=torch.bfloat16, generator=g)
            P, qs = wb.quantize_4bit(W, blocksize=64, quant_type="nf4", compress_statistics=True)
            A = torch.randn(1, K, device="cuda", dtype=torch.bfloat16, generator=g)
            nbytes = bench.tensor_bytes(P, qs.absmax, qs.state2.absmax, A)
            L.kbit_gemv_tuning(0)
            want = matmul_4bit(A, P, qs, backend="cuda")
            for rw in (0, 4, 2, 1):
                L.kbit_gemv_tuning(rw)
                got = matmul_4bit(A, P, qs, backend="cuda")
                same = bool(torch.equal(got.view(torch.int16), want.view(torch.int16)))
                bad += not same
                ms = bench.graph_replay_ms(lambda: matmul_4bit(A, P, qs, backend="cuda"), calls=50)
                pct = 100 * nbytes / (ms * 1e-3) / (copy * 1e9)
                rows.append(dict(N=N, K=K, rw=rw, kernel_ms=ms, pct_copy=pct, equal_to_default=same))
                print(f"{N:>6}x{K:<6} rw={rw or 'auto'}  {ms * 1e3:7.1f} us  {pct:5.1f} % of copy  equal {same}",
                      flush=True)
    finally:
        L.kbit_gemv_tuning(0)
    print(f"copy {copy:.0f} GB/s; outputs differing from the default: {bad}")
    if args.out:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        Path(args.out, "gemv_rows_ab.json").write_text(json.dumps(dict(copy_gbps=copy, rows=rows), indent=1))
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
