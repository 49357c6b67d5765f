"""Where the host time of one GPU call goes: cProfile of repeated calls per (backend, op).

    python -m studies.bench.host_overhead [--n-log2 20] [--calls 300] [--top 18]

The event timings of the benchmarks include each call's host work (argument checks, allocations,
array views, the launch itself) because the GPU idles until the launch arrives; this study shows
which functions that host work is made of, so it can be cut. Small n keeps the GPU out of the way.
"""
from __future__ import annotations

import argparse
import cProfile
import importlib
import io
import pstats
import time

import torch

from studies.bench.bench_optim_gpu import make_state, step_fn
from workbench import codebooks as cbs


def _quant_calls(backend: str, n: int):
    Q = importlib.import_module(f"workbench.backends.{backend}.quant")
    A = torch.randn(n, device="cuda", dtype=torch.bfloat16)
    nf4, dyn = cbs.get("nf4"), cbs.get("dynamic")
    p, a = Q.quantize_4bit(A, nf4, 64)
    tab = nf4.tensors("cuda")[0]
    return {"quantize_4bit": lambda: Q.quantize_4bit(A, nf4, 64),
            "dequantize_4bit": lambda: Q.dequantize_4bit(p, a, tab, 64, n, A.dtype),
            "quantize_blockwise": lambda: Q.quantize_blockwise(A, dyn, 256)}


def _optim_calls(backend: str, n: int):
    O = importlib.import_module(f"workbench.backends.{backend}.optim")
    g = torch.randn(n, device="cuda") * 0.01
    p = torch.randn(n, device="cuda")
    st = make_state("adam", n, True, "cuda")
    fn = O.optimizer_update_8bit_blockwise
    step_fn(fn, "adam", True, g, p, st, 1)
    return {"adam8bit": lambda: step_fn(fn, "adam", True, g, p, st, 2)}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--n-log2", type=int, default=20)
    ap.add_argument("--calls", type=int, default=300)
    ap.add_argument("--top", type=int, default=18)
    ap.add_argument("--backends", default="cuda,numba_cuda")
    args = ap.parse_args(argv)
    n = 1 << args.n_log2
    for backend in args.backends.split(","):
        for calls in (_quant_calls, _optim_calls):
            for op, fn in calls(backend, n).items():
                for _ in range(20):
                    fn()
                torch.cuda.synchronize()
                t0 = time.perf_counter()
                for _ in range(args.calls):
                    fn()
                plain_us = (time.perf_counter() - t0) * 1e6 / args.calls  # the GPU keeps up at small n
                torch.cuda.synchronize()
                prof = cProfile.Profile()
                prof.enable()
                for _ in range(args.calls):
                    fn()
                prof.disable()
                torch.cuda.synchronize()
                buf = io.StringIO()
                st = pstats.Stats(prof, stream=buf)
                total_ms = st.total_tt * 1e3 / args.calls
                st.sort_stats("tottime").print_stats(args.top)
                print(f"\n===== {backend} {op}: {plain_us:.1f} us host per call ({total_ms:.3f} ms under cProfile) =====")
                print(buf.getvalue().strip("\n"))  # pstats header, then the top functions


if __name__ == "__main__":
    main()
