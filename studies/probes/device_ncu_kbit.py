"""One launch each of a k-bit quantizer or dequantizer at n = 2**28 bf16 (the defaults: blocksize 32, e4m4), for
ncu to profile, e.g. ``ncu -k regex:kk_quantize_lane python3 -m studies.probes.device_ncu_kbit --ks 4 8``, or the
Numba CUDA kernels: ``--backend numba_cuda --ops quantize dequantize`` (each is called twice: the first call
compiles and takes Numba's launch path; profile with ``--launch-skip 1 --launch-count 1`` per kernel name)."""
import argparse

import torch

from workbench import kbit

ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
ap.add_argument("--ks", type=int, nargs="+", default=[4, 8])
ap.add_argument("--layout", default="bitplane", choices=("bitplane", "dense"))
ap.add_argument("--backend", default="cuda", choices=("cuda", "numba_cuda"))
ap.add_argument("--ops", nargs="+", default=["quantize"], choices=("quantize", "dequantize"))
args = ap.parse_args()
A = torch.randn(1 << 28, device="cuda", dtype=torch.bfloat16)
calls = 2 if args.backend == "numba_cuda" else 1
for k in args.ks:
    q = None
    for _ in range(calls):
        if "quantize" in args.ops or q is None:
            q = kbit.quantize_kbit(A, k, layout=args.layout, backend=args.backend)
    if "dequantize" in args.ops:
        for _ in range(calls):
            kbit.dequantize_kbit(*q, backend=args.backend)
torch.cuda.synchronize()
