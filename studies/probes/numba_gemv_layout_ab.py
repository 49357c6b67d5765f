"""A/B of the Numba GEMV's weight layout (workbench/backends/numba_cuda/matmul.py ``GEMV_LAYOUT``): ``gemv_rows``
on bitsandbytes' row layout (rule 2) against ``gemv_tiled`` on the tiled copy the production GEMM reads (unscaled
lookups; the default wherever the production path takes that GEMM), each forced, beside the production path
(``backend="cuda"``), through the public ``matmul_4bit(..., backend=...)``; ``numba_tiled_no_prefetch`` is
``gemv_tiled`` without its L2 prefetch (TILED_PREFETCH = 0). bf16, NF4 blocksize 64 with double quant, the five
shapes of issue 18.

Every output is checked first: the tiled GEMV within the reference's error_bound_unscaled, the row GEMV within
error_bound. Kernel time by CUDA-graph replay of 20 calls (median of 7; the Numba path's small extra kernels and
the output's cast included), public = event-timed median of one call; GB/s of the bytes a fused kernel reads
(packed weight, uint8 absmax, nested absmax, activations) and % of the device copy measured in the same run;
"% of cuda": the production path's kernel time over the Numba one (issue 18's target: >= 60 %).

usage (GPU): python -m studies.probes.numba_gemv_layout_ab [--ms 1,4] [--shapes 28672x8192,...] [--out DIR]"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

import workbench as wb
from workbench import bench
from workbench.backends import status
from workbench.backends.reference import matmul as R
from workbench.matmul import matmul_4bit

SHAPES = "28672x8192,8192x28672,14336x4096,4096x14336,4096x4096"


def _bound(A, P, qs, ref, unscaled):
    N, K = (int(v) for v in qs.shape)
    if unscaled:
        s2 = qs.state2
        return R.unscaled_bound_of(A, P, (N, K), s2.absmax, qs.code, qs.blocksize, None, qs.absmax, s2.code,
                                   qs.offset, ref=ref)
    W = wb.dequantize_4bit(P, qs, backend="reference").to(A.dtype)
    return R.error_bound(A, W, None, A.dtype, ref)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shapes", default=SHAPES)
    ap.add_argument("--ms", default="1,4")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    from numba_kernels.cuda import matmul as NK
    from workbench.backends.numba_cuda import matmul as NM
    production = status("cuda")[0]
    copy = bench.copy_bandwidth("cuda")
    g = torch.Generator(device="cuda").manual_seed(0)
    rows, failed = [], 0
    for shape in args.shapes.split(","):
        N, K = (int(v) for v in shape.split("x"))
        W = torch.randn(N, K, device="cuda", dtype=torch.bfloat16, generator=g)
        P, qs = wb.quantize_4bit(W, blocksize=64, quant_type="nf4", compress_statistics=True, backend="reference")
        for M in (int(m) for m in args.ms.split(",")):
            A = torch.randn(M, K, device="cuda", dtype=torch.bfloat16, generator=g)
            nbytes = bench.tensor_bytes(P, qs.absmax, qs.state2.absmax, A)
            ref = matmul_4bit(A, P, qs, backend="reference")
            times = {}
            for name, backend, layout in (("cuda", "cuda", None), ("numba_rows", "numba_cuda", "rows"),
                                          ("numba_tiled", "numba_cuda", "tiled"),
                                          ("numba_tiled_no_prefetch", "numba_cuda", "tiled")):
                if backend == "cuda" and not production:
                    continue
                saved, prefetch = NM.GEMV_LAYOUT, NK.TILED_PREFETCH
                NM.GEMV_LAYOUT = layout or saved
                if name == "numba_tiled_no_prefetch":   # gemv_tiled without its L2 prefetch ahead of the loads
                    NK.TILED_PREFETCH = 0
                try:
                    fn = lambda: matmul_4bit(A, P, qs, backend=backend)   # noqa: E731
                    got = fn()
                    err = (got.float() - ref.float()).abs()
                    ratio = float((err / _bound(A, P, qs, ref, layout != "rows")).max())
                    ok = ratio <= 1
                    failed += not ok
                    ms = bench.graph_replay_ms(fn, calls=20)
                    public = bench.time_fn(fn, "cuda", warmup=3, reps=20).median_ms
                finally:
                    NM.GEMV_LAYOUT, NK.TILED_PREFETCH = saved, prefetch
                times[name] = ms
                pct = None if ms is None else 100 * nbytes / (ms * 1e-3) / (copy * 1e9)
                of_cuda = None if ms is None or times.get("cuda") is None else 100 * times["cuda"] / ms
                rows.append(dict(N=N, K=K, M=M, impl=name, kernel_ms=ms, public_ms=public, pct_copy=pct,
                                 pct_of_cuda=of_cuda, err_over_bound=ratio, within_bound=ok))
                print(f"{N:>6}x{K:<6} M={M} {name:23} kernel {'-' if ms is None else f'{ms * 1e3:7.1f}'} us  "
                      f"public {public * 1e3:7.1f} us  {'-' if pct is None else f'{pct:5.1f}'} % of copy  "
                      f"{'' if of_cuda is None else f'{of_cuda:5.1f} % of cuda  '}"
                      f"max err/bound {ratio:.3f}{'' if ok else '  OUT OF BOUND'}", flush=True)
    print(f"copy {copy:.0f} GB/s; {failed} outputs out of bound")
    if args.out:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        Path(args.out, "numba_gemv_layout_ab.json").write_text(
            json.dumps(dict(copy_gbps=copy, device=torch.cuda.get_device_name(), rows=rows), indent=1))
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
