"""Host time of the public ``matmul_4bit``: per call with no sync between calls, then where it goes (cProfile of 20
calls, and torch.profiler's CPU/CUDA table of 10). Beside each case torch's F.linear on the bf16 weight, the host
time of one dispatched op.

NF4, blocksize 64, double quant, bf16. The default cases: one row on 4096x4096 (the fused GEMV) and on 28672x8192
(the unscaled-lookup GEMM on the tiled copy: a split plan, partials), kernels of microseconds where the host work
shows in the public call; 256 rows on both (dequantize + cuBLAS).

With ``--fine``, instead, each function's own and cumulative host time in microseconds per call (cProfile on
perf_counter over 200 calls, each on an idle GPU: synchronized before, the profiler on only during the call).

With ``--pieces``, for cases above the fused kernels' rows (dequantize + cuBLAS), the host time of each piece of
that path instead (20 calls each, no sync): where a public call's host time goes when it exceeds torch's own
(reports/matmul-h100/lean_lut_gemm: 150 us at M = 256, F.linear 23 us; the general path's adapter is timed beside
the one-call path the public call takes).

usage (GPU): python -m studies.probes.matmul_host_profile [--cases 4096x4096x1,...] [--pieces | --fine]
             > host_profile.txt"""
from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import time

import torch

import workbench as wb
from workbench.matmul import matmul_4bit
from workbench.ops import _nested_args


def _per_call(fn) -> tuple[float, float]:
    """(host, host + GPU) microseconds per call over 20 calls with no sync between them."""
    for _ in range(5):
        fn()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(20):
        fn()
    t1 = time.perf_counter()
    torch.cuda.synchronize()
    t2 = time.perf_counter()
    return (t1 - t0) / 20 * 1e6, (t2 - t0) / 20 * 1e6


def _pieces(A, W, P, qs) -> None:
    """Host time per call of each piece of the dequantize + cuBLAS path, beside the public call and F.linear."""
    from workbench import matmul as MM
    from workbench.backends.cuda import matmul as CM
    from workbench.backends.cuda import quant as CQ
    (N, K), M = qs.shape, A.shape[0]
    absmax, a8, acode, aoff = _nested_args(qs, "cuda")
    tab = qs.code.float().contiguous()
    nest = (absmax, tab, qs.blocksize, N * K, A.dtype, a8, acode, aoff)
    Wd = CQ.dequantize_4bit(P, *nest).view(N, K)
    pieces = {
        "matmul_4bit (public)": lambda: matmul_4bit(A, P, qs),
        "MM._check + _nested_args": lambda: (MM._check(A, P, qs), _nested_args(qs, "cuda")),
        "cuda gemm_4bit (backend)": lambda: CM.gemm_4bit(A, P, (N, K), absmax, tab, qs.blocksize, None, a8, acode,
                                                         aoff),
        "quant.dequantize_4bit (nested)": lambda: CQ.dequantize_4bit(P, *nest),
        "_mm_one_rounding": lambda: CM._mm_one_rounding(A, Wd.t()),
        "torch.mm": lambda: torch.mm(A, Wd.t()),
        "F.linear": lambda: torch.nn.functional.linear(A, W),
        "torch.empty (the dequantized weight)": lambda: torch.empty(N * K, dtype=A.dtype, device=A.device),
    }
    print(f"{N}x{K} M={M}: host us per call")
    for name, fn in pieces.items():
        print(f"  {name:40s} {_per_call(fn)[0]:8.1f}", flush=True)


def _fine(fn, calls: int = 200, rows: int = 24) -> None:
    """Per function: calls, own and cumulative host microseconds per call of ``fn``, each call on an idle GPU."""
    for _ in range(10):
        fn()
    pr = cProfile.Profile(time.perf_counter)
    for _ in range(calls):
        torch.cuda.synchronize()
        pr.enable()
        fn()
        pr.disable()
    torch.cuda.synchronize()
    st = pstats.Stats(pr).stats   # (file, line, name) -> (primitive calls, calls, tottime, cumtime, callers)
    top = sorted(st.items(), key=lambda kv: -kv[1][3])[:rows]
    print(f"  {'calls':>6} {'own us':>8} {'cum us':>8}  function")
    for (file, line, name), (_, nc, tt, ct, _) in top:
        where = name if file == "~" else f"{file.split('/')[-1]}:{line}({name})"
        print(f"  {nc / calls:6.1f} {tt / calls * 1e6:8.2f} {ct / calls * 1e6:8.2f}  {where}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", default="4096x4096x1,28672x8192x1,4096x4096x256,28672x8192x256",
                    help="NxKxM, comma-separated")
    ap.add_argument("--pieces", action="store_true", help="time the dequantize + cuBLAS path's pieces")
    ap.add_argument("--fine", action="store_true", help="own and cumulative host us per call of each function")
    args = ap.parse_args(argv)
    for case in args.cases.split(","):
        N, K, M = (int(v) for v in case.split("x"))
        W = torch.randn(N, K, device="cuda", dtype=torch.bfloat16)
        P, qs = wb.quantize_4bit(W, blocksize=64, compress_statistics=True)
        A = torch.randn(M, K, device="cuda", dtype=torch.bfloat16)
        if args.pieces:
            _pieces(A, W, P, qs)
            continue
        if args.fine:
            host, _ = _per_call(lambda: matmul_4bit(A, P, qs))
            print(f"{N}x{K} M={M}: host {host:.1f} us a call (20 calls, no sync); profiled, idle GPU:")
            _fine(lambda: matmul_4bit(A, P, qs))
            continue
        host, total = _per_call(lambda: matmul_4bit(A, P, qs))
        lin_host, lin_total = _per_call(lambda: torch.nn.functional.linear(A, W))
        print(N, K, M, f"host per call {host:.1f} us, total per call {total:.1f} us; F.linear: host {lin_host:.1f} us, "
              f"total {lin_total:.1f} us")
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
