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

import workbench as wb
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


def _matmul_calls(backend: str, n: int):
    """The public 4-bit matmul at one row (NF4, double quant, bf16), on a weight the cuda dispatch sends to the GEMV
    (4096 x 4096) and on one it sends to the unscaled-lookup GEMM on the tiled copy (8192 x 4096, a split plan);
    kernels of a few microseconds, so the host work shows. Beside them torch's F.linear on the bf16 weight: the
    host time of one dispatched op."""
    from workbench.matmul import matmul_4bit
    calls = {}
    for name, (N, K) in (("gemv", (4096, 4096)), ("lut", (8192, 4096))):
        W = torch.randn(N, K, device="cuda", dtype=torch.bfloat16)
        P, qs = wb.quantize_4bit(W, blocksize=64, compress_statistics=True, backend=backend)
        A = torch.randn(1, K, device="cuda", dtype=torch.bfloat16)
        calls[f"matmul_4bit_m1_{name}_{N}x{K}"] = lambda A=A, P=P, qs=qs: matmul_4bit(A, P, qs, backend=backend)
        if backend == "cuda":
            calls[f"F.linear_bf16_m1_{N}x{K}"] = lambda A=A, W=W: torch.nn.functional.linear(A, W)
    return calls


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--n-log2", type=int, default=20)
    ap.add_argument("--calls", type=int, default=300)
    ap.add_argument("--top", type=int, default=18)
    ap.add_argument("--backends", default="cuda,numba_cuda")
    args = ap.parse_args(argv)
    n = 1 << args.n_log2
    for backend in args.backends.split(","):
        for calls in (_quant_calls, _optim_calls, _matmul_calls):
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
