"""Numba CUDA backend: @cuda.jit kernels from numba_kernels/cuda, fed torch CUDA tensors through
``__cuda_array_interface__`` and launched on torch's current stream.

Under the CUDA simulator (``NUMBA_ENABLE_CUDASIM=1``, how CI runs these kernels) the backend also
accepts CPU tensors, which the kernels see as NumPy arrays; use small inputs there.
"""
from __future__ import annotations

import os

import torch

import workbench._compat  # noqa: F401  (numpy shim for numba-cuda 0.30.4 under numpy 2.5)


def simulator() -> bool:
    try:
        from numba import config
        return bool(config.ENABLE_CUDASIM)
    except Exception:
        return os.environ.get("NUMBA_ENABLE_CUDASIM") == "1"


def devices() -> tuple[str, ...]:
    """Evaluated per call: the simulator can be switched on after this module is imported."""
    return ("cuda", "cpu") if simulator() else ("cuda",)


def __getattr__(name: str):
    if name == "DEVICES":
        return devices()
    raise AttributeError(name)


def available() -> tuple[bool, str]:
    try:
        from numba import cuda
    except Exception as e:
        return False, f"numba.cuda not importable ({type(e).__name__}: {e})"
    if simulator():
        return True, "CUDA simulator"
    if not torch.cuda.is_available():
        return False, "no CUDA device visible to torch"
    try:
        if not cuda.is_available():
            return False, "numba.cuda sees no CUDA driver/device"
    except Exception as e:
        return False, f"numba.cuda failed ({type(e).__name__}: {e})"
    return True, f"numba-cuda on {torch.cuda.get_device_name(0)}"


def load_kernels() -> None:
    from . import int8, kbit, kbit_affine, matmul, optim, quant  # noqa: F401  (importing one registers its kernels)
