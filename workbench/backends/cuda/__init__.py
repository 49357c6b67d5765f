"""CUDA production backend: kernels from cuda_src/, built by nvcc (``python -m workbench.cuda_build``)
into one shared library per family, launched with device pointers on the current torch stream through
``workbench._native.cuda_launch`` (one function per extern "C" entry point, bound when its library loads).
A family's knobs and queries (tuning, build flags, tiles) go through its ctypes handle, ``load(family)``."""
from __future__ import annotations

import contextlib
import ctypes

import torch

from ...cuda_build import build, lib_path, nvcc

try:
    from ..._native import cuda_launch as launch
except ImportError:   # not built: available() says so
    launch = None

DEVICES = ("cuda",)
_libs: dict[str, ctypes.CDLL] = {}


def available() -> tuple[bool, str]:
    if not torch.cuda.is_available():
        return False, "no CUDA device visible to torch"
    if launch is None:
        return False, "workbench._native.cuda_launch is not built (make setup)"
    if nvcc() is None and not any(lib_path(f).exists() for f in ("quant", "int8", "optim")):
        return False, "no nvcc to build cuda_src/ and no prebuilt libkbit_*.so"
    return True, torch.cuda.get_device_name(0)


def load(family: str) -> ctypes.CDLL:
    """The family's library, building it on first use if nvcc is present and it is missing/stale."""
    if family not in _libs:
        try:
            path = build(family)
        except RuntimeError:
            path = lib_path(family)
            if not path.exists():
                raise
        _libs[family] = ctypes.CDLL(str(path))
        if launch is None:
            raise RuntimeError("workbench._native.cuda_launch is not built (make setup)")
        launch.bind(str(path))
    return _libs[family]


def kernels(family: str):
    """The launch functions (``cuda_launch``), with ``family``'s library loaded and bound."""
    if family not in _libs:
        load(family)
    return launch


# The per-call host path is short on purpose: the benchmarks' event timings include it (the GPU idles
# until the launch arrives), and at 2**28 elements it is 10-20 % of a call.
def ptr(t: torch.Tensor | None) -> int:
    """A tensor's address for a launch, 0 (NULL) for None."""
    return t.data_ptr() if t is not None else 0


_raw_stream = getattr(torch._C, "_cuda_getCurrentRawStream", None)  # one call instead of a Stream object


def f32(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """``t`` as a contiguous float32 tensor on ``device`` (itself when it already is): tables, scales, offsets."""
    if t.device == device and t.dtype == torch.float32 and t.is_contiguous():
        return t
    return t.to(device, torch.float32).contiguous()


def stream(device: torch.device | None = None) -> int:
    """The handle of torch's current stream on ``device`` (default: the current device)."""
    return raw_stream(device.index if device is not None and device.index is not None else torch.cuda.current_device())


def raw_stream(index: int) -> int:
    """The handle of torch's current stream on device ``index``."""
    if _raw_stream is not None:
        return _raw_stream(index)
    return torch.cuda.current_stream(index).cuda_stream


def on(device: torch.device):
    """A context that makes ``device`` current, or none when it already is (the common case)."""
    if device.index is None or device.index == torch.cuda.current_device():
        return contextlib.nullcontext()
    return torch.cuda.device(device)


def on_device(index: int | None, fn, *args):
    """``fn(*args, stream)`` on device ``index`` (None: the current one) with its current stream's handle last:
    a cuda_launch entry point's launch, made current only when it is not already (the common case)."""
    current = torch.cuda.current_device()
    if index is None or index == current:
        return fn(*args, raw_stream(current))
    with torch.cuda.device(index):
        return fn(*args, raw_stream(index))


def check(status: int, what: str) -> None:
    """Kernels' extern "C" entry points return cudaError_t (0 = success)."""
    if status != 0:
        raise RuntimeError(f"{what}: CUDA error {status}")


def load_kernels() -> None:
    from . import int8, kbit, kbit_affine, matmul, optim, quant  # noqa: F401  (importing a family module registers its kernels)
