"""Sweeps through a :class:`concurrent.futures.Executor`.

A study splits its work into picklable tasks ``(fn, kwargs)`` and hands them to
:func:`run_tasks`, which submits them to an executor and collects results with a tqdm
progress bar. Which executor runs them is the caller's choice:

* ``None`` / ``"local"``: a local :class:`~concurrent.futures.ProcessPoolExecutor` of spawned
  workers (each pins torch to one thread, so two workers fill two cores);
* ``"serial"``: in this process, one task after another (notebooks, tests, debugging);
* a scheduler address (``"tcp://host:8786"``): a ``dask.distributed.Client`` and its
  ``get_executor()``, a ``concurrent.futures`` executor on the cluster;
* any ready :class:`~concurrent.futures.Executor` (or a ``dask.distributed.Client``) is used as is.

Task functions must be importable top-level functions (process pools and dask pickle them)
and should build their own inputs from small arguments (seeds, sizes), not receive big arrays.
"""
from __future__ import annotations

import contextlib
import os
from concurrent.futures import Executor, Future, ProcessPoolExecutor, as_completed
from typing import Any, Callable, Iterable, Iterator

__all__ = ["SerialExecutor", "SchedulerError", "executor", "local_pool", "run_tasks", "default_workers"]

SCHEDULER_TIMEOUT = 5.0   # seconds to reach a dask scheduler (KBIT_SCHEDULER_TIMEOUT overrides)


class SchedulerError(RuntimeError):
    """A dask scheduler address that is malformed or not reachable in time."""


class SerialExecutor(Executor):
    """Runs each task at submit time in this process; futures are already done."""

    def submit(self, fn, /, *args, **kwargs) -> Future:
        f: Future = Future()
        try:
            f.set_result(fn(*args, **kwargs))
        except BaseException as e:  # noqa: BLE001  (delivered through the future, like a pool)
            f.set_exception(e)
        return f


def default_workers() -> int:
    env = os.environ.get("KBIT_WORKERS")
    if env:
        return max(1, int(env))
    try:
        n = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover  (macOS)
        n = os.cpu_count() or 1
    return max(1, min(n, 8))


def _init_worker(threads: int) -> None:
    os.environ.setdefault("NUMBA_NUM_THREADS", str(threads))
    import torch
    torch.set_num_threads(threads)


def local_pool(max_workers: int | None = None) -> ProcessPoolExecutor:
    """A process pool whose workers start fresh ('spawn'): no OpenMP / Numba thread pools inherited
    through fork from a parent that already ran kernels; each worker pins torch to one thread."""
    import multiprocessing as mp
    return ProcessPoolExecutor(max_workers=max_workers or default_workers(), mp_context=mp.get_context("spawn"),
                               initializer=_init_worker, initargs=(1,))


@contextlib.contextmanager
def executor(spec: Any = None, *, max_workers: int | None = None) -> Iterator[Executor]:
    """An executor for ``spec`` (see the module doc); closes what it opened on exit."""
    if isinstance(spec, Executor):
        yield spec
        return
    if spec is not None and type(spec).__name__ == "Client" and hasattr(spec, "get_executor"):
        yield spec.get_executor()
        return
    if spec in (None, "local", "process", "processes"):
        n = max_workers or default_workers()
        if n == 1:
            yield SerialExecutor()
            return
        with local_pool(n) as ex:
            yield ex
        return
    if spec == "serial":
        yield SerialExecutor()
        return
    if isinstance(spec, str):
        client = _connect(spec)
        try:
            yield client.get_executor()
        finally:
            client.close()
        return
    raise TypeError(f"executor: expected None, 'local', 'serial', a scheduler address, an Executor or a dask Client; "
                    f"got {spec!r}")


def _scheduler_timeout() -> float:
    try:
        return max(0.1, float(os.environ.get("KBIT_SCHEDULER_TIMEOUT", SCHEDULER_TIMEOUT)))
    except ValueError:
        return SCHEDULER_TIMEOUT


def _connect(address: str):
    """A dask Client for ``address``, or :class:`SchedulerError` within a few seconds (dask alone retries for
    30 s and then raises a traceback-sized error)."""
    import re
    if not re.fullmatch(r"[a-z][a-z0-9+]*://\S+|[A-Za-z0-9.\-\[\]:]+:[0-9]{1,5}", address):
        raise SchedulerError(f"expected a scheduler address such as tcp://127.0.0.1:8786, got {address!r}")
    try:
        from dask.distributed import Client
    except ImportError as e:  # pragma: no cover
        raise SchedulerError(f"{address!r}: dask.distributed is not installed "
                             "(pip install 'kbit-workbench[dist]')") from e
    timeout = _scheduler_timeout()
    try:
        return Client(address, timeout=f"{timeout}s", set_as_default=False)
    except (OSError, TimeoutError, ValueError) as e:
        first = (str(e).splitlines() or [type(e).__name__])[0][:200]
        raise SchedulerError(f"{address!r} not reachable within {timeout:g} s ({type(e).__name__}: {first})") from None


def run_tasks(fn: Callable, tasks: Iterable[dict], ex: Executor | None = None, *, desc: str = "tasks",
              progress: bool | None = None) -> list:
    """``[fn(**kw) for kw in tasks]`` through ``ex`` (serial when None), results in task order,
    with a tqdm progress bar (on stderr; off when ``progress`` is False or KBIT_PROGRESS=0)."""
    tasks = list(tasks)
    ex = ex or SerialExecutor()
    if progress is None:
        progress = os.environ.get("KBIT_PROGRESS", "1") != "0"
    futures = {ex.submit(fn, **kw): i for i, kw in enumerate(tasks)}
    out: list = [None] * len(tasks)
    bar = None
    if progress:
        from tqdm.auto import tqdm
        bar = tqdm(total=len(tasks), desc=desc, leave=False)
    try:
        for f in as_completed(futures):
            out[futures[f]] = f.result()
            if bar is not None:
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()
    return out
