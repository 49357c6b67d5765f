"""The cython_cpu 4-bit dequantizer's kernel alone (``quant_cpu.dequantize_4bit`` into a preallocated output, no
validation): 4 M NF4 weights, blocksize 64 and 4096, float32 / bf16 / fp16 outputs, median of 40 calls after 5.
Prints one JSON object {case: ms}.

An A/B of two builds runs it in each checkout in turn, in separate processes (one extension module per process):
    git worktree add /tmp/before REV && (cd /tmp/before && python setup.py -q build_ext --inplace)
    for i in 1 2 3 4 5; do python -m studies.probes.cpu_dequant4_kernel_ab > after_$i.json
        (cd /tmp/before && PYTHONPATH=. python -m studies.probes.cpu_dequant4_kernel_ab > before_$i.json); done"""
from __future__ import annotations

import json
import statistics
import time

import torch

import workbench as wb
from workbench.backends._cpu_common import as_numpy, as_numpy_bits
from workbench.backends.cython_cpu import native

N = 1 << 22   # 2 MiB of codes, 8-16 MiB of output: the output stays in L3 on the machines measured


def main() -> int:
    Q = native("quant")
    g = torch.Generator().manual_seed(0)
    res = {}
    for bs in (64, 4096):
        P, qs = wb.quantize_4bit(torch.randn(N, generator=g), blocksize=bs, quant_type="nf4")
        pk, am, tab = as_numpy(P.view(-1)), as_numpy(qs.absmax), as_numpy(qs.code.float())
        for dtype in (torch.float32, torch.bfloat16, torch.float16):
            out = torch.empty(N, dtype=dtype)
            arr, kind = as_numpy_bits(out)
            for _ in range(5):
                Q.dequantize_4bit(pk, am, tab, bs, N, kind, arr)
            ts = []
            for _ in range(40):
                t0 = time.perf_counter()
                Q.dequantize_4bit(pk, am, tab, bs, N, kind, arr)
                ts.append(time.perf_counter() - t0)
            res[f"bs{bs} {str(dtype).removeprefix('torch.')}"] = statistics.median(ts) * 1e3
    print(json.dumps(res))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
