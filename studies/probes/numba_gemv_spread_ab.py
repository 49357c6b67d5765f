"""A/B of the Numba GEMV's chunk order (numba_kernels/cuda/matmul.py ``gemv_rows``): each warp of a CTA on a
contiguous range of a row's chunks (``spread=False``, the earlier kernel) against the warps taking the chunks in
turn (``spread=True``, the default), through the public ``matmul_4bit(..., backend="numba_cuda")``. M = 1, bf16,
NF4 blocksize 64 with double quant (weights quantized by the reference backend: no CUDA library to build). The two
orders sum in different orders, so their outputs are compared with each other and with a float64 product of the
dequantized weights. Kernel time by CUDA-graph replay, GB/s of the bytes the kernel reads and % of the device copy
measured in the same run.

usage (GPU): python -m studies.probes.numba_gemv_spread_ab [--shapes 28672x8192,4096x14336] [--out DIR]"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

import workbench as wb
from workbench import bench
from workbench.matmul import matmul_4bit


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shapes", default="28672x8192,8192x28672,4096x14336")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    from numba_kernels.cuda import matmul as K
    build = K.gemv_rows
    copy = bench.copy_bandwidth("cuda")
    g = torch.Generator(device="cuda").manual_seed(0)
    rows = []
    for shape in args.shapes.split(","):
        N, Kd = (int(v) for v in shape.split("x"))
        W = torch.randn(N, Kd, device="cuda", dtype=torch.bfloat16, generator=g)
        P, qs = wb.quantize_4bit(W, blocksize=64, quant_type="nf4", compress_statistics=True, backend="reference")
        A = torch.randn(1, Kd, device="cuda", dtype=torch.bfloat16, generator=g)
        exact = A.double() @ wb.dequantize_4bit(P, qs, backend="reference").double().t()
        nbytes = bench.tensor_bytes(P, qs.absmax, qs.state2.absmax, A)
        outs = {}
        for spread in (False, True):
            K.gemv_rows = lambda ch, M, kind, s=spread: build(ch, M, kind, s)   # noqa: E731
            try:
                outs[spread] = matmul_4bit(A, P, qs, backend="numba_cuda")
                ms = bench.graph_replay_ms(lambda: matmul_4bit(A, P, qs, backend="numba_cuda"), calls=20)
            finally:
                K.gemv_rows = build
            err = float((outs[spread].double() - exact).abs().max())
            pct = 100 * nbytes / (ms * 1e-3) / (copy * 1e9)
            rows.append(dict(N=N, K=Kd, spread=spread, kernel_ms=ms, pct_copy=pct, max_abs_err_vs_float64=err))
            print(f"{N:>6}x{Kd:<6} spread={spread!s:5}  {ms * 1e3:7.1f} us  {pct:5.1f} % of copy  "
                  f"max |err| vs float64 {err:.3g}", flush=True)
        diff = float((outs[True].float() - outs[False].float()).abs().max())
        print(f"{'':13} max |spread - contiguous| {diff:.3g} (output scale {float(exact.abs().max()):.3g})")
    print(f"copy {copy:.0f} GB/s")
    if args.out:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        Path(args.out, "numba_gemv_spread_ab.json").write_text(json.dumps(dict(copy_gbps=copy, rows=rows), indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
