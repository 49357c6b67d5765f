"""Speed: GB/s and % of copy bandwidth by backend x op x size, merged across machines; and inference, the 4-bit
matmul against bitsandbytes and the dense bf16 matmul on each machine.

Reads the committed benchmark result files under ``reports/`` (directories ``bench-cpu*``,
``gpu-h100*``, ``gpu-h200*``, ``optim-*``, ``int8-*``; whichever exist) plus any extra paths
given (``workbench report --merge DIR``), and lays them side by side by ``run_device``; files under a
``history/`` folder (earlier revisions, repeat runs) are left out. The inference rows are each
``reports/matmul-<device>/`` folder's current bench (its top-level ``bench.parquet`` or ``bench.csv``, written by
``studies/bench/bench_matmul.py`` / ``bench_matmul_gpu.py``): ``matmul_4bit`` (NF4, blocksize 64, double quant,
bf16 activations) per shape and number of rows M, beside bitsandbytes and cuBLAS / torch's dense bf16 matmul.
Rows follow :func:`workbench.bench.row`: ``op, backend, n, median_ms, gbps, pct_copy`` and
the ``run_*`` metadata; files that report only elements/s get GB/s derived with the same
effective-bytes rule (see the notes). Nothing is timed here; the benchmarks themselves run on their machines
(``workbench bench``).
"""
from __future__ import annotations

import re
from pathlib import Path

import pandas as pd

TITLE = "Speed: GB/s and % of copy bandwidth, across machines"
DESCRIPTION = __doc__.split("\n\n", 1)[1]

PATTERNS = ("bench-cpu*", "gpu-h100*", "gpu-h200*", "optim-*", "int8-*")
INFERENCE_PATTERN = "matmul-*"
INFERENCE = "inference"   # the column that marks the inference rows in the study's frame
KEYS = ("family", "op", "backend", "dtype", "quant_type", "codebook", "blocksize", "n")
ROOT = Path(__file__).resolve().parent.parent / "reports"


def _dirs(root: Path | str = ROOT) -> list[Path]:
    """The benchmark folders under ``root`` (those matching :data:`PATTERNS`)."""
    root = Path(root)
    return sorted({d for pat in PATTERNS for d in root.glob(pat) if d.is_dir()})


def load(root: Path | str = ROOT, extra=()) -> pd.DataFrame:
    from workbench import results
    frames = []
    for f in results.result_files(*_dirs(root), *extra, csv_fallback=True, skip_history=True):
        try:
            df = results.read(f)
        except Exception:  # noqa: BLE001  (a broken file must not hide the others)
            continue
        if "median_ms" not in df and "gbps" not in df:
            continue
        df["source_file"] = str(f.relative_to(f.parents[1])) if len(f.parents) > 1 else f.name
        frames.append(df)
    if not frames:
        return pd.DataFrame()
    df = normalize(pd.concat(frames, ignore_index=True))
    if "run_device" not in df:
        df["run_device"] = "unknown"
    df["run_device"] = df["run_device"].fillna("unknown")
    return df


_ESIZE = {"float32": 4, "float16": 2, "bfloat16": 2, "fp32": 4, "fp16": 2, "bf16": 2}


def effective_bytes_per_element(op: str, dtype: str, blocksize) -> float | None:
    """Bytes moved per element when every input is read once and every output written once
    (the workbench.bench rule): the value dtype, the code (1 or 1/2 byte), float32 absmax per block."""
    e = _ESIZE.get(str(dtype))
    if e is None or blocksize is None or pd.isna(blocksize):
        return None
    absmax = 4.0 / float(blocksize)
    code = {"quantize_4bit": 0.5, "dequantize_4bit": 0.5, "quantize_blockwise": 1.0, "dequantize_blockwise": 1.0}.get(op)
    return None if code is None else e + code + absmax


def canonical_op(op):
    """One op name on every device: the CPU benchmarks' optimizer names (``adam8``, ``lion32``) take the GPU
    benchmarks' form (``adam8bit``, ``lion32bit``), so the cross-device tables line up."""
    if not isinstance(op, str):
        return op
    import re
    return re.sub(r"^([a-z]+?)(8|32)(?=$| )", r"\1\2bit", op)


_DTYPES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16", "half": "float16", "float": "float32"}


def canonical_dtype(dt):
    """``torch.bfloat16`` / ``bf16`` / ``bfloat16`` -> ``bfloat16`` (torch's name without the prefix)."""
    if not isinstance(dt, str):
        return dt
    t = dt.strip().removeprefix("torch.")
    return _DTYPES.get(t, t)


COPY_NOTE = ("% of copy = the op's GB/s (the bytes it must read and write once) / the GB/s of a plain tensor copy "
             "measured by the same benchmark on the same device. It is a yardstick, not a ceiling: values above 100 "
             "mean the op moves its bytes faster than that one copy stream does -- a fused optimizer step streams "
             "4-5 arrays at once, which uses more of the memory system's parallelism (more outstanding loads, "
             "prefetch streams) than a single copy can.")


def normalize(df: pd.DataFrame) -> pd.DataFrame:
    """Make files from different benchmarks comparable: ``op`` like 'quantize_4bit nf4' is split into op +
    quant_type; rows with throughput but no GB/s get GB/s derived from the effective-bytes rule
    (``gbps_source`` says which), and % of copy from the file's own copy bandwidth column."""
    d = df.copy()
    if "op" in d:
        d["op"] = d["op"].map(canonical_op)
    if "dtype" in d:
        d["dtype"] = d["dtype"].map(canonical_dtype)
        parts = d["op"].astype(str).str.split(" ", n=1, expand=True)
        if parts.shape[1] == 2:
            has = parts[1].notna()
            if "quant_type" not in d:
                d["quant_type"] = None
            d.loc[has, "quant_type"] = d.loc[has, "quant_type"].fillna(parts.loc[has, 1])
            d.loc[has, "op"] = parts.loc[has, 0]
    if "gbps" not in d:
        d["gbps"] = float("nan")
    d["gbps_source"] = d["gbps"].notna().map({True: "measured", False: None})
    if "melem_per_s" in d:
        miss = d["gbps"].isna() & d["melem_per_s"].notna()
        for i in d.index[miss]:
            bpe = effective_bytes_per_element(d.at[i, "op"], d.at[i, "dtype"] if "dtype" in d else None,
                                              d.at[i, "blocksize"] if "blocksize" in d else None)
            if bpe is not None:
                d.at[i, "gbps"] = d.at[i, "melem_per_s"] * 1e6 * bpe / 1e9
                d.at[i, "gbps_source"] = "derived"
    if "pct_copy" not in d:
        d["pct_copy"] = float("nan")
    for col in ("copy_gbps", "copy_gbps_ram"):
        if col in d:
            miss = d["pct_copy"].isna() & d["gbps"].notna() & d[col].notna()
            d.loc[miss, "pct_copy"] = 100.0 * d.loc[miss, "gbps"] / d.loc[miss, col]
    return d


def run(quick: bool = False, executor=None, *, root: Path | str = ROOT, extra=()):
    df = load(root, extra)
    if getattr(executor, "gpus", None):   # --gpus: bench_gpu.py's speed sweep, one size per GPU worker
        new = normalize(speed_on_gpus(executor, quick=quick).assign(source_file="this run (--gpus)"))
        df = pd.concat([df, new], ignore_index=True) if not df.empty else new
    inf = load_inference(root)
    figs = figures(df)
    figs.update(inference_figures(inf))
    if not inf.empty:
        df = pd.concat([df.assign(**{INFERENCE: False}), inf.assign(**{INFERENCE: True})], ignore_index=True)
    return df, figs


def _split(df: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(the bandwidth rows, the inference rows) of the study's frame."""
    if df.empty or INFERENCE not in df:
        return df, pd.DataFrame()
    mask = df[INFERENCE].fillna(False).astype(bool)
    return df[~mask].drop(columns=[INFERENCE]), df[mask].dropna(axis=1, how="all")


# ------------------------------------------------------------------ inference: the 4-bit matmul (issue 18)

INFERENCE_IMPLS = {"ours": "ours", "bnb": "bitsandbytes", "cublas_bf16": "dense bf16", "dense_bf16": "dense bf16"}


def _device_txt(path: Path) -> dict:
    """run_device, run_driver and run_git from a device folder's ``device.txt`` (first line ``NAME, driver``; a line
    ``git REV``): the GPU matmul benches wrote no run metadata into their CSV."""
    if not path.is_file():
        return {}
    lines = path.read_text().splitlines()
    meta = {}
    if lines:
        name, _, driver = lines[0].partition(",")
        meta.update(run_device=name.strip(), run_driver=driver.split(",")[0].strip())
    git = next((ln.split()[1] for ln in lines if ln.startswith("git ") and len(ln.split()) > 1), None)
    if git:
        meta["run_git"] = git
    return meta


def load_inference(root: Path | str = ROOT) -> pd.DataFrame:
    """Each ``matmul-<device>/`` folder's current bench (top-level ``bench.parquet``, else ``bench.csv``)."""
    from workbench import results
    frames = []
    for d in sorted(Path(root).glob(INFERENCE_PATTERN)):
        f = next((d / n for n in ("bench.parquet", "bench.csv") if (d / n).is_file()), None)
        if f is None:
            continue
        df = results.read(f)
        if not {"impl", "N", "K", "M", "public_ms"} <= set(df.columns):
            continue
        if "run_device" not in df:
            df = df.assign(**_device_txt(d / "device.txt"))
        if "run_device" not in df:
            continue
        frames.append(df.assign(source_file=f"{d.name}/{f.name}", op="matmul_4bit"))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def _inference_time(d: pd.DataFrame) -> tuple[pd.Series, str]:
    """One device's times: the kernel time (CUDA-graph replay) where every compared row has one, else the public
    call's (the CPU bench times the public calls)."""
    rows = d[d["impl"].isin(INFERENCE_IMPLS)]
    if "kernel_ms" in d and rows["kernel_ms"].notna().all():
        return d["kernel_ms"], "kernel"
    return d["public_ms"], "public call"


def inference_table(inf: pd.DataFrame) -> pd.DataFrame:
    """Per device, shape and M: ours, bitsandbytes and the dense bf16 matmul (ms), the ratios, ours' % of copy."""
    if inf.empty:
        return pd.DataFrame()
    out = []
    for dev, d in inf.groupby("run_device"):
        t, what = _inference_time(d)
        d = d.assign(t=t, who=d["impl"].map(INFERENCE_IMPLS)).dropna(subset=["who"])
        for (N, K, M), g in d.groupby(["N", "K", "M"]):
            ms = g.groupby("who")["t"].median()
            ours = ms.get("ours")
            row = {"device": dev, "out x in": f"{int(N)}x{int(K)}", "M": int(M), "time": what,
                   "ours ms": ours, "bitsandbytes ms": ms.get("bitsandbytes"), "dense bf16 ms": ms.get("dense bf16")}
            row["x dense bf16"] = row["dense bf16 ms"] / ours if ours and row["dense bf16 ms"] else None
            row["x bitsandbytes"] = row["bitsandbytes ms"] / ours if ours and row["bitsandbytes ms"] else None
            if "pct_copy" in g and what == "kernel":
                row["ours % of copy"] = g.loc[g["who"] == "ours", "pct_copy"].median()
            out.append(row)
    return pd.DataFrame(out).set_index(["device", "out x in", "M"]).sort_index().round(4)


def inference_figures(inf: pd.DataFrame) -> dict:
    """Time vs M per shape for each device (studies/bench/plot_matmul.py's figure of that device's bench)."""
    if inf.empty:
        return {}
    from studies.bench import plot_matmul
    figs = {}
    for dev, d in inf.groupby("run_device"):
        slug = re.sub(r"[^a-z0-9]+", "_", str(dev).lower()).strip("_")
        figs[f"inference_{slug}"] = plot_matmul.plot(d.dropna(axis=1, how="all").reset_index(drop=True))
    return figs


def _keys(df: pd.DataFrame) -> list[str]:
    return [k for k in KEYS if k in df and df[k].notna().any()]


def largest(df: pd.DataFrame) -> pd.DataFrame:
    """Only the rows at the largest n of each (op, device): the bandwidth-bound end of a size sweep."""
    if "n" not in df or df.empty:
        return df
    return df[df["n"] == df.groupby(["op", "run_device"])["n"].transform("max")]


def table(df: pd.DataFrame, value: str = "gbps", *, largest_only: bool = False) -> pd.DataFrame:
    """Rows: op x backend x ... x n; columns: run_device; cells: the median over repeated rows.
    ``largest_only``: one size per (op, device), the largest, with n left out of the rows."""
    if df.empty or value not in df:
        return pd.DataFrame()
    d = df.dropna(subset=[value])
    if largest_only:
        d = largest(d)
    keys = [k for k in _keys(d) if not (largest_only and k == "n")]
    d = d.copy()
    for k in keys:
        d[k] = d[k].astype(str).where(d[k].notna(), "")
    return d.pivot_table(index=keys, columns="run_device", values=value, aggfunc="median").round(2)


def figures(df: pd.DataFrame) -> dict:
    if df.empty or "gbps" not in df or "op" not in df:
        return {}
    import matplotlib.pyplot as plt
    d = largest(df.dropna(subset=["gbps"]))
    ops = list(dict.fromkeys(d["op"]))
    fig, axes = plt.subplots(len(ops), 1, figsize=(9, 2.2 + 1.6 * len(ops)), squeeze=False)
    y_col = "pct_copy" if "pct_copy" in d and d["pct_copy"].notna().any() else "gbps"
    devices = sorted(set(d["run_device"].astype(str)))
    palette = plt.get_cmap("tab10")
    colors = {dev: palette(i % 10) for i, dev in enumerate(devices)}   # one colour per device in every panel
    hatches = ["", "//", "..", "xx", "\\\\", "--"]
    for ax, op in zip(axes[:, 0], ops):
        g = d[d["op"] == op].groupby(["backend", "run_device"])[y_col].median().unstack("run_device")
        g.columns = [str(c) for c in g.columns]
        g.plot.barh(ax=ax, color=[colors[c] for c in g.columns], legend=False)
        for k, c in enumerate(g.columns):   # hatch by device too: legible in grey scale
            for patch in ax.containers[k]:
                patch.set_hatch(hatches[devices.index(c) % len(hatches)])
        ax.legend(ax.containers, list(g.columns), fontsize=7, loc="lower right")
        if y_col == "pct_copy":
            ax.axvline(100, color="0.3", lw=0.8, ls="--")
        ax.set_title(f"{op}: largest n, median over dtypes / codes / blocksizes", fontsize=9)
        ax.set_xlabel("% of copy bandwidth (dashed: 100 = one plain copy)" if y_col == "pct_copy" else "GB/s")
        ax.grid(alpha=0.3, axis="x")
    fig.tight_layout()
    return {"speed": fig}


def summarize(df: pd.DataFrame) -> list[tuple[str, pd.DataFrame]]:
    df, inf = _split(df)
    out = []
    if not inf.empty:
        out.append(("Inference: matmul_4bit (NF4, blocksize 64, double quant, bf16) against bitsandbytes 0.50.2 and "
                    "the dense bf16 matmul, per device, shape and M (x: their time over ours; kernel time on GPUs, "
                    "the public call on CPUs)", inference_table(inf)))
    if df.empty:
        return [(t, x) for t, x in out if not x.empty]
    out.append(("GB/s by device at the largest size measured (median of repeated rows)",
                table(df, "gbps", largest_only=True)))
    if "pct_copy" in df and df["pct_copy"].notna().any():
        out.append(("% of the device's copy bandwidth, largest size", table(df, "pct_copy", largest_only=True)))
    if "melem_per_s" in df and df["melem_per_s"].notna().any():
        out.append(("Throughput, million elements per second, largest size", table(df, "melem_per_s", largest_only=True)))
    if "n" in df and df["n"].nunique() > 1:
        out.append(("GB/s by size (all sizes; small sizes are launch/cache-bound)", table(df, "gbps")))
    return [(t, x) for t, x in out if not x.empty]


def notes(df: pd.DataFrame) -> list[str]:
    df, inf = _split(df)
    if df.empty and inf.empty:
        looked = ", ".join(PATTERNS + (INFERENCE_PATTERN,))
        return [f"no benchmark result files found yet (looked for {looked} under reports/)"]
    out = []
    if not df.empty:
        files = sorted(set(df["source_file"]))
        out += [f"devices: {', '.join(sorted(set(df['run_device'].astype(str))))}", f"files: {', '.join(files)}"]
    if not inf.empty:
        src = inf.groupby("source_file")[["run_device", "run_git"]].first() if "run_git" in inf else \
            inf.groupby("source_file")[["run_device"]].first().assign(run_git="?")
        out.append("inference (matmul_4bit): " + "; ".join(f"{r.run_device} from {f} (git {r.run_git})"
                                                            for f, r in src.iterrows()))
    if "pct_copy" in df and (df["pct_copy"] > 100).any():
        top = df.loc[df["pct_copy"].idxmax()]
        out.append(f"{COPY_NOTE} (largest here: {top['pct_copy']:.0f} % for {top['op']} on {top['backend']}, "
                   f"{top['run_device']})")
    if "gbps_source" in df and (df["gbps_source"] == "derived").any():
        devs = sorted(set(df.loc[df["gbps_source"] == "derived", "run_device"].astype(str)))
        out.append(f"GB/s for {', '.join(devs)} derived from elements/s with the effective-bytes rule (value dtype "
                   "read or written once, code bytes, float32 absmax per block); % of copy against the RAM copy "
                   "bandwidth the same benchmark measured")
    return out


# ------------------------------------------------------------------ --gpus: one size of the sweep per GPU task
# (here, not in workbench/gpu_sweep.py: the task runs studies/bench/bench_gpu.py, and the library imports no study)

SPEED_SIZES = (1 << 28,) + tuple(1 << k for k in range(16, 28, 2))   # bench_gpu.py: the main size, then the sweep

_COPY: dict = {}


def _speed_task(n: int, reps: int) -> pd.DataFrame:
    """One size of bench_gpu.py's speed sweep on this worker's GPU (its copy bandwidth measured once)."""
    from studies.bench import bench_gpu as bg
    from workbench import bench, results
    if "gbps" not in _COPY:
        bg._warm_gpu()
        _COPY.update(gbps=bench.copy_bandwidth("cuda", nbytes=1 << 30, reps=reps),
                     mods={b: bg._mod(b) for b in ("cuda", "numba_cuda")}, bops=bg._bnb_ops())
    main = n == SPEED_SIZES[0]
    rows = bg.run_speed(n, reps, _COPY["gbps"], _COPY["mods"], _COPY["bops"], sweep=not main, memory=main)
    return results.frame(rows, results.run_metadata("cuda")).assign(copy_gbps=_COPY["gbps"])


def speed_tasks(quick: bool = False) -> list[dict]:
    reps = 10 if quick else 25
    return [dict(n=n, reps=reps) for n in SPEED_SIZES]


def speed_on_gpus(ex, *, quick: bool = False) -> pd.DataFrame:
    """bench_gpu.py's speed rows (main size, then the size sweep), one size per task on the GPU workers."""
    from workbench.gpu_sweep import FAKE_ENV, GpuSweepError, _fake, run_gpu_tasks
    if _fake() is not None:
        raise GpuSweepError(f"speed: the GPU benchmark needs real GPUs ({FAKE_ENV} is set)")
    return run_gpu_tasks(ex, _speed_task, speed_tasks(quick), name="speed")
