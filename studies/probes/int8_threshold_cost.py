"""Where the threshold path of the production int8 row kernel spends its time: the row kernel's GPU time
(CUPTI, ``bench.kernel_breakdown``) at threshold 0 and 6 on 8192 x 8192 fp16 inputs with 0, 1, 4, 16 and 64
planted outlier columns (x8: |x| >= 6 in about 45 % of their rows) and with the same number of outliers
scattered at random (no column repeats). If the cost follows the outliers per row, it is their flag stores;
if it is there without outliers, it is the kernel's code.

    python -m studies.probes.int8_threshold_cost [--rows 8192 --cols 8192] [--out FILE]
"""
from __future__ import annotations

import argparse
import json
import re

import torch

from workbench import bench
from workbench.backends.cuda import int8 as C


def kernels_us(A, thr):
    """GPU us per kernel of one call, by short name (k_flag_index<true> and <false> kept apart)."""
    out = {}
    for name, us in bench.kernel_breakdown(lambda: C.int8_vectorwise_quant(A, thr), reps=20).items():
        m = re.search(r"k_\w+(?:<(?:true|false)>)?|Memset|Memcpy \w+", name)
        key = m.group(0) if m else name[:40]
        out[key] = round(out.get(key, 0.0) + us, 2)
    return out


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=8192)
    ap.add_argument("--cols", type=int, default=8192)
    ap.add_argument("--out")
    args = ap.parse_args(argv)
    g = torch.Generator(device="cuda").manual_seed(0)
    base = torch.randn(args.rows, args.cols, generator=g, device="cuda")
    res = []
    for hot in (0, 1, 4, 16, 64):
        for kind in ("columns", "scattered"):
            if kind == "scattered" and hot == 0:
                continue
            a = base.clone()
            if kind == "columns":
                cols = torch.randperm(args.cols, generator=g, device="cuda")[:hot]
                a[:, cols] *= 8
            else:  # as many outliers as the planted columns give, each in its own column
                n = int(0.45 * hot * args.rows)
                flat = torch.randperm(args.rows * args.cols, generator=g, device="cuda")[:n]
                a.view(-1)[flat] = 8.0
            A = a.half()
            n_out = int((A.abs() >= 6).sum())
            for thr in (0.0, 6.0):
                r = {"hot": hot, "kind": kind, "threshold": thr, "outliers_per_row": n_out / args.rows,
                     "us": kernels_us(A, thr)}
                res.append(r)
                print(json.dumps(r))
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"device": torch.cuda.get_device_name(), "rows": args.rows, "cols": args.cols, "runs": res}, f,
                      indent=1)


if __name__ == "__main__":
    main()
