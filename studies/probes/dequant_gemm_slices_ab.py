"""A/B of the cuda backend's dequantize + cuBLAS path of ``matmul_4bit`` (M above the fused kernels): the whole
weight dequantized to a bf16 buffer in DRAM and one GEMM (the production path, ``backends/cuda/matmul.py:
_dequant_cublas``) against the weight taken in slices of ``rows`` output rows, each dequantized into a buffer that
stays in L2 and multiplied into its columns of the output right away (``--overlap``: two buffers, the next slice
dequantized on a side stream while the GEMM of this one runs). cuBLAS bf16 on the dense weight beside them, all
with the 16-bit split-K reduction off (the production path's setting, so the baseline here is that path's GEMM).

NF4, blocksize 64, double quant, bf16; times: event median of single calls and the rate of calls back to back.
The sliced products sum each output in cuBLAS' order for the slice's shape, so outputs are compared with the
production path's and with a float64 product of the dequantized weight (max |error| over the output scale).

usage (GPU): python -m studies.probes.dequant_gemm_slices_ab [--shapes 28672x8192,...] [--ms 64,256,2048]
             [--rows 512,1024,2048,4096] [--out DIR]"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

import workbench as wb
from workbench import bench
from workbench.backends.cuda import matmul as CM
from workbench.ops import _nested_args, _resolve_absmax
from workbench.backends.cuda import check, kernels, raw_stream
from workbench.wire import DTYPE_CODE


def sliced_fn(A, P, N, K, s, tab, bs, rows, overlap):
    """y = A @ W.T with W dequantized ``rows`` rows at a time (one buffer, or two and a side stream)."""
    M, dev, dt = A.shape[0], A.device, DTYPE_CODE[A.dtype]
    nbuf = 2 if overlap else 1
    ws = [torch.empty(rows * K, dtype=A.dtype, device=dev) for _ in range(nbuf)]
    side = torch.cuda.Stream(dev) if overlap else None
    q = kernels("quant")
    Bp, sp, tp = P.data_ptr(), s.data_ptr(), tab.data_ptr()

    def dequant(n0, r, buf, stream):
        check(q.kbit_dequantize_4bit(Bp + n0 * K // 2, sp + 4 * (n0 * K // bs), tp, r * K, bs, buf.data_ptr(), dt,
                                     stream), "kbit_dequantize_4bit")

    def run():
        y = torch.empty((M, N), dtype=A.dtype, device=dev)
        main = torch.cuda.current_stream(dev)
        starts = list(range(0, N, rows))
        if not overlap:
            for n0 in starts:
                r = min(rows, N - n0)
                dequant(n0, r, ws[0], raw_stream(dev.index))
                torch.mm(A, ws[0][:r * K].view(r, K).t(), out=y[:, n0:n0 + r])
            return y
        done = [torch.cuda.Event() for _ in range(len(starts))]   # slice i dequantized
        used = [torch.cuda.Event() for _ in range(len(starts))]   # slice i's GEMM issued (its buffer read after)
        side.wait_stream(main)   # the previous call's GEMMs read the buffers
        for i, n0 in enumerate(starts):
            r = min(rows, N - n0)
            if i >= 2:
                side.wait_event(used[i - 2])
            dequant(n0, r, ws[i % 2], side.cuda_stream)
            done[i].record(side)
            main.wait_event(done[i])
            torch.mm(A, ws[i % 2][:r * K].view(r, K).t(), out=y[:, n0:n0 + r])
            used[i].record(main)
        return y
    return run


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shapes", default="28672x8192,8192x28672,14336x4096,4096x14336,4096x4096")
    ap.add_argument("--ms", default="64,256,2048")
    ap.add_argument("--rows", default="512,1024,2048,4096")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    torch.backends.cuda.matmul.allow_bf16_reduced_precision_reduction = False
    copy = bench.copy_bandwidth("cuda")
    rows_out = []
    for shape in args.shapes.split(","):
        N, K = map(int, shape.split("x"))
        W = torch.randn(N, K, device="cuda", dtype=torch.bfloat16)
        P, qs = wb.quantize_4bit(W, blocksize=64, compress_statistics=True)
        del W
        tab = qs.code.float().contiguous()
        args4 = _nested_args(qs, "cuda")
        s = _resolve_absmax(qs, "cuda")   # the float32 block scales the slices index
        Wd = wb.dequantize_4bit(P, qs)
        for M in map(int, args.ms.split(",")):
            A = torch.randn(M, K, device="cuda", dtype=torch.bfloat16)
            ref = (A.double() @ Wd.double().t())
            scale = ref.abs().max().item()
            base = lambda: CM._dequant_cublas(A, P, N, K, *args4, tab, 64, None)  # noqa: E731
            y0 = base()
            cases = [("production", None, False, base), ("cublas_bf16", None, False, lambda: torch.mm(A, Wd.t()))]
            for r in map(int, args.rows.split(",")):
                if r < N and (r * K) % 64 == 0:
                    for ov in (False, True):
                        cases.append((f"slices{r}{'+overlap' if ov else ''}", r, ov,
                                      sliced_fn(A, P, N, K, s, tab, 64, r, ov)))
            for name, r, ov, fn in cases:
                y = fn()
                torch.cuda.synchronize()
                one = bench.time_fn(fn, "cuda", warmup=3, reps=15).median_ms
                b2b = bench.back_to_back_ms(fn, reps=15, warmup=2)
                row = dict(shape=shape, M=M, case=name, one_call_ms=one, b2b_ms=b2b,
                           max_diff_vs_production=(y.float() - y0.float()).abs().max().item(),
                           max_err_vs_f64_over_scale=(y.double() - ref).abs().max().item() / scale)
                rows_out.append(row)
                print(f"{shape:>11} M={M:<5} {name:22s} one {one:8.4f} ms  b2b {b2b:8.4f} ms  |y - production| "
                      f"{row['max_diff_vs_production']:.3g}  err/scale {row['max_err_vs_f64_over_scale']:.2e}")
            del A, ref
    print(f"copy {copy:.0f} GB/s")
    if args.out:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        Path(args.out, "dequant_gemm_slices_ab.json").write_text(json.dumps(
            dict(copy_gbps=copy, device=torch.cuda.get_device_name(), rows=rows_out), indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
