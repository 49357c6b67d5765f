"""k-bit quantize / dequantize speed (issue 19, item 6): K = 2..8, layouts bitplane and dense, per backend.

    python -m studies.bench.bench_kbit_gpu --out DIR [--n-log2 28] [--ks 2..8] [--reps N] [--device cuda|cpu]

Target (H200, n = 2^28 bf16): quantize >= 75 % and dequantize >= 85 % of the device-to-device copy bandwidth
for every K and layout; Numba CUDA >= 70 % of the cuda backend; the 4-bit kernels (``workbench.quantize_4bit`` /
``dequantize_4bit``, NF4, blocksize 64) timed beside them as the reference line.

Per row (one op, K, layout, backend; ``auto`` is the default a user gets):
  * public_ms (``median_ms``): event timing (median of the reps after warm-up) of the public call with default
    arguments, ``workbench.kbit.quantize_kbit(A, k=K, layout=L[, backend=B])`` / ``dequantize_kbit(packed, st)``;
  * kernel_ms: the op call that runs kernels only, ``torch.ops.workbench.quantize_kbit(...)`` with the arguments
    the public API passes, by CUDA-graph replay (``kernel_method`` = graph); where capture fails, event timing of
    calls issued back to back (events_back_to_back); on CPU the op timed with time_fn (cpu_time_fn);
  * host_us_4096: the public call's host time at n = 4096 (CUDA: calls back to back, unsynchronized, as
    studies/bench/public_call.py measures it; CPU: its wall time);
  * bytes: quantize reads n*2 (bf16) and writes the packed words and the scales; dequantize reads those and
    writes n*2. GB/s and % of the copy bandwidth measured in the same run, for the public and the kernel time;
  * met_target: kernel % of copy (public where no kernel time) >= 75 (quantize) / 85 (dequantize);
    pct_of_cuda_*: cuda time / this time, in % (numba_cuda's target is >= 70).
Writes DIR/kbit_speed.csv, DIR/kbit_speed.md, DIR/meta.json and DIR/kbit_speed.png.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import time
from pathlib import Path

import pandas as pd
import torch

from workbench import bench, results

LAYOUTS = ("bitplane", "dense")
KS = tuple(range(2, 9))
TARGET_PCT = {"quantize": 75.0, "dequantize": 85.0}
NUMBA_TARGET_PCT = 70.0
BACKENDS = {"cuda": ("auto", "cuda", "numba_cuda"), "cpu": ("auto", "reference", "numba_cpu", "cython_cpu")}
BLOCKSIZE, SCALE_FORMAT, CODES_AGAINST = 32, "e4m4", "exact"   # quantize_kbit's defaults
OPS = ("quantize_kbit", "dequantize_kbit")
HOST_N = 4096


def _say(msg: str) -> None:
    try:
        from tqdm.auto import tqdm
        tqdm.write(msg)
    except ImportError:
        print(msg, flush=True)


def _bar(total: int, desc: str):
    """A tqdm bar on stderr (off with KBIT_PROGRESS=0, as workbench.sweep does), else a no-op."""
    class _Null:
        def update(self, n=1): pass
        def close(self): pass
    if os.environ.get("KBIT_PROGRESS") == "0":
        return _Null()
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return _Null()
    return tqdm(total=total, desc=desc, leave=False)


def live_backends(device: str, names=None) -> tuple[list[str], dict[str, str]]:
    """The backends to time (those available that implement both k-bit ops) and a note per one left out."""
    from workbench.backends import ops_of, status
    live, notes = [], {}
    for b in names or BACKENDS[device]:
        if b == "auto":
            live.append(b)
            continue
        ok, reason = status(b)
        if not ok:
            notes[b] = f"unavailable: {reason}"
            continue
        have = ops_of(b)   # this backend's ops only (registered() would load every backend, bitsandbytes too)
        missing = [op for op in OPS if op not in have]
        if missing:  # a backend whose k-bit kernels are not registered (yet)
            notes[b] = f"no kernel registered for {', '.join(missing)}"
            continue
        live.append(b)
    for b, why in notes.items():
        print(f"[bench_kbit] skipping backend {b}: {why}", flush=True)
    return live, notes


# ------------------------------------------------------------------------------------------ timers
class Timers:
    def __init__(self, device: str, reps: int):
        self.device, self.reps = device, reps

    def public(self, fn) -> bench.Timing:
        return bench.time_fn(fn, self.device, warmup=3, reps=self.reps)

    def kernel(self, fn) -> tuple[float | None, str]:
        """(ms per call, method): graph replay on CUDA, back-to-back events if capture fails; CPU: time_fn."""
        if self.device != "cuda":
            return bench.time_fn(fn, "cpu", warmup=2, reps=self.reps).median_ms, "cpu_time_fn"
        ms = bench.graph_replay_ms(fn)
        if ms is not None:
            return ms, "graph"
        return bench.back_to_back_ms(fn, reps=max(50, self.reps), warmup=3), "events_back_to_back"

    def host_us(self, fn) -> float:
        if self.device != "cuda":
            return bench.time_fn(fn, "cpu", warmup=3, reps=max(5, self.reps)).median_ms * 1e3
        from .public_call import _host_ms
        return _host_ms(fn, calls=300, repeats=5) * 1e3


# ------------------------------------------------------------------------------------------- cases
def _kbit_fns(A: torch.Tensor, k: int, layout: str, backend: str, source: str | None = None):
    """(public quantize, kernel quantize, public dequantize, kernel dequantize, resolved backend, bytes q, bytes dq).
    ``source``: the backend that quantizes the dequantizers' input (default ``backend``; every backend writes the
    same bits)."""
    from workbench import kbit
    from workbench.backends.registry import resolve
    ops = torch.ops.workbench
    dev, n = A.device.type, A.numel()
    kw = {} if backend == "auto" else {"backend": backend}
    name_q = resolve(backend, "quantize_kbit", dev, str(A.dtype).removeprefix("torch."))
    name_d = resolve(backend, "dequantize_kbit", dev, None)
    cb = kbit.kbit_codebook_tensor(None, k).to(A.device)
    a = A.reshape(-1)
    packed, st = kbit.quantize_kbit(A, k=k, layout=layout, backend=source or backend)
    scales = st.scales.contiguous()
    table = st.codebook.to(torch.float32).contiguous()
    words = packed.reshape(-1).contiguous()
    stored = bench.tensor_bytes(packed, st.scales)
    # the op may return 3 or 4 outputs (a non-finite flag): the bench never unpacks it by count
    return ((lambda: kbit.quantize_kbit(A, k=k, layout=layout, **kw)),
            (lambda: ops.quantize_kbit(a, cb, k, BLOCKSIZE, layout, SCALE_FORMAT, CODES_AGAINST, name_q)),
            (lambda: kbit.dequantize_kbit(packed, st, **kw)),
            (lambda: ops.dequantize_kbit(words, scales, st.tensor_scale, table, k, st.blocksize, st.n_coded,
                                         st.layout, st.scale_format, st.dtype, name_d)),
            (name_q, name_d), 2 * n + stored, stored + 2 * n)


def _nf4_fns(A: torch.Tensor):
    """The same five things for the 4-bit reference line: quantize_4bit / dequantize_4bit, NF4, blocksize 64."""
    import workbench as wb
    from workbench import codebooks as cbs
    from workbench.backends.registry import resolve
    ops = torch.ops.workbench
    dev, n = A.device.type, A.numel()
    name_q = resolve("auto", "quantize_4bit", dev, str(A.dtype).removeprefix("torch."))
    name_d = resolve("auto", "dequantize_4bit", dev, str(A.dtype).removeprefix("torch."))
    table, bounds, codes = cbs.get("nf4").tensors("cpu")   # the host arrays the public call passes
    a = A.reshape(-1)
    packed, qs = wb.quantize_4bit(A, blocksize=64, quant_type="nf4")
    p8, absmax, code = packed.reshape(-1).contiguous(), qs.absmax.contiguous(), qs.code.to(A.device, torch.float32)
    stored = (n + 1) // 2 + 4 * -(-n // 64)
    return ((lambda: wb.quantize_4bit(A, blocksize=64, quant_type="nf4")),
            (lambda: ops.quantize_4bit(a, table, bounds, codes, 64, name_q)),
            (lambda: wb.dequantize_4bit(packed, qs)),
            (lambda: ops.dequantize_4bit(p8, absmax, code, 64, n, A.dtype, None, None, None, name_d)),
            (name_q, name_d), 2 * n + stored, stored + 2 * n)


# --------------------------------------------------------------------------------------------- run
def run(device: str, n_log2: int, ks=KS, reps: int = 20, backends=None, copy_gbps: float | None = None,
        partial: Path | None = None, ops=OPS, layouts=LAYOUTS):
    """(rows DataFrame, notes {backend: why skipped}, copy GB/s). ``partial``: a CSV rewritten after every row, so a
    run cut short by a timeout still leaves its rows. ``ops``: a subset of OPS (dequantize alone quantizes its
    input with ``auto``, so a Numba run compiles no quantizer); ``layouts`` likewise."""
    live, notes = live_backends(device, backends)
    if copy_gbps is None:
        copy_gbps = (bench.copy_bandwidth("cuda", nbytes=1 << 30, reps=reps) if device == "cuda"
                     else bench.copy_bandwidth("cpu", nbytes=1 << 26, reps=5))
    print(f"[bench_kbit] {results.device_name(device)}: copy {copy_gbps:.0f} GB/s; n = 2^{n_log2}; "
          f"backends {', '.join(live)}", flush=True)
    n = 1 << n_log2
    g = torch.Generator(device=device).manual_seed(0)
    A = torch.randn(n, device=device, dtype=torch.bfloat16, generator=g)
    A_small = torch.randn(HOST_N, device=device, dtype=torch.bfloat16, generator=g)
    T = Timers(device, reps)
    kernel_cache: dict[tuple, tuple] = {}   # 'auto' times the same kernels as the backend it resolves to
    rows = []
    plan = [(k, layout, b) for k in ks for layout in layouts for b in live]
    bar = _bar(len(ops) * len(plan) + 2, "kbit speed")
    source = None if "quantize_kbit" in ops else "auto"

    def measure(op, k, layout, backend, fns, small_fns, idx):
        pq, kq, pd_, kd, names, bq, bd = fns
        public, kern, nbytes = (pq, kq, bq) if idx == 0 else (pd_, kd, bd)
        small_public = small_fns[0] if idx == 0 else small_fns[2]
        kind = "quantize" if op.startswith("quantize") else "dequantize"
        resolved = names[idx]
        t = T.public(public)
        key = (op, k, layout, resolved)
        if key not in kernel_cache:
            kernel_cache[key] = T.kernel(kern)
        kms, method = kernel_cache[key]
        host = T.host_us(small_public)
        r = bench.row(op, backend, n, t, nbytes, copy_gbps, kernel_ms=kms)
        r.update(k=k, layout=layout, dtype="bfloat16", resolved_backend=resolved, kind=kind, public_ms=t.median_ms,
                 kernel_method=method, kernel_gbps=nbytes / (kms * 1e-3) / 1e9 if kms else math.nan,
                 public_over_kernel=t.median_ms / kms if kms else math.nan, host_us_4096=host,
                 copy_gbps=copy_gbps, target_pct=TARGET_PCT[kind], skipped="")
        if not kms:
            r["kernel_pct_copy"] = math.nan
        best = r["kernel_pct_copy"] if kms else r["pct_copy"]
        r["met_target"] = bool(best >= TARGET_PCT[kind])
        rows.append(r)
        if partial:
            pd.DataFrame(rows).to_csv(partial, index=False)
        _say(f"  {op:16s} K={k} {layout:9s} {backend:10s} ({resolved}) public {t.median_ms:8.4f} ms "
             f"{r['pct_copy']:5.1f}% | kernel {'-' if not kms else f'{kms:.4f}'} ms "
             f"{r['kernel_pct_copy']:5.1f}% [{method}] | host {host:6.1f} us | "
             f"{'met' if r['met_target'] else 'MISSED'} {TARGET_PCT[kind]:.0f}%")

    def skipped(op, k, layout, backend, why):
        kind = "quantize" if op.startswith("quantize") else "dequantize"
        rows.append(dict(op=op, backend=backend, n=n, k=k, layout=layout, dtype="bfloat16", kind=kind,
                         target_pct=TARGET_PCT[kind], copy_gbps=copy_gbps, skipped=why))
        if partial:
            pd.DataFrame(rows).to_csv(partial, index=False)
        _say(f"  {op:16s} K={k} {layout:9s} {backend:10s} skipped: {_cell(why, 300)}")

    try:
        for k, layout, b in plan:
            try:
                fns, small = _kbit_fns(A, k, layout, b, source), _kbit_fns(A_small, k, layout, b, source)
            except Exception as e:  # noqa: BLE001  (one failing backend must not end the run)
                for op in ops:
                    skipped(op, k, layout, b, f"{type(e).__name__}: {e}")
                bar.update(len(ops))
                continue
            for idx, op in enumerate(OPS):
                if op not in ops:
                    continue
                try:
                    measure(op, k, layout, b, fns, small, idx)
                except Exception as e:  # noqa: BLE001
                    skipped(op, k, layout, b, f"{type(e).__name__}: {e}")
                bar.update()
            del fns, small
        try:
            fns, small = _nf4_fns(A), _nf4_fns(A_small)
        except Exception as e:  # noqa: BLE001
            fns = small = None
            why = f"{type(e).__name__}: {e}"
        for idx, op in enumerate(("quantize_4bit", "dequantize_4bit")):
            try:
                if fns is None:
                    raise RuntimeError(why)
                measure(op, 4, "nf4 bs64", "auto", fns, small, idx)
            except Exception as e:  # noqa: BLE001
                skipped(op, 4, "nf4 bs64", "auto", f"{type(e).__name__}: {e}")
            bar.update()
    finally:
        bar.close()
    df = ratios(pd.DataFrame(rows))
    for b, why in notes.items():   # a backend left out is a row the reader can see, not a silence
        for op in OPS:
            kind = op.split("_")[0]
            df = pd.concat([df, pd.DataFrame([dict(op=op, backend=b, n=n, dtype="bfloat16", kind=kind,
                                                   target_pct=TARGET_PCT[kind], copy_gbps=copy_gbps,
                                                   skipped=why)])], ignore_index=True)
    return df, notes, copy_gbps


def ratios(df: pd.DataFrame) -> pd.DataFrame:
    """pct_of_cuda_{kernel,public} = cuda's time / this row's time, in %, on the same op, K and layout."""
    df = df.copy()
    for what in ("kernel", "public"):
        col = f"{what}_ms"
        df[f"pct_of_cuda_{what}"] = math.nan
        if col not in df or "cuda" not in set(df.backend):
            continue
        ref = df[df.backend == "cuda"].set_index(["op", "k", "layout"])[col]
        for i, r in df.iterrows():
            c = ref.get((r.op, r.k, r.layout))
            if c is not None and c == c and r[col] == r[col] and r[col]:
                df.at[i, f"pct_of_cuda_{what}"] = 100.0 * c / r[col]
    return df


# ------------------------------------------------------------------------------------------ report
def _f(v, fmt="{:.4f}"):
    return "-" if v is None or (isinstance(v, float) and v != v) else fmt.format(v)


def _cell(text: str, limit: int = 160) -> str:
    """One markdown table cell: no pipes or line breaks."""
    t = " ".join(str(text).replace("|", "/").split())
    return t if len(t) <= limit else t[:limit - 3] + "..."


def table_md(df: pd.DataFrame, meta: dict) -> str:
    lines = [f"# k-bit speed: {meta.get('device')}", "",
             f"n = 2^{meta.get('n_log2')} bf16; driver {meta.get('driver') or '-'}, torch {meta.get('torch')} "
             f"(CUDA {meta.get('cuda') or '-'}), numba-cuda {meta.get('numba_cuda') or '-'}, git {meta.get('git')}, "
             f"{meta.get('time')}", "",
             f"Copy bandwidth measured in this run: **{meta.get('copy_gbps', 0):.0f} GB/s** (read + write).", "",
             "Target: kernel quantize >= 75 %, dequantize >= 85 % of copy for every K and layout; numba_cuda >= 70 % "
             "of cuda. public = the public call with default arguments (event timing, median); kernel = "
             "`torch.ops.workbench.*` by CUDA-graph replay (`method`); host = the public call's host time at "
             "n = 4096. met = kernel % copy (public where no kernel time) against the target.", ""]
    done = df[df.get("skipped", "").fillna("") == ""] if "skipped" in df else df
    if len(done):
        kb = done[done.op.str.endswith("_kbit")]
        per = ", ".join(f"{b} {int(e.met_target.sum())}/{len(e)}" for b, e in kb.groupby("backend", sort=False))
        lines += [f"**Met: {int(kb.met_target.sum())} of {len(kb)} k-bit rows** ({per}).", ""]
        nb = kb[kb.backend == "numba_cuda"].pct_of_cuda_kernel.dropna()
        if len(nb):
            lines += [f"numba_cuda kernel time as % of cuda's (cuda ms / numba ms): min {nb.min():.0f} %, median "
                      f"{nb.median():.0f} %; {int((nb >= NUMBA_TARGET_PCT).sum())} of {len(nb)} rows >= "
                      f"{NUMBA_TARGET_PCT:.0f} %.", ""]
    lines += ["| K | layout | op | backend | public ms | kernel ms | method | public GB/s | kernel GB/s "
              "| % copy public | % copy kernel | public/kernel | host us @4096 | met target | numba % of cuda "
              "(kernel) |", "|" + "---|" * 15]
    for _, r in df.iterrows():
        if isinstance(r.get("skipped"), str) and r["skipped"]:
            lines.append(f"| {_f(r.get('k'), '{:.0f}')} | {r.get('layout') if r.get('layout') == r.get('layout') else '-'}"
                         f" | {r.op} | {r.backend} | skipped: {_cell(r['skipped'])} |" + " |" * 10)
            continue
        backend = r.backend if r.backend == r.resolved_backend else f"{r.backend} ({r.resolved_backend})"
        numba = _f(r.get("pct_of_cuda_kernel"), "{:.0f} %") if r.backend == "numba_cuda" else "-"
        lines.append(f"| {int(r.k)} | {r.layout} | {r.op} | {backend} | {_f(r.public_ms)} | {_f(r.kernel_ms)} "
                     f"| {r.kernel_method} | {_f(r.gbps, '{:.1f}')} | {_f(r.kernel_gbps, '{:.1f}')} "
                     f"| {_f(r.pct_copy, '{:.1f}')} | {_f(r.kernel_pct_copy, '{:.1f}')} "
                     f"| {_f(r.public_over_kernel, '{:.2f}')} | {_f(r.host_us_4096, '{:.1f}')} "
                     f"| {'yes' if r.met_target else 'no'} | {numba} |")
    return "\n".join(lines) + "\n"


def plot(df: pd.DataFrame, path, meta: dict) -> Path | None:
    """% of copy vs K, one panel per op: kernel (solid) and public (thin) per layout x backend, the targets
    dashed, the 4-bit NF4 kernel (star) and public (hollow star) at K = 4."""
    try:
        import matplotlib.pyplot as plt   # the backend is the caller's (MPLBACKEND=Agg on a device)
    except ImportError:
        print("matplotlib unavailable: no figure")
        return None
    d = df[(df.get("skipped", "").fillna("") == "")] if "skipped" in df else df
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    backends = sorted(set(d.backend), key=lambda b: (b != "auto", b))
    for ax, kind in zip(axes, ("quantize", "dequantize")):
        e = d[(d.kind == kind) & d.op.str.endswith("_kbit")]
        for bi, b in enumerate(backends):
            for layout, ls, mk in (("bitplane", "-", "o"), ("dense", ":", "s")):
                s = e[(e.backend == b) & (e.layout == layout)].sort_values("k")
                if not len(s):
                    continue
                c = colors[bi % len(colors)]
                ax.plot(s.k, s.kernel_pct_copy, ls, marker=mk, color=c, lw=1.6, label=f"{b} {layout} kernel")
                ax.plot(s.k, s.pct_copy, ls, marker=mk, color=c, lw=0.7, alpha=0.45, mfc="none",
                        label=f"{b} {layout} public")
        ax.axhline(TARGET_PCT[kind], color="gray", ls=(0, (5, 3)), lw=1.2, label="target (75 / 85 %)")
        ax.annotate(f"target {TARGET_PCT[kind]:.0f} %", (0.01, TARGET_PCT[kind]), xycoords=("axes fraction", "data"),
                    xytext=(0, 3), textcoords="offset points", fontsize=8, color="gray")
        ref = d[(d.kind == kind) & d.op.str.endswith("_4bit")]
        if len(ref):
            ax.plot([4], ref.kernel_pct_copy.iloc[:1], "*", ms=13, color="black", label="4-bit NF4 kernel")
            ax.plot([4], ref.pct_copy.iloc[:1], "*", ms=13, mfc="none", color="black", label="4-bit NF4 public")
        ax.set_title(f"{kind}_kbit")
        ax.set_xlabel("K (bits per code)")
        ax.set_xticks(sorted(set(int(k) for k in e.k.dropna())) or [4])
        ax.grid(True, alpha=0.3)
    axes[0].set_ylabel("% of device copy bandwidth")
    axes[1].legend(fontsize=7, loc="center left", bbox_to_anchor=(1.02, 0.5))
    fig.suptitle(f"{meta.get('device')}, n = 2^{meta.get('n_log2')} bf16, copy {meta.get('copy_gbps', 0):.0f} GB/s, "
                 f"git {meta.get('git')}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return Path(path)


def _meta(device: str, n_log2: int, ks, reps: int, copy_gbps: float, notes: dict) -> dict:
    m = results.run_metadata(device)
    return {"device": m["run_device"], "driver": m["run_driver"], "torch": m["run_torch"], "cuda": m["run_cuda"],
            "numba": m["run_numba"], "numba_cuda": m["run_numba_cuda"], "git": m["run_git"], "time": m["run_time"],
            "sm": m["run_sm"], "copy_gbps": copy_gbps, "n_log2": n_log2, "ks": list(ks), "reps": reps,
            "backends_skipped": notes, "targets_pct_copy": TARGET_PCT, "numba_target_pct_of_cuda": NUMBA_TARGET_PCT}


def _ks(text: list[str]) -> tuple[int, ...]:
    """``2..8`` or ``2 3 5`` or ``2,3``."""
    out = []
    for tok in " ".join(text).replace(",", " ").split():
        lo, sep, hi = tok.partition("..")
        out += list(range(int(lo), int(hi) + 1)) if sep else [int(tok)]
    return tuple(out)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, help="folder for kbit_speed.{csv,md,png} and meta.json")
    ap.add_argument("--n-log2", type=int, default=None, help="log2 elements (default 28 on CUDA, 16 on CPU)")
    ap.add_argument("--ks", nargs="+", default=["2..8"], help="bit widths: 2..8, or a list")
    ap.add_argument("--reps", type=int, default=None, help="timed repeats after warm-up (default 20 CUDA, 5 CPU)")
    ap.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    ap.add_argument("--backends", nargs="+", default=None, help="default: auto + every backend of the device")
    ap.add_argument("--ops", nargs="+", default=list(OPS), choices=OPS, help="default: both")
    ap.add_argument("--layouts", nargs="+", default=list(LAYOUTS), choices=LAYOUTS, help="default: both")
    args = ap.parse_args(argv)
    device = args.device
    if device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("[bench_kbit] --device cuda needs a CUDA GPU (use --device cpu for a smoke test)")
    n_log2 = args.n_log2 or (28 if device == "cuda" else 16)
    reps = args.reps or (20 if device == "cuda" else 5)
    ks = _ks(args.ks)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    if device == "cuda":
        from .bench_gpu import _warm_gpu
        _warm_gpu()
    partial = out / "kbit_speed.partial.csv"
    df, notes, copy_gbps = run(device, n_log2, ks, reps, args.backends, partial=partial, ops=tuple(args.ops),
                             layouts=tuple(args.layouts))
    meta = _meta(device, n_log2, ks, reps, copy_gbps, notes)
    results.frame(df.to_dict("records"), {f"run_{k}": v for k, v in meta.items()
                                          if isinstance(v, (str, int, float))}).to_csv(out / "kbit_speed.csv",
                                                                                       index=False)
    (out / "kbit_speed.md").write_text(table_md(df, meta))
    (out / "meta.json").write_text(json.dumps(meta, indent=1) + "\n")
    plot(df, out / "kbit_speed.png", meta)
    partial.unlink(missing_ok=True)
    print(f"[bench_kbit] done in {time.time() - t0:.0f} s -> {out}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
