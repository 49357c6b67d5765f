"""A/B of the CUDA quantizers' search tables (fine direct/clamped, cell plan): times the production
quantizers (n = 2**28 bf16, CUDA events, median after warm-up) under each KBIT_QUANT_SEARCH
setting, one subprocess per setting (the library reads it once per process).

    python -m studies.probes.ab_search [--out DIR]      # on a GPU machine
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

SETTINGS = ["default", "clamped", "cell"]


def _child() -> list[dict]:
    import torch

    from workbench import bench
    from workbench import codebooks as cbs
    rows = []
    from workbench.backends.cuda import quant as C
    A = torch.randn(1 << 28, device="cuda", dtype=torch.bfloat16)
    nbytes_in = A.numel() * 2
    for op, cb, bs in (("quantize_4bit", "nf4", 64), ("quantize_4bit", "fp4", 64),
                       ("quantize_blockwise", "dynamic", 256), ("quantize_blockwise", "dynamic", 4096)):
        fn = getattr(C, op)
        t = bench.time_fn(lambda: fn(A, cbs.get(cb), bs), "cuda", warmup=5, reps=30)
        out = A.numel() // 2 if op == "quantize_4bit" else A.numel()
        rows.append(dict(op=op, code=cb, bs=bs, ms=t.median_ms,
                         gbps=(nbytes_in + out + 4 * A.numel() // bs) / (t.median_ms * 1e6)))
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", default=None)
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        print(json.dumps(_child()))
        return 0
    from workbench import bench
    copy = bench.copy_bandwidth("cuda", nbytes=1 << 30, reps=20)
    lines = [f"copy {copy:.0f} GB/s", "| setting | op | code | bs | ms | GB/s | % copy |", "|---|---|---|---:|---:|---:|---:|"]
    for s in SETTINGS:
        env = dict(os.environ)
        env.pop("KBIT_QUANT_SEARCH", None)
        if s != "default":
            env["KBIT_QUANT_SEARCH"] = s
        r = subprocess.run([sys.executable, "-m", "studies.probes.ab_search", "--child"], env=env, capture_output=True, text=True)
        if r.returncode != 0:
            lines.append(f"| {s} | FAILED: {r.stderr[-300:]!r} |")
            continue
        for row in json.loads(r.stdout.strip().splitlines()[-1]):
            lines.append(f"| {s} | {row['op']} | {row['code']} | {row['bs']} | {row['ms']:.4f} | "
                         f"{row['gbps']:.0f} | {100 * row['gbps'] / copy:.1f} |")
    text = "\n".join(lines)
    print(text)
    if args.out:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        (Path(args.out) / "ab_search.md").write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
