"""CPU, rows above the fused kernels (M > 32 for bf16): the weight dequantized a few MiB at a time into one reused
buffer, each piece multiplied as it is decoded (``_cpu_quant.dequant_matmul``, committed), against the whole weight
dequantized first (the path before: written to memory and read back, fresh pages from 32 MiB on), beside torch's
dense bf16 F.linear. Piece sizes 1, 4 (the default) and 16 MiB; "whole weight" and the pieces are the backend's path
after the public call's checks (the public call adds its host time to either). Then 1..8 rows (float32 and bf16,
4096x4096): each compiled backend's fused kernel (the lanes; cython_cpu's byte planes for bf16; forced with
FUSED_MAX_M = 8, the setting before) against the pieces, each alone and right after a dense F.linear (``_few_rows``).
Medians, one process.

usage: python -m studies.probes.cpu_dequant_pieces_ab [--out DIR] [--reps 9]"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import time
from pathlib import Path

import torch

import workbench as wb
from workbench import bench
from workbench.backends._cpu_common import dense_matmul
from workbench.backends._cpu_quant import block_scales, dequant_matmul
from workbench.backends.cython_cpu import native
from workbench.backends.cython_cpu import matmul as cython_matmul
from workbench.backends.numba_cpu import matmul as numba_matmul
from workbench.matmul import matmul_4bit
from workbench.ops import _nested_args

FEW_ROWS = (1, 2, 4, 8)
CASES = ((4096, 4096, 48), (4096, 4096, 64), (4096, 4096, 256), (11008, 4096, 64), (11008, 4096, 256),
         (1536, 384, 256))


def _rev() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def _median_ms(fn, before=None, reps: int = 9) -> float:
    """Median ms of ``fn`` over ``reps`` calls, each right after ``before()`` when given (not timed)."""
    fn()
    ts = []
    for _ in range(reps):
        if before is not None:
            before()
        t0 = time.perf_counter()
        fn()
        ts.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(ts)


def _few_rows(g, reps: int) -> list[dict]:
    """1..8 rows on 4096x4096: each compiled backend's fused kernel (forced with FUSED_MAX_M = 8, the setting
    before) against the weight in pieces, each timed in runs of its own calls ("alone") and with torch's dense matmul
    of the same rows before every call ("after F.linear": another library's threads have just run, as in a model's
    forward pass). Not interleaved: alternating cases here measured the thread pools' hand-over instead."""
    N = K = 4096
    rows = []
    fused_max = numba_matmul.FUSED_MAX_M, cython_matmul.FUSED_MAX_M
    for dtype in (torch.float32, torch.bfloat16):
        W = torch.randn(N, K, generator=g).to(dtype)
        P, qs = wb.quantize_4bit(W, blocksize=64, quant_type="nf4", compress_statistics=True)
        for M in FEW_ROWS:
            A = torch.randn(M, K, generator=g).to(dtype)
            lin = lambda: torch.nn.functional.linear(A, W)
            row = dict(dtype=str(dtype).removeprefix("torch."), M=M)
            row["F.linear"] = round(_median_ms(lin, reps=reps), 3)
            try:
                for fm, form in ((8, "fused"), (1, "pieces")):
                    numba_matmul.FUSED_MAX_M = cython_matmul.FUSED_MAX_M = fm
                    for name in ("numba_cpu", "cython_cpu"):
                        call = lambda name=name: matmul_4bit(A, P, qs, backend=name)
                        row[f"{name} {form}"] = round(_median_ms(call, reps=reps), 3)
                        row[f"{name} {form} after F.linear"] = round(_median_ms(call, lin, reps=reps), 3)
            finally:
                numba_matmul.FUSED_MAX_M, cython_matmul.FUSED_MAX_M = fused_max
            rows.append(row)
            print(f"{dtype} M={M}: " + "  ".join(f"{k} {v:.2f}" for k, v in row.items() if k not in ("dtype", "M")),
                  flush=True)
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=None)
    ap.add_argument("--reps", type=int, default=9)
    args = ap.parse_args(argv)
    g = torch.Generator().manual_seed(0)
    Q = native("quant")
    load_start = list(os.getloadavg())
    rows = []
    for N, K, M in CASES:
        W = torch.randn(N, K, generator=g).to(torch.bfloat16)
        A = torch.randn(M, K, generator=g).to(torch.bfloat16)
        b = torch.randn(N, generator=g).to(torch.bfloat16)
        P, qs = wb.quantize_4bit(W, blocksize=64, quant_type="nf4", compress_statistics=True)
        s = block_scales(Q, *_nested_args(qs, "cython_cpu"))
        tab = qs.code.float()

        def pieces(mib):
            return lambda: dequant_matmul(Q, A, P, (N, K), s, tab, 64, b, chunk_bytes=mib << 20)
        cases = {"matmul_4bit (public)": lambda: matmul_4bit(A, P, qs, bias=b),
                 "whole weight (before)": lambda: dense_matmul(A, wb.dequantize_4bit(P, qs), b),
                 "pieces 1 MiB": pieces(1), "pieces 4 MiB": pieces(4), "pieces 16 MiB": pieces(16),
                 "F.linear bf16": lambda: torch.nn.functional.linear(A, W, b)}
        med = bench.interleaved_ms(cases, reps=args.reps, warmup=2)
        rows.append(dict(N=N, K=K, M=M, **{k: round(v, 3) for k, v in med.items()}))
        print(f"{N}x{K} M={M}: " + "  ".join(f"{k} {v:.2f} ms" for k, v in med.items()), flush=True)
    few = _few_rows(g, args.reps)
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        meta = dict(cpu=platform.processor() or platform.machine(), threads=torch.get_num_threads(),
                    torch=torch.__version__, git=_rev(), load_start=load_start, load_end=list(os.getloadavg()))
        (out / "cpu_dequant_pieces_ab.json").write_text(json.dumps(dict(meta=meta, rows=rows, few_rows=few), indent=1)
                                                          + "\n")
        cols = [k for k in rows[0] if k not in ("N", "K", "M")]
        lines = ["| out x in | M | " + " | ".join(f"{c} ms" for c in cols)
                 + " | pieces 4 MiB vs whole weight | public vs F.linear |",
                 "|---|---|" + "---|" * (len(cols) + 2)]
        for r in rows:
            pub = r["matmul_4bit (public)"]
            lines.append(f"| {r['N']}x{r['K']} | {r['M']} | " + " | ".join(f"{r[c]:.2f}" for c in cols)
                         + f" | {r['whole weight (before)'] / r['pieces 4 MiB']:.2f}x"
                         + f" | {r['F.linear bf16'] / pub:.2f}x |")
        cols = [k for k in few[0] if k not in ("dtype", "M")]
        lines += ["", "| dtype | M | " + " | ".join(f"{c} ms" for c in cols) + " |", "|---|---|" + "---|" * len(cols)]
        lines += [f"| {r['dtype']} | {r['M']} | " + " | ".join(f"{r[c]:.2f}" for c in cols) + " |" for r in few]
        (out / "table.md").write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
