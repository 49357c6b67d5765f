"""Kernel launches of the numba_cuda backend: one place for array views, streams and the launch.

Adapters pass torch tensors (already viewed as the dtype the kernel reads), NumPy arrays
(simulator only), numba device arrays and scalars. Under the simulator tensors become NumPy views
(the kernels' writes land in them). On a GPU every launch goes on torch's current stream, through
one of two paths:

* Numba's own (``kern[grid, block, stream](*args)``): the dispatcher types every argument, wraps
  every tensor with ``cuda.as_cuda_array`` and prepares it. On the H100 machine that costs 0.3-1.8 ms
  of host time per call (reports/gpu-h100/host_overhead.txt), more than the kernels themselves at
  2^28 elements. It runs the first call of each (kernel, argument kinds) and compiles.
* Direct: after that first call, the compiled overload is launched with one ``cuLaunchKernel``
  (ctypes, libcuda) whose parameters are a single packed buffer (``CU_LAUNCH_PARAM_BUFFER_POINTER``)
  holding what Numba's ``_Kernel.launch`` would pass (an array is meminfo, parent, size, itemsize,
  data pointer, shape, strides; scalars as their Numba type), taken straight from the tensors and
  packed by one precompiled ``struct.Struct`` at the parameter offsets the driver reports for the
  kernel (cuda.core ``Kernel.arguments_info``; natural alignment where that is missing). Used only
  for 1-D contiguous tensors and when the pieces it needs are present and the layout checks out
  (once per kernel and argument kinds); otherwise every call takes Numba's path.
  KBIT_NUMBA_DIRECT_LAUNCH=0 turns it off.
"""
from __future__ import annotations

import ctypes
import os
import struct

import torch

from . import simulator

_Tensor = torch.Tensor
_streams: dict = {}
_direct: dict = {}   # (kernel, device, argument kinds) -> _Direct or None (Numba's path)
_per_sm: dict = {}   # (kernel, device) -> resident CTAs per SM of its compiled overload


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


def array_values(ptr: int, count: int, itemsize: int) -> list:
    """The launch values of a 1-D contiguous array as Numba passes it: meminfo, parent, nitems, itemsize,
    data, shape, strides. An empty array's data pointer is 0 (as torch reports it; never read)."""
    return [0, 0, count, itemsize, ptr if count else 0, count, itemsize]


def _flatten(args) -> tuple[tuple, list]:
    """(argument kinds, the launch values in Numba's order) in one pass over ``args``. The values of
    a tensor are only right for a 1-D contiguous one: _Direct is built only for such kinds."""
    kinds, vals = [], []
    for a in args:
        if type(a) is _Tensor or isinstance(a, _Tensor):
            kinds.append((a.dtype, a.dim(), a.is_contiguous()))
            vals += array_values(a.data_ptr(), a.numel(), a.element_size())
        elif type(a) is tuple:
            kinds.append(("T", len(a), type(a[0]) if a else None))
            vals += a
        else:
            kinds.append(type(a))  # a scalar (or a non-tensor array: Numba's path, see _formats)
            vals.append(a)
    return tuple(kinds), vals


def _numba_view(a):
    if isinstance(a, torch.Tensor):
        from numba import cuda
        return cuda.as_cuda_array(a)
    return a


def _formats(ty, a) -> list[str] | None:
    """struct format characters of the kernel parameters an argument of Numba type ``ty`` becomes
    (one per parameter), or None where the direct path does not apply."""
    from numba.cuda import types
    if isinstance(ty, types.Array):
        if not (isinstance(a, torch.Tensor) and ty.ndim == 1 and a.dim() == 1 and a.is_contiguous()):
            return None  # _flatten writes one shape and one stride, for tensors only
        return ["q", "q", "q", "q", "Q", "q", "q"]  # meminfo, parent, nitems, itemsize, data, shape, strides
    if isinstance(ty, types.Boolean):
        return ["?"]
    if isinstance(ty, types.Integer):
        c = {8: "b", 16: "h", 32: "i", 64: "q"}[ty.bitwidth]
        return [c if ty.signed else c.upper()]
    if ty == types.float32:
        return ["f"]
    if ty == types.float64:
        return ["d"]
    if isinstance(ty, types.UniTuple):
        inner = _formats(ty.dtype, a[0])
        return None if inner is None else inner * ty.count
    return None


class _Direct:
    """One compiled overload, launched by cuLaunchKernel with a packed parameter buffer."""

    def __init__(self, handle: int, layout: struct.Struct):
        self.handle, self.layout = handle, layout
        self.size = ctypes.c_size_t(layout.size)

    def launch(self, grid: int, threads: int, stream: int, vals: list):
        buf = ctypes.create_string_buffer(self.layout.size)
        self.layout.pack_into(buf, 0, *vals)
        extra = (ctypes.c_void_p * 5)(1, ctypes.addressof(buf), 2, ctypes.addressof(self.size), 0)
        rc = _cu().cuLaunchKernel(self.handle, grid, 1, 1, threads, 1, 1, 0, stream, None, extra)
        if rc != 0:
            name = ctypes.c_char_p()
            _cu().cuGetErrorName(rc, ctypes.byref(name))
            raise RuntimeError(f"numba_cuda: cuLaunchKernel failed: {(name.value or b'?').decode()} ({rc})")


_libcuda = None


def _cu():
    global _libcuda
    if _libcuda is None:
        lib = ctypes.CDLL("libcuda.so.1")
        vpp = ctypes.POINTER(ctypes.c_void_p)
        lib.cuLaunchKernel.argtypes = [ctypes.c_void_p] + [ctypes.c_uint] * 7 + [ctypes.c_void_p, vpp, vpp]
        lib.cuLaunchKernel.restype = ctypes.c_int
        lib.cuGetErrorName.argtypes = [ctypes.c_int, ctypes.POINTER(ctypes.c_char_p)]
        _libcuda = lib
    return _libcuda


def _layout(fmts: list[str], info) -> struct.Struct | None:
    """The packing of the parameters: at the driver's offsets (``info``: [(offset, size)] per
    parameter), else C's natural alignment (what NVVM gives scalar parameters). None on a mismatch."""
    if info is None:
        return struct.Struct("@" + "".join(fmts))
    if len(info) != len(fmts):
        return None
    out, pos = "=", 0
    for f, (off, size) in zip(fmts, info):
        if struct.calcsize("=" + f) != size or off < pos:
            return None
        out += "x" * (off - pos) + f
        pos = off + size
    return struct.Struct(out)


def _note_occupancy(kern, idx: int, ov, threads: int):
    """Record how many CTAs of ``threads`` the compiled overload keeps resident per SM (driver)."""
    try:
        occ = ov._codelibrary.get_cufunc().kernel.occupancy
        _per_sm[(kern, idx)] = max(1, int(occ.max_active_blocks_per_multiprocessor(threads, 0)))
    except Exception:  # noqa: BLE001  (no occupancy query in this cuda.core: callers keep their default)
        pass


def ctas_per_sm(kern, device: torch.device, default: int) -> int:
    """Resident CTAs per SM of ``kern`` on ``device`` once a call has compiled it, else ``default``.
    Grid-stride kernels size their grid from it (the 32-bit optimizer kernel: one wave of CTAs is 8 %
    faster than 8 CTAs per SM where fewer fit, H100; the quantizers measured the other way, see
    workbench/backends/numba_cuda/quant.py)."""
    return _per_sm.get((kern, device.index), default)


def _overload(kern, views):
    """(Numba argument types, the compiled overload) of the call just made with ``views``, or (None, None)."""
    try:
        argtypes = tuple(kern.typeof_pyval(v) for v in views)
        return argtypes, kern.overloads.get(argtypes)
    except Exception:  # noqa: BLE001  (numba-cuda internals: Numba's own path only)
        return None, None


def _setup_direct(ov, argtypes, args):
    """The _Direct for the overload ``ov`` the first call compiled (``argtypes``: the arguments' Numba
    types; ``args``: as the adapter passed them), or None (Numba's path for these argument kinds)."""
    if os.environ.get("KBIT_NUMBA_DIRECT_LAUNCH", "1") == "0":
        return None
    try:
        if ov is None or getattr(ov, "debug", False):
            return None
        fmts = [_formats(t, a) for t, a in zip(argtypes, args)]
        if any(f is None for f in fmts):
            return None
        kernel = ov._codelibrary.get_cufunc().kernel  # cuda.core Kernel (numba-cuda >= 0.2x)
        info = getattr(kernel, "arguments_info", None)
        layout = _layout([c for f in fmts for c in f], None if info is None else [(i.offset, i.size) for i in info])
        if layout is None:
            return None
        return _Direct(int(kernel.handle), layout)
    except Exception:  # noqa: BLE001  (other numba-cuda / cuda.core internals: Numba's own path only)
        return None


def _device_index(device: torch.device) -> int:
    return device.index if device.index is not None else torch.cuda.current_device()


def launch_values(kern, grid: int, threads: int, device: torch.device, kinds: tuple, vals: list) -> bool:
    """The direct launch with launch values the caller flattened itself (``kinds``: what :func:`launch`
    returned for the same argument layout). False, launching nothing, where that layout has no direct
    entry on this device yet or the device would have to be switched: then call :func:`launch`."""
    idx = _device_index(device)
    entry = _direct.get((kern, idx, kinds))
    if not entry or torch.cuda.current_device() != idx:
        return False
    entry.launch(grid, threads, torch.cuda.current_stream(idx).cuda_stream, vals)
    return True


def _simulator_warning_registries() -> None:
    """The simulator runs a block's threads in Python threads, each iterating the globals of the kernel
    modules on every device-function call. A warning (NumPy's "invalid value" on NaN input) adds
    ``__warningregistry__`` to its module's globals, and the first one can land mid-iteration in
    another thread ("dictionary changed size during iteration"). Creating the entries up front keeps
    those dicts at a fixed size."""
    import sys
    for name, mod in list(sys.modules.items()):
        if name.startswith("numba_kernels") and mod is not None:
            vars(mod).setdefault("__warningregistry__", {})


def launch(kern, grid: int, threads: int, device: torch.device, *args):
    """``kern[grid, threads]`` on torch's current stream of ``device`` with ``args`` (see module doc).
    Returns the argument kinds (for :func:`launch_values`; None under the simulator)."""
    if device.type == "cpu":
        _simulator_warning_registries()
        kern[grid, threads](*(a.numpy() if isinstance(a, torch.Tensor) else a for a in args))
        return None
    kinds, vals = _flatten(args)
    if launch_values(kern, grid, threads, device, kinds, vals):   # the common case
        return kinds
    idx = _device_index(device)
    key = (kern, idx, kinds)   # the loaded kernel is per device
    entry = _direct.get(key, False)
    with torch.cuda.device(idx):
        if entry:                                                  # a direct entry, another current device
            entry.launch(grid, threads, torch.cuda.current_stream(idx).cuda_stream, vals)
            return kinds
        views = [_numba_view(a) for a in args]
        kern[grid, threads, _stream(device)](*views)
        if entry is False:
            argtypes, ov = _overload(kern, views)
            _direct[key] = _setup_direct(ov, argtypes, args)
            if ov is not None and (kern, idx) not in _per_sm:
                _note_occupancy(kern, idx, ov, threads)
    return kinds


__all__ = ["array_values", "as_array", "ctas_per_sm", "launch", "launch_values"]
