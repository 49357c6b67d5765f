"""CPU, rows above the fused kernels (M > 32 for bf16): the public matmul_4bit and the multiply after the dequantize,
as committed (``_cpu_common.dense_matmul``: bf16 through torch's bf16 kernel) against widening both operands to
float32 (the path before), beside torch's dense bf16 F.linear. Interleaved repeats, medians, one process.

usage: python -m studies.probes.cpu_dense_tail_ab [--out DIR] [--reps 15]"""
from __future__ import annotations

import argparse
import json
import os
import platform
from pathlib import Path

import torch

import workbench as wb
from workbench import bench
from workbench.backends._cpu_common import dense_matmul
from workbench.matmul import matmul_4bit

CASES = ((4096, 4096, 48), (4096, 4096, 256), (11008, 4096, 64), (1536, 384, 256))


def _widened(A, W, bias):
    y = A.float() @ W.float().t()
    return (y + bias.float() if bias is not None else y).to(A.dtype)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=None)
    ap.add_argument("--reps", type=int, default=15)
    args = ap.parse_args(argv)
    g = torch.Generator().manual_seed(0)
    rows = []
    for N, K, M in CASES:
        W = torch.randn(N, K, generator=g).to(torch.bfloat16)
        A = torch.randn(M, K, generator=g).to(torch.bfloat16)
        b = torch.randn(N, generator=g).to(torch.bfloat16)
        P, qs = wb.quantize_4bit(W, blocksize=64, quant_type="nf4", compress_statistics=True)
        Wd = wb.dequantize_4bit(P, qs).to(torch.bfloat16)
        cases = {"matmul_4bit (public, bias)": lambda: matmul_4bit(A, P, qs, bias=b),
                 "dense_matmul (committed)": lambda: dense_matmul(A, Wd, b),
                 "widened to float32 (before)": lambda: _widened(A, Wd, b),
                 "F.linear bf16 (dense weight)": lambda: torch.nn.functional.linear(A, W, b)}
        med = bench.interleaved_ms(cases, reps=args.reps, warmup=3)   # warm-up: oneDNN primitives, both pools
        rows.append(dict(N=N, K=K, M=M, **{k: round(v, 3) for k, v in med.items()}))
        print(f"{N}x{K} M={M}: " + "  ".join(f"{k} {v:.2f} ms" for k, v in med.items()), flush=True)
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        meta = dict(cpu=platform.processor() or platform.machine(), threads=torch.get_num_threads(),
                    torch=torch.__version__, load_1min=list(os.getloadavg()))
        (out / "cpu_dense_tail_ab.json").write_text(json.dumps(dict(meta=meta, rows=rows), indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
