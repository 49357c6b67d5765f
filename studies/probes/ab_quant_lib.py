"""A/B of two builds of the production quant library in one process: the same ops, rounds interleaved
(A, B, A, B, ...) so clock and run-to-run drift fall on both. Per op: event time (what a caller sees, host
launch gap included), kernel time (CUPTI, workbench.bench.device_time) and host time per call, medians
over rounds, and whether both builds give identical outputs.

    python -m studies.probes.ab_quant_lib LIB_A LIB_B [--rounds 5] [--out DIR]     # on a GPU machine

``bash studies/probes/device_all.sh ab`` builds the library of git revision $AB_REV (``git archive`` into /tmp, then
``workbench.cuda_build``) beside this tree's and runs this script on the two.
"""
from __future__ import annotations

import argparse
import ctypes
import statistics
from pathlib import Path

import torch

from workbench import bench
from workbench import codebooks as cbs
from workbench.backends.cuda import quant as C


def _use(path: str) -> None:
    """Point the cuda adapter at the library at ``path``: its launches bound, its knobs declared as built."""
    C._lib = None
    import workbench.backends.cuda as base
    base._libs["quant"] = ctypes.CDLL(path)
    base.launch.bind(path)
    C.lib()


def _ops(A: torch.Tensor):
    nf4, fp4, dyn = cbs.get("nf4"), cbs.get("fp4"), cbs.get("dynamic")
    n, esz = A.numel(), A.element_size()
    out = []
    for name, cb, bs in (("nf4", nf4, 64), ("fp4", fp4, 64), ("nf4", nf4, 4096)):
        out.append((f"quantize_4bit {name} bs{bs}", lambda cb=cb, bs=bs: C.quantize_4bit(A, cb, bs),
                    n * esz + (n + 1) // 2 + 4 * (n // bs)))
    for bs in (256, 1024, 4096):
        out.append((f"quantize_blockwise dynamic bs{bs}", lambda bs=bs: C.quantize_blockwise(A, dyn, bs),
                    n * esz + n + 4 * (n // bs)))
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("lib_a")
    ap.add_argument("lib_b")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--n-log2", type=int, default=28)
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    torch.manual_seed(0)
    A = torch.randn(1 << args.n_log2, device="cuda", dtype=torch.bfloat16)
    copy = bench.copy_bandwidth("cuda")
    libs = {"A": args.lib_a, "B": args.lib_b}
    samples: dict = {}
    same = {}
    for r in range(args.rounds):
        for tag, path in libs.items():
            _use(path)
            for label, fn, nbytes in _ops(A):
                t = bench.time_fn(fn, "cuda", warmup=3, reps=20)
                k, h = bench.device_time(fn, reps=10)
                samples.setdefault((label, tag), []).append((t.median_ms, k or float("nan"), h))
                if r == 0:
                    same.setdefault(label, []).append([x.cpu() for x in fn()])
    lines = [f"# A/B of quant libraries on {torch.cuda.get_device_name(0)} (copy {copy:.0f} GB/s), "
             f"n = 2^{args.n_log2} bf16, {args.rounds} interleaved rounds", "",
             f"A = `{args.lib_a}`, B = `{args.lib_b}`", "",
             "| op | build | event ms | event % copy | kernel ms | kernel % copy | host ms | outputs equal |",
             "|---|---|---:|---:|---:|---:|---:|---|"]
    for label, _, nbytes in _ops(A):
        outs = same[label]
        eq = all(torch.equal(a, b) for a, b in zip(outs[0], outs[1]))
        for tag in libs:
            s = samples[(label, tag)]
            ev, k, h = (statistics.median(x[i] for x in s) for i in range(3))
            lines.append(f"| {label} | {tag} | {ev:.4f} | {100 * nbytes / (ev * 1e6) / copy:.1f} | {k:.4f} | "
                         f"{100 * nbytes / (k * 1e6) / copy:.1f} | {h:.4f} | {eq} |")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        (Path(args.out) / "ab_quant_lib.md").write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
