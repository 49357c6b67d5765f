"""A/B of the production dequantizers' staged stores (cuda_src/quant.cu, ``kbit_quant_tuning``; by default on for 4-bit codes):
dequantize_4bit (NF4, blocksize 64) and dequantize_blockwise (dynamic, 256) at n = 2^28 into bf16, each with the
direct stores and with the per-warp shared-memory stage; kernel time by CUDA-graph replay, % of the device copy
measured in the same run. Parity of the two: tests/test_gpu_quant.py::test_dequantize_staged_stores_equal_the_direct_ones.

usage (GPU): python -m studies.probes.quant_dequant_ab [--out DIR]"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from workbench import bench, codebooks as cbs
from workbench.backends.cuda import quant as C


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=None)
    ap.add_argument("--n-log2", type=int, default=28)
    args = ap.parse_args(argv)
    n = 1 << args.n_log2
    A = torch.randn(n, device="cuda", dtype=torch.bfloat16)
    copy = bench.copy_bandwidth("cuda")
    nf4, dyn = cbs.get("nf4"), cbs.get("dynamic")
    p, a = C.quantize_4bit(A, nf4, 64)
    c, a8 = C.quantize_blockwise(A, dyn, 256)
    t4, t8 = nf4.tensors("cuda")[0], dyn.tensors("cuda")[0]
    cases = {"dequantize_4bit": (lambda: C.dequantize_4bit(p, a, t4, 64, n, torch.bfloat16), bench.tensor_bytes(p, a)),
             "dequantize_blockwise": (lambda: C.dequantize_blockwise(c, a8, t8, 256, torch.bfloat16),
                                      bench.tensor_bytes(c, a8))}
    rows = []
    try:
        for op, (fn, stored) in cases.items():
            for staged in (0, 1):
                C.lib().kbit_quant_tuning(staged)
                ms = bench.graph_replay_ms(fn)
                pct = 100 * (stored + 2 * n) / (ms * 1e-3) / (copy * 1e9)
                rows.append(dict(op=op, staged=staged, ms=ms, pct_copy=pct))
                print(f"{op:22s} staged={staged}  {ms:.4f} ms  {pct:.1f} % of copy", flush=True)
    finally:
        C.lib().kbit_quant_tuning(-1)
    print(f"copy {copy:.0f} GB/s")
    if args.out:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        Path(args.out, "quant_dequant_ab.json").write_text(json.dumps(dict(copy_gbps=copy, rows=rows), indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
