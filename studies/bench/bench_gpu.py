"""GPU benchmark + parity study of the quant family: cuda (production), numba_cuda, bitsandbytes.

    python -m studies.bench.bench_gpu --out DIR [--quick] [--no-parity] [--no-sweep]

* Speed: the public call with default arguments (``wb.quantize_4bit(A, blocksize=, quant_type=,
  backend=)``; bitsandbytes.functional for bnb) is the headline (median_ms, gbps, pct_copy); beside
  it the backend's kernel adapter alone (adapter_ms), the GPU time of every kernel the public call
  enqueues (kernel_ms, CUPTI) and its host time (host_ms).
  n = 2**28 bf16, effective bytes = inputs read once + outputs written once, CUDA events,
  warm-up, median of >= 20 reps (workbench.bench), % of the device-to-device copy bandwidth
  measured in the same run; all backends in the same process. Size sweep 2**16..2**28 (small
  sizes are L2-resident and launch-bound: read them as latency, not bandwidth).
* Memory: peak allocation during one adapter call minus the outputs' own bytes (no temporaries => ~0).
* Parity: mismatch counts of codes / absmax / dequantized values, per dtype x blocksize x code,
  of cuda and numba_cuda vs the reference (on the GPU), and of bitsandbytes' CUDA kernels vs the
  spec, vs our kernels with the bnb-CUDA codebooks (workbench.bnb_cuda_codebooks), and vs those
  plus bnb's fast-math scaling (FLAG_BNB_SCALE).
Writes DIR/bench.{parquet,csv}, DIR/parity.{parquet,csv}, DIR/README.md via workbench.results.
"""
from __future__ import annotations

import argparse
import importlib
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from workbench import bench, results
from workbench import bnb_cuda_codebooks as bcb
from workbench import codebooks as cbs
from workbench.backends import status
from workbench.backends.reference import quant as R

BACKENDS = ("cuda", "numba_cuda", "bnb")


def _mod(name):
    ok, reason = status(name)
    if not ok:
        print(f"[bench_gpu] backend {name} unavailable: {reason}")
        return None
    return importlib.import_module(f"workbench.backends.{name}.quant")


def _bnb_ops():
    ok, _ = status("bnb")
    if not ok:
        return None
    import bitsandbytes  # noqa: F401
    return torch.ops.bitsandbytes


# ------------------------------------------------------------------------------------------- speed
def _public(backend: str):
    """The public call of a backend: workbench's API with ``backend=``, or bitsandbytes.functional."""
    if backend == "bnb":
        import bitsandbytes.functional as F
        return F
    import workbench as wb

    class _Bound:  # wb's functions with backend= fixed, called with bitsandbytes' argument names
        def __getattr__(self, name):
            f = getattr(wb, name)
            return lambda *a, **kw: f(*a, backend=backend, **kw)
    return _Bound()


def cases(n: int, A: torch.Tensor, mods: dict, bops):
    """[(op, label, blocksize, nbytes, {backend: (public call, kernel adapter)})] for one size. The
    public call (default arguments, as a user writes it) is the headline; the adapter (the backend's
    kernel entry point, no validation or dispatch) is timed beside it."""
    out = []
    nf4, fp4, dyn = cbs.get("nf4"), cbs.get("fp4"), cbs.get("dynamic")
    esz = A.element_size()
    dyn_t = dyn.tensors("cuda")[0]
    live = [b for b, m in mods.items() if m] + (["bnb"] if bops is not None else [])
    api = {b: _public(b) for b in live}
    for qt, cb in (("nf4", nf4), ("fp4", fp4)):
        for bs in (64, 128):
            nb = -(-n // bs)
            fns = {b: ((lambda f=api[b], qt=qt, bs=bs: f.quantize_4bit(A, blocksize=bs, quant_type=qt)),
                       (lambda m=m, cb=cb, bs=bs: m.quantize_4bit(A, cb, bs))) for b, m in mods.items() if m}
            if bops is not None:
                fns["bnb"] = ((lambda qt=qt, bs=bs: api["bnb"].quantize_4bit(A, blocksize=bs, quant_type=qt)),
                              (lambda qt=qt, bs=bs: bops.quantize_4bit(A, bs, qt, torch.uint8)))
            out.append(("quantize_4bit", qt, bs, n * esz + (n + 1) // 2 + 4 * nb, fns))
    ref = mods.get("cuda") or mods.get("numba_cuda")
    for qt, cb in (("nf4", nf4), ("fp4", fp4)):
        bs = 64
        nb = -(-n // bs)
        packed, absmax = ref.quantize_4bit(A, cb, bs)
        tab = cb.tensors("cuda")[0]
        states = {b: api[b].quantize_4bit(A, blocksize=bs, quant_type=qt) for b in live}
        fns = {b: ((lambda f=api[b], ps=states[b]: f.dequantize_4bit(*ps)),
                   (lambda m=m, p=packed, a=absmax, t=tab: m.dequantize_4bit(p, a, t, bs, n, A.dtype)))
               for b, m in mods.items() if m}
        if bops is not None:
            p2 = packed.view(-1, 1)
            fns["bnb"] = ((lambda ps=states["bnb"]: api["bnb"].dequantize_4bit(*ps)),
                          (lambda p2=p2, a=absmax, qt=qt: bops.dequantize_4bit(p2, a, bs, qt, (n,), A.dtype)))
        out.append(("dequantize_4bit", qt, bs, packed.numel() + 4 * nb + 64 + n * esz, fns))
    out.append(_nested_dequantize_case(n, A, mods, bops, api, live))
    for bs in (256, 4096):
        nb = -(-n // bs)
        fns = {b: ((lambda f=api[b], bs=bs: f.quantize_blockwise(A, blocksize=bs)),
                   (lambda m=m, bs=bs: m.quantize_blockwise(A, dyn, bs))) for b, m in mods.items() if m}
        if bops is not None:
            fns["bnb"] = ((lambda bs=bs: api["bnb"].quantize_blockwise(A, blocksize=bs)),
                          (lambda bs=bs: bops.quantize_blockwise(A, dyn_t, bs)))
        out.append(("quantize_blockwise", "dynamic", bs, n * esz + n + 4 * nb, fns))
        codes, absmax = ref.quantize_blockwise(A, dyn, bs)
        states = {b: api[b].quantize_blockwise(A, blocksize=bs) for b in live}
        fns = {b: ((lambda f=api[b], cs=states[b]: f.dequantize_blockwise(*cs)),
                   (lambda m=m, c=codes, a=absmax, bs=bs: m.dequantize_blockwise(c, a, dyn_t, bs, A.dtype)))
               for b, m in mods.items() if m}
        if bops is not None:
            fns["bnb"] = ((lambda cs=states["bnb"]: api["bnb"].dequantize_blockwise(*cs)),
                          (lambda c=codes, a=absmax, bs=bs: bops.dequantize_blockwise(c, a, dyn_t, bs, A.dtype)))
        out.append(("dequantize_blockwise", "dynamic", bs, n + 4 * nb + 1024 + n * esz, fns))
    return out


def _nested_dequantize_case(n: int, A: torch.Tensor, mods: dict, bops, api: dict, live: list):
    """dequantize_4bit of a double-quantized NF4 state (``compress_statistics=True``, what QLoRA stores), label
    'nf4-dq'. Our adapters take the nested absmax (one cuda launch); bitsandbytes' "adapter" is what its
    functional.dequantize_4bit runs: its dequantize_blockwise op, the offset add, its dequantize_4bit op."""
    from workbench.ops import _nested_args
    bs, nb = 64, -(-n // 64)
    states = {b: api[b].quantize_4bit(A, blocksize=bs, quant_type="nf4", compress_statistics=True) for b in live}
    ours = next(b for b in ("cuda", "numba_cuda") if mods.get(b))
    packed, qs = states[ours]
    a2, a8, c2, off = _nested_args(qs, ours)
    tab = qs.code.float().contiguous()
    fns = {b: ((lambda f=api[b], ps=states[b]: f.dequantize_4bit(*ps)),
               (lambda m=m: m.dequantize_4bit(packed.view(-1), a2, tab, bs, n, A.dtype, a8, c2, off)))
           for b, m in mods.items() if m}
    if bops is not None:
        bp, bq = states["bnb"]

        def bnb_ops(bp=bp.view(-1, 1), bq=bq):
            s = bops.dequantize_blockwise(bq.absmax, bq.state2.absmax, bq.state2.code, 256, torch.float32) + bq.offset
            return bops.dequantize_4bit(bp, s, bs, "nf4", (n,), A.dtype)
        fns["bnb"] = ((lambda ps=states["bnb"]: api["bnb"].dequantize_4bit(*ps)), bnb_ops)
    nbytes = packed.numel() + nb + 4 * -(-nb // 256) + 1024 + 4 + n * A.element_size()
    return "dequantize_4bit", "nf4-dq", bs, nbytes, fns


def _nbytes(res) -> int:
    ts = res if isinstance(res, (tuple, list)) else (res,)
    return sum(t.untyped_storage().nbytes() for t in ts if isinstance(t, torch.Tensor))


def extra_memory(fn) -> int:
    """Peak bytes allocated during one call beyond the outputs it returns."""
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    res = fn()
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() - base
    extra = peak - _nbytes(res)
    del res
    return int(extra)


def run_speed(n: int, reps: int, copy_gbps: float, mods, bops, *, sweep: bool, memory: bool):
    rows = []
    g = torch.Generator(device="cuda").manual_seed(n)
    A = torch.randn(n, device="cuda", dtype=torch.bfloat16, generator=g)
    for op, qt, bs, nbytes, fns in cases(n, A, mods, bops):
        for backend, (public, adapter) in fns.items():
            t = bench.time_fn(public, "cuda", warmup=3, reps=reps)
            adapter_ms = bench.time_fn(adapter, "cuda", warmup=3, reps=reps).median_ms
            extra = extra_memory(adapter) if memory else None
            kernel_ms, host_ms = bench.device_time(public) if not sweep else (None, None)
            r = bench.row(op, backend, n, t, nbytes, copy_gbps, quant_type=qt, blocksize=bs, dtype="bfloat16",
                          study="sweep" if sweep else "main", call="public", adapter_ms=adapter_ms,
                          mem_extra_bytes=extra, kernel_ms=kernel_ms, host_ms=host_ms)
            rows.append(r)
            print(f"  {op:22s} {qt:8s} bs{bs:<5d} {backend:10s} n=2^{int(np.log2(n)):d} "
                  f"public {t.median_ms:8.4f} ms {r['gbps']:7.0f} GB/s {r.get('pct_copy', 0):5.1f}% adapter "
                  f"{adapter_ms:8.4f} ms" + (f" | kernel {kernel_ms:.4f} ms {r['kernel_pct_copy']:5.1f}% host "
                                            f"{host_ms:.4f} ms" if kernel_ms else "")
                  + (f"  extra={extra}B" if memory else ""), flush=True)
    del A
    torch.cuda.empty_cache()
    return rows


# ------------------------------------------------------------------------------------------ parity
def _nibbles(p: torch.Tensor, n: int) -> torch.Tensor:
    return R.unpack_4bit(p, n)


def parity_rows(dtypes, blocksizes, n_of, mods, bops, big: bool):
    from workbench.backends.cuda import quant as C
    rows = []
    B = importlib.import_module("workbench.backends.bnb.quant") if bops is not None else None
    gen = torch.Generator(device="cuda").manual_seed(7)

    def cmp(x, y):
        return int((x != y).sum()) if x is not None and y is not None else -1

    plan = [(dt, bs, qt, n_of(bs)) for dt in dtypes for bs in blocksizes for qt in ("nf4", "fp4", "dynamic")]
    if big:
        plan += [(torch.bfloat16, 64, "nf4", 1 << 28), (torch.bfloat16, 64, "fp4", 1 << 28),
                 (torch.bfloat16, 4096, "dynamic", 1 << 28)]
    plan += [(torch.bfloat16, 64, qt, "zeros") for qt in ("nf4", "fp4", "dynamic")]
    for dt, bs, qt, n in plan:
        special = n == "zeros"
        if special:
            n = 64 * 1000 + 33
        A = torch.randn(n, device="cuda", generator=gen).to(dt)
        if special:
            A[64 * 10:64 * 20] = 0
        cb = cbs.get("dynamic" if qt == "dynamic" else qt)
        twin = bcb.for_bnb(cb)
        eight = qt == "dynamic"
        qfn = "quantize_blockwise" if eight else "quantize_4bit"
        ref_c, ref_a = getattr(R, qfn)(A, cb, bs)
        last = (n - 1) // bs * bs if n % bs else n  # first element of the tail block (n: none)

        def codes_of(c):
            return c if eight else _nibbles(c, n)

        rc = codes_of(ref_c)
        row = {"dtype": str(dt).removeprefix("torch."), "blocksize": bs, "code": qt, "n": n,
               "case": "zero blocks" if special else ("2^28" if n == 1 << 28 else "random")}
        for name, m in mods.items():
            if m is None:
                continue
            c, a = getattr(m, qfn)(A, cb, bs)
            row[f"{name}_vs_ref_codes"] = cmp(codes_of(c), rc)
            row[f"{name}_vs_ref_absmax"] = cmp(a, ref_a)
            tab = cb.tensors("cuda")[0]
            if eight:
                d, d2 = m.dequantize_blockwise(c, a, tab, bs, dt), R.dequantize_blockwise(ref_c, ref_a, tab, bs, dt)
            else:
                d, d2 = m.dequantize_4bit(c, a, tab, bs, n, dt), R.dequantize_4bit(ref_c, ref_a, tab, bs, n, dt)
            row[f"{name}_vs_ref_dequant"] = cmp(d, d2)
            del c, a, d, d2
        bnb_ok = B is not None and not (eight and bs < 64)
        if bnb_ok:
            bc, ba = getattr(B, qfn)(A, cb, bs)
            bcc = codes_of(bc)
            mism = bcc != rc
            row["bnb_vs_spec_codes"] = int(mism.sum())
            row["bnb_vs_spec_codes_tail"] = int(mism[last:].sum()) if n % bs else 0
            row["bnb_vs_spec_absmax"] = cmp(ba, ref_a)
            tc, ta = getattr(C, qfn)(A, twin, bs)
            row["bnb_vs_twin_codes"] = cmp(codes_of(tc), bcc)
            fc, fa = getattr(C, qfn)(A, twin, bs, flags=C.FLAG_BNB_SCALE)
            row["bnb_vs_twin_bnbscale_codes"] = cmp(codes_of(fc), bcc)
            row["bnb_vs_twin_bnbscale_absmax"] = cmp(fa, ba)
            # dequantization of bnb's own codes by bnb and by us
            tab = cb.tensors("cuda")[0]
            if eight:
                row["bnb_vs_cuda_dequant"] = cmp(B.dequantize_blockwise(bc, ba, tab, bs, dt),
                                                 C.dequantize_blockwise(bc, ba, tab, bs, dt))
            else:
                row["bnb_vs_cuda_dequant"] = cmp(B.dequantize_4bit(bc, ba, tab, bs, n, dt),
                                                 C.dequantize_4bit(bc, ba, tab, bs, n, dt))
            del bc, ba, tc, ta, fc, fa, mism
        rows.append(row)
        print("  parity", {k: v for k, v in row.items()}, flush=True)
        del A, ref_c, ref_a, rc
        torch.cuda.empty_cache()
    return rows


# ------------------------------------------------------------------------------------------ report
def _md(df: pd.DataFrame, cols) -> str:
    cols = [c for c in cols if c in df.columns]  # kernel_ms is absent without a profiler
    d = df[cols].copy()
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for _, r in d.iterrows():
        cells = []
        for c in cols:
            v = r[c]
            cells.append(f"{v:.4g}" if isinstance(v, float) else str(v))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def report(bench_df: pd.DataFrame, parity_df: pd.DataFrame | None, meta: dict, copy_gbps: float) -> str:
    out = [f"# GPU quant kernels: {meta.get('run_device')}", "",
           f"driver {meta.get('run_driver')}, torch {meta.get('run_torch')} (CUDA {meta.get('run_cuda')}), "
           f"numba-cuda {meta.get('run_numba_cuda')}, bitsandbytes {meta.get('run_bitsandbytes')}, "
           f"git {meta.get('run_git')}, {meta.get('run_time')}", "",
           f"Device-to-device copy bandwidth measured in this run: **{copy_gbps:.0f} GB/s** (read + write).", ""]
    main = bench_df[bench_df.study == "main"].copy()
    if len(main):
        key = ["op", "quant_type", "blocksize"]
        bnb = main[main.backend == "bnb"].set_index(key)["median_ms"]
        prod = main[main.backend == "cuda"].set_index(key)["median_ms"]
        main["x_vs_bnb"] = [bnb.get(tuple(r[k] for k in key), np.nan) / r.median_ms for _, r in main.iterrows()]
        main["pct_of_cuda"] = [100 * prod.get(tuple(r[k] for k in key), np.nan) / r.median_ms
                               for _, r in main.iterrows()]
        out += ["## n = 2^28 bf16", "",
                "`median_ms`, `gbps`, `pct_copy`: the public call with default arguments (workbench's API with "
                "`backend=`; bitsandbytes.functional for bnb), median of the reps; `adapter_ms`: the backend's "
                "kernel entry point alone; `kernel_ms`: GPU time of every kernel the public call enqueues (CUPTI). "
                "Effective bytes = inputs read once + outputs written once; `x_vs_bnb` = bnb time / this time; "
                "`pct_of_cuda` = cuda time / this time (numba target >= 70); `mem_extra_bytes` = peak allocation "
                "during one adapter call minus its outputs.", "",
                _md(main, ["op", "quant_type", "blocksize", "backend", "median_ms", "adapter_ms", "kernel_ms", "gbps",
                           "pct_copy", "x_vs_bnb", "pct_of_cuda", "mem_extra_bytes"]), ""]
    sw = bench_df
    if len(sw) and (bench_df.study == "sweep").any():
        piv = sw.pivot_table(index=["op", "quant_type", "blocksize", "n"], columns="backend", values="median_ms")
        piv = piv.reset_index()
        piv["n"] = [f"2^{int(np.log2(v))}" for v in piv["n"]]
        out += ["## Size sweep (public call, median ms; small sizes are launch-bound and L2-resident)", "",
                _md(piv, list(piv.columns)), ""]
    if parity_df is not None and len(parity_df):
        cols = [c for c in parity_df.columns if c not in ("dtype", "blocksize", "code", "n", "case")]
        out += ["## Parity (mismatch counts; -1 = not run)", "",
                "`*_vs_ref_*`: our kernels vs the reference on the same GPU tensors. `bnb_vs_spec_codes`: "
                "bitsandbytes CUDA vs the spec (`_tail`: of those, in the tail block). `bnb_vs_twin_codes`: vs our "
                "cuda kernel with the bnb-CUDA codebook (spec scaling). `bnb_vs_twin_bnbscale_*`: vs our cuda kernel "
                "with the bnb-CUDA codebook and bnb's fast-math scaling (FLAG_BNB_SCALE).", "",
                _md(parity_df, ["dtype", "blocksize", "code", "n", "case"] + cols), ""]
    return "\n".join(out)


def _warm_gpu(seconds: float = 1.0) -> None:
    """Run copies for a second so clocks have ramped before the first timing."""
    x = torch.empty(1 << 28, device="cuda", dtype=torch.float32)
    y = torch.empty_like(x)
    t = time.time()
    while time.time() - t < seconds:
        for _ in range(20):
            y.copy_(x)
        torch.cuda.synchronize()
    del x, y


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True)
    ap.add_argument("--quick", action="store_true", help="fewer reps, smaller parity matrix")
    ap.add_argument("--no-parity", action="store_true")
    ap.add_argument("--no-sweep", action="store_true")
    ap.add_argument("--no-speed", action="store_true")
    args = ap.parse_args(argv)
    outdir = Path(args.out)
    outdir.mkdir(parents=True, exist_ok=True)
    assert torch.cuda.is_available(), "needs a CUDA GPU"
    t0 = time.time()
    meta = results.run_metadata("cuda")
    mods = {b: _mod(b) for b in ("cuda", "numba_cuda")}
    bops = _bnb_ops()
    reps = 10 if args.quick else 25
    _warm_gpu()
    copy_gbps = bench.copy_bandwidth("cuda", nbytes=1 << 30, reps=reps)
    print(f"[bench_gpu] {meta['run_device']}: copy {copy_gbps:.0f} GB/s", flush=True)
    rows = []
    if not args.no_speed:
        rows += run_speed(1 << 28, reps, copy_gbps, mods, bops, sweep=False, memory=True)
        if not args.no_sweep:
            for k in range(16, 28, 2):
                rows += run_speed(1 << k, reps, copy_gbps, mods, bops, sweep=True, memory=False)
    bench_df = results.frame(rows, meta).assign(copy_gbps=copy_gbps) if rows else pd.DataFrame()
    if len(bench_df):
        results.save(bench_df, outdir / "bench.parquet")
    parity_df = None
    if not args.no_parity:
        dtypes = (torch.float32, torch.float16, torch.bfloat16)
        bss = (32, 64, 256, 4096) if args.quick else (32, 64, 128, 256, 512, 1024, 2048, 4096)
        prow = parity_rows(dtypes, bss, lambda bs: (1 << 22) + 3 * bs // 2 + 1 if not args.quick else 200 * bs + 7,
                           mods, bops, big=not args.quick)
        parity_df = results.frame(prow, meta)
        results.save(parity_df, outdir / "parity.parquet")
    (outdir / "README.md").write_text(report(bench_df if len(bench_df) else pd.DataFrame(columns=["study"]),
                                             parity_df, meta, copy_gbps))
    print(f"[bench_gpu] done in {time.time() - t0:.0f} s -> {outdir}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
