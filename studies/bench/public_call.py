"""The public API at kernel speed? Each op as a user calls it, beside its kernels' own time.

    python -m studies.bench.public_call [--n-log2 28] [--out DIR]          (CUDA)
    python -m studies.bench.public_call --device cpu [--n-log2 22]         (CPU)

Per op (n = 2**28 bf16 by default; int8 on a 2**14 x 2**14 fp16 matrix), in one process:
  * public_ms: event timing (median) of the public call with default arguments, as a user writes it
    (``wb.quantize_4bit(A, blocksize=64, quant_type="nf4")``: backend 'auto', nan_policy 'propagate');
  * kernel_ms: the GPU time of every kernel, memset and copy that call enqueues (CUPTI, summed);
  * ratio = public_ms / kernel_ms (the target is <= 1.10): one call on an idle GPU, so the host time
    before its first launch is exposed;
  * public_ms_back_to_back, ratio_back_to_back: calls in a row, as a loop over layers makes them;
  * host_us_4096: time per call at n = 4096, 1000 calls back to back, unsynchronized (median of 5 after a
    warm-up), ours and bitsandbytes' (its ops also go through torch.library). Where a call's kernels take
    longer on the GPU than its host work, the launch queue fills and this is GPU time: so also
  * host_idle_us_4096: the host time of one call made on an idle GPU with an empty launch queue (a sync
    before each call, none inside the timing; median of 500): the host work alone; and
  * kernel_us_4096: the GPU time of that call's kernels (CUPTI).
  * bnb_ms: bitsandbytes 0.50.2's own public call, same input;
  * GB/s and % of the device-to-device copy measured in the same run (bytes: inputs read once +
    outputs written once).
"""
from __future__ import annotations

import argparse
import json
import os
import platform

import pandas as pd
import torch

import workbench as wb
from studies.bench import oracle
from workbench import bench
from workbench.int8 import int8_vectorwise_quant


def _cases(n: int, F):
    """(op, args label, ours(), bnb() or None, bytes moved) at element count n."""
    g = torch.Generator(device="cuda").manual_seed(0)
    A = torch.randn(n, device="cuda", dtype=torch.bfloat16, generator=g)
    nb64, nb4096 = -(-n // 64), -(-n // 4096)
    p, s = wb.quantize_4bit(A, blocksize=64, quant_type="nf4")
    c, s8 = wb.quantize_blockwise(A)
    side = int(round(n ** 0.5))
    M = torch.randn(side, n // side, device="cuda", dtype=torch.float16, generator=g)
    out = [
        ("quantize_4bit", "nf4 bs64", lambda: wb.quantize_4bit(A, blocksize=64, quant_type="nf4"),
         (lambda: F.quantize_4bit(A, blocksize=64, quant_type="nf4")) if F else None, 2 * n + n // 2 + 4 * nb64),
        ("dequantize_4bit", "nf4 bs64", lambda: wb.dequantize_4bit(p, s), None, n // 2 + 4 * nb64 + 2 * n),
        ("quantize_blockwise", "dynamic bs4096", lambda: wb.quantize_blockwise(A),
         (lambda: F.quantize_blockwise(A)) if F else None, 2 * n + n + 4 * nb4096),
        ("dequantize_blockwise", "dynamic bs4096", lambda: wb.dequantize_blockwise(c, s8), None, n + 4 * nb4096 + 2 * n),
        ("int8_vectorwise_quant", "threshold 0", lambda: int8_vectorwise_quant(M, 0.0),
         (lambda: F.int8_vectorwise_quant(M, 0.0)) if F else None, 2 * M.numel() + M.numel() + 4 * M.shape[0]),
        ("int8_vectorwise_quant", "threshold 6", lambda: int8_vectorwise_quant(M, 6.0),
         (lambda: F.int8_vectorwise_quant(M, 6.0)) if F else None, 2 * M.numel() + M.numel() + 4 * M.shape[0]),
    ]
    if F is not None:  # bitsandbytes' dequantizers take its own states
        bp, bs = F.quantize_4bit(A, blocksize=64, quant_type="nf4")
        bc, bs8 = F.quantize_blockwise(A)
        out[1] = out[1][:3] + (lambda: F.dequantize_4bit(bp, bs),) + out[1][4:]
        out[3] = out[3][:3] + (lambda: F.dequantize_blockwise(bc, bs8),) + out[3][4:]
    return out


def run_cpu(n_log2: int, reps: int = 41) -> pd.DataFrame:
    """CPU: the public call (backend 'auto', defaults) beside the chosen backend's kernel adapter called
    directly (what the op dispatches to), and bitsandbytes' CPU call."""
    from workbench import codebooks as cbs
    from workbench.backends import get_op, resolve_name
    F = oracle.bitsandbytes("bitsandbytes.functional")
    n = 1 << n_log2
    A = torch.randn(n, generator=torch.Generator().manual_seed(0)).to(torch.bfloat16)
    nf4, dyn = cbs.get("nf4"), cbs.get("dynamic")
    p, s = wb.quantize_4bit(A, blocksize=64, quant_type="nf4")
    c, s8 = wb.quantize_blockwise(A)
    rows = []
    cases = [("quantize_4bit", lambda: wb.quantize_4bit(A, blocksize=64, quant_type="nf4"),
              lambda k: (lambda: k(A, nf4, 64)), (lambda: F.quantize_4bit(A, blocksize=64, quant_type="nf4")) if F else None),
             ("dequantize_4bit", lambda: wb.dequantize_4bit(p, s),
              lambda k: (lambda: k(p.view(-1), s.absmax, s.code, 64, n, torch.bfloat16)), None),
             ("quantize_blockwise", lambda: wb.quantize_blockwise(A),
              lambda k: (lambda: k(A, dyn, 4096)), (lambda: F.quantize_blockwise(A)) if F else None),
             ("dequantize_blockwise", lambda: wb.dequantize_blockwise(c, s8),
              lambda k: (lambda: k(c.view(-1), s8.absmax, s8.code, 4096, torch.bfloat16)), None)]
    for op, public, kernel_of, theirs in cases:
        be = resolve_name("auto", op, "cpu", "bfloat16")
        # bitsandbytes timed on its own: each of its ~0.1 s calls leaves torch's OpenMP threads spinning on both
        # cores, which slowed whichever of ours came next (the public call, in the fixed order of before)
        ms = bench.interleaved_ms({"public": public, "kernel": kernel_of(get_op(be, op, "cpu"))}, "cpu", reps)
        if theirs is not None:
            ms.update(bench.interleaved_ms({"bnb": theirs}, "cpu", reps))
        row = {"op": op, "n": n, "dtype": "bfloat16", "auto_backend": be, "public_ms": ms["public"],
               "kernel_ms": ms["kernel"], "ratio": ms["public"] / ms["kernel"]}
        if "bnb" in ms:
            row["bnb_ms"] = ms["bnb"]
            row["speedup_vs_bnb"] = ms["bnb"] / ms["public"]
        rows.append(row)
        print({k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items()}, flush=True)
    return pd.DataFrame(rows)


def _host_ms(fn, calls: int = 1000, repeats: int = 5) -> float:
    """Host ms per call at a size where the GPU work is negligible: calls back to back, unsynchronized
    (one sync per repeat), after a warm-up of 200 calls; median over repeats."""
    import statistics
    import time
    for _ in range(200):
        fn()
    torch.cuda.synchronize()
    samples = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(calls):
            fn()
        samples.append((time.perf_counter() - t0) * 1e3 / calls)
        torch.cuda.synchronize()
    return statistics.median(samples)


def _host_idle_ms(fn, calls: int = 500) -> float:
    """Host ms of one call on an idle GPU: synchronized before each call, so no launch waits for a queue slot
    and no earlier kernel overlaps; median over calls after a warm-up."""
    import statistics
    import time
    for _ in range(50):
        fn()
    samples = []
    for _ in range(calls):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - t0) * 1e3)
    torch.cuda.synchronize()
    return statistics.median(samples)


def run(n_log2: int) -> pd.DataFrame:
    F = oracle.bitsandbytes("bitsandbytes.functional")
    copy = bench.copy_bandwidth("cuda")
    big, small = _cases(1 << n_log2, F), _cases(4096, F)
    rows = []
    for (op, what, ours, theirs, nbytes), (_, _, ours_s, theirs_s, _) in zip(big, small):
        pub = bench.time_fn(ours, "cuda", warmup=3, reps=30)
        steady = bench.back_to_back_ms(ours, reps=20, warmup=1, repeats=7)   # a loop quantizing layer after layer
        kern, _ = bench.device_time(ours, reps=20)
        host = _host_ms(ours_s)
        row = {"op": op, "case": what, "n": 1 << n_log2, "public_ms": pub.median_ms, "kernel_ms": kern,
               "ratio": pub.median_ms / kern if kern else None,
               "public_ms_back_to_back": steady, "ratio_back_to_back": steady / kern if kern else None,
               "host_us_4096": host * 1e3, "host_idle_us_4096": _host_idle_ms(ours_s) * 1e3,
               "kernel_us_4096": (bench.device_time(ours_s, reps=20)[0] or float("nan")) * 1e3,
               "public_pct_copy": 100 * nbytes / (pub.median_ms * 1e-3) / 1e9 / copy,
               "kernel_pct_copy": (100 * nbytes / (kern * 1e-3) / 1e9 / copy) if kern else None,
               "copy_gbps": copy}
        if theirs is not None:
            row["bnb_ms"] = bench.time_fn(theirs, "cuda", warmup=3, reps=30).median_ms
            row["bnb_host_us_4096"] = _host_ms(theirs_s) * 1e3
            row["bnb_host_idle_us_4096"] = _host_idle_ms(theirs_s) * 1e3
            row["bnb_kernel_us_4096"] = (bench.device_time(theirs_s, reps=20)[0] or float("nan")) * 1e3
        rows.append(row)
        print({k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items()}, flush=True)
    return pd.DataFrame(rows)


def _cpu_model() -> str:
    """The CPU's model name and widest vector extension: the kernels take an AVX-512 or an AVX2 path, and VMs of
    one name have come with either."""
    name, flags = platform.processor() or platform.machine(), set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name") and ":" in line:
                    name = line.split(":", 1)[1].strip()
                elif line.startswith("flags") and ":" in line:
                    flags = set(line.split(":", 1)[1].split())
                    break
    except OSError:
        pass
    isa = "AVX-512" if {"avx512f", "avx512bw", "avx512vl", "avx512vbmi"} <= flags else "AVX2" if "avx2" in flags else ""
    return f"{name}, {isa}" if isa else name


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    ap.add_argument("--n-log2", type=int, default=None, help="log2 elements (default 28 on CUDA, 22 on CPU)")
    ap.add_argument("--out", default=os.environ.get("OUT", "out"))
    args = ap.parse_args(argv)
    if args.device == "cpu":
        df = run_cpu(args.n_log2 or 22)
        where = f"{_cpu_model()}, {torch.get_num_threads()} threads"
    else:
        df = run(args.n_log2 or 28)
        where = torch.cuda.get_device_name(0)
    os.makedirs(args.out, exist_ok=True)
    df.to_csv(os.path.join(args.out, f"public_call_{args.device}.csv"), index=False)
    from workbench.results import run_metadata
    meta = {"device": where, "torch": torch.__version__,
            "git": os.environ.get("KBIT_GIT_REV") or run_metadata(args.device).get("run_git") or "unknown"}
    with open(os.path.join(args.out, f"public_call_{args.device}_meta.json"), "w") as f:
        json.dump(meta, f)
    print(df.to_markdown(index=False, floatfmt=".3f"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
