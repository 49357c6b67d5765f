"""GPU optimizer study: parity (1 and 100 steps) and speed (2**27 fp32 params) of the fused optimizer
kernels -- CUDA production (cuda_src/optim.cu) and Numba CUDA -- against the reference (the torch
spec, run on CPU copies of the same inputs: torch's CUDA kernels divide by a Python scalar as a
multiply by its reciprocal, which is not the spec's IEEE division), bitsandbytes 0.50.2's CUDA ops and torch's fused AdamW.

    python studies/bench/bench_optim_gpu.py --out reports/optim-gpu [--n-log2 27] [--quick]

Writes parity.{parquet,csv}, speed.{parquet,csv} (workbench.results rows with run metadata) and
summary.md. Effective bytes per step: grad + param read, param written, each state read and written
(8-bit: codes + one float32 absmax per 256 block), i.e. the one-pass minimum.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root

from studies.bench import oracle  # noqa: E402
from workbench import bench, results  # noqa: E402
from workbench.backends import status  # noqa: E402
from workbench.optim import functional as W  # noqa: E402

NAMES = ("adam", "ademamix", "momentum", "lion", "rmsprop", "adagrad", "lamb", "lars")
HP = dict(beta1=0.9, beta2=0.995, beta3=0.9999, alpha=5.0, eps=1e-8, lr=1e-3)


def _wd(name):
    return 0.0 if name in ("lamb", "lars") else 1e-2


def _bnb():
    """torch.ops.bitsandbytes, its ops registered by importing bitsandbytes.functional."""
    return torch.ops.bitsandbytes if oracle.bitsandbytes("bitsandbytes.functional", sys.stderr) else None


def _op(backend, eight):
    if backend == "reference":
        return W.optimizer_update_8bit_blockwise if eight else W.optimizer_update_32bit
    import importlib
    mod = importlib.import_module(f"workbench.backends.{backend}.optim")
    return mod.optimizer_update_8bit_blockwise if eight else mod.optimizer_update_32bit


def make_state(name, n, eight, device, dtype=torch.float32):
    two = name in ("adam", "lamb", "ademamix")
    nb = (n + 255) // 256
    s1shape = (2, n) if name == "ademamix" else (n,)
    if eight:
        st = dict(state1=torch.zeros(s1shape, dtype=torch.uint8, device=device),
                  absmax1=torch.zeros((2, nb) if name == "ademamix" else (nb,), device=device),
                  qmap1=W.qmap(True, device).clone() if device != "cpu" else W.qmap(True),
                  state2=torch.zeros(n, dtype=torch.uint8, device=device) if two else None,
                  absmax2=torch.zeros(nb, device=device) if two else None,
                  qmap2=(W.qmap(False, device).clone() if device != "cpu" else W.qmap(False)) if two else None)
    else:
        st = dict(state1=torch.zeros(s1shape, device=device), state2=torch.zeros(n, device=device) if two else None,
                  unorm_vec=torch.zeros(1, device=device))
    return st


def step_fn(fn, name, eight, g, p, st, step, max_unorm=0.0, gnorm_scale=1.0, skip_zeros=False):
    h = HP
    if eight:
        fn(name, g, p, st["state1"], st["state2"], h["beta1"], h["beta2"], h["beta3"], h["alpha"], h["eps"], step,
           h["lr"], st["qmap1"], st["qmap2"], st["absmax1"], st["absmax2"], _wd(name), gnorm_scale, skip_zeros)
    else:
        pn = float(p.float().norm()) if max_unorm > 0 else 0.0
        fn(name, g, p, st["state1"], st["state2"], st["unorm_vec"] if max_unorm > 0 else None, max_unorm, pn,
           h["beta1"], h["beta2"], h["beta3"], h["alpha"], h["eps"], _wd(name), step, h["lr"], gnorm_scale,
           skip_zeros)


def _cmp(a, b, scale=1.0):
    """(#mismatching elements, max |difference| / scale); codes: max code distance."""
    if a is None:
        return 0, 0.0
    a, b = a.cpu(), b.cpu()
    if a.dtype == torch.uint8:
        d = (a.int() - b.int()).abs()
        return int((d != 0).sum()), float(d.max()) if d.numel() else 0.0
    d = (a.float() - b.float()).abs()
    ne = ~((a == b) | (torch.isnan(a) & torch.isnan(b)))
    return int(ne.sum()), float(d.max()) / scale


def parity(n: int, steps: int, backends, rows, bnb_ops):
    dev = "cuda"
    gen = torch.Generator(device=dev).manual_seed(int(time.time()))
    for name in NAMES:
        for eight in (True, False):
            mu = 0.02 if (name in ("lamb", "lars") and not eight) else 0.0
            p0 = torch.randn(n, device=dev, generator=gen)
            ps = {b: p0.clone() for b in backends}
            ps["reference"] = p0.cpu()
            sts = {b: make_state(name, n, eight, "cpu" if b == "reference" else dev) for b in ps}
            fns = {b: _op(b, eight) for b in ps}
            if bnb_ops is not None:
                ps["bnb"] = p0.clone()
                sts["bnb"] = make_state(name, n, eight, dev)
                fns["bnb"] = (bnb_ops.optimizer_update_8bit_blockwise if eight else bnb_ops.optimizer_update_32bit)
            for step in range(1, steps + 1):
                g = torch.randn(n, device=dev, generator=gen) * 0.1
                g[::97] = 0.0
                g_cpu = g.cpu()
                for b in list(ps):
                    try:
                        step_fn(fns[b], name, eight, g_cpu if b == "reference" else g, ps[b], sts[b], step, mu)
                    except Exception as e:  # noqa: BLE001  (bitsandbytes lacks some 8-bit rules)
                        if b != "bnb":
                            raise
                        print(f"bnb {name} {8 if eight else 32}-bit: {type(e).__name__}: {e}", flush=True)
                        del ps[b], sts[b]
                if step in (1, steps):
                    ref_p, ref_st = ps["reference"], sts["reference"]
                    for b in ps:
                        if b == "reference":
                            continue
                        row = dict(op=f"{name}{8 if eight else 32}bit", optimizer=name, bits=8 if eight else 32,
                                   backend=b, n=n, step=step, max_unorm=mu)
                        row["p_mismatch"], row["p_maxdiff_over_lr"] = _cmp(ps[b], ref_p, HP["lr"])
                        for key in ("state1", "state2", "absmax1", "absmax2"):
                            if key in ref_st:
                                row[f"{key}_mismatch"], row[f"{key}_maxdiff"] = _cmp(sts[b][key], ref_st[key])
                        rows.append(row)
                        print({k: v for k, v in row.items() if "mismatch" in k or k in ("op", "backend", "step")},
                              flush=True)
            del ps, sts
            torch.cuda.empty_cache()


def speed(n: int, backends, rows, copy_gbps, bnb_ops, reps=30, fused_adamw=True):
    dev = "cuda"
    g = torch.randn(n, device=dev) * 0.01
    for b in (*backends, "bnb"):
        if b == "bnb" and bnb_ops is None:
            continue
        for name in NAMES:
            for eight in (True, False):
                if b == "numba_cuda" and not eight and name not in ("adam",):
                    continue
                if b == "bnb" and name not in ("adam", "lion", "momentum", "ademamix"):
                    continue
                if name in ("lamb", "lars") and eight:
                    continue  # same kernel as adam / momentum
                fn = (bnb_ops.optimizer_update_8bit_blockwise if eight else bnb_ops.optimizer_update_32bit) \
                    if b == "bnb" else _op(b, eight)
                p = torch.randn(n, device=dev)
                st = make_state(name, n, eight, dev)
                try:
                    step_fn(fn, name, eight, g, p, st, 1)
                except Exception as e:  # noqa: BLE001
                    print(f"{b} {name} {8 if eight else 32}-bit: {type(e).__name__}: {e}", flush=True)
                    continue
                t = bench.time_fn(lambda: step_fn(fn, name, eight, g, p, st, 2), "cuda", warmup=3, reps=reps)
                nbytes = bench.tensor_bytes(g, p, p) + 2 * bench.tensor_bytes(
                    *(st[k] for k in ("state1", "state2", "absmax1", "absmax2") if st.get(k) is not None))
                kms, hms = bench.device_time(lambda: step_fn(fn, name, eight, g, p, st, 2))
                b2b = bench.back_to_back_ms(lambda: step_fn(fn, name, eight, g, p, st, 2), reps=reps)
                rows.append(bench.row(f"{name}{8 if eight else 32}bit", b, n, t, nbytes, copy_gbps,
                                      optimizer=name, bits=8 if eight else 32, kernel_ms=kms, host_ms=hms,
                                      b2b_ms=b2b, pct_copy_b2b=100 * nbytes / (b2b * 1e-3) / 1e9 / copy_gbps))
                print(f"{b:11s} {name:9s} {8 if eight else 32:2d}-bit  {t.median_ms:7.3f} ms  "
                      f"{rows[-1]['gbps']:7.1f} GB/s  {rows[-1]['pct_copy']:5.1f}% copy | kernel "
                      f"{kms or 0:.3f} ms {rows[-1].get('kernel_pct_copy', 0):5.1f}% host {hms:.3f} ms | back to back "
                      f"{b2b:.3f} ms {rows[-1]['pct_copy_b2b']:5.1f}%", flush=True)
                del p, st
                torch.cuda.empty_cache()
    if not fused_adamw:
        return
    # torch fused AdamW, same n, fp32
    p = torch.nn.Parameter(torch.randn(n, device=dev))
    p.grad = g.clone()
    opt = torch.optim.AdamW([p], lr=1e-3, fused=True)
    opt.step()
    t = bench.time_fn(opt.step, "cuda", warmup=3, reps=reps)
    nbytes = 4 * n * (1 + 2 + 4)
    b2b = bench.back_to_back_ms(opt.step, reps=reps)
    rows.append(bench.row("adam32bit", "torch_fused_adamw", n, t, nbytes, copy_gbps, optimizer="adam", bits=32,
                          b2b_ms=b2b, pct_copy_b2b=100 * nbytes / (b2b * 1e-3) / 1e9 / copy_gbps))
    print(f"torch fused AdamW        {t.median_ms:7.3f} ms  {rows[-1]['gbps']:7.1f} GB/s", flush=True)


def summary(df_speed, df_par) -> str:
    lines = ["# Optimizer kernels on the GPU", ""]
    if df_speed is not None and len(df_speed):
        lines += [f"Device: {df_speed['run_device'].iloc[0]}; n = {int(df_speed['n'].iloc[0])} fp32 params; "
                  f"copy bandwidth {df_speed['copy_gbps'].iloc[0]:.0f} GB/s.", "",
                  "Event timing (what a caller sees: host work + kernels) and, where the profiler ran, the GPU "
                  "time of the call's kernels (CUPTI) and the host time of one call; back to back: steps issued without "
                  "synchronizing (the rate of a training loop).", "",
                  "| op | backend | median ms | GB/s | % copy | kernel ms | kernel % copy | host ms | b2b ms | b2b % copy |",
                  "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
        fmt = lambda v, f: "" if v is None or v != v else format(v, f)  # noqa: E731  (NaN: not measured)
        for _, r in df_speed.sort_values(["op", "backend"]).iterrows():
            lines.append(f"| {r['op']} | {r['backend']} | {r['median_ms']:.3f} | {r['gbps']:.0f} | {r['pct_copy']:.1f} | "
                         f"{fmt(r.get('kernel_ms'), '.3f')} | {fmt(r.get('kernel_pct_copy'), '.1f')} | "
                         f"{fmt(r.get('host_ms'), '.3f')} | {fmt(r.get('b2b_ms'), '.3f')} | "
                         f"{fmt(r.get('pct_copy_b2b'), '.1f')} |")
    if df_par is not None and len(df_par):
        lines += ["", "## Parity (mismatching elements vs the reference: the spec, run on CPU copies of the inputs)", "",
                  "| op | backend | step | p | state1 | state2 | absmax1 | absmax2 | max code dist s1/s2 | max abs p diff / lr |",
                  "|---|---|---:|---:|---:|---:|---:|---:|---|---:|"]
        for _, r in df_par.iterrows():
            lines.append(f"| {r['op']} | {r['backend']} | {r['step']} | {r['p_mismatch']} | "
                         f"{r.get('state1_mismatch', '')} | {r.get('state2_mismatch', '')} | "
                         f"{r.get('absmax1_mismatch', '')} | {r.get('absmax2_mismatch', '')} | "
                         f"{r.get('state1_maxdiff', '')}/{r.get('state2_maxdiff', '')} | {r['p_maxdiff_over_lr']:.3g} |")
    return "\n".join(lines) + "\n"


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="reports/optim-gpu")
    ap.add_argument("--n-log2", type=int, default=27)
    ap.add_argument("--parity-n", type=int, default=(1 << 18) + 37)
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--skip-parity", action="store_true")
    ap.add_argument("--skip-speed", action="store_true")
    ap.add_argument("--backends", default="cuda,numba_cuda", help="ours to run (bitsandbytes runs unless --no-bnb)")
    ap.add_argument("--no-bnb", action="store_true", help="skip bitsandbytes and torch's fused AdamW (A/B runs)")
    args = ap.parse_args(argv)
    out = Path(args.out)
    backends = [b for b in args.backends.split(",") if status(b)[0]]
    print("backends:", backends, flush=True)
    bnb_ops = None if args.no_bnb else _bnb()
    meta = results.run_metadata("cuda")
    df_par = df_speed = None
    if not args.skip_parity:
        rows = []
        parity(args.parity_n, args.steps, backends, rows, bnb_ops)
        df_par = results.frame(rows, meta)
        results.save(df_par, out / "parity")
    if not args.skip_speed:
        rows = []
        cbw = bench.copy_bandwidth("cuda")
        speed(1 << args.n_log2, backends, rows, cbw, bnb_ops, fused_adamw=not args.no_bnb)
        df_speed = results.frame(rows, meta).assign(copy_gbps=cbw)
        results.save(df_speed, out / "speed")
    (out / "summary.md").write_text(summary(df_speed, df_par))
    print((out / "summary.md").read_text())


if __name__ == "__main__":
    main()
