"""CUDA production backend: kernels from cuda_src/, built by nvcc (``python -m workbench.cuda_build``)
into one shared library per family and called through ctypes with device pointers, on the
current torch stream."""
from __future__ import annotations

import ctypes

import torch

from ...cuda_build import build, lib_path, nvcc

DEVICES = ("cuda",)
_libs: dict[str, ctypes.CDLL] = {}


def available() -> tuple[bool, str]:
    if not torch.cuda.is_available():
        return False, "no CUDA device visible to torch"
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
    return _libs[family]


def ptr(t: torch.Tensor | None) -> ctypes.c_void_p:
    return ctypes.c_void_p(t.data_ptr() if t is not None else 0)


def stream() -> ctypes.c_void_p:
    return ctypes.c_void_p(torch.cuda.current_stream().cuda_stream)


def check(status: int, what: str) -> None:
    """Kernels' extern "C" entry points return cudaError_t (0 = success)."""
    if status != 0:
        raise RuntimeError(f"{what}: CUDA error {status}")
