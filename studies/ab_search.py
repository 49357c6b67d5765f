"""A/B of the CUDA search tables: times the production quantizers (n = 2**28 bf16, CUDA events,
median after warm-up) and the 8-bit optimizer step (2**27 fp32) under each search setting, one
subprocess per setting (the library reads KBIT_QUANT_SEARCH once per process).

    python -m studies.ab_search [--out DIR]      # on a GPU machine
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

SETTINGS = {"quant": ["default", "clamped", "cell"], "optim": ["default", "cell"]}


def _child(kind: str) -> list[dict]:
    import torch

    from workbench import bench
    from workbench import codebooks as cbs
    rows = []
    if kind == "quant":
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
    else:
        from workbench.backends.cuda import optim as O
        from workbench.optim import functional as W
        n = 1 << 27
        g = torch.randn(n, device="cuda") * 1e-2
        p = torch.randn(n, device="cuda")
        for name in ("adam", "momentum"):
            two = name == "adam"
            s1 = torch.zeros(n, dtype=torch.uint8, device="cuda")
            s2 = torch.zeros(n, dtype=torch.uint8, device="cuda") if two else None
            a1 = torch.zeros(n // 256, device="cuda")
            a2 = torch.zeros(n // 256, device="cuda") if two else None
            q1, q2 = W.qmap(True, "cuda"), (W.qmap(False, "cuda") if two else None)
            fn = lambda: O.optimizer_update_8bit_blockwise(name, g, p, s1, s2, 0.9, 0.995, 0.0, 0.0, 1e-8, 2, 1e-3,  # noqa: E731
                                                           q1, q2, a1, a2, 0.0)
            t = bench.time_fn(fn, "cuda", warmup=5, reps=30)
            nbytes = n * (4 + 8 + 2 * (2 if two else 1)) + (n // 256) * 8 * (2 if two else 1)
            rows.append(dict(op=f"{name}8bit", code="dynamic", bs=256, ms=t.median_ms, gbps=nbytes / (t.median_ms * 1e6)))
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", default=None)
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        print(json.dumps(_child(args.child)))
        return 0
    from workbench import bench
    copy = bench.copy_bandwidth("cuda", nbytes=1 << 30, reps=20)
    lines = [f"copy {copy:.0f} GB/s", "| kind | setting | op | code | bs | ms | GB/s | % copy |", "|---|---|---|---|---:|---:|---:|---:|"]
    for kind, settings in SETTINGS.items():
        for s in settings:
            env = dict(os.environ)
            var = "KBIT_QUANT_SEARCH" if kind == "quant" else "KBIT_OPTIM_SEARCH"
            env.pop(var, None)
            if s != "default":
                env[var] = s
            r = subprocess.run([sys.executable, "-m", "studies.ab_search", "--child", kind], env=env,
                               capture_output=True, text=True)
            if r.returncode != 0:
                lines.append(f"| {kind} | {s} | FAILED: {r.stderr[-300:]!r} |")
                continue
            for row in json.loads(r.stdout.strip().splitlines()[-1]):
                lines.append(f"| {kind} | {s} | {row['op']} | {row['code']} | {row['bs']} | {row['ms']:.4f} | "
                             f"{row['gbps']:.0f} | {100 * row['gbps'] / copy:.1f} |")
    text = "\n".join(lines)
    print(text)
    if args.out:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        (Path(args.out) / "ab_search.md").write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
