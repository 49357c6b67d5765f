"""Measure which backend is fastest per op, device and dtype; ``backend="auto"`` reads the result.

``python -m workbench.backends.rank [--device cpu|cuda] [--n N] [--out FILE]`` times the public
call of every quantization op on every available backend of the device (median of repeats
after warm-up, workbench.bench's protocol) and writes the ranking into ``auto_ranking.json``
beside this module, merged with the rankings already there for other devices. The committed
file holds the measurements of the machines named in its ``measured_on`` entry.
"""
from __future__ import annotations

import argparse
import json
import platform
import time

import torch

from . import NAMES, devices_of, status
from .registry import RANKING_FILE, registered
from ..bench import interleaved_ms

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
OPS = ("quantize_4bit", "dequantize_4bit", "quantize_blockwise", "dequantize_blockwise", "int8_vectorwise_quant",
       "optimizer_update_8bit_blockwise", "optimizer_update_32bit", "quantize_kbit", "dequantize_kbit")
SKIP = ("bnb",)  # the external oracle is never chosen by 'auto'
LAST = "reference"  # the spec: ranked last without timing it (seconds per call at these sizes)


def _calls(op: str, A: torch.Tensor, backend: str):
    import workbench as wb
    if op == "quantize_4bit":
        return lambda: wb.quantize_4bit(A, blocksize=64, quant_type="nf4", backend=backend)
    if op == "dequantize_4bit":
        p, s = wb.quantize_4bit(A, blocksize=64, quant_type="nf4", backend="reference")
        return lambda: wb.dequantize_4bit(p, s, backend=backend)
    if op == "quantize_blockwise":
        return lambda: wb.quantize_blockwise(A, blocksize=4096, backend=backend)
    if op == "dequantize_blockwise":
        c, s = wb.quantize_blockwise(A, blocksize=4096, backend="reference")
        return lambda: wb.dequantize_blockwise(c, s, backend=backend)
    if op in ("quantize_kbit", "dequantize_kbit"):   # the defaults: K = 4, bit-plane, blocksize 32, e4m4
        from workbench import kbit
        if op == "quantize_kbit":
            return lambda: kbit.quantize_kbit(A, 4, backend=backend)
        p, s = kbit.quantize_kbit(A, 4, backend="reference")
        return lambda: kbit.dequantize_kbit(p, s, backend=backend)
    if op == "int8_vectorwise_quant":
        from workbench.int8 import int8_vectorwise_quant
        M = A.view(-1, 1024)
        return lambda: int8_vectorwise_quant(M, 0.0, backend=backend)
    return _optimizer_step(op, A, backend)


def _optimizer_step(op: str, A: torch.Tensor, backend: str):
    """One Adam update of a parameter shaped like A (32-bit or 8-bit blockwise state)."""
    from workbench.optim import functional as F
    p, g = A.clone(), A.clone() * 1e-3
    if op == "optimizer_update_32bit":
        s1 = torch.zeros(A.numel(), dtype=torch.float32, device=A.device)
        s2 = torch.zeros_like(s1)
        return lambda: F.update_32bit("adam", g, p, s1, s2, None, 0.0, 0.0, 0.9, 0.999, 0.0, 0.0, 1e-8, 0.0, 1, 1e-3,
                                      backend=backend)
    nb = -(-A.numel() // F.BLOCKSIZE)
    c1 = torch.full((A.numel(),), 127, dtype=torch.uint8, device=A.device)
    c2 = torch.zeros_like(c1)
    a1 = torch.zeros(nb, dtype=torch.float32, device=A.device)
    a2 = torch.zeros_like(a1)
    q1, q2 = F.qmap(True, A.device), F.qmap(False, A.device)
    return lambda: F.update_8bit_blockwise("adam", g, p, c1, c2, 0.9, 0.999, 0.0, 0.0, 1e-8, 1, 1e-3, q1, q2, a1, a2,
                                           0.0, backend=backend)


def measure(device: str, n: int, reps: int) -> dict:
    """{op: {dtype: [backends, fastest first]}} plus the medians, for one device."""
    ranking, medians = {}, {}
    gen = torch.Generator().manual_seed(0)
    for op in OPS:
        impls = registered(op)
        cands = [b for b in NAMES if b not in SKIP and b in impls and status(b)[0] and device in devices_of(b)]
        timed = [b for b in cands if b != LAST] or cands
        for dname, dtype in DTYPES.items():
            A = torch.randn(n, generator=gen).to(device=device, dtype=dtype)
            # interleaved: one after another, a backend timed in a quiet minute beat one timed in a busy one
            ms = interleaved_ms({b: _calls(op, A, b) for b in timed}, device, reps, warmup=2)
            ranking.setdefault(op, {})[dname] = sorted(ms, key=ms.get) + [b for b in cands if b not in timed]
            medians.setdefault(op, {})[dname] = {b: round(v, 4) for b, v in ms.items()}
    return {"ranking": ranking, "median_ms": medians}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m workbench.backends.rank", description=__doc__.splitlines()[0])
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--n", type=int, default=1 << 22, help="elements per tensor (default 2**22)")
    ap.add_argument("--reps", type=int, default=15)
    ap.add_argument("--out", default=str(RANKING_FILE))
    args = ap.parse_args(argv)
    try:
        data = json.loads(open(args.out).read())
    except (OSError, ValueError):
        data = {}
    got = measure(args.device, args.n, args.reps)
    where = torch.cuda.get_device_name(0) if args.device == "cuda" else f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"
    # ops this run does not time (the matmul family: reports/matmul-cpu) keep their entries
    data.setdefault("ranking", {}).setdefault(args.device, {}).update(got["ranking"])
    data.setdefault("median_ms", {}).setdefault(args.device, {}).update(got["median_ms"])
    data.setdefault("measured_on", {})[args.device] = {"device": where, "n": args.n, "torch": torch.__version__,
                                                     "date": time.strftime("%Y-%m-%d")}
    with open(args.out, "w") as f:
        json.dump(data, f, indent=1, sort_keys=True)
        f.write("\n")
    for op, by_dtype in got["ranking"].items():
        print(op, {d: r[0] for d, r in by_dtype.items()})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
