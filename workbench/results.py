"""Results store: tidy rows + run metadata in parquet, mergeable across machines.

Every row carries the run's metadata columns (``run_*``: device name, driver, library
versions, git revision, host, time), so files written on an H100 and an H200 concatenate
into one frame and a report can group by ``run_device``.
"""
from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import subprocess
from pathlib import Path

import pandas as pd


def _git_revision() -> str:
    """The measured code's revision: ``KBIT_GIT_REV`` when set (a device machine's copy of the tree can carry
    an older ``.git`` than the code it runs), else ``git rev-parse`` (+ ``-dirty``)."""
    if os.environ.get("KBIT_GIT_REV"):
        return os.environ["KBIT_GIT_REV"]
    here = Path(__file__).resolve().parent.parent
    try:
        rev = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=here, capture_output=True, text=True,
                             timeout=5).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                               capture_output=True, text=True, timeout=5).stdout.strip()
        return (rev + ("-dirty" if dirty else "")) if rev else "unknown"
    except Exception:
        return "unknown"


def _version(mod: str) -> str:
    try:
        from importlib.metadata import version
        return version(mod)
    except Exception:
        return "absent"


def run_metadata(device: str = "cpu") -> dict:
    """Where and with what a result was produced."""
    import numpy
    import torch
    meta = {
        "run_time": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "run_host": platform.node(),
        "run_git": _git_revision(),
        "run_python": platform.python_version(),
        "run_torch": torch.__version__,
        "run_numpy": numpy.__version__,
        "run_numba": _version("numba"),
        "run_numba_cuda": _version("numba-cuda"),
        "run_bitsandbytes": _version("bitsandbytes"),
        "run_cpu": platform.processor() or platform.machine(),
        "run_threads": torch.get_num_threads(),
    }
    if device == "cuda" and torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        meta.update({"run_device": torch.cuda.get_device_name(0), "run_cuda": torch.version.cuda,
                     "run_driver": _driver_version(), "run_sm": f"{p.major}{p.minor}"})
    else:
        meta.update({"run_device": f"CPU ({os.cpu_count()} cores)", "run_cuda": "", "run_driver": "", "run_sm": ""})
    return meta


def _driver_version() -> str:
    try:
        return subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                              capture_output=True, text=True, timeout=10).stdout.strip().splitlines()[0]
    except Exception:
        return "unknown"


def frame(rows: list[dict], meta: dict) -> pd.DataFrame:
    df = pd.DataFrame(rows)
    for k, v in meta.items():
        df[k] = v
    return df


def save(df: pd.DataFrame, path: str | os.PathLike, meta: dict | None = None) -> Path:
    """Write ``df`` (rows already carrying run_* columns, or given ``meta``) to parquet (+ a CSV twin
    for diffs) and return the parquet path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if meta:
        df = df.assign(**meta)
    df.to_parquet(path.with_suffix(".parquet"), index=False)
    df.to_csv(path.with_suffix(".csv"), index=False)
    return path.with_suffix(".parquet")


def load(*paths) -> pd.DataFrame:
    """Concatenate result files (parquet or csv; directories are searched recursively)."""
    files: list[Path] = []
    for p in paths:
        p = Path(p)
        files += sorted(p.rglob("*.parquet")) if p.is_dir() else [p]
    frames = [pd.read_parquet(f) if f.suffix == ".parquet" else pd.read_csv(f) for f in files]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def meta_json(meta: dict) -> str:
    return json.dumps(meta, indent=1, sort_keys=True)
