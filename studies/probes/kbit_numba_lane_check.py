"""The Numba CUDA lane quantizer against the CUDA one, bit for bit, on the GPU, then (``--bench-out``) the k-bit
bench in the same process, so Numba compiles each kernel once. The CUDA kernels equal the reference bit for bit
(tests/test_kbit_gpu.py); this is the quick check of a Numba kernel change on real hardware, where the full Numba
GPU test set needs 25 processes (studies/probes/device_kbit_numba_cuda.sh).

Per K and layout: fresh normal x 3^normal data of n = 2^20 + 77 bf16 (a partial last group), an all-zero block,
tiny blocks (divisors below 2^-60: the exact path), one huge outlier; blocksize 32 (the default; 16 is the same
kernel source, compiled apart), codes against the exact scale and the decoded one.

Numba compiles each kernel for 15 s or more, CPU bound, so several (K, layout) runs go in parallel processes;
``--bench-after F`` holds a process's bench until file F exists, and ``--bench-done F`` creates F after it, so the
benches run one at a time on a quiet GPU (studies/probes/device_kbit_numba_ratios.sh).

usage (GPU): python -m studies.probes.kbit_numba_lane_check [--ks 2,3,4,5,6,7] [--layouts bitplane]
             [--bench-out DIR [--bench-after F] [--bench-done F]]  (exit 1 on any difference)"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

from workbench import kbit


def _data(n: int, seed: int) -> torch.Tensor:
    g = torch.Generator(device="cuda").manual_seed(seed)
    A = torch.randn(n, generator=g, device="cuda") * 3 ** torch.randn(n, generator=g, device="cuda")
    A[64:96] = 0
    A[96:160] *= 1e-30
    A[1000] = 6e4
    return A.to(torch.bfloat16)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ks", default="2,3,4,5,6,7")
    ap.add_argument("--layouts", default="bitplane")
    ap.add_argument("--bench-out", default=None, help="then run studies.bench.bench_kbit_gpu into this folder")
    ap.add_argument("--bench-after", default=None, help="hold the bench until this file exists")
    ap.add_argument("--bench-done", default=None, help="create this file after the bench")
    args = ap.parse_args(argv)
    try:
        return _run(args)
    finally:   # the turn passes on in order, also from a process that failed before its bench
        if args.bench_done:
            _wait_for(args.bench_after)
            Path(args.bench_done).touch()


def _wait_for(path) -> None:
    while path and not Path(path).exists():
        time.sleep(1)


def _run(args) -> int:
    ks = [int(k) for k in args.ks.split(",")]
    layouts = args.layouts.split(",")
    n, differ = (1 << 20) + 77, 0
    for k in ks:
        for layout in layouts:
            A = _data(n, 100 * k + len(layout))
            for against in ("exact", "decoded"):
                got = [kbit.quantize_kbit(A, k=k, blocksize=32, layout=layout, codes_against=against, backend=b)
                       for b in ("cuda", "numba_cuda")]
                same = torch.equal(got[0][0], got[1][0]) and torch.equal(got[0][1].scales, got[1][1].scales)
                differ += not same
                print(f"K={k} {layout:8s} bs=32 {against:7s} numba_cuda == cuda: {same}", flush=True)
    print(f"cases that differ: {differ}", flush=True)
    if args.bench_out:
        from studies.bench import bench_kbit_gpu
        _wait_for(args.bench_after)
        bench_kbit_gpu.main(["--out", args.bench_out, "--backends", "cuda", "numba_cuda", "--ops", "quantize_kbit",
                             "--layouts", *layouts, "--ks", *map(str, ks)])
    return 1 if differ else 0


if __name__ == "__main__":
    sys.exit(main())
