"""CPU benchmark: every CPU backend side by side with bitsandbytes' CPU path, in one run.

    python -m studies.bench.bench_cpu [--n 16777216] [--quick] [--out reports/bench-cpu]

Medians of perf_counter timings after warm-up (workbench/bench.py), Melem/s and the ratio to
bitsandbytes measured in the same process; the RAM copy bandwidth as the 100% line; Numba's
cold-compile and cache-hit load times; peak-RSS growth per op (in a fresh subprocess, input
allocated before the baseline) against the size of the op's outputs.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch

ROOT = Path(__file__).resolve().parents[2]  # the repository root
OPS = ("quantize_4bit", "dequantize_4bit", "quantize_blockwise", "dequantize_blockwise")
BACKENDS = ("reference", "numba_cpu", "cython_cpu", "bnb")


def _cases(n: int, dtype: torch.dtype, backend: str):
    """(op label, blocksize, callable, output bytes) with inputs prepared outside the timing."""
    import workbench as wb
    A = torch.randn(n, dtype=torch.float32).to(dtype)
    p, s4 = wb.quantize_4bit(A, blocksize=64, quant_type="nf4", backend="reference")
    c, s8 = wb.quantize_blockwise(A, blocksize=256, backend="reference")
    esz = A.element_size()
    if backend == "bnb":
        import bitsandbytes.functional as F
        bs4 = F.QuantState.from_dict(s4.as_dict(packed=True), device="cpu")
        return [
            ("quantize_4bit nf4", 64, lambda: F.quantize_4bit(A, blocksize=64, quant_type="nf4"), n // 2),
            ("dequantize_4bit nf4", 64, lambda: F.dequantize_4bit(p, bs4), n * esz),
            ("quantize_blockwise", 256, lambda: F.quantize_blockwise(A, blocksize=256), n),
            ("dequantize_blockwise", 256, lambda: F.dequantize_blockwise(c, absmax=s8.absmax, blocksize=256), n * esz),
        ]
    return [
        ("quantize_4bit nf4", 64, lambda: wb.quantize_4bit(A, blocksize=64, quant_type="nf4", backend=backend), n // 2),
        ("dequantize_4bit nf4", 64, lambda: wb.dequantize_4bit(p, s4, backend=backend), n * esz),
        ("quantize_blockwise", 256, lambda: wb.quantize_blockwise(A, blocksize=256, backend=backend), n),
        ("dequantize_blockwise", 256, lambda: wb.dequantize_blockwise(c, s8, backend=backend), n * esz),
    ]


def run(n: int = 1 << 24, quick: bool = False, reps: int = 10) -> pd.DataFrame:
    from workbench.backends import status
    from workbench.bench import copy_bandwidth, row, time_fn
    rows = []
    copy = copy_bandwidth("cpu", nbytes=4 * n)
    dtypes = (torch.float32,) if quick else (torch.float32, torch.bfloat16)
    for dtype in dtypes:
        for backend in BACKENDS:
            ok, why = status(backend)
            if not ok:
                print(f"skip {backend}: {why}", file=sys.stderr)
                continue
            for label, bs, fn, out_bytes in _cases(n, dtype, backend):
                t = time_fn(fn, "cpu", warmup=2, reps=3 if quick else reps)
                in_bytes = n * torch.empty(0, dtype=dtype).element_size() if label.startswith("quant") else out_bytes // 1
                rows.append(row(label, backend, n, t, nbytes=None, copy_gbps=None, dtype=str(dtype).removeprefix("torch."),
                                blocksize=bs, copy_gbps_ram=copy))
                print(f"{backend:11s} {label:22s} {rows[-1]['dtype']:8s} {t.median_ms:9.2f} ms "
                      f"{rows[-1]['melem_per_s']:8.0f} Melem/s", flush=True)
    df = pd.DataFrame(rows)
    bnb = df[df.backend == "bnb"].set_index(["op", "dtype"])["melem_per_s"]
    df["x_bnb"] = [r.melem_per_s / bnb.get((r.op, r.dtype), float("nan")) for r in df.itertuples()]
    df["load_avg_1m"] = os.getloadavg()[0]
    return df


# ---------------------------------------------------------------- memory and compile time

_RSS_CHILD = r"""
import sys, torch, workbench as wb
n, backend, op = int(sys.argv[1]), sys.argv[2], sys.argv[3]
A = torch.randn(n)
p, s4 = wb.quantize_4bit(A, blocksize=64, quant_type="nf4", backend="cython_cpu")
c, s8 = wb.quantize_blockwise(A, blocksize=256, backend="cython_cpu")
f = {"quantize_4bit": lambda: wb.quantize_4bit(A[:4096], blocksize=64, quant_type="nf4", backend=backend),
     "dequantize_4bit": lambda: wb.dequantize_4bit(p[:2048], s4.__class__(s4.absmax[:64], shape=(4096,), code=s4.code, blocksize=64, quant_type="nf4", dtype=s4.dtype), backend=backend),
     "quantize_blockwise": lambda: wb.quantize_blockwise(A[:4096], blocksize=256, backend=backend),
     "dequantize_blockwise": lambda: wb.dequantize_blockwise(c[:4096], absmax=s8.absmax[:16], blocksize=256, backend=backend)}
f[op]()  # warm: compile/load outside the measurement
full = {"quantize_4bit": lambda: wb.quantize_4bit(A, blocksize=64, quant_type="nf4", backend=backend),
        "dequantize_4bit": lambda: wb.dequantize_4bit(p, s4, backend=backend),
        "quantize_blockwise": lambda: wb.quantize_blockwise(A, blocksize=256, backend=backend),
        "dequantize_blockwise": lambda: wb.dequantize_blockwise(c, s8, backend=backend)}[op]
def status(key):
    for line in open("/proc/self/status"):
        if line.startswith(key):
            return int(line.split()[1]) * 1024
open("/proc/self/clear_refs", "w").write("5")  # reset the peak (VmHWM) to the current RSS
base = status("VmRSS:")
out = full()
print(status("VmHWM:") - base)
"""

OUT_BYTES = {"quantize_4bit": lambda n: n // 2 + 4 * n // 64, "dequantize_4bit": lambda n: 4 * n,
             "quantize_blockwise": lambda n: n + 4 * n // 256, "dequantize_blockwise": lambda n: 4 * n}


def memory_rows(n: int) -> list[dict]:
    rows = []
    for backend in ("reference", "numba_cpu", "cython_cpu"):
        for op in OP_NAMES:
            # every large allocation mmapped and returned on free: RSS then tracks live memory
            env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="131072", MALLOC_TRIM_THRESHOLD_="0")
            r = subprocess.run([sys.executable, "-c", _RSS_CHILD, str(n), backend, op], capture_output=True,
                               text=True, cwd=ROOT, timeout=600, env=env)
            try:
                growth = int(r.stdout.strip().splitlines()[-1])
            except (IndexError, ValueError):
                print(r.stderr[-2000:], file=sys.stderr)
                continue
            out = OUT_BYTES[op](n)
            rows.append({"op": op, "backend": backend, "n": n, "rss_growth_bytes": growth, "output_bytes": out,
                         "rss_over_output": growth / out})
            print(f"rss {backend:11s} {op:22s} growth {growth / 2**20:8.1f} MiB  outputs {out / 2**20:8.1f} MiB")
    return rows


OP_NAMES = OPS

# issue 3's speed targets: minimum ratio to bitsandbytes' CPU path measured in the same run
TARGETS = {"quantize_4bit nf4": 20.0, "dequantize_4bit nf4": 2.0, "quantize_blockwise": 5.0,
           "dequantize_blockwise": 2.0}

_COMPILE_CHILD = r"""
import time, torch
t0 = time.perf_counter()
import workbench as wb
from numba_kernels.cpu import quant
t1 = time.perf_counter()
A = torch.randn(4096)
p, s = wb.quantize_4bit(A, blocksize=64, quant_type="nf4", backend="numba_cpu")
wb.dequantize_4bit(p, s, backend="numba_cpu")
c, s8 = wb.quantize_blockwise(A, blocksize=256, backend="numba_cpu")
wb.dequantize_blockwise(c, s8, backend="numba_cpu")
print(time.perf_counter() - t1)
"""


def numba_compile_times() -> dict:
    """Seconds for the first call of the four Numba ops: cold (empty cache dir) and warm (cache hit)."""
    with tempfile.TemporaryDirectory() as d:
        env = dict(os.environ, NUMBA_CACHE_DIR=d)
        out = {}
        for label in ("cold", "warm"):
            r = subprocess.run([sys.executable, "-c", _COMPILE_CHILD], capture_output=True, text=True, cwd=ROOT,
                               env=env, timeout=900)
            out[label] = float(r.stdout.strip().splitlines()[-1])
    return out


def write(df: pd.DataFrame, mem: list[dict], compile_s: dict, out: Path, meta: dict | None = None) -> None:
    from workbench.results import run_metadata, save
    if meta is None:
        meta = run_metadata("cpu")
        save(df, out / "results", meta)
        if mem:
            save(pd.DataFrame(mem), out / "memory", meta)
    piv = df.pivot_table(index=["op", "dtype"], columns="backend", values="melem_per_s").round(0)
    ratio = df[df.backend != "bnb"].pivot_table(index=["op", "dtype"], columns="backend", values="x_bnb").round(2)
    lines = [f"# CPU benchmark (n = {int(df.n.iloc[0]):,}, {meta['run_device']}, torch {meta['run_torch']}, "
             f"numba {meta['run_numba']}, bitsandbytes {meta['run_bitsandbytes']}, git {meta['run_git']})", "",
             f"Load average during the run: {df.load_avg_1m.iloc[0]:.2f}. RAM copy bandwidth: "
             f"{df.copy_gbps_ram.iloc[0]:.1f} GB/s.", "", "## Melem/s (median)", "", piv.to_markdown(), "",
             "## Speed-up over bitsandbytes (same run)", "", ratio.to_markdown(), ""]
    tgt = ratio.copy()
    tgt.insert(0, "target", [TARGETS.get(op, float("nan")) for op, _ in tgt.index])
    for b in ("numba_cpu", "cython_cpu"):
        if b in tgt:
            tgt[f"{b} met"] = ["yes" if r >= t else "no" for r, t in zip(tgt[b], tgt.target)]
    lines += ["## Targets (issue 3: ratio to bitsandbytes)", "", tgt.drop(columns=["reference"], errors="ignore")
              .to_markdown(), "",
              "The machine is shared (2 cores, other jobs running): figures vary run to run; the load "
              "average above is the 1-minute value at the end of the timing loop.", ""]
    if compile_s:
        lines += [f"Numba first call of the four ops: {compile_s['cold']:.1f} s cold (compiling), "
                  f"{compile_s['warm']:.2f} s warm (loaded from the on-disk cache, `cache=True`).", ""]
    if mem:
        m = pd.DataFrame(mem).set_index(["op", "backend"])[["rss_growth_bytes", "output_bytes", "rss_over_output"]]
        lines += ["## Peak RSS growth vs output size", "", m.round(3).to_markdown(), ""]
    (out / "README.md").write_text("\n".join(lines))
    print("\n".join(lines))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=1 << 24)
    ap.add_argument("--quick", action="store_true", help="fp32 only, 3 reps, no subprocess checks")
    ap.add_argument("--out", default=str(ROOT / "reports" / "bench-cpu"))
    ap.add_argument("--render", action="store_true", help="rewrite README.md from the saved results only")
    args = ap.parse_args(argv)
    if args.render:
        out = Path(args.out)
        df = pd.read_parquet(out / "results.parquet")
        mem = pd.read_parquet(out / "memory.parquet").to_dict("records") if (out / "memory.parquet").exists() else []
        comp = json.loads((out / "compile_seconds.json").read_text()) if (out / "compile_seconds.json").exists() else {}
        write(df, mem, comp, out, meta={k: df[k].iloc[0] for k in df.columns if k.startswith("run_")})
        return 0
    t0 = time.time()
    df = run(args.n, quick=args.quick)
    mem = [] if args.quick else memory_rows(args.n)
    comp = {} if args.quick else numba_compile_times()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    write(df, mem, comp, out)
    (out / "compile_seconds.json").write_text(json.dumps(comp))
    print(f"done in {time.time() - t0:.0f} s -> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
