"""A/B of the tensor-core GEMM's codebook lookup (cuda_src/matmul_mma.cuh, template LK): kernel time per variant on
the issue's largest shape and a small one, and each shipping variant's parity with the reference (bound of
workbench/backends/reference/matmul.py; tails, nested absmax, bias, fp16/bf16, forced split-K, poisoned memory).

    python -m studies.probes.matmul_lookup_ab --out DIR      (DIR/lookup_ab.csv; prints BEST_LOOKUP=<id>)

Variants: 0 one shared 16-float table, 1 a table copy per lane, 3 byte-indexed float pairs, 9 no table (wrong
values on purpose: the floor of everything but the lookup)."""
from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd
import torch

SHIPPING = (0, 1, 3)
VARIANTS = (0, 1, 3, 9)
TIMED = (((28672, 8192), (1, 16, 64, 256)), ((4096, 4096), (16, 64)))
PARITY = (((300, 4128, 64), (1, 5, 16, 33)), ((37, 96, 32), (9, 64)), ((1000, 8192, 128), (64, 130)))


def _use(CM, variant: int) -> None:
    CM.LOOKUP = variant
    CM.forget_plans()


def _forced(CM, A, P, qs, bias=None):
    from workbench.matmul import matmul_4bit
    old = CM.GEMV_MAX_M, CM.MMA_MIN_M, CM.MMA_MAX_M
    CM.GEMV_MAX_M, CM.MMA_MIN_M, CM.MMA_MAX_M = 0, 1, 1 << 30
    try:
        return matmul_4bit(A, P, qs, bias=bias, backend="cuda")
    finally:
        CM.GEMV_MAX_M, CM.MMA_MIN_M, CM.MMA_MAX_M = old


def parity(CM, variant: int, seed: int = 0) -> float:
    """Largest |err| / bound over the cases (must be <= 1)."""
    import workbench as wb
    from workbench.backends.reference import matmul as R
    from workbench.matmul import matmul_4bit
    _use(CM, variant)
    g = torch.Generator().manual_seed(seed)
    worst = 0.0
    for ci, ((N, K, bs), Ms) in enumerate(PARITY):
        for dtype in (torch.bfloat16, torch.float16):
            W = torch.randn(N, K, generator=g).to(dtype).cuda()
            P, qs = wb.quantize_4bit(W, blocksize=bs, quant_type="nf4", compress_statistics=ci != 1)
            Wd = wb.dequantize_4bit(P, qs, backend="reference").to(dtype)
            for M in Ms:
                A = torch.randn(M, K, generator=g).to(dtype).cuda()
                b = torch.randn(N, generator=g).to(dtype).cuda() if M % 2 else None
                ref = matmul_4bit(A, P, qs, bias=b, backend="reference")
                torch.full((1 << 25,), float("nan"), device="cuda")  # poison the allocator's free memory
                got = _forced(CM, A, P, qs, b)
                bound = R.error_bound(A, Wd, b, dtype, ref)
                worst = max(worst, ((got.float() - ref.float()).abs() / bound).max().item())
    return worst


def timings(CM, variant: int) -> list[dict]:
    import workbench as wb
    from studies.bench.bench_matmul_gpu import graph_ms
    from workbench.matmul import weight_bytes
    _use(CM, variant)
    rows = []
    g = torch.Generator(device="cuda").manual_seed(0)
    for (N, K), Ms in TIMED:
        W = torch.randn(N, K, device="cuda", dtype=torch.bfloat16, generator=g)
        P, qs = wb.quantize_4bit(W, blocksize=64, quant_type="nf4", compress_statistics=True)
        for M in Ms:
            A = torch.randn(M, K, device="cuda", dtype=torch.bfloat16, generator=g)
            ms = graph_ms(lambda: _forced(CM, A, P, qs))
            rows.append(dict(variant=variant, N=N, K=K, M=M, kernel_ms=ms,
                             gbps=(weight_bytes((N, K), 64, True) + 2 * M * K) / (ms * 1e-3) / 1e9))
            print(f"lookup {variant}: {N}x{K} M={M}: {ms:.4f} ms, {rows[-1]['gbps']:.0f} GB/s", flush=True)
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    from workbench.backends.cuda import matmul as CM
    rows = []
    for v in VARIANTS:
        rows += timings(CM, v)
    df = pd.DataFrame(rows)
    err = {v: parity(CM, v) for v in SHIPPING}
    df["max_err_over_bound"] = df.variant.map(err)
    print(df.to_string(index=False))
    ok = [v for v in SHIPPING if err[v] <= 1.0]
    key = df[df.variant.isin(ok) & (df.M >= 16)].groupby("variant").kernel_ms.sum()
    best = int(key.idxmin()) if len(key) else 0
    print(f"parity max |err|/bound: {err}")
    print(f"BEST_LOOKUP={best}")
    if args.out:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        df.to_csv(Path(args.out) / "lookup_ab.csv", index=False)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
