"""One call of each 4-bit matmul path on 28672x8192 (bf16, NF4, blocksize 64, double quant) for a profiler to
capture: the GEMV at M = 1, the tensor-core GEMM at M = 1, 16 and 64 (forced), bitsandbytes at M = 1 when installed.

    ncu --section SpeedOfLight ... python -m studies.probes.matmul_profile_target   (see matmul_profile.sh)"""
from __future__ import annotations

import torch


def main() -> int:
    import workbench as wb
    from workbench.backends.cuda import matmul as CM
    from workbench.matmul import matmul_4bit
    g = torch.Generator(device="cuda").manual_seed(0)
    W = torch.randn(28672, 8192, device="cuda", dtype=torch.bfloat16, generator=g)
    P, qs = wb.quantize_4bit(W, blocksize=64, quant_type="nf4", compress_statistics=True)
    A1 = torch.randn(1, 8192, device="cuda", dtype=torch.bfloat16, generator=g)
    A16 = torch.randn(16, 8192, device="cuda", dtype=torch.bfloat16, generator=g)
    A64 = torch.randn(64, 8192, device="cuda", dtype=torch.bfloat16, generator=g)
    matmul_4bit(A1, P, qs, backend="cuda")                        # GEMV
    CM.GEMV_MAX_M, CM.MMA_MIN_M = 0, 1
    matmul_4bit(A1, P, qs, backend="cuda")                        # GEMM, one activation tile
    matmul_4bit(A16, P, qs, backend="cuda")                       # GEMM, M = 16
    matmul_4bit(A64, P, qs, backend="cuda")                       # GEMM, M = 64
    try:
        import bitsandbytes as bnb
        bnb.matmul_4bit(A1, P, qs.to_bnb())
    except Exception as e:  # noqa: BLE001
        print(f"bitsandbytes: {e}")
    torch.cuda.synchronize()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
