"""One launch each of the k-bit CUDA quantizer at n = 2**28 bf16 (the defaults: blocksize 32, e4m4), for ncu to
profile, e.g. ``ncu -k regex:kk_quantize_lane python3 -m studies.probes.device_ncu_kbit --ks 4 8 --layout bitplane``."""
import argparse

import torch

from workbench import kbit

ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
ap.add_argument("--ks", type=int, nargs="+", default=[4, 8])
ap.add_argument("--layout", default="bitplane", choices=("bitplane", "dense"))
args = ap.parse_args()
A = torch.randn(1 << 28, device="cuda", dtype=torch.bfloat16)
for k in args.ks:
    kbit.quantize_kbit(A, k, layout=args.layout, backend="cuda")
torch.cuda.synchronize()
