"""Host time of the public ``matmul_4bit`` above the fused kernels' M (dequantize + cuBLAS): per call with no sync
between calls, then where it goes (cProfile of 20 calls, and torch.profiler's CPU/CUDA table of 10).

NF4, blocksize 64, double quant, bf16; 4096x4096 and 28672x8192 at M = 256.

usage (GPU): python -m studies.probes.matmul_host_profile > host_profile.txt"""
from __future__ import annotations

import cProfile
import io
import pstats
import time

import torch

import workbench as wb
from workbench.matmul import matmul_4bit


def main() -> int:
    for N, K, M in ((4096, 4096, 256), (28672, 8192, 256)):
        W = torch.randn(N, K, device="cuda", dtype=torch.bfloat16)
        P, qs = wb.quantize_4bit(W, blocksize=64, compress_statistics=True)
        A = torch.randn(M, K, device="cuda", dtype=torch.bfloat16)
        for _ in range(5):
            matmul_4bit(A, P, qs)
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(20):
            matmul_4bit(A, P, qs)
        t1 = time.perf_counter()
        torch.cuda.synchronize()
        t2 = time.perf_counter()
        print(N, K, M, f"host per call {(t1 - t0) / 20 * 1e6:.1f} us, total per call {(t2 - t0) / 20 * 1e6:.1f} us")
        pr = cProfile.Profile()
        pr.enable()
        for _ in range(20):
            matmul_4bit(A, P, qs)
        pr.disable()
        torch.cuda.synchronize()
        s = io.StringIO()
        pstats.Stats(pr, stream=s).sort_stats("tottime").print_stats(18)
        print(s.getvalue()[:5000])
        from torch.profiler import ProfilerActivity, profile
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as p:
            for _ in range(10):
                matmul_4bit(A, P, qs)
            torch.cuda.synchronize()
        print(p.key_averages().table(sort_by="self_cpu_time_total", row_limit=14, max_name_column_width=60))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
