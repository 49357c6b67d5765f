"""Sweeps across GPUs: one dask worker per GPU (issue 22).

``workbench report|study ... --gpus all|N`` opens a :class:`GpuExecutor`: a dask-cuda ``LocalCUDACluster`` (one
worker per GPU, one thread each, ``CUDA_VISIBLE_DEVICES`` rotated so that worker i sees GPU i as ``cuda:0``), or
the workers of an existing scheduler (``--scheduler``, e.g. started with ``dask cuda worker``). It is an ordinary
``concurrent.futures`` executor on that cluster, so CPU studies run their tasks through it as through
``--scheduler``; the GPU studies split their work into per-GPU tasks instead of running it in this process:

* parity on CUDA: the (case, backend) jobs of :func:`workbench.parity.run_parity` in contiguous shards that keep
  each job's seed, so the shards' rows in shard order are the one-GPU run's rows;
* speed (studies/speed.py, ``speed_on_gpus``): one task per size of ``studies/bench/bench_gpu.py``'s sweep, each timed on its worker's GPU against that
  GPU's own copy bandwidth.

Every row carries the GPU it ran on (``gpu_index``: the physical index, ``gpu_name``). Results go to the one
parquet store (``<store>/<study>.parquet``) as the sweep ends, and, when a worker dies mid-sweep, the rows of
the tasks that finished are written there before the one-line :class:`GpuSweepError`.

CPU stand-in (tests, CI): ``KBIT_FAKE_GPUS=N`` makes this host show N GPUs and starts N CPU worker processes,
each with its own ``CUDA_VISIBLE_DEVICES`` as dask-cuda would set it; tasks then run their ``device="cpu"`` work.
"""
from __future__ import annotations

import os
import re
from concurrent.futures import Executor, Future
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

import pandas as pd

FAKE_ENV = "KBIT_FAKE_GPUS"

__all__ = ["GpuSweepError", "GpuExecutor", "parse_gpus", "visible_gpus", "worker_gpu", "gpu_executor",
           "run_gpu_tasks", "parity_on_gpus"]


class GpuSweepError(RuntimeError):
    """A GPU sweep that cannot start or did not finish: one line, for the command line."""


# ------------------------------------------------------------------ which GPUs

def parse_gpus(text: str) -> str | int:
    """``--gpus``: 'all' or a positive integer."""
    t = str(text).strip().lower()
    if t == "all":
        return "all"
    if re.fullmatch(r"[0-9]{1,4}", t) and int(t) >= 1:
        return int(t)
    raise ValueError(f"expected 'all' or a number of GPUs (1, 2, ...), got {text!r}")


def _fake() -> int | None:
    v = os.environ.get(FAKE_ENV, "").strip()
    return int(v) if v.isdigit() else None


def visible_gpus() -> int:
    """The GPUs this process can use (``KBIT_FAKE_GPUS`` when set, else torch's CUDA device count)."""
    fake = _fake()
    if fake is not None:
        return fake
    import torch
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def resolve(gpus: str | int, visible: int) -> int:
    """How many GPU workers ``--gpus`` asks for on a host with ``visible`` GPUs, or a one-line error."""
    if visible == 0:
        cvd = os.environ.get("CUDA_VISIBLE_DEVICES")
        raise GpuSweepError("no GPU visible (torch sees no CUDA device" +
                            (f"; CUDA_VISIBLE_DEVICES={cvd!r}" if cvd is not None else "") + ")")
    if gpus == "all":
        return visible
    if gpus > visible:
        raise GpuSweepError(f"{gpus} GPUs asked for, this host has {visible} visible "
                            f"({', '.join(map(str, range(visible)))}); use --gpus all or --gpus {visible}")
    return int(gpus)


def worker_gpu() -> dict:
    """The GPU of the worker this runs on: ``{'gpu_index': physical index, 'gpu_name': ...}`` (dask-cuda puts the
    worker's own GPU first in its ``CUDA_VISIBLE_DEVICES``, so it is ``cuda:0`` there)."""
    first = os.environ.get("CUDA_VISIBLE_DEVICES", "0").split(",")[0].strip()
    index = int(first) if first.isdigit() else -1
    if _fake() is not None:
        return {"gpu_index": index, "gpu_name": f"fake GPU {index} ({FAKE_ENV})"}
    import torch
    name = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return {"gpu_index": index, "gpu_name": name}


# ------------------------------------------------------------------ the cluster

class GpuExecutor(Executor):
    """A ``concurrent.futures`` executor on GPU workers (a dask Client's executor) that knows its GPUs."""

    def __init__(self, client, gpus: int, kind: str, store: Path | str | None = None):
        self.client, self.gpus, self.kind = client, int(gpus), kind
        self.store = Path(store) if store is not None else None
        self._ex = client.get_executor()

    def submit(self, fn, /, *args, **kwargs) -> Future:
        return self._ex.submit(fn, *args, **kwargs)

    def shutdown(self, wait: bool = True, **kw) -> None:
        self._ex.shutdown(wait=wait)

    def __repr__(self) -> str:
        return f"{self.kind}, {self.gpus} GPU worker(s)"

    __str__ = __repr__


def _fake_cluster(n: int):
    """N CPU worker processes standing in for N GPUs: dask-cuda's per-worker ``CUDA_VISIBLE_DEVICES``."""
    from distributed import Nanny, Scheduler, SpecCluster
    devs = list(range(n))
    workers = {i: {"cls": Nanny, "options": {
        "nthreads": 1, "silence_logs": 40, "env": {"CUDA_VISIBLE_DEVICES": ",".join(map(str, devs[i:] + devs[:i])), FAKE_ENV: str(n),
                               "OMP_NUM_THREADS": "1"}}}
        for i in range(n)}
    sched = {"cls": Scheduler, "options": {"dashboard_address": ":0"}}   # a free port: None still takes 8787
    return SpecCluster(workers=workers, scheduler=sched, asynchronous=False, silence_logs=40)


def _cuda_cluster(n: int):
    try:
        from dask_cuda import LocalCUDACluster
    except ImportError:
        raise GpuSweepError("--gpus needs dask-cuda (pip install 'kbit-workbench[gpus]'), or pass --scheduler "
                            "with GPU workers started by `dask cuda worker`") from None
    parent = [d.strip() for d in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if d.strip()]
    devs = (parent or [str(i) for i in range(n)])[:n]   # this process's first n GPUs, by their physical ids
    return LocalCUDACluster(CUDA_VISIBLE_DEVICES=",".join(devs), threads_per_worker=1,
                            dashboard_address=":0", silence_logs=40)   # a free port (None still takes 8787)


@contextmanager
def gpu_executor(gpus: str | int, scheduler: str | None = None, *, store=None) -> Iterator[GpuExecutor]:
    """One worker per GPU: a new local cluster (``LocalCUDACluster``, or CPU stand-ins under ``KBIT_FAKE_GPUS``)
    or the workers of ``scheduler`` (each assumed to hold one GPU). Closes what it opened."""
    from distributed import Client
    if scheduler:
        from .sweep import _connect
        client = _connect(scheduler)
        try:
            have = len(client.scheduler_info().get("workers", {}))
            if have == 0:
                raise GpuSweepError(f"--scheduler {scheduler}: no workers connected (start one per GPU with "
                                    "`dask cuda worker ADDRESS`)")
            n = have if gpus == "all" else int(gpus)
            if n > have:
                raise GpuSweepError(f"{n} GPUs asked for, the scheduler {scheduler} has {have} worker(s)")
            yield GpuExecutor(client, n, f"scheduler {scheduler}", store)
        finally:
            client.close()
        return
    fake = _fake() is not None
    n = resolve(gpus, visible_gpus())
    cluster = _fake_cluster(n) if fake else _cuda_cluster(n)
    try:
        client = Client(cluster, set_as_default=False)
        try:
            client.wait_for_workers(n, timeout=120)
            yield GpuExecutor(client, n, "CPU stand-ins (KBIT_FAKE_GPUS)" if fake else "dask-cuda LocalCUDACluster",
                              store)
        finally:
            client.close()
    finally:
        cluster.close()


# ------------------------------------------------------------------ running tasks

def _tagged(fn: Callable, kw: dict):
    """Runs on a worker: ``fn(**kw)`` and the worker's GPU."""
    return worker_gpu(), fn(**kw)


def _store(ex, name: str, df: pd.DataFrame) -> Path | None:
    if ex.store is None or df.empty:
        return None
    from . import results
    df = df.copy()
    for c in df.columns:   # pyarrow refuses mixed object columns
        if df[c].dtype == object and len({type(v) for v in df[c].dropna()}) > 1:
            df[c] = df[c].map(lambda v: v if v is None or (isinstance(v, float) and pd.isna(v)) else str(v))
    return results.save(df, ex.store / f"{name}.parquet")


def run_gpu_tasks(ex: GpuExecutor, fn: Callable, tasks: list[dict], *, name: str = "gpu-sweep") -> pd.DataFrame:
    """``fn(**kw)`` (a DataFrame each) for every task, one task per GPU worker at a time; the frames in task order
    with ``gpu_index`` / ``gpu_name`` on every row, written to ``ex.store``. A task whose worker died (or that
    raised) stops the sweep with a :class:`GpuSweepError` after the finished tasks' rows are written."""
    from concurrent.futures import as_completed
    futures = {ex.submit(_tagged, fn, kw): i for i, kw in enumerate(tasks)}
    out: list = [None] * len(tasks)
    failed: list[tuple[int, BaseException]] = []
    for f in as_completed(futures):
        i = futures[f]
        try:
            gpu, df = f.result()
        except BaseException as e:  # noqa: BLE001  (KilledWorker, a task's error: collected, reported once)
            failed.append((i, e))
            continue
        out[i] = pd.DataFrame(df).assign(**gpu)
    frames = [d for d in out if d is not None]
    df = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    path = _store(ex, name, df)
    if failed:
        i, e = min(failed, key=lambda t: t[0])
        what = "a worker died" if type(e).__name__ == "KilledWorker" else f"{type(e).__name__}: {e}"
        first = (str(what).splitlines() or [""])[0][:200]
        kept = f"{len(df)} rows of {len(frames)} finished tasks kept in {path}" if path else \
            f"{len(df)} rows of {len(frames)} finished tasks kept (no store)"
        raise GpuSweepError(f"{name}: {len(failed)} of {len(tasks)} tasks lost mid-sweep (task {i}: {first}); "
                            f"{kept}")
    return df


# ------------------------------------------------------------------ the GPU studies' tasks

def _parity_task(device: str, seed: int, shard: tuple[int, int], quick: bool, **kw) -> pd.DataFrame:
    from .parity import run_parity
    return run_parity(device, seed=seed, shard=shard, quick=quick, **kw)


def parity_tasks(ex_gpus: int, *, device: str, seed: int, quick: bool, per_gpu: int = 2, **kw) -> list[dict]:
    n = max(1, ex_gpus * per_gpu)
    return [dict(device=device, seed=seed, shard=(k, n), quick=quick, **kw) for k in range(n)]


def parity_on_gpus(ex: GpuExecutor, *, quick: bool = False, seed: int | None = None, device: str | None = None,
                   per_gpu: int = 2, **kw) -> pd.DataFrame:
    """Parity on CUDA (``device='cpu'`` under ``KBIT_FAKE_GPUS``) split over the GPU workers: the one-GPU run's
    rows, in its order, plus ``gpu_index`` / ``gpu_name``."""
    import secrets
    device = device or ("cpu" if _fake() is not None else "cuda")
    seed = secrets.randbelow(2 ** 31) if seed is None else int(seed)
    tasks = parity_tasks(ex.gpus, device=device, seed=seed, quick=quick, per_gpu=per_gpu, **kw)
    return run_gpu_tasks(ex, _parity_task, tasks, name="parity")

