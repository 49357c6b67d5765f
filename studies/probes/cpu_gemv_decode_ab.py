"""A/B of the CPU GEMV's 512-bit loop (workbench/_native/matmul_cpu.pyx): weights decoded by byte planes or by word
permutes (``set_word_lookup``), products by widening + FMA or by vdpbf16ps where exact (``set_bf16_dot``, AVX512_BF16),
interleaved in one process beside torch's dense bf16 matmul and bitsandbytes: the public ``matmul_4bit(A, W, state)``
with defaults, M = 1, bf16, NF4 blocksize 64 with double quant.

usage: python -m studies.probes.cpu_gemv_decode_ab [--reps 40] [--rounds 5] [--out DIR]"""
from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch

import workbench as wb
from workbench.backends.cython_cpu import native
from workbench.matmul import matmul_4bit

SHAPES = ((4096, 4096), (11008, 4096))


def _median_ms(fn, reps: int) -> float:
    fn()
    ts = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    ts.sort()
    return 1e3 * ts[len(ts) // 2]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=40)
    ap.add_argument("--rounds", type=int, default=5, help="interleaved rounds of every variant")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    lib = native("matmul")
    try:
        import bitsandbytes as bnb
    except Exception:   # noqa: BLE001  (absent or unusable: the A/B still runs)
        bnb = None
    g = torch.Generator().manual_seed(0)
    rows = []
    old, old_words = lib.set_bf16_dot(True), lib.set_word_lookup(False)
    try:
        for N, K in SHAPES:
            W = torch.randn(N, K, generator=g).to(torch.bfloat16)
            P, qs = wb.quantize_4bit(W, blocksize=64, quant_type="nf4", compress_statistics=True)
            A = torch.randn(1, K, generator=g).to(torch.bfloat16)
            Wd = W.t().contiguous().t()
            def ours(words, dot):
                return lambda: (lib.set_word_lookup(words), lib.set_bf16_dot(dot), matmul_4bit(A, P, qs))
            variants = {"planes_fma": ours(False, False), "planes_dot": ours(False, True),
                        "words_fma": ours(True, False), "words_dot": ours(True, True),
                        "dense_bf16": lambda: A @ Wd.t()}
            if bnb is not None:   # the same packed weights, bitsandbytes' own state (as studies/bench/bench_matmul.py)
                bqs = qs.to_bnb()
                variants["bnb"] = lambda: bnb.matmul_4bit(A, P, bqs)
            outs = {k: variants[k]()[-1] for k in ("planes_fma", "planes_dot", "words_fma", "words_dot")}
            times = {k: [] for k in variants}
            for _ in range(args.rounds):
                for name, fn in variants.items():
                    times[name].append(_median_ms(fn, args.reps))
            med = {k: sorted(v)[len(v) // 2] for k, v in times.items()}
            row = dict(N=N, K=K, **{f"{k}_ms": v for k, v in med.items()}, load=os.getloadavg()[0],
                       outputs_differing_from_planes_fma={k: int((v != outs["planes_fma"]).sum()) for k, v in outs.items()})
            rows.append(row)
            print(f"{N}x{K}: " + "  ".join(f"{k} {v:.3f} ms" for k, v in med.items())
                  + (f"  best vs bnb {med['bnb'] / min(med[k] for k in outs):.1f}x" if "bnb" in med else "")
                  + f"  best vs dense {med['dense_bf16'] / min(med[k] for k in outs):.2f}x", flush=True)
    finally:
        lib.set_bf16_dot(old)
        lib.set_word_lookup(old_words)
    if args.out:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        Path(args.out, "cpu_gemv_decode_ab.json").write_text(json.dumps(dict(rows=rows, threads=torch.get_num_threads(),
                                                                         has_bf16=lib.HAS_BF16_ROUND), indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
