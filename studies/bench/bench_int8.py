"""H100 speed of LLM.int8() row-wise quantization: ours (CUDA production, Numba CUDA) vs bitsandbytes in
the same process, threshold 0 and 6, plus a parity summary vs bitsandbytes' CUDA kernels.

Effective bytes = A read once + int8 codes written once + float32 row stats; % of copy is against
``workbench.bench.copy_bandwidth('cuda')`` measured in the same run. Inputs are fp16 activations with
planted outlier columns (0.2% of columns scaled so |x| >= 6 appears in most rows).

    python -m studies.bench.bench_int8 --out reports/int8-gpu [--quick] [--occ-ab] [--probe-ab]
"""
from __future__ import annotations

import argparse
import importlib
import json
import os
from pathlib import Path

import torch

from workbench import bench, results

SHAPES = ((4096, 4096), (8192, 8192), (16384, 8192), (4096, 11008), (512, 4096))


def activations(rows, cols, seed=0, device="cuda"):
    g = torch.Generator(device=device).manual_seed(seed)
    a = torch.randn(rows, cols, generator=g, device=device)
    hot = torch.randperm(cols, generator=g, device=device)[: max(1, cols // 500)]
    a[:, hot] *= 8
    return a.half()


def _ours(name):
    return importlib.import_module(f"workbench.backends.{name}.int8")


def _bnb():
    try:
        import bitsandbytes.functional as F
        F.int8_vectorwise_quant(torch.zeros(2, 8, dtype=torch.float16, device="cuda"), 0.0)
        return F
    except Exception as e:
        print(f"bitsandbytes CUDA unavailable: {e}")
        return None


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="reports/int8-gpu")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--occ-ab", action="store_true", help="also time the row kernel built for 1 CTA/SM")
    ap.add_argument("--probe-ab", action="store_true", help="also time the threshold path without the column probe")
    args = ap.parse_args(argv)
    out = Path(args.out)
    meta = results.run_metadata("cuda")
    copy = bench.copy_bandwidth("cuda")
    print(f"device {meta['run_device']}, copy {copy:.0f} GB/s")
    F = _bnb()
    impls = {"cuda": _ours("cuda").int8_vectorwise_quant}
    try:
        impls["numba_cuda"] = _ours("numba_cuda").int8_vectorwise_quant
    except Exception as e:
        print(f"numba_cuda unavailable: {e}")
    def with_env(key, value, _f=impls["cuda"]):  # the cuda op with one KBIT_* switch set (read per call)
        def f(A, t):
            os.environ[key] = value
            try:
                return _f(A, t)
            finally:
                del os.environ[key]
        return f
    if args.occ_ab:  # the row kernel compiled for 1 CTA/SM (registers as needed) instead of 3 (cuda_src/int8.cu)
        impls["cuda_loose"] = with_env("KBIT_INT8_OCC", "loose")
    if args.probe_ab:  # no probe: every outlier column is zeroed in all rows after the row kernel
        impls["cuda_noprobe"] = with_env("KBIT_INT8_PROBE", "0")
    if F is not None:
        impls["bnb"] = lambda A, t: F.int8_vectorwise_quant(A, t)
    rows, parity = [], []
    shapes = SHAPES[:2] if args.quick else SHAPES
    for (r, c) in shapes:
        A = activations(r, c)
        nbytes = A.numel() * 2 + A.numel() + r * 4
        for thr in (0.0, 6.0):
            outs = {}
            for name, fn in impls.items():
                outs[name] = fn(A, thr)
                t = bench.time_fn(lambda: fn(A, thr), "cuda", warmup=5, reps=50)
                dms, _ = bench.device_time(lambda: fn(A, thr))
                b2b = bench.back_to_back_ms(lambda: fn(A, thr), reps=50)
                parts = bench.kernel_breakdown(lambda: fn(A, thr)) if name.startswith("cuda") else {}
                rows.append(bench.row("int8_vectorwise_quant", name, A.numel(), t, nbytes, copy, rows=r, cols=c,
                                      threshold=thr, dtype="float16", b2b_ms=b2b,
                                      pct_copy_b2b=100 * nbytes / (b2b * 1e-3) / 1e9 / copy,
                                      kernels_us=json.dumps({k[:60]: round(v, 2) for k, v in parts.items()}),
                                      outlier_cols=0 if outs[name][2] is None else int(outs[name][2].numel()),
                                      device_ms=dms, gbps_device=nbytes / (dms * 1e-3) / 1e9 if dms else None,
                                      pct_copy_device=100 * nbytes / (dms * 1e-3) / 1e9 / copy if dms else None))
                x = rows[-1]
                print(f"{name:10s} {r}x{c} thr={thr}: {x['gbps']:.0f} GB/s ({x['pct_copy']:.0f}% copy); "
                      f"device {x['gbps_device'] or 0:.0f} GB/s ({x['pct_copy_device'] or 0:.0f}%); "
                      f"back to back {x['pct_copy_b2b']:.0f}%" + (f"; kernels us {x['kernels_us']}" if parts else ""))
            if "bnb" in outs:
                q, s, cl = outs["cuda"]
                qb, sb, cb = outs["bnb"]
                d = (q.int() - qb.int()).abs()
                parity.append({"op": "int8_vectorwise_quant", "vs": "bitsandbytes-cuda", "rows": r, "cols": c,
                               "threshold": thr, "stats_equal": bool(torch.equal(s, sb)),
                               "cols_equal": (cl is None and cb is None) or (cl is not None and cb is not None
                                                                             and torch.equal(cl, cb)),
                               "codes_differ": int((d > 0).sum()), "codes_max_diff": int(d.max()),
                               "n": A.numel()})
                R = importlib.import_module("workbench.backends.reference.int8")
                ref = R.int8_vectorwise_quant(A.cpu(), thr)   # the spec: torch rules on CPU
                parity[-1]["codes_equal_reference_cpu"] = bool(torch.equal(ref[0], q.cpu()) and torch.equal(ref[1], s.cpu()))
                refg = R.int8_vectorwise_quant(A, thr)        # the same torch code executed on CUDA
                parity[-1]["ref_cuda_vs_cpu_codes_differ"] = int((refg[0].cpu() != ref[0]).sum())
    # informational: int8 matmul + dequant (ours: fused dp4a kernel; bitsandbytes: cuBLASLt + dequant)
    if not args.quick:
        m, k, n = 4096, 4096, 4096
        CA = torch.randint(-127, 128, (m, k), dtype=torch.int8, device="cuda")
        CB = torch.randint(-127, 128, (n, k), dtype=torch.int8, device="cuda")
        SA = torch.rand(m, device="cuda") + 1
        SB = torch.rand(n, device="cuda") + 1
        cands = {"cuda": lambda: _ours("cuda").int8_scaled_mm(CA, CB, SA, SB, None, torch.float16),
                 "cuda_dp4a_fused": lambda: _ours("cuda").int8_scaled_mm(CA[:, :4095], CB[:, :4095], SA, SB, None,
                                                                          torch.float16),
                 "torch_int_mm": lambda: torch._int_mm(CA, CB.t())}
        if F is not None:
            cands["bnb"] = lambda: F.int8_mm_dequant(F.int8_linear_matmul(CA, CB), SA, SB)
        for name, fn in cands.items():
            t = bench.time_fn(fn, "cuda", warmup=3, reps=20)
            rows.append(bench.row("int8_scaled_mm", name, m * n, t, None, None, rows=m, cols=k, n_out=n,
                                  tops=2 * m * n * k / (t.median_ms * 1e-3) / 1e12))
            print(f"scaled_mm {name}: {t.median_ms:.3f} ms, {rows[-1]['tops']:.1f} TOPS")
    df = results.frame(rows, meta)
    results.save(df, out / "bench")
    if parity:
        results.save(results.frame(parity, meta), out / "parity_bnb")
    lines = [f"# int8 vectorwise quant on {meta['run_device']} (copy {copy:.0f} GB/s)", "",
             "GB/s and % copy by the event protocol (workbench.bench: per call, host launch gaps included); "
             "back-to-back: calls issued without synchronizing (bench.back_to_back_ms; a threshold still syncs "
             "once per call to size the column list); device columns: the call's kernels only (torch.profiler).",
             "",
             "| shape | threshold | backend | GB/s | % copy | ms | back-to-back % copy | device GB/s | device % copy |",
             "|---|---|---|---|---|---|---|---|---|"]
    for x in rows:
        if x["op"] == "int8_vectorwise_quant":
            lines.append(f"| {x['rows']}x{x['cols']} | {x['threshold']} | {x['backend']} | {x['gbps']:.0f} | "
                         f"{x['pct_copy']:.0f} | {x['median_ms']:.4f} | {x['pct_copy_b2b']:.0f} | "
                         f"{x['gbps_device'] or 0:.0f} | "
                         f"{x['pct_copy_device'] or 0:.0f} |")
    lines += ["", "| op | backend | ms | TOPS |", "|---|---|---|---|"]
    for x in rows:
        if x["op"] == "int8_scaled_mm":
            lines.append(f"| int8_scaled_mm 4096^3 | {x['backend']} | {x['median_ms']:.3f} | {x['tops']:.1f} |")
    lines += ["", "Parity vs bitsandbytes CUDA (fp16):", "", "```", json.dumps(parity, indent=1), "```"]
    (out / "bench.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
