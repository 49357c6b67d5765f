"""A/B of the cython_cpu GEMV's unscaled-lookup loop (matmul_cpu_unscaled.h) against its rule-2 loop, same process.

    python -m studies.probes.cpu_gemv_unscaled_ab --out reports/matmul-cpu/unscaled_ab_zen4

The public call ``matmul_4bit(A, P, qs)`` with defaults (NF4, blocksize 64, double quant, bf16), each repeat timing
every (shape, M, loop) case once in a shuffled order; ``--evict`` (default) touches 64 MB before each call, so the
weights come from DRAM as they do for a model's layers one after another. Per case: the median, and the largest
|out - reference| over the bound each loop is held to (error_bound for rule 2, error_bound_unscaled for unscaled).
Writes ab.json and ab.md (machine, git revision, load average around the run).
"""
from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import time

import torch

import workbench as wb
from workbench.backends.cython_cpu import native
from workbench.backends.reference import matmul as R
from workbench.matmul import matmul_4bit
from workbench.results import run_metadata

SHAPES = [(4096, 4096), (11008, 4096)]


def _worst_ratio(got, A, P, qs, unscaled):
    N, K = int(qs.shape[0]), int(qs.shape[1])
    a2, a8, c2, off = qs.state2.absmax, qs.absmax, qs.state2.code, qs.offset
    ref = R.gemm_4bit(A, P, (N, K), a2, qs.code, qs.blocksize, None, a8, c2, off)
    if unscaled:
        bound = R.unscaled_bound_of(A, P, (N, K), a2, qs.code, qs.blocksize, None, a8, c2, off, ref=ref)
    else:
        W = wb.dequantize_4bit(P, qs, backend="reference").to(A.dtype)
        bound = R.error_bound(A, W, None, A.dtype, ref)
    return float(((got.float() - ref.float()).abs() / bound).max())


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--reps", type=int, default=30)
    ap.add_argument("--ms", default="1,4,16")
    ap.add_argument("--no-evict", action="store_true")
    args = ap.parse_args(argv)
    lib = native("matmul")
    if not lib.HAS_UNSCALED:
        raise SystemExit("this CPU has no AVX512_BF16: the unscaled-lookup loop does not run here")
    ms = [int(m) for m in args.ms.split(",")]
    gen = torch.Generator().manual_seed(0)
    junk = torch.empty(64 << 20, dtype=torch.uint8)
    cases, data = [], {}
    for N, K in SHAPES:
        W = torch.randn(N, K, generator=gen).to(torch.bfloat16)
        P, qs = wb.quantize_4bit(W, blocksize=64, quant_type="nf4", compress_statistics=True)
        for M in ms:
            data[N, K, M] = (torch.randn(M, K, generator=gen).to(torch.bfloat16), P, qs)
            cases += [(N, K, M, "unscaled"), (N, K, M, "rule2")]
    old = lib.set_unscaled(True)
    times = {c: [] for c in cases}
    load_start = os.getloadavg()[0]
    try:
        for _ in range(3 + args.reps):
            random.shuffle(cases)
            for c in cases:
                A, P, qs = data[c[:3]]
                lib.set_unscaled(c[3] == "unscaled")
                if not args.no_evict:
                    junk.add_(1)
                t = time.perf_counter()
                matmul_4bit(A, P, qs)
                times[c].append(time.perf_counter() - t)
        rows = []
        for N, K in SHAPES:
            for M in ms:
                A, P, qs = data[N, K, M]
                row = {"N": N, "K": K, "M": M}
                for loop in ("rule2", "unscaled"):
                    lib.set_unscaled(loop == "unscaled")
                    row[f"{loop}_ms"] = statistics.median(times[N, K, M, loop][3:]) * 1e3
                    row[f"{loop}_err_over_bound"] = _worst_ratio(matmul_4bit(A, P, qs), A, P, qs, loop == "unscaled")
                row["speedup"] = row["rule2_ms"] / row["unscaled_ms"]
                rows.append(row)
    finally:
        lib.set_unscaled(old)
    meta = {**run_metadata("cpu"), "cpu_model": _cpu_model(), "evict": not args.no_evict, "reps": args.reps,
            "load_start": load_start, "load_end": os.getloadavg()[0]}
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "ab.json"), "w") as f:
        json.dump({"meta": meta, "rows": rows}, f, indent=1)
    lines = [f"# unscaled-lookup vs rule-2 loop, cython_cpu GEMV ({meta['cpu_model']}, {meta['run_threads']} threads)",
             "", f"git {meta['run_git']}, torch {meta['run_torch']}, {args.reps} shuffled repeats, 64 MB evicted "
             f"before each call: {meta['evict']}, load {load_start:.2f} -> {meta['load_end']:.2f}", "",
             "| out x in | M | rule 2 ms | unscaled ms | speedup | rule 2 err / bound | unscaled err / bound |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['N']}x{r['K']} | {r['M']} | {r['rule2_ms']:.3f} | {r['unscaled_ms']:.3f} | "
                     f"{r['speedup']:.2f}x | {r['rule2_err_over_bound']:.3f} | {r['unscaled_err_over_bound']:.3f} |")
    with open(os.path.join(args.out, "ab.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))


def _cpu_model() -> str:
    """/proc/cpuinfo's model name (run_metadata's run_cpu is only the architecture)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


if __name__ == "__main__":
    main()
