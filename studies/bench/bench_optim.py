"""Optimizer step speed: our backends vs bitsandbytes 0.50.2 (and torch's fused AdamW on CUDA).

    python -m studies.bench.bench_optim --device cpu  [--n 4194304]      -> reports/optim-cpu/
    python -m studies.bench.bench_optim --device cuda [--n 134217728]    -> reports/optim-gpu/ (or --out DIR)

One row per (optimizer, state bits, backend): median step time over the same tensors (a fresh
random gradient each process, fixed across reps), effective bytes = every tensor the update reads
once + every tensor it writes once: 8-bit Adam = g 4 + p 4+4 + 2 x (codes 1+1) + absmax,
32-bit Adam = g 4 + p 4+4 + 2 x (state 4+4). % of copy is against the measured copy bandwidth.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]  # the repository root
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from workbench import bench, results  # noqa: E402
from workbench.backends import get_op, status  # noqa: E402
from workbench.optim import functional as W  # noqa: E402

CASES = [("adam", 8), ("adam", 32), ("lion", 8), ("ademamix", 8), ("momentum", 8)]


def _state(name, n, bits, dev):
    two = name in W.TWO_STATE
    shp = (2, n) if name == "ademamix" else (n,)
    if bits == 32:
        return dict(state1=torch.zeros(shp, device=dev), state2=torch.zeros(n, device=dev) if two else None)
    nb = (n + 255) // 256
    return dict(state1=torch.zeros(shp, dtype=torch.uint8, device=dev),
                state2=torch.zeros(n, dtype=torch.uint8, device=dev) if two else None,
                absmax1=torch.zeros((2, nb) if name == "ademamix" else (nb,), device=dev),
                absmax2=torch.zeros(nb, device=dev) if two else None,
                qmap1=W.qmap(True, dev), qmap2=W.qmap(False, dev) if two else None)


def _bytes(name, n, bits):
    k = 2 if name == "ademamix" else 1
    states = k + (1 if name in W.TWO_STATE else 0)
    nb = (n + 255) // 256
    if bits == 32:
        return n * (4 + 8 + 8 * states)
    return n * (4 + 8 + 2 * states) + nb * 8 * states


def _call(fn, name, bits, g, p, st, t=5):
    lr = 1e-3
    if bits == 32:
        fn(name, g, p, st["state1"], st["state2"], None, 0.0, 0.0, 0.9, 0.999, 0.9999, 5.0, 1e-8, 0.01, t, lr,
           1.0, False)
    else:
        fn(name, g, p, st["state1"], st["state2"], 0.9, 0.999, 0.9999, 5.0, 1e-8, t, lr, st["qmap1"],
           st["qmap2"], st["absmax1"], st["absmax2"], 0.01, 1.0, False)


def _bnb_op(bits):
    import bitsandbytes  # noqa: F401
    return (torch.ops.bitsandbytes.optimizer_update_32bit if bits == 32
            else torch.ops.bitsandbytes.optimizer_update_8bit_blockwise)


def run(device="cpu", n=None, reps=None, backends=None, cases=None):
    n = n or (1 << 22 if device == "cpu" else 1 << 27)
    reps = reps or (20 if device == "cpu" else 50)
    backends = backends or (("reference", "numba_cpu", "cython_cpu", "bnb") if device == "cpu"
                            else ("cuda", "numba_cuda", "bnb", "torch_fused"))
    cases = cases or CASES
    gen = torch.Generator().manual_seed(0)
    g = torch.randn(n, generator=gen).to(device) * 1e-2
    p0 = torch.randn(n, generator=gen).to(device)
    copy = bench.copy_bandwidth(device, nbytes=min(1 << 28, 8 * n))
    rows = []
    for name, bits in cases:
        for be in backends:
            if be == "torch_fused":
                if (name, bits) != ("adam", 32) or device != "cuda":
                    continue
                par = torch.nn.Parameter(p0.clone())
                par.grad = g.clone()
                opt = torch.optim.AdamW([par], lr=1e-3, fused=True)
                fn = opt.step
            else:
                if be == "bnb":
                    if not status("bnb")[0]:
                        continue
                    op = _bnb_op(bits)
                else:
                    ok, why = status(be)
                    if not ok:
                        print(f"skip {be}: {why}")
                        continue
                    try:
                        op = get_op(be, "optimizer_update_32bit" if bits == 32 else
                                    "optimizer_update_8bit_blockwise", device)
                    except Exception as e:
                        print(f"skip {be}: {e}")
                        continue
                p = p0.clone()
                st = _state(name, n, bits, device)
                fn = (lambda op=op, p=p, st=st: _call(op, name, bits, g, p, st))
            try:
                t = bench.time_fn(fn, device, warmup=3, reps=reps if be != "reference" else 3)
            except Exception as e:  # a backend failing one case should not kill the run
                print(f"fail {be} {name}{bits}: {type(e).__name__}: {e}")
                continue
            r = bench.row(f"{name}{bits}", be, n, t, _bytes(name, n, bits), copy, optimizer=name, bits=bits)
            print(f"{name:9s} {bits:2d}-bit {be:12s} {t.median_ms:9.3f} ms  {r['gbps']:7.1f} GB/s "
                  f"{r['pct_copy']:5.1f}% copy  {r['melem_per_s']:9.1f} Mparam/s", flush=True)
            rows.append(r)
            del fn
            if device == "cuda":
                torch.cuda.empty_cache()
    return rows


def markdown(df) -> str:
    lines = ["| optimizer | bits | backend | median ms | min ms | GB/s | % copy | Mparam/s | x bnb (median) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in df.itertuples():
        base = df[(df.optimizer == r.optimizer) & (df.bits == r.bits) & (df.backend == "bnb")]
        x = f"{base.median_ms.iloc[0] / r.median_ms:.2f}" if len(base) else ""
        lines.append(f"| {r.optimizer} | {r.bits} | {r.backend} | {r.median_ms:.3f} | {r.min_ms:.3f} | {r.gbps:.1f} | "
                     f"{r.pct_copy:.1f} | {r.melem_per_s:.1f} | {x} |")
    return "\n".join(lines) + "\n"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    ap.add_argument("--n", type=int, default=None)
    ap.add_argument("--reps", type=int, default=None)
    ap.add_argument("--backends", default=None, help="comma list")
    ap.add_argument("--out", default=None)
    a = ap.parse_args(argv)
    rows = run(a.device, a.n, a.reps, a.backends.split(",") if a.backends else None)
    meta = results.run_metadata(a.device)
    df = results.frame(rows, meta)
    out = Path(a.out or ROOT / "reports" / ("optim-cpu" if a.device == "cpu" else "optim-gpu"))
    results.save(df, out / "bench_optim")
    md = f"# Optimizer step, {meta['run_device']}, n = {df['n'].iloc[0] if len(df) else 0}\n\n" + markdown(df)
    (out / "bench_optim.md").write_text(md)
    print(md)


if __name__ == "__main__":
    main()
