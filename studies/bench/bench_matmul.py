"""4-bit matmul (issue 18): ours beside bitsandbytes 0.50.2 and dense bf16 (cuBLAS / torch CPU), per shape and M.

    python -m studies.bench.bench_matmul --out reports/matmul-gpu          (CUDA: the issue's shapes, M = 1..2048)
    python -m studies.bench.bench_matmul --device cpu --out reports/matmul-cpu  (CPU: M = 1, 4, 16, 4096x4096 and
                                                                                 11008x4096; ours = auto, ours_numba_cpu,
                                                                                 ours_cython_cpu)

Weights: NF4, blocksize 64, double quant, bf16 activations. ``ours_module``: ``workbench.nn.Linear4bit`` forward with
its defaults on the same weight. Per row:
  * public_ms: event timing (median) of the public call as a user writes it
    (``workbench.matmul.matmul_4bit(A, P, qs)``, ``bitsandbytes.matmul_4bit(A, P, bqs)``, ``F.linear(A, W)``);
  * kernel_ms (CUDA): CUDA-graph replay of GRAPH_CALLS calls captured back to back, time / calls
    (bitsandbytes' k-bit benches time kernels this way: no host time, no launch gaps);
    (CPU): our kernel called directly with the arguments the public call prepares (no validation, no state
    decoding, no dispatch; for cython_cpu's GEMV path the byte-plane kernel on the state's addresses, no allocation);
  * CPU timing is interleaved: each repeat calls every case once, in a shuffled order, so the load of a shared machine
    falls on all of them alike, and the ratios of medians taken in one process are what to read
    (``load_start`` / ``load_end``: the 1-minute load average around the run); ``cpu_ms``: the median process CPU
    time of a public call (all threads, OpenMP spin-waits included): with ``--threads 1`` the work per call, which
    other sessions' load does not lengthen the way it lengthens wall time;
  * gbps / pct_copy: bytes read by a fused kernel (packed weight + uint8 absmax + nested float32 absmax +
    activations; dense: the bf16 weight + activations) over kernel_ms, against the copy bandwidth measured in the
    same run (read + write counted).
"""
from __future__ import annotations

import argparse
import warnings

import pandas as pd
import torch

import workbench as wb
from studies.bench import oracle
from workbench import bench
from workbench.matmul import matmul_4bit, weight_bytes

GPU_SHAPES = [((4096, 4096), (1,)), ((28672, 8192), (1, 4, 16, 64, 256, 2048)), ((8192, 28672), (1,)),
              ((14336, 4096), (1,)), ((4096, 14336), (1,))]
CPU_SHAPES = [((4096, 4096), (1, 4, 16)), ((11008, 4096), (1, 4, 16))]
CPU_BACKENDS = ("numba_cpu", "cython_cpu")
GRAPH_CALLS = 50


def graph_ms(fn, calls: int = GRAPH_CALLS, reps: int = 10) -> float | None:
    """Kernel time per call: CUDA-graph replay of ``calls`` back-to-back calls (workbench.bench.graph_replay_ms)."""
    from workbench import bench
    return bench.graph_replay_ms(fn, calls, reps)


def _kernel_call(A, P, qs, backend: str):
    """Our kernel with the arguments matmul_4bit prepares (nested absmax decoded in the kernel): for a call the CPU
    GEMV path takes, the byte-plane kernel on the state's addresses (what matmul_4bit calls, less its checks and
    the output allocation); otherwise the registered kernel."""
    if backend == "cython_cpu":
        fn = _planes_call(A, P, qs)
        if fn is not None:
            return fn
    from workbench.backends.registry import registered
    from workbench.matmul import _packed
    from workbench.ops import _nested_args
    fn = registered("workbench::gemm_4bit")[backend]
    N, K = qs.shape
    absmax, a8, acode, aoff = _nested_args(qs, backend)
    A2, B, table = A.reshape(-1, K).contiguous(), _packed(P), qs.code.float().contiguous()
    return lambda: fn(A2, B, [N, K], absmax, table, qs.blocksize, None, a8, acode, aoff)


def _planes_call(A, P, qs):
    from workbench import matmul as mm
    kernel, plan = mm._planes_kernel(), mm._gemv_plan(qs)[2]
    kind = mm._PLANE_KINDS.get(A.dtype)
    if not kernel or plan is None or kind is None or A.device.type != "cpu" or not 1 <= A.shape[0] <= mm._PLANE_MAX_M:
        return None
    N, K, _, (a2, a8, c2, off, table, bs), _ = plan
    A2, B = A.reshape(-1, K).contiguous(), P.contiguous()
    out = torch.empty(A2.shape[0], N, dtype=A.dtype)
    return lambda: kernel(A2.data_ptr(), A2.shape[0], N, K, B.data_ptr(), a2, a8, c2, off, table, bs, kind, 0,
                          out.data_ptr())


def _module(W, A):
    """``workbench.nn.Linear4bit`` forward with its defaults (backend auto, compute dtype = the input's), no bias,
    quantized from W as the benchmark's weight is (NF4, blocksize 64, double quant: the same bytes)."""
    from workbench.nn import Linear4bit
    m = Linear4bit(W.shape[1], W.shape[0], bias=False, weight=W, quant_type="nf4", blocksize=64,
                   compress_statistics=True)
    return lambda: m(A)


def _cases(device, A, W, P, qs, bqs, bnb, wbytes, backends=CPU_BACKENDS):
    M, K = A.shape
    act = 2 * M * K
    cases = {"ours": (lambda: matmul_4bit(A, P, qs), wbytes + act, None),
             "ours_module": (_module(W, A), wbytes + act, None)}
    if device == "cpu":
        for b in backends:
            cases[f"ours_{b}"] = ((lambda b=b: matmul_4bit(A, P, qs, backend=b)), wbytes + act, _kernel_call(A, P, qs, b))
    cases["dense_bf16"] = (lambda: torch.nn.functional.linear(A, W), 2 * W.numel() + act, None)
    if bnb:
        cases["bnb"] = (lambda: bnb.matmul_4bit(A, P, bqs), wbytes + act, None)
    return cases


def _interleaved(fns: dict, reps: int, warmup: int = 3) -> tuple[dict, dict]:
    """Median wall ms and median process CPU ms per name, each repeat calling every function once, in an order
    shuffled per repeat (fixed seed): which case runs after which decides what the cache holds (ours and numba
    read the same packed weights; bitsandbytes and dense evict them), so no case always follows the same one."""
    import random
    import statistics
    import time
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    wall, cpu = {k: [] for k in fns}, {k: [] for k in fns}
    order, rnd = list(fns), random.Random(0)
    for _ in range(reps):
        rnd.shuffle(order)
        for k in order:
            fn = fns[k]
            c0, t0 = time.process_time(), time.perf_counter()
            fn()
            wall[k].append((time.perf_counter() - t0) * 1e3)
            cpu[k].append((time.process_time() - c0) * 1e3)
    med = statistics.median
    return {k: med(v) for k, v in wall.items()}, {k: med(v) for k, v in cpu.items()}


def _row(name, N, K, M, public, kms, nbytes, copy):
    ms = kms if kms is not None else public
    return dict(op="matmul_4bit", impl=name, N=N, K=K, M=M, dtype="bfloat16", public_ms=public, kernel_ms=kms,
                bytes=nbytes, gbps=nbytes / (ms * 1e-3) / 1e9, copy_gbps=copy,
                pct_copy=100 * nbytes / (ms * 1e-3) / 1e9 / copy)


def run(device: str = "cuda", shapes=None, reps: int = 20, backends=CPU_BACKENDS) -> pd.DataFrame:
    import os
    bnb = oracle.bitsandbytes()
    shapes = shapes or (GPU_SHAPES if device == "cuda" else CPU_SHAPES)
    copy = bench.copy_bandwidth(device, nbytes=1 << (28 if device == "cuda" else 26))
    load_start = os.getloadavg()[0]
    rows = []
    g = torch.Generator(device=device).manual_seed(0)
    for (N, K), Ms in shapes:
        W = torch.randn(N, K, device=device, dtype=torch.bfloat16, generator=g)
        P, qs = wb.quantize_4bit(W, blocksize=64, quant_type="nf4", compress_statistics=True)
        bqs = qs.to_bnb() if bnb else None
        wbytes = weight_bytes((N, K), 64, True)
        for M in Ms:
            A = torch.randn(M, K, device=device, dtype=torch.bfloat16, generator=g)
            cases = _cases(device, A, W, P, qs, bqs, bnb, wbytes, backends)
            with torch.no_grad(), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                if device == "cpu":
                    fns = {k: c[0] for k, c in cases.items()}
                    fns.update({f"{k}:kernel": c[2] for k, c in cases.items() if c[2] is not None})
                    med, cpu = _interleaved(fns, reps)
                    new = [dict(_row(k, N, K, M, med[k], med.get(f"{k}:kernel"), c[1], copy), cpu_ms=cpu[k])
                           for k, c in cases.items()]
                else:
                    new = []
                    for name, (fn, nbytes, _) in cases.items():
                        t = bench.time_fn(fn, device, warmup=3, reps=reps)
                        new.append(_row(name, N, K, M, t.median_ms, graph_ms(fn), nbytes, copy))
            for r in new:
                kms = r["kernel_ms"]
                print(f"{r['impl']:>16} {N}x{K} M={M}: public {r['public_ms']:.4f} ms"
                      + (f", kernel {kms:.4f} ms" if kms is not None else "")
                      + f", {r['gbps']:.1f} GB/s ({r['pct_copy']:.0f} % of copy)")
            rows += new
    df = pd.DataFrame(rows)
    df["load_start"], df["load_end"] = load_start, os.getloadavg()[0]
    return speedups(df, ("dense_bf16", "bnb"), "speedup_vs_{other}_{what}")


def speedups(df: pd.DataFrame, others, column: str, cols=("public_ms", "kernel_ms")) -> pd.DataFrame:
    """On ours' rows, their time / ours per (shape, M), for each time column in ``cols`` and each impl in
    ``others``; the column name is ``column`` formatted with ``other`` and ``what`` ('public', 'kernel', ...)."""
    for (N, K, M), grp in df.groupby(["N", "K", "M"]):
        ours = grp[grp.impl == "ours"]
        for other in others:
            o = grp[grp.impl == other]
            if len(ours) and len(o):
                for col in cols:
                    a, b = ours[col].iloc[0], o[col].iloc[0]
                    if a and b and a == a and b == b:
                        df.loc[ours.index, column.format(other=other, what=col.split("_")[0])] = b / a
    return df


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--out", default=None, help="folder for bench.parquet/.csv (e.g. reports/matmul-gpu)")
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--threads", type=int, default=None, help="CPU: torch/OpenMP threads (default: torch's)")
    ap.add_argument("--ms", default=None, help="comma-separated M values (default: the device's list)")
    ap.add_argument("--cpu-backends", default=",".join(CPU_BACKENDS),
                    help="forced CPU backends timed beside the default call ('' for none: numba_cpu's OpenMP "
                         "threads spin after each call and slow whatever runs next on 2 cores)")
    args = ap.parse_args(argv)
    if args.device == "cpu":
        torch.set_num_threads(args.threads or max(1, torch.get_num_threads()))
    shapes = None
    if args.ms:
        ms = tuple(int(m) for m in args.ms.split(","))
        shapes = [(shape, ms) for shape, _ in (GPU_SHAPES if args.device == "cuda" else CPU_SHAPES)]
    df = run(args.device, shapes=shapes, reps=args.reps,
             backends=tuple(b for b in args.cpu_backends.split(",") if b))
    with pd.option_context("display.width", 200, "display.max_columns", 30):
        print(df.drop(columns=["copy_gbps"]).to_string(index=False))
    if args.out:
        from workbench import results
        p = results.save(df, f"{args.out}/bench", meta=results.run_metadata(args.device))
        print(f"wrote {p}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
