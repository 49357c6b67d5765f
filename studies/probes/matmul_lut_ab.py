"""The unscaled-lookup tensor-core GEMM (cuda_src/matmul_lut.cuh, ``kbit_gemm_4bit_lut``) on the GPU: parity first,
then its kernel time beside the committed dispatch, cuBLAS bf16 and the copy, in one process.

Parity: fresh random weights and activations, odd N (row tails), K not a multiple of the blocksize (blocks that
cross rows), M = 1..64, bf16 and fp16, nested absmax or not, bias or not, NF4, FP4 and a random codebook, forced
splits 1..7, every variant, outputs poisoned with NaN first. Each output is held to the reference's bound for
unscaled lookups (workbench/backends/reference/matmul.py: error_bound_unscaled); a second call must equal the first
(deterministic) and the tiled layouts the rows; a variant of the mma.sync kernel must equal its default form (variant
31) bit for bit, the pipelined wgmma form (29, 30, and the default past 16 rows) variant 20's bits, and whether the
wgmma forms (WGMMA_VARIANTS, matmul_lut_wgmma.cuh) equal the mma.sync form is reported.

Speed: the five shapes of issue 18, NF4 blocksize 64 with double quant, bf16, M = 1, 4, 16, 32, 64. Kernel time by
CUDA-graph replay of 20 calls for each variant and split count; GB/s of the bytes a fused kernel reads (packed
weight + uint8 absmax + nested absmax + activations) and % of the device copy measured in the same run.

usage (GPU): python -m studies.probes.matmul_lut_ab [--out DIR] [--quick]"""
from __future__ import annotations

import argparse
import ctypes as C
import json
import math
from pathlib import Path

import torch

import workbench as wb
from workbench import bench
from workbench.backends.cuda import gemm_layout
from workbench.backends.cuda import matmul as CM
from workbench.backends.reference import matmul as RM
from workbench.codebooks import from_values
from workbench.matmul import matmul_4bit
from workbench.wire import DTYPE_CODE

SHAPES = ((28672, 8192), (8192, 28672), (14336, 4096), (4096, 14336), (4096, 4096))
MS = (1, 4, 16, 32, 64)
WGMMA_VARIANTS = (20, 21, 22, 29, 30)   # cuda_src/matmul_lut_wgmma.cuh: the same numerics on another instruction
PIPELINED = (29, 30)   # the wgmma form pipelined: variant 20's bits, or failing
MMA_SYNC = 31   # the mma.sync form at any M (the default runs the wgmma form past 16 rows)
SPLITS = (1, 2, 3, 4, 6, 8, 12, 16, 24)


def _state(qs):
    """(absmax float32, absmax_8bit or None, code2 or None, offset or None, table): the kernel's state arguments."""
    if qs.nested:
        return qs.state2.absmax, qs.absmax, qs.state2.code, qs.offset.reshape(1).float(), qs.code.float()
    return qs.absmax, None, None, None, qs.code.float()


def tile_codes(B, N: int, K: int, chunk_major: bool = False) -> torch.Tensor:
    """The library's tiled layout (workbench/backends/cuda/gemm_layout.py), or its chunk-major order
    [K/64][ceil(N/16)][32][16] (measured, not adopted: no faster)."""
    t = gemm_layout.tile_codes(B, N, K)
    return t.view(-1, K // 64, 32, 16).transpose(0, 1).contiguous().view(-1) if chunk_major else t


class Lut:
    """One call of kbit_gemm_4bit_lut with its own output, partials and counters (graph-capturable)."""

    def __init__(self, A, B, N, K, qs, bias, splits, tiled=None, chunk_major=False):
        self.A, self.N, self.K, self.bias, self.splits = A, N, K, bias, splits
        self.B, self.tiled = (B, 0) if tiled is None else (tiled, 2 if chunk_major else 1)
        self.st = _state(qs)
        self.bs = qs.blocksize
        M = A.shape[0]
        self.out = torch.empty((M, N), dtype=A.dtype, device=A.device)
        self.part = torch.empty(max(1, splits) * M * N, dtype=torch.float32, device=A.device)
        self.ctr = torch.zeros(-(-N // 16), dtype=torch.int32, device=A.device)

    def __call__(self):
        p = lambda t: 0 if t is None else t.data_ptr()
        a2, a8, c2, off, tab = self.st
        M = self.A.shape[0]
        r = CM._kernels().kbit_gemm_4bit_lut(p(self.A), DTYPE_CODE[self.A.dtype], M, self.N, self.K, p(self.B), p(a2),
                                             p(a8), p(c2), p(off), p(tab), self.bs, p(self.bias), p(self.out),
                                             p(self.part), p(self.ctr), self.splits, self.tiled,
                                             torch.cuda.current_stream().cuda_stream)
        if r != 0:
            raise RuntimeError(f"kbit_gemm_4bit_lut returned {r}")
        return self.out


def _reference(A, P, N, K, qs, bias):
    a2, a8, c2, off, tab = _state(qs)
    ref = RM.gemm_4bit(A, P, (N, K), a2, tab, qs.blocksize, bias, a8, c2, off)
    return ref, RM.unscaled_bound_of(A, P, (N, K), a2, tab, qs.blocksize, bias, a8, c2, off, ref=ref)


def parity(L, quick: bool) -> tuple[int, float]:
    g = torch.Generator(device="cuda").manual_seed(1234)
    cases = [  # (N, K, blocksize, M list, dtype, nested, bias, codebook)
        (300, 640, 128, (1, 3, 8, 9), torch.bfloat16, True, True, "nf4"),
        (129, 64, 64, (1, 16, 17), torch.float16, False, False, "fp4"),
        (1000, 1536, 64, (2, 33, 64), torch.bfloat16, True, False, "random"),
        (4096, 4096, 256, (1, 5, 24, 40), torch.float16, True, True, "nf4"),
        (517, 4160, 1024, (1, 7, 57), torch.bfloat16, False, True, "random"),
        (333, 2048, 64, (1, 9, 16), torch.bfloat16, True, True, "nf4"),   # grouped scales, row tail: the lean form
    ]
    if quick:
        cases = cases[:2]
    bad, worst, wg_same, wg_runs = 0, 0.0, 0, 0
    for N, K, bs, ms, dt, nested, with_bias, cb in cases:
        W = torch.randn(N, K, device="cuda", dtype=dt, generator=g)
        if cb == "random":
            vals = torch.sort(torch.rand(16, device="cuda", generator=g) * 2 - 1).values
            P, qs = wb.quantize_4bit(W, blocksize=bs, codebook=from_values(vals.cpu().numpy()),
                                     compress_statistics=nested)
        else:
            P, qs = wb.quantize_4bit(W, blocksize=bs, quant_type=cb, compress_statistics=nested)
        bias = torch.randn(N, device="cuda", dtype=dt, generator=g) if with_bias else None
        Pt, Pc = tile_codes(P, N, K), tile_codes(P, N, K, chunk_major=True)
        for M in ms:
            A = torch.randn(M, K, device="cuda", dtype=dt, generator=g)
            ref, bound = _reference(A, P, N, K, qs, bias)
            first = None
            for variant in (MMA_SYNC, 1, 4, 5, 6, 11, 13, 15, 16, 18, 19, 23, 24, 25, 26, 27) + WGMMA_VARIANTS + (0,):
                L.kbit_gemm_lut_tuning(variant)
                for splits in (1, 3, 7):
                    f = Lut(A, P, N, K, qs, bias, splits)
                    f.out.fill_(float("nan"))
                    y = f().clone()
                    y2 = f().clone()
                    err = (y.float() - ref.float()).abs()
                    ratio = float((err / bound).max()) if bool(torch.isfinite(y).all()) else math.inf
                    same = bool(torch.equal(y.view(torch.int16), y2.view(torch.int16)))
                    if splits == 1:   # first: the mma.sync form's bits; wg20: the wgmma form's
                        if first is None:
                            first = y
                        as_first = bool(torch.equal(y.view(torch.int16), first.view(torch.int16)))
                        if variant == 20:
                            wg20 = y
                        if variant in PIPELINED or (variant == 0 and M > 16):   # form 29: variant 20's bits
                            same = same and bool(torch.equal(y.view(torch.int16), wg20.view(torch.int16)))
                        elif variant in WGMMA_VARIANTS:   # another instruction: counted, not assumed
                            wg_same, wg_runs = wg_same + as_first, wg_runs + 1
                        else:
                            same = same and as_first
                    yt = Lut(A, P, N, K, qs, bias, splits, tiled=Pt)().clone()  # the tiled layout: the same bits
                    yc = Lut(A, P, N, K, qs, bias, splits, tiled=Pc, chunk_major=True)().clone()
                    same = same and bool(torch.equal(yt.view(torch.int16), y.view(torch.int16)))
                    same = same and bool(torch.equal(yc.view(torch.int16), y.view(torch.int16)))
                    ok = ratio <= 1.0 and same
                    bad += not ok
                    worst = max(worst, ratio)
                    if not ok or (variant == 0 and splits == 1):
                        print(f"parity N={N} K={K} bs={bs} M={M} {str(dt)[6:]} nested={nested} bias={with_bias} "
                              f"{cb} variant={variant} splits={splits}: max err/bound {ratio:.3f}"
                              + ("" if same else "  NOT REPEATABLE / VARIANT OR LAYOUT DIFFERS")
                              + ("" if ok else "  FAIL"),
                              flush=True)
    L.kbit_gemm_lut_tuning(0)
    print(f"parity: {bad} failing, worst err/bound {worst:.3f}; the wgmma and mma.sync forms gave each other's bits "
          f"in {wg_same} of {wg_runs} one-split runs", flush=True)
    return bad, worst


def speed(L, quick: bool, copy: float, variants=(0, 1, 2, 3, 4, 5), ms_list=MS, splits_list=SPLITS,
          layouts=("rows", "tiled")) -> list[dict]:
    g = torch.Generator(device="cuda").manual_seed(0)
    rows = []
    shapes = SHAPES[:1] if quick else SHAPES
    for N, K in shapes:
        W = torch.randn(N, K, device="cuda", dtype=torch.bfloat16, generator=g)
        P, qs = wb.quantize_4bit(W, blocksize=64, quant_type="nf4", compress_statistics=True)
        Wd = wb.dequantize_4bit(P, qs).to(torch.bfloat16)
        Pt, Pc = tile_codes(P, N, K), tile_codes(P, N, K, chunk_major=True)
        for M in (ms_list[:3] if quick else ms_list):
            A = torch.randn(M, K, device="cuda", dtype=torch.bfloat16, generator=g)
            nbytes = bench.tensor_bytes(P, qs.absmax, qs.state2.absmax, A)
            L.kbit_gemm_lut_tuning(0)
            ours = bench.graph_replay_ms(lambda: matmul_4bit(A, P, qs, backend="cuda"), calls=20)
            cublas = bench.graph_replay_ms(lambda: A @ Wd.t(), calls=20)
            for layout in layouts:  # chunk-major: no faster than tiled (reports/matmul-h200/lut_gemm)
                best = None
                above = (0,) + tuple(v for v in variants if v in WGMMA_VARIANTS or v == MMA_SYNC)
                for variant in (variants if M <= 16 else above):
                    L.kbit_gemm_lut_tuning(variant)
                    for splits in splits_list:
                        f = Lut(A, P, N, K, qs, None, splits, tiled={"tiled": Pt, "chunk-major": Pc}.get(layout),
                                chunk_major=layout == "chunk-major")
                        ms = bench.graph_replay_ms(f, calls=20)
                        pct = 100 * nbytes / (ms * 1e-3) / (copy * 1e9)
                        row = dict(N=N, K=K, M=M, layout=layout, variant=variant, splits=splits, lut_ms=ms,
                                   pct_copy=pct, committed_ms=ours, cublas_ms=cublas)
                        rows.append(row)
                        if variant not in (2, 3, 10, 12) and (best is None or ms < best["lut_ms"]):
                            best = row
                timed = {r["variant"] for r in rows if (r["N"], r["K"], r["M"], r["layout"]) == (N, K, M, layout)}
                if len(timed) > 1:
                    per = {v: min(r["lut_ms"] for r in rows if (r["N"], r["K"], r["M"], r["layout"], r["variant"])
                                  == (N, K, M, layout, v)) for v in sorted(timed)}
                    print(f"      {layout} by variant (us): " + "  ".join(f"{v}: {ms * 1e3:.1f}" for v, ms in per.items())
                          + "   (variants: cuda_src/kbit_matmul.h, kbit_gemm_lut_tuning)")
                print(f"{N:>6}x{K:<6} M={M:<3} {layout:5} best {best['lut_ms'] * 1e3:7.1f} us (variant "
                      f"{best['variant']}, {best['splits']:2} splits) {best['pct_copy']:5.1f} % copy | committed "
                      f"{ours * 1e3:7.1f} us | cuBLAS {cublas * 1e3:7.1f} us | x cuBLAS {cublas / best['lut_ms']:5.2f}"
                      f" | x committed {ours / best['lut_ms']:5.2f}", flush=True)
    L.kbit_gemm_lut_tuning(0)
    return rows


def profile_target(L, variant: int = 0, ms=(1, 16)) -> int:
    """One call of the committed path and of the tiled LUT kernel (1 and 8 splits) at each M of ``ms``, the LUT
    kernel as ``variant``."""
    g = torch.Generator(device="cuda").manual_seed(0)
    N, K = 28672, 8192
    W = torch.randn(N, K, device="cuda", dtype=torch.bfloat16, generator=g)
    P, qs = wb.quantize_4bit(W, blocksize=64, quant_type="nf4", compress_statistics=True)
    Pt = tile_codes(P, N, K)
    for M in ms:
        A = torch.randn(M, K, device="cuda", dtype=torch.bfloat16, generator=g)
        matmul_4bit(A, P, qs, backend="cuda")
        L.kbit_gemm_lut_tuning(variant)
        for splits in (1, 8):
            Lut(A, P, N, K, qs, None, splits, tiled=Pt)()
    L.kbit_gemm_lut_tuning(0)
    torch.cuda.synchronize()
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=None)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--no-speed", action="store_true")
    ap.add_argument("--variants", default="0,1,2,3,4,5",
                    help="kbit_gemm_lut_tuning variants timed (above 16 rows: 0, 31 and the wgmma ones)")
    ap.add_argument("--ms", default=",".join(map(str, MS)), help="activation rows to time")
    ap.add_argument("--splits", default=",".join(map(str, SPLITS)), help="split counts to time (the best is shown)")
    ap.add_argument("--layouts", default="rows,tiled", help="weight layouts to time: rows, tiled")
    ap.add_argument("--profile-target", action="store_true",
                    help="only one call of each variant on 28672x8192 (M: --profile-ms), for Nsight Compute")
    ap.add_argument("--profile-variant", type=int, default=0, help="the LUT kernel's variant under --profile-target")
    ap.add_argument("--profile-ms", default="1,16", help="activation rows under --profile-target")
    args = ap.parse_args(argv)
    L = CM.lib()   # the family's ctypes handle: the A/B knob and the occupancy query
    if args.profile_target:
        return profile_target(L, args.profile_variant, tuple(int(v) for v in args.profile_ms.split(",")))
    occ = C.c_int()
    for variant in (0,) + WGMMA_VARIANTS:
        L.kbit_gemm_lut_tuning(variant)
        for M in (1, 16, 32, 64):
            L.kbit_gemm_4bit_lut_ctas(M, 28672, 8192, DTYPE_CODE[torch.bfloat16], C.byref(occ))
            print(f"M={M}: {occ.value} CTAs per SM (variant {variant})")
    L.kbit_gemm_lut_tuning(0)
    bad, worst = parity(L, args.quick)
    rows = []
    copy = bench.copy_bandwidth("cuda")
    print(f"copy {copy:.0f} GB/s", flush=True)
    if not args.no_speed:
        ints = lambda text: tuple(int(v) for v in text.split(","))
        rows = speed(L, args.quick, copy, ints(args.variants), ints(args.ms), ints(args.splits),
                     tuple(args.layouts.split(",")))
    if args.out:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        Path(args.out, "matmul_lut_ab.json").write_text(json.dumps(
            dict(copy_gbps=copy, parity_failing=bad, parity_worst=worst, rows=rows), indent=1))
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
