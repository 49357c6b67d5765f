"""Results store: tidy rows + run metadata in parquet, mergeable across machines.

Every row carries the run's metadata columns (``run_*``: device name, driver, library
versions, git revision, host, time), so files written on an H100 and an H200 concatenate
into one frame and a report can group by ``run_device``.
"""
from __future__ import annotations

import contextlib
import datetime as _dt
import json
import os
import platform
import secrets
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
        meta.update({"run_device": device_name("cuda"), "run_cuda": torch.version.cuda,
                     "run_driver": _driver_version(), "run_sm": f"{p.major}{p.minor}"})
    else:
        meta.update({"run_device": device_name("cpu"), "run_cuda": "", "run_driver": "", "run_sm": ""})
    return meta


def device_name(device: str = "cpu") -> str:
    """The ``run_device`` name of this machine's ``device``: the GPU's name, or ``CPU (<n> cores)``."""
    import torch
    if str(device).startswith("cuda") and torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    return f"CPU ({os.cpu_count()} cores)"


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


PARTIAL_MARKER = "PARTIAL"   # a report folder still being written (or whose run was killed): never merged


class IncompleteResults(ValueError):
    """A result folder written by a run that did not finish (a ``PARTIAL`` marker)."""


def _tmp_name(path: Path) -> Path:
    """A temporary sibling of ``path`` whose name matches no result glob (``*.parquet``, ``*.csv``)."""
    return path.with_name(f".{path.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike):
    """Yield a temporary path next to ``path``; on success it replaces ``path`` in one ``os.replace``
    (readers see the old file or the new one, never a torn one); on failure it is removed."""
    path = Path(path)
    tmp = _tmp_name(path)
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return path


def save(df: pd.DataFrame, path: str | os.PathLike, meta: dict | None = None) -> Path:
    """Write ``df`` (rows already carrying run_* columns, or given ``meta``) to parquet (+ a CSV twin
    for diffs) and return the parquet path. Each file is written to a temporary name in the same
    directory and moved into place with ``os.replace``: a concurrent :func:`load` never reads a torn
    file and a killed writer leaves the previous file, not a truncated one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if meta:
        df = df.assign(**meta)
    pq = path.with_suffix(".parquet")
    with atomic_path(pq) as tmp:
        df.to_parquet(tmp, index=False)
    with atomic_path(path.with_suffix(".csv")) as tmp:
        df.to_csv(tmp, index=False)
    return pq


def is_report_dir(d: Path) -> bool:
    """A folder written by :func:`workbench.report.build_report` (its combined ``results.parquet`` holds
    every row of its per-study ``results/<study>.parquet`` files)."""
    return (d / "metadata.json").is_file() or ((d / "results.parquet").is_file() and (d / "results").is_dir())


def _check_complete(d: Path) -> None:
    if (d / PARTIAL_MARKER).exists():
        raise IncompleteResults(f"{d}: an unfinished report run (it holds a {PARTIAL_MARKER} marker); "
                                "re-run it or pass a complete report folder")
    if is_report_dir(d):
        try:
            complete = json.loads((d / "metadata.json").read_text()).get("complete", True)
        except (OSError, ValueError):
            complete = False
        if not complete:
            raise IncompleteResults(f"{d}: an unfinished report run (metadata.json missing, unreadable or "
                                    "not marked complete)")


def result_files(*paths, csv_fallback: bool = False, skip_history: bool = False) -> list[Path]:
    """The result files under ``paths`` (a file given by name is taken as is): parquet files (their CSV twins are
    skipped) under each directory, recursively, leaving out hidden folders (a report being written is a hidden
    sibling) and, inside a report folder, the per-study copies of its combined ``results.parquet``. Raises
    :class:`IncompleteResults` for a folder left by an unfinished report run.

    ``csv_fallback``: also a CSV without a parquet twin whose header names ``run_device`` (a result file written
    with run metadata where pyarrow was missing; other CSVs are notes or tables, not results).
    ``skip_history``: leave out ``history/`` folders (earlier revisions and repeat runs kept as evidence under
    ``reports/<family>-<device>/``: merged with the current files they would mix old code into current numbers)."""
    files: list[Path] = []
    for p in paths:
        p = Path(p)
        if not p.is_dir():
            if p.name.startswith(".") and ".tmp-" in p.name:
                raise IncompleteResults(f"{p}: a temporary file of a write in progress")
            files.append(p)
            continue
        for dirpath, dirnames, filenames in os.walk(p):
            d = Path(dirpath)
            dirnames[:] = sorted(n for n in dirnames if not n.startswith(".") and not (skip_history and n == "history"))
            _check_complete(d)
            if is_report_dir(d):
                dirnames[:] = [n for n in dirnames if n != "results"]  # duplicates of results.parquet
            names = [f for f in sorted(filenames) if not f.startswith(".")]
            files += [d / f for f in names if f.endswith(".parquet")]
            if csv_fallback:
                files += [d / f for f in names if f.endswith(".csv") and f[:-4] + ".parquet" not in names
                          and _has_run_metadata(d / f)]
    return files


def _has_run_metadata(csv: Path) -> bool:
    try:
        with csv.open() as f:
            return "run_device" in f.readline().strip().split(",")
    except (OSError, UnicodeDecodeError):
        return False


def read(path: str | os.PathLike) -> pd.DataFrame:
    """One result file, parquet or CSV."""
    path = Path(path)
    return pd.read_parquet(path) if path.suffix == ".parquet" else pd.read_csv(path)


def load(*paths) -> pd.DataFrame:
    """Concatenate result files (parquet or csv; directories are searched recursively, see
    :func:`result_files`: each row once, never from an unfinished report run)."""
    frames = [read(f) for f in result_files(*paths)]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def meta_json(meta: dict) -> str:
    return json.dumps(meta, indent=1, sort_keys=True)
