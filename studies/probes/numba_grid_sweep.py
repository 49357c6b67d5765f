"""Kernel time of the Numba CUDA quantizers vs their persistent grid (CTAs per SM).

    python -m studies.probes.numba_grid_sweep [--n-log2 28] [--per-sm 3,4,5,6,8,10,16]

Back-to-back calls between two CUDA events (the host keeps ahead of the GPU at 2^28, so this is
kernel time per call); the grid is forced through ``QUANTIZE_CTAS_PER_SM``. Prints the driver's
occupancy figure (resident CTAs per SM) of each kernel too. (reports/gpu-h100/numba_grid_sweep.txt
also holds a "no bounds" part: the kernels then carried launch bounds, since dropped.)
"""
from __future__ import annotations

import argparse
import statistics

import torch

from workbench import bench
from workbench import codebooks as cbs
from workbench.backends.numba_cuda import _launch
from workbench.backends.numba_cuda import quant as Q


def _per_call_ms(fn, calls=10, reps=7):
    """Median over ``reps`` of the back-to-back ms per call of ``calls`` calls."""
    return statistics.median(bench.back_to_back_ms(fn, reps=calls, warmup=1 if r == 0 else 0) for r in range(reps))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--n-log2", type=int, default=28)
    ap.add_argument("--per-sm", default="3,4,5,6,8,10,16")
    args = ap.parse_args(argv)
    n = 1 << args.n_log2
    A = torch.randn(n, device="cuda", dtype=torch.bfloat16)
    nf4, dyn = cbs.get("nf4"), cbs.get("dynamic")
    cases = {"quantize_4bit nf4 bs64": lambda: Q.quantize_4bit(A, nf4, 64),
             "quantize_blockwise bs256": lambda: Q.quantize_blockwise(A, dyn, 256),
             "quantize_blockwise bs4096": lambda: Q.quantize_blockwise(A, dyn, 4096)}
    real = Q.QUANTIZE_CTAS_PER_SM
    copy = _per_call_ms(lambda: A.clone())
    print(f"clone of 2^{args.n_log2} bf16: {copy:.4f} ms ({4 * n / copy / 1e6:.0f} GB/s)")
    for name, fn in cases.items():
        fn()
        torch.cuda.synchronize()
        occ = sorted(_launch._per_sm.values())
        row = [f"{name:28s} default {(_per_call_ms(fn)):.4f}"]
        for per_sm in map(int, args.per_sm.split(",")):
            Q.QUANTIZE_CTAS_PER_SM = per_sm
            row.append(f"{per_sm}/SM {_per_call_ms(fn):.4f}")
        Q.QUANTIZE_CTAS_PER_SM = real
        print(" | ".join(row))
    print("driver occupancy per kernel:", occ)


if __name__ == "__main__":
    main()
