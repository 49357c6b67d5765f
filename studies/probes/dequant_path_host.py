"""Host time of the pieces of the public matmul_4bit call above the fused kernels' rows (dequantize + cuBLAS):
each piece called 20 times with no sync between calls, host microseconds per call, beside F.linear. Finds where
the public call's host time goes when it exceeds torch's own (reports/matmul-h100/lean_lut_gemm: 150 us at M = 256).

usage (GPU): python -m studies.probes.dequant_path_host [--cases 4096x4096x256,...]"""
from __future__ import annotations

import argparse

import torch

import workbench as wb
from workbench import matmul as MM
from workbench.backends.cuda import matmul as CM
from workbench.backends.cuda import quant as CQ

from studies.probes.matmul_host_profile import _per_call


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", default="4096x4096x256,28672x8192x256")
    args = ap.parse_args(argv)
    for case in args.cases.split(","):
        N, K, M = (int(v) for v in case.split("x"))
        W = torch.randn(N, K, device="cuda", dtype=torch.bfloat16)
        P, qs = wb.quantize_4bit(W, blocksize=64, compress_statistics=True)
        A = torch.randn(M, K, device="cuda", dtype=torch.bfloat16)
        absmax, a8, acode, aoff = MM._nested_args(qs, "cuda")
        tab = qs.code.float().contiguous()
        s = CM._block_scales(absmax, a8, acode, aoff, A.device)
        Wd = CQ.dequantize_4bit(P, s, tab, 64, N * K, A.dtype).view(N, K)
        pieces = {
            "matmul_4bit (public)": lambda: MM.matmul_4bit(A, P, qs),
            "MM._check + _nested_args": lambda: (MM._check(A, P, qs), MM._nested_args(qs, "cuda")),
            "cuda gemm_4bit (backend, no dispatch)": lambda: CM.gemm_4bit(A, P, (N, K), absmax, tab, 64, None, a8,
                                                                        acode, aoff),
            "_block_scales": lambda: CM._block_scales(absmax, a8, acode, aoff, A.device),
            "quant.dequantize_4bit": lambda: CQ.dequantize_4bit(P, s, tab, 64, N * K, A.dtype),
            "_mm_one_rounding": lambda: CM._mm_one_rounding(A, Wd.t()),
            "torch.mm": lambda: torch.mm(A, Wd.t()),
            "F.linear": lambda: torch.nn.functional.linear(A, W),
            "torch.empty(N*K bf16)": lambda: torch.empty(N * K, dtype=A.dtype, device="cuda"),
        }
        print(f"{N}x{K} M={M}")
        for name, fn in pieces.items():
            print(f"  {name:40s} host {_per_call(fn)[0]:8.1f} us per call", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
