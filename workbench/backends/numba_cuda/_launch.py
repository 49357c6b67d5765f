"""Kernel launches of the numba_cuda backend: one place for array views, streams and the launch.

Adapters pass torch tensors (already viewed as the dtype the kernel reads), NumPy arrays
(simulator only), numba device arrays and scalars. Under the simulator tensors become NumPy views
(the kernels' writes land in them). On a GPU every launch goes on torch's current stream, through
one of two paths:

* Numba's own (``kern[grid, block, stream](*args)``): the dispatcher types every argument, wraps
  every tensor with ``cuda.as_cuda_array`` and prepares it. On the H100 machine that costs 0.3-1.8 ms
  of host time per call (reports/gpu-h100/host_overhead.txt), more than the kernels themselves at
  2^28 elements. It runs the first call of each (kernel, argument kinds) and compiles.
* Direct: after that first call, the compiled overload is launched through cuda.core with the
  argument list Numba's ``_Kernel.launch`` builds (an array is meminfo, parent, size, itemsize,
  data pointer, shape, strides; scalars as their ctypes type), taken straight from the tensors.
  Used only for 1-D contiguous tensors and when the numba-cuda internals it needs are present
  (checked once); otherwise every call takes Numba's path. KBIT_NUMBA_DIRECT_LAUNCH=0 turns it off.
"""
from __future__ import annotations

import ctypes
import os

import torch

from . import simulator

_streams: dict = {}
_direct: dict = {}   # (kernel, device, argument kinds) -> (the overload's cuda.core kernel, encoders) or None


def as_array(t: torch.Tensor):
    """A kernel argument for ``t``: NumPy under the simulator (CPU tensors only), else the tensor."""
    if t.device.type == "cpu":
        if not simulator():
            raise ValueError("numba_cuda: CPU tensors are accepted only under the CUDA simulator")
        return t.numpy()
    return t


def _stream(device: torch.device):
    from numba import cuda
    ptr = torch.cuda.current_stream(device).cuda_stream
    key = (device.index, ptr)
    st = _streams.get(key)
    if st is None:
        st = _streams[key] = cuda.external_stream(ptr)
    return st


def _kind(a):
    if isinstance(a, torch.Tensor):
        return ("t", a.dtype, a.dim(), a.is_contiguous())
    if isinstance(a, tuple):
        return ("T",) + tuple(_kind(x) for x in a)
    return type(a)


def _numba_view(a):
    if isinstance(a, torch.Tensor):
        from numba import cuda
        return cuda.as_cuda_array(a)
    return a


def _array_fields(a) -> list:
    if isinstance(a, torch.Tensor):
        n, isz = a.numel(), a.element_size()
        return [0, 0, n, isz, a.data_ptr(), n, isz]
    return [0, 0, a.size, a.dtype.itemsize, a.device_ctypes_pointer.value, *a.shape, *a.strides]


def _encoder(ty, a):
    """The function turning an argument of numba type ``ty`` into its launch values, or None."""
    from numba.cuda import types
    if isinstance(ty, types.Array):
        if isinstance(a, torch.Tensor) and not (ty.ndim == 1 and a.dim() == 1 and a.is_contiguous()):
            return None  # _array_fields writes one shape and one stride for a tensor
        return _array_fields
    if isinstance(ty, types.Boolean):
        return lambda v: [bool(v)]
    if isinstance(ty, types.Integer):
        c = getattr(ctypes, f"c_{ty}")
        return lambda v: [c(v)]
    if ty == types.float32:
        return lambda v: [ctypes.c_float(v)]
    if ty == types.float64:
        return lambda v: [ctypes.c_double(v)]
    if isinstance(ty, types.UniTuple):
        inner = _encoder(ty.dtype, a[0])
        return None if inner is None else (lambda v: [x for e in v for x in inner(e)])
    return None


def _setup_direct(kern, args, views):
    """(cuda.core kernel, [encoder per argument]) for the overload the first call compiled (``views``:
    the arguments as Numba saw them; ``args``: as the adapter passed them), or None."""
    if os.environ.get("KBIT_NUMBA_DIRECT_LAUNCH", "1") == "0":
        return None
    try:
        import cuda.core  # noqa: F401  (numba-cuda >= 0.2x launches through it)
        argtypes = tuple(kern.typeof_pyval(v) for v in views)
        ov = kern.overloads.get(argtypes)
        if ov is None or getattr(ov, "debug", False):
            return None
        enc = [_encoder(t, a) for t, a in zip(argtypes, args)]
        if any(e is None for e in enc):
            return None
        return ov._codelibrary.get_cufunc().kernel, enc
    except Exception:  # noqa: BLE001  (other numba-cuda internals: Numba's own path only)
        return None


def _launch_direct(entry, grid, threads, st, args):
    from cuda.core import LaunchConfig, launch
    from numba.cuda._compat import CUDA_CORE_GE_1_0
    kernel, enc = entry
    vals = [x for e, a in zip(enc, args) for x in e(a)]
    coop = {"is_cooperative": False} if CUDA_CORE_GE_1_0 else {"cooperative_launch": False}
    launch(st, LaunchConfig(grid=(grid, 1, 1), block=(threads, 1, 1), shmem_size=0, **coop), kernel, *vals)


def launch(kern, grid: int, threads: int, device: torch.device, *args):
    """``kern[grid, threads]`` on torch's current stream of ``device`` with ``args`` (see module doc)."""
    if device.type == "cpu":
        kern[grid, threads](*(a.numpy() if isinstance(a, torch.Tensor) else a for a in args))
        return
    with torch.cuda.device(device):
        st = _stream(device)
        key = (kern, device.index, tuple(_kind(a) for a in args))   # the loaded kernel is per device
        entry = _direct.get(key, False)
        if entry:
            _launch_direct(entry, grid, threads, st, args)
            return
        views = [_numba_view(a) for a in args]
        kern[grid, threads, st](*views)
        if entry is False:
            _direct[key] = _setup_direct(kern, args, views)


__all__ = ["as_array", "launch"]
