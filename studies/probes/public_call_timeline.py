"""Where one public 4-bit matmul call's time goes on an idle GPU: host work before the launch, the launch's latency,
the kernels, beside F.linear (cuBLAS bf16) and bitsandbytes 0.50.2 on the same shape.

Per case and implementation, after a warm-up:
  * public_us: the event-timed median of one call (as studies/bench/bench_matmul_gpu times "public");
  * host_us: perf_counter around one call on an idle GPU (sync before, none inside), median of 50
    (studies/bench/public_call._host_idle_ms);
  * loop_us: per call of 50 calls issued back to back (studies/bench/bench_matmul_gpu's loop column), median of 5;
  * from a torch.profiler trace (CPU + CUDA) of ``--calls`` single calls, medians over them: to_launch_us (call start
    to its first kernel-launch API call), launch_us (that API call's own duration), queue_us (API call start to its
    kernel's start on the GPU), kernels_us (the call's kernels, summed), span_us (call start to its last kernel's
    end), kernels (how many). The profiler adds host time of its own, and while it records, workbench's calls take
    the custom-op path (ops._eager), so ours' to_launch_us is that path's; host_us is the one-call path's.

NF4, blocksize 64, double quant, bf16 activations, no bias. ``--baseline FILE``: another revision's
workbench/matmul.py, loaded beside the tree's and timed as "ours_baseline" in the same process (an A/B of the host
path).

usage (GPU): python -m studies.probes.public_call_timeline [--cases 28672x8192x1,4096x4096x1] [--baseline FILE]
             [--out DIR]"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile

import torch

import workbench as wb
from studies.bench import oracle
from studies.bench.public_call import _host_idle_ms
from workbench import bench
from workbench.matmul import matmul_4bit

_LAUNCH = ("cudaLaunchKernel", "cuLaunchKernel", "cudaLaunchKernelExC", "cuLaunchKernelEx", "cudaGraphLaunch",
           "cudaMemsetAsync", "cudaMemcpyAsync")


def _timeline(fn, calls: int) -> dict:
    """Medians over ``calls`` single calls of the pieces named in the module docstring, from a chrome trace."""
    from torch.profiler import ProfilerActivity, profile, record_function
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for i in range(calls):
            torch.cuda.synchronize()
            with record_function(f"call{i}"):
                fn()
            torch.cuda.synchronize()
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "trace.json")
        prof.export_chrome_trace(path)
        with open(path) as f:
            ev = json.load(f)["traceEvents"]
    ranges = sorted((e["ts"], e["ts"] + e["dur"]) for e in ev if e.get("ph") == "X"
                    and str(e.get("name", "")).startswith("call") and e.get("cat") == "user_annotation")
    api = [e for e in ev if e.get("ph") == "X" and e.get("cat") in ("cuda_runtime", "cuda_driver")
           and e.get("name") in _LAUNCH]
    gpu = {e["args"].get("correlation"): e for e in ev
           if e.get("ph") == "X" and e.get("cat") in ("kernel", "gpu_memset", "gpu_memcpy") and "args" in e}
    rows = []
    for t0, t1 in ranges:
        launches = sorted((e for e in api if t0 <= e["ts"] <= t1), key=lambda e: e["ts"])
        ks = [gpu[e["args"]["correlation"]] for e in launches if e.get("args", {}).get("correlation") in gpu]
        if not launches or not ks:
            continue
        first = launches[0]
        k0 = gpu.get(first["args"].get("correlation"))
        rows.append(dict(to_launch_us=first["ts"] - t0, launch_us=first["dur"],
                         queue_us=(k0["ts"] - first["ts"]) if k0 else float("nan"),
                         kernels_us=sum(k["dur"] for k in ks), span_us=max(k["ts"] + k["dur"] for k in ks) - t0,
                         kernels=len(ks)))
    if not rows:
        return {}
    return {k: statistics.median(r[k] for r in rows) for k in rows[0]}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", default="28672x8192x1,4096x4096x1,28672x8192x16", help="NxKxM, comma-separated")
    ap.add_argument("--calls", type=int, default=20)
    ap.add_argument("--out", default=None)
    ap.add_argument("--baseline", default=None, help="another revision's workbench/matmul.py, timed beside")
    args = ap.parse_args(argv)
    baseline = None
    if args.baseline:
        import importlib.util
        spec = importlib.util.spec_from_file_location("workbench._baseline_matmul", args.baseline)
        baseline = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(baseline)
    bnb = oracle.bitsandbytes()
    out = []
    with torch.no_grad():
        for case in args.cases.split(","):
            N, K, M = (int(v) for v in case.split("x"))
            W = torch.randn(N, K, device="cuda", dtype=torch.bfloat16)
            P, qs = wb.quantize_4bit(W, blocksize=64, compress_statistics=True)
            Wdq = wb.dequantize_4bit(P, qs).to(torch.bfloat16)
            A = torch.randn(M, K, device="cuda", dtype=torch.bfloat16)
            impls = {"ours": lambda: matmul_4bit(A, P, qs),
                     **({"ours_baseline": lambda: baseline.matmul_4bit(A, P, qs)} if baseline else {}),
                     "cublas_bf16": lambda: torch.nn.functional.linear(A, Wdq)}
            if bnb:
                bqs = qs.to_bnb()
                impls["bnb"] = lambda: bnb.matmul_4bit(A, P, bqs)
            for name, fn in impls.items():
                for _ in range(5):
                    fn()
                row = dict(case=case, impl=name,
                           public_us=1e3 * bench.time_fn(fn, "cuda", warmup=3, reps=30).median_ms,
                           host_us=1e3 * _host_idle_ms(fn, calls=50),
                           loop_us=1e3 * bench.back_to_back_ms(fn, reps=50, repeats=5), **_timeline(fn, args.calls))
                out.append(row)
                print(" ".join(f"{k}={v:.1f}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()),
                      flush=True)
            del W, P, qs, Wdq, A
            torch.cuda.empty_cache()
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        with open(os.path.join(args.out, "public_call_timeline.json"), "w") as f:
            json.dump(dict(device=torch.cuda.get_device_name(), rows=out), f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
