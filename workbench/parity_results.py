"""Parity results in one schema: the harness's rows (``workbench parity``, the report's parity study) and the parity
files committed under ``reports/`` by the GPU benchmarks, so CPU and GPU rows line up in one table.

The GPU files predate the harness and each has its own columns (one row holds several comparisons as mismatch
counts); :func:`convert` recognises each kind by its columns and rewrites it into :data:`COLUMNS`, one row per
comparison:

=========== ==========================================================================================
device      where it ran (``run_device``: ``CPU (2 cores)``, ``NVIDIA H200``)
family      ``quant`` | ``int8`` | ``optim``
op          the workbench op (``quantize_4bit``, ``int8_vectorwise_quant``, ``optimizer_update_32bit``, ...)
backend     the implementation under test; ``versus``: what it is compared with (``reference`` = the spec)
dtype       the value dtype; ``variant``: codebook, optimizer or int8 threshold
blocksize   quantization blocksize (NaN where none); ``n``: elements
compared    comparisons in the row (0: a case that compared nothing); ``passed``: of those, equal at ``level``
mismatches  differing elements (NaN where the file did not count them); ``max_diff``: max |difference|
level       the declared parity level (``exact``, ``LUT cell``, ...) or ``informational``: a difference
            recorded against a library that declares no parity with the spec (a finding, not a failure)
detail      why a row differs, or what was special about its input
source      ``this run`` or the file, relative to ``reports/``; ``run_git``, ``run_time``: the run
=========== ==========================================================================================
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from . import results

__all__ = ["COLUMNS", "INFORMATIONAL", "UnknownParityFile", "from_harness", "convert", "load_files", "committed",
           "combined", "by_device", "side_by_side", "failures"]

COLUMNS = ("device", "family", "op", "backend", "versus", "dtype", "variant", "blocksize", "n", "compared", "passed",
           "mismatches", "max_diff", "level", "detail", "source", "run_git", "run_time")
INFORMATIONAL = "informational"
REPORTS = Path(__file__).resolve().parent.parent / "reports"
# studies/bench/bench_optim_gpu.py's learning rate: its files store the parameters' max difference divided by it
OPTIM_FILE_LR = 1e-3


class UnknownParityFile(ValueError):
    """A parity file whose columns match none of the known kinds."""


def _frame(rows: list[dict]) -> pd.DataFrame:
    df = pd.DataFrame(rows, columns=list(COLUMNS))
    for c in ("compared", "passed"):
        df[c] = df[c].astype("int64")
    for c in ("blocksize", "n", "mismatches"):   # counts: integers, <NA> where a file did not record one
        df[c] = pd.to_numeric(df[c], errors="coerce").round().astype("Int64")
    df["max_diff"] = pd.to_numeric(df["max_diff"], errors="coerce").astype("float64")
    return df


def _run(r) -> dict:
    return {"run_git": r.get("run_git", ""), "run_time": r.get("run_time", "")}


def _present(v) -> bool:
    return v is not None and not (isinstance(v, float) and pd.isna(v)) and v != ""


# ------------------------------------------------------------------ the harness (workbench/parity.py)

def _harness_device(r, fallback: dict) -> str:
    for col in ("gpu_name", "run_device"):   # --gpus rows name their GPU; saved rows carry run_device
        if _present(r.get(col)):
            return str(r[col])
    dev = str(r.get("device", "cpu"))
    if dev not in fallback:
        fallback[dev] = results.device_name(dev)
    return fallback[dev]


def _size(r):
    if _present(r.get("n")):
        return r["n"]
    shape = r.get("shape")   # int8 cases: "rows x cols"
    if _present(shape):
        try:
            out = 1
            for k in str(shape).split("x"):
                out *= int(k)
            return out
        except ValueError:
            return None
    return None


def _variant(r) -> str:
    for col in ("codebook", "optimizer"):
        if _present(r.get(col)):
            return str(r[col])
    return f"threshold {r['threshold']:g}" if _present(r.get("threshold")) else ""


def from_harness(df: pd.DataFrame, source: str = "this run") -> pd.DataFrame:
    """The harness's rows (one comparison each, ``ok``) in :data:`COLUMNS`; marker rows of a case that compared
    nothing keep ``compared`` 0, so they read as what they are."""
    rows, names = [], {}
    for r in df.to_dict("records"):
        level = str(r.get("level", "exact"))
        rows.append({"device": _harness_device(r, names), "family": r.get("family", ""), "op": r.get("op", ""),
                     "backend": r.get("backend", ""), "versus": "reference", "dtype": r["dtype"] if _present(r.get("dtype")) else "",
                     "variant": _variant(r), "blocksize": r.get("blocksize"), "n": _size(r),
                     "compared": 0 if level == "n/a" else 1, "passed": int(bool(r.get("ok"))) if level != "n/a" else 0,
                     "mismatches": r.get("mismatches"), "max_diff": r.get("max_diff"), "level": level,
                     "detail": r["detail"] if _present(r.get("detail")) else "", "source": source, **_run(r)})
    return _frame(rows)


# ------------------------------------------------------------------ studies/bench/bench_gpu.py: parity.*

def _counts(*values) -> int | None:
    """The sum of mismatch counts, or None when one of them was not measured (NaN, or bench_gpu's -1)."""
    if any(not _present(v) or v < 0 for v in values):
        return None
    return int(sum(values))


_BNB_ROUNDING = "bitsandbytes' CUDA quantizer rounds with its own thresholds (FP4: its own code order), not the spec's"
# (backend, versus, quantize or dequantize, the file's mismatch columns, level, why a difference is expected)
_QUANT_PAIRS = (
    ("cuda", "reference", "quantize", ("cuda_vs_ref_codes", "cuda_vs_ref_absmax"), "exact", ""),
    ("cuda", "reference", "dequantize", ("cuda_vs_ref_dequant",), "exact", ""),
    ("numba_cuda", "reference", "quantize", ("numba_cuda_vs_ref_codes", "numba_cuda_vs_ref_absmax"), "exact", ""),
    ("numba_cuda", "reference", "dequantize", ("numba_cuda_vs_ref_dequant",), "exact", ""),
    ("bnb", "reference", "quantize", ("bnb_vs_spec_codes", "bnb_vs_spec_absmax"), INFORMATIONAL, _BNB_ROUNDING),
    ("bnb", "cuda (bnb codebook)", "quantize", ("bnb_vs_twin_codes",), INFORMATIONAL,
     "our cuda kernel with bitsandbytes' CUDA codebook but the spec's scaling (reciprocal, then multiply)"),
    ("bnb", "cuda (bnb codebook + scaling)", "quantize", ("bnb_vs_twin_bnbscale_codes", "bnb_vs_twin_bnbscale_absmax"),
     "exact", ""),
    ("bnb", "cuda", "dequantize", ("bnb_vs_cuda_dequant",), "exact", ""),   # bitsandbytes' own codes, both kernels
)
ZERO_BLOCKS = ("codes differ in all-zero blocks, where bitsandbytes scales by 1/0 (NaN: its code 0; ours FP4 code 11); "
               "every code there dequantizes to zero (reports/gpu-h100/README.md)")
GPU_QUANT_COLUMNS = ("dtype", "blocksize", "code", "n", "cuda_vs_ref_codes")


def from_gpu_quant(df: pd.DataFrame, source: str) -> pd.DataFrame:
    """bench_gpu.py's rows (dtype x blocksize x code, mismatch counts per backend pair) -> one row per quantize and
    dequantize comparison; a pair the run did not measure (NaN, -1) is left out."""
    rows = []
    for r in df.to_dict("records"):
        eight = r["code"] == "dynamic"
        case = str(r.get("case", "") or "")
        base = {"device": r.get("run_device", ""), "family": "quant", "dtype": r["dtype"], "variant": r["code"],
                "blocksize": r["blocksize"], "n": r["n"], "source": source, **_run(r)}
        for backend, versus, kind, cols, level, why in _QUANT_PAIRS:
            mis = _counts(*(r.get(c) for c in cols))
            if mis is None:
                continue
            op = f"{kind}_blockwise" if eight else f"{kind}_4bit"
            if mis and case == "zero blocks" and not why:
                why = ZERO_BLOCKS
            detail = "; ".join(x for x in (f"input: {case}" if case not in ("", "random") else "",
                                           why if mis else "") if x)
            rows.append({**base, "op": op, "backend": backend, "versus": versus, "compared": 1,
                         "passed": int(mis == 0), "mismatches": mis, "max_diff": None, "level": level,
                         "detail": detail})
    return _frame(rows)


# ------------------------------------------------------------------ studies/bench/bench_optim_gpu.py: parity.*

GPU_OPTIM_COLUMNS = ("op", "optimizer", "bits", "backend", "step", "p_mismatch", "p_maxdiff_over_lr")
_OPTIM_STATES = ("state1", "state2", "absmax1", "absmax2")


def from_gpu_optim(df: pd.DataFrame, source: str) -> pd.DataFrame:
    """bench_optim_gpu.py's rows (optimizer x bits x backend x step, vs the reference on CPU copies) -> the harness's
    optimizer ops. 32-bit LAMB/LARS take their trust ratio from a norm summed in another order on the GPU than on
    the CPU reference: ulp-level differences, recorded as informational (reports/optim-gpu/README.md)."""
    rows = []
    for r in df.to_dict("records"):
        bits = int(r["bits"])
        trust_ratio = bits == 32 and _present(r.get("max_unorm")) and r["max_unorm"] > 0
        bnb = r["backend"] == "bnb"
        parts = {"p": r["p_mismatch"], **{k: r.get(f"{k}_mismatch") for k in _OPTIM_STATES}}
        parts = {k: int(v) for k, v in parts.items() if _present(v)}
        mis = sum(parts.values())
        differs = [k for k, v in parts.items() if v]
        why = ("bitsandbytes' CUDA optimizers round and order their arithmetic their own way" if bnb else
               "trust ratio from a norm summed in another order on the GPU (ulp-level)" if trust_ratio else "")
        detail = "; ".join(x for x in (f"step {int(r['step'])}", f"differs: {', '.join(differs)}" if differs else "",
                                       why if differs else "") if x)
        rows.append({"device": r.get("run_device", ""), "family": "optim",
                     "op": "optimizer_update_32bit" if bits == 32 else "optimizer_update_8bit_blockwise",
                     "backend": r["backend"], "versus": "reference", "dtype": "float32", "variant": r["optimizer"],
                     "blocksize": None if bits == 32 else 256, "n": r.get("n"), "compared": 1,
                     "passed": int(mis == 0), "mismatches": mis, "max_diff": r["p_maxdiff_over_lr"] * OPTIM_FILE_LR,
                     "level": INFORMATIONAL if bnb or trust_ratio else "exact", "detail": detail, "source": source,
                     **_run(r)})
    return _frame(rows)


# ------------------------------------------------------------------ studies/bench/bench_int8.py: parity_bnb.*

GPU_INT8_COLUMNS = ("op", "vs", "rows", "cols", "threshold", "stats_equal", "cols_equal", "codes_differ",
                    "codes_equal_reference_cpu")


def from_gpu_int8(df: pd.DataFrame, source: str) -> pd.DataFrame:
    """bench_int8.py's rows (fp16 activations, threshold 0 and 6): our cuda kernel vs the reference (its codes and
    row stats, bit for bit), and bitsandbytes' CUDA kernel vs ours (row stats and outlier columns equal, codes
    within one step: its 127 / stat is a reciprocal then a multiply, two roundings)."""
    rows = []
    for r in df.to_dict("records"):
        base = {"device": r.get("run_device", ""), "family": "int8", "op": r["op"], "dtype": "float16",
                "variant": f"threshold {r['threshold']:g}", "blocksize": None, "n": r["rows"] * r["cols"],
                "source": source, **_run(r)}
        ok_ref = bool(r["codes_equal_reference_cpu"])
        rows.append({**base, "backend": "cuda", "versus": "reference", "compared": 1, "passed": int(ok_ref),
                     "mismatches": None, "max_diff": None, "level": "exact",
                     "detail": "" if ok_ref else "codes or row stats differ"})
        step = int(r["codes_max_diff"]) if _present(r.get("codes_max_diff")) else 0
        ok_bnb = bool(r["stats_equal"]) and bool(r["cols_equal"]) and step <= 1
        rows.append({**base, "backend": "bnb", "versus": "cuda", "compared": 1, "passed": int(ok_bnb),
                     "mismatches": r["codes_differ"], "max_diff": step, "level": "codes within 1 step",
                     "detail": "" if ok_bnb else ", ".join(x for x, bad in (("row stats", not r["stats_equal"]),
                                                                           ("outlier columns", not r["cols_equal"]),
                                                                           (f"codes {step} steps apart", step > 1))
                                                           if bad) + " differ"})
    return _frame(rows)


# ------------------------------------------------------------------ loading

HARNESS_COLUMNS = ("family", "case", "backend", "op", "ok", "level")
_KINDS = ((HARNESS_COLUMNS, from_harness), (GPU_QUANT_COLUMNS, from_gpu_quant), (GPU_OPTIM_COLUMNS, from_gpu_optim),
          (GPU_INT8_COLUMNS, from_gpu_int8))


def convert(df: pd.DataFrame, source: str) -> pd.DataFrame:
    """A parity file's rows, whichever kind, in :data:`COLUMNS`."""
    for cols, fn in _KINDS:
        if set(cols) <= set(df.columns):
            return fn(df, source)
    raise UnknownParityFile(f"{source}: not a known parity file (columns {', '.join(map(str, df.columns[:8]))}, ...)")


def _source(f: Path, root: Path) -> str:
    try:
        return str(f.resolve().relative_to(root.resolve()))
    except ValueError:
        return str(f)


def load_files(*paths, root: Path | str = REPORTS, unknown: list | None = None) -> pd.DataFrame:
    """Every parity file (``parity*.parquet``, a CSV where no parquet twin exists) under ``paths``, ``history/``
    folders left out, converted and concatenated; ``source`` is each file's path relative to ``root``.
    A file of no known kind raises :class:`UnknownParityFile`, or, given a list ``unknown``, is left out and
    its reason appended there (one new file must not hide every other device)."""
    root = Path(root)
    frames = []
    for f in results.result_files(*paths, csv_fallback=True, skip_history=True):
        if not f.name.startswith("parity"):
            continue
        try:
            frames.append(convert(results.read(f), _source(f, root)))
        except (UnknownParityFile, OSError, ValueError) as e:   # ValueError: pyarrow's unreadable file too
            if unknown is None:
                raise
            unknown.append(str(e) if isinstance(e, UnknownParityFile) else f"{_source(f, root)}: {e}")
    frames = [f for f in frames if not f.empty]
    return pd.concat(frames, ignore_index=True) if frames else _frame([])


def committed(root: Path | str = REPORTS, unknown: list | None = None) -> pd.DataFrame:
    """The parity files committed under ``root`` (every ``reports/<family>-<device>/`` folder; ``local/``, the
    untracked output of ``workbench report``, is not one)."""
    root = Path(root)
    dirs = [d for d in sorted(root.iterdir()) if d.is_dir() and d.name != "local" and not d.name.startswith(".")] \
        if root.is_dir() else []
    return load_files(*dirs, root=root, unknown=unknown)


def combined(harness: pd.DataFrame | None = None, root: Path | str = REPORTS, unknown: list | None = None) -> pd.DataFrame:
    """This run's harness rows, then the committed GPU files' rows: one frame, one schema."""
    frames = [from_harness(harness)] if harness is not None and not harness.empty else []
    frames.append(committed(root, unknown))
    frames = [f for f in frames if not f.empty]
    return pd.concat(frames, ignore_index=True) if frames else _frame([])


# ------------------------------------------------------------------ views

def by_device(u: pd.DataFrame, *, per_dtype: bool = True) -> pd.DataFrame:
    """One row per op x backend pair (x dtype) x device, the devices of one comparison next to each other:
    compared/passed counts, summed mismatches, the largest difference, the sizes, dtypes and levels."""
    if u.empty:
        return pd.DataFrame()
    d = u.assign(dtype=u["dtype"].fillna(""))
    keys = ["family", "op", "backend", "versus"] + (["dtype"] if per_dtype else []) + ["device"]
    g = d.groupby(keys, sort=True, dropna=False)

    def listed(s: pd.Series) -> str:
        return ", ".join(sorted(set(map(str, s)) - {""}))

    out = g.agg(compared=("compared", "sum"), passed=("passed", "sum"), mismatches=("mismatches", "sum"),
                max_diff=("max_diff", "max"), n_min=("n", "min"), n_max=("n", "max"), dtypes=("dtype", listed),
                level=("level", listed), source=("source", listed))
    out["mismatches"] = out["mismatches"].where(g["mismatches"].count() > 0)   # <NA> where none was counted
    if per_dtype:
        out = out.drop(columns="dtypes")
    return out.reset_index()


def side_by_side(u: pd.DataFrame) -> pd.DataFrame:
    """op x backend pair (rows) by device (columns), cells ``passed/compared`` over every dtype, size and variant:
    the comparisons held to a declared level, then ``+ p/c (i)`` for the informational ones (differences from a
    library that declares no parity there, recorded as findings)."""
    if u.empty:
        return pd.DataFrame()
    d = u.assign(informational=u["level"] == INFORMATIONAL)

    def cell(g: pd.DataFrame) -> str:
        parts = []
        for info, h in g.groupby("informational"):
            parts.append(f"{int(h['passed'].sum())}/{int(h['compared'].sum())}" + (" (i)" if info else ""))
        return " + ".join(parts)

    keys = ["family", "op", "backend", "versus", "device"]
    cells = d.groupby(keys, dropna=False).apply(cell, include_groups=False)
    return cells.unstack("device").fillna("")


def failures(u: pd.DataFrame) -> pd.DataFrame:
    """Rows that missed their declared level (informational rows never fail)."""
    if u.empty:
        return u
    return u[(u["passed"] < u["compared"]) & (u["level"] != INFORMATIONAL)]
