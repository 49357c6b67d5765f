"""Compatibility shims, in one place.

numba-cuda 0.30.4 calls ``numpy.row_stack``, which numpy 2.5 removed; every CUDA kernel
compile then fails with "module 'numpy' has no attribute 'row_stack'". Restoring the alias
before the first compile fixes it. Imported by ``workbench/__init__`` and ``numba_kernels``.

``guard_simulator_swap`` (called by ``numba_kernels/cuda/__init__``): the CUDA simulator runs a
Python thread per CUDA thread and, around every device-function call, points the name ``cuda``
in the function's module at its fake module and back. Unguarded, the first thread out restores
the real module while other threads are still inside, and a device function in a module other
than its kernel's then fails at random ("module 'numba.cuda' has no attribute 'blockIdx'").
numba-cuda fixed it with a per-module reference count (NVIDIA/numba-cuda#690); the simulator
bundled with numba 0.68 gets the same swap here.
"""
import threading
from contextlib import contextmanager

import numpy as _np

if not hasattr(_np, "row_stack"):
    _np.row_stack = _np.vstack


def guard_simulator_swap() -> None:
    """Make the simulator's module swap reference-counted (no-op off the simulator or where it already is)."""
    from numba import config
    if not config.ENABLE_CUDASIM:
        return
    from numba.cuda.simulator import kernel, kernelapi
    if hasattr(kernelapi, "_swap_refcount") or getattr(kernelapi.swapped_cuda_module, "_refcounted", False):
        return
    lock = threading.Lock()
    count: dict = {}   # id(module globals) -> (threads inside, the names swapped)

    @contextmanager
    def swapped_cuda_module(fn, fake_cuda_module):
        from numba import cuda
        globs = fn.__globals__
        key = id(globs)
        with lock:
            inside, orig = count.get(key, (0, None))
            if inside == 0:
                orig = {k: v for k, v in globs.items() if v is cuda}
                globs.update(dict.fromkeys(orig, fake_cuda_module))
            count[key] = (inside + 1, orig)
        try:
            yield
        finally:
            with lock:
                inside, orig = count[key]
                if inside == 1:
                    globs.update(orig)
                    del count[key]
                else:
                    count[key] = (inside - 1, orig)

    swapped_cuda_module._refcounted = True
    kernelapi.swapped_cuda_module = kernel.swapped_cuda_module = swapped_cuda_module
