"""Timing protocol shared by every benchmark.

* GPU: CUDA events around each call on the current stream, warm-up first, median of reps.
* CPU: time.perf_counter around each call, warm-up first, median of reps.
* GPU back-to-back time (:func:`back_to_back_ms`): one event pair around ``reps`` calls issued without
  synchronizing, so the host runs ahead as in a training loop; per-call ms = elapsed / reps. The
  per-call protocol above is the latency of an isolated call; this one is the steady-state rate.
* GPU device time (:func:`device_time`): the CUPTI durations of the work a call enqueues, and its
  host time; reported beside the event timing so launch overhead is visible, never instead of it.
* Effective bytes = every input read once + every output written once (the caller passes
  them); GB/s = bytes / median time; % of copy = GB/s / the device-to-device (or RAM)
  copy bandwidth measured in the same process with :func:`copy_bandwidth`.
Timings are never asserted in tests; benchmarks write rows through :mod:`workbench.results`.
"""
from __future__ import annotations

import statistics
import time
from dataclasses import asdict, dataclass, field
from typing import Callable

import torch


@dataclass
class Timing:
    median_ms: float
    min_ms: float
    reps: int
    samples_ms: list = field(repr=False, default_factory=list)


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def interleaved_ms(fns: dict, device: str = "cpu", reps: int = 15, warmup: int = 1) -> dict:
    """Median ms per callable, the callables timed in turn, in the opposite order every other round: on a
    shared machine a busy moment then slows all of them alike, and none always follows the same one."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times = {k: [] for k in fns}
    order = list(fns)
    for r in range(reps):
        for k in (order if r % 2 == 0 else order[::-1]):
            _sync(device)
            t0 = time.perf_counter()
            fns[k]()
            _sync(device)
            times[k].append((time.perf_counter() - t0) * 1e3)
    return {k: statistics.median(v) for k, v in times.items()}


def time_fn(fn: Callable[[], object], device: str = "cpu", *, warmup: int = 3, reps: int = 20,
            min_time_s: float = 0.0) -> Timing:
    """Median wall time of ``fn()`` in ms. On CUDA uses events on the current stream."""
    for _ in range(warmup):
        fn()
    _sync(device)
    samples = []
    t_start = time.perf_counter()
    while len(samples) < reps or (time.perf_counter() - t_start) < min_time_s:
        if device == "cuda":
            s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            s.record()
            fn()
            e.record()
            e.synchronize()
            samples.append(s.elapsed_time(e))
        else:
            t0 = time.perf_counter()
            fn()
            samples.append((time.perf_counter() - t0) * 1e3)
        if len(samples) >= 10 * reps:
            break
    return Timing(statistics.median(samples), min(samples), len(samples), samples)


def device_time(fn: Callable[[], object], reps: int = 20) -> tuple[float | None, float]:
    """(kernel_ms, host_ms) per call of ``fn`` on CUDA: the GPU time of the work it enqueues (kernels,
    memsets and copies, summed from CUPTI activity records via torch.profiler: no launch gaps, no host
    time; None if the profiler is unavailable) and the host time of one call (``reps`` calls back to
    back, not synchronized). The event timing of :func:`time_fn` is what a caller sees; ``kernel_ms``
    says how much of it is the device's."""
    fn()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(reps):
        fn()
    host_ms = (time.perf_counter() - t0) * 1e3 / reps
    torch.cuda.synchronize()
    try:
        from torch.autograd import DeviceType
        from torch.profiler import ProfilerActivity, profile
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            for _ in range(reps):
                fn()
            torch.cuda.synchronize()
        us = sum(e.time_range.elapsed_us() for e in prof.events() if e.device_type == DeviceType.CUDA)
    except Exception as e:  # noqa: BLE001  (profiler unavailable: the event timing stands alone)
        print(f"profiler: {type(e).__name__}: {e}")
        us = 0
    return (us / 1e3 / reps if us > 0 else None), host_ms


def back_to_back_ms(fn: Callable[[], object], reps: int = 20, warmup: int = 3, repeats: int = 1) -> float:
    """ms per call of ``fn`` issued ``reps`` times back to back on the current CUDA stream (one event
    pair, no synchronization in between): host work overlaps the previous call's kernels, so this is
    max(host, device) per call plus the launch gaps -- the rate a loop of such calls sustains. With
    ``repeats`` > 1, the median of that many such runs (one host hiccup moves a single run by tens of us)."""
    for _ in range(warmup):
        fn()
    runs = []
    for _ in range(repeats):
        torch.cuda.synchronize()
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record()
        for _ in range(reps):
            fn()
        e.record()
        e.synchronize()
        runs.append(s.elapsed_time(e) / reps)
    return statistics.median(runs)


def kernel_breakdown(fn: Callable[[], object], reps: int = 10) -> dict[str, float]:
    """Mean GPU µs per call of each kernel / memset / copy that ``fn`` enqueues (CUPTI via
    torch.profiler), by name: says which piece of a multi-kernel op costs what."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile
    fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(reps):
            fn()
        torch.cuda.synchronize()
    out: dict[str, float] = {}
    for ev in prof.events():
        if ev.device_type == DeviceType.CUDA:
            out[ev.name] = out.get(ev.name, 0.0) + ev.time_range.elapsed_us() / reps
    return out


def copy_bandwidth(device: str = "cpu", nbytes: int = 1 << 28, reps: int = 20) -> float:
    """Measured copy bandwidth in GB/s (read + write counted), the 100% line for this device."""
    src = torch.empty(nbytes // 4, dtype=torch.float32, device=device).uniform_()
    dst = torch.empty_like(src)
    t = time_fn(lambda: dst.copy_(src), device, warmup=3, reps=reps)
    return 2 * nbytes / (t.median_ms * 1e-3) / 1e9


def gbps(nbytes: int, t: Timing) -> float:
    return nbytes / (t.median_ms * 1e-3) / 1e9


def tensor_bytes(*tensors) -> int:
    return sum(int(t.numel()) * t.element_size() for t in tensors if t is not None)


def row(op: str, backend: str, n: int, t: Timing, nbytes: int | None = None, copy_gbps: float | None = None,
        **extra) -> dict:
    """One tidy result row (see workbench.results for the schema and run metadata)."""
    r = {"op": op, "backend": backend, "n": n, "median_ms": t.median_ms, "min_ms": t.min_ms, "reps": t.reps,
         "melem_per_s": n / (t.median_ms * 1e-3) / 1e6}
    if nbytes is not None:
        r["bytes"] = nbytes
        r["gbps"] = gbps(nbytes, t)
        if copy_gbps:
            r["pct_copy"] = 100.0 * r["gbps"] / copy_gbps
            if extra.get("kernel_ms"):  # from device_time: the same bytes over the GPU time alone
                r["kernel_pct_copy"] = 100.0 * nbytes / (extra["kernel_ms"] * 1e-3) / 1e9 / copy_gbps
    r.update(extra)
    return r



def graph_replay_ms(fn: Callable[[], object], calls: int = 20, reps: int = 7) -> float | None:
    """Kernel time per call of ``fn`` on CUDA: a CUDA graph of ``calls`` back-to-back calls, captured on a side
    stream and replayed (median of ``reps`` replays) / calls -- no launch gaps, no host time (bitsandbytes' k-bit
    benches time so). None when the call cannot be captured."""
    try:
        s = torch.cuda.Stream()
        s.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(s):
            fn()
            g = torch.cuda.CUDAGraph()
            with torch.cuda.graph(g):
                for _ in range(calls):
                    fn()
        torch.cuda.current_stream().wait_stream(s)
        g.replay()
        torch.cuda.synchronize()
        return time_fn(g.replay, "cuda", warmup=2, reps=reps).median_ms / calls
    except Exception as e:  # noqa: BLE001  (a call that cannot be captured: no kernel time)
        print(f"graph capture failed: {type(e).__name__}: {e}")
        return None

__all__ = ["Timing", "time_fn", "back_to_back_ms", "kernel_breakdown", "device_time", "copy_bandwidth", "gbps",
           "tensor_bytes", "row", "asdict", "graph_replay_ms"]
