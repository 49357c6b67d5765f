"""The backends: one package per implementation, the same family modules in each.

``workbench/backends/<name>/__init__.py`` defines ``DEVICES``, ``available() -> (bool, reason)``
and ``load_kernels()``, which imports the package's family modules (``quant``, ``int8``, ``optim``);
importing a family module registers its kernels against the op declarations of
:mod:`workbench.library` (``@register_kernel("workbench::<op>", "<backend>")``, see
:mod:`.registry`). A backend is loaded on first use, so a missing optional dependency only
makes that backend unavailable; ``workbench backends`` prints what is available and why not.
"""
from __future__ import annotations

from dataclasses import dataclass

from . import bnb, cuda, cython_cpu, numba_cpu, numba_cuda, reference
from .registry import BackendUnavailable, kernel, register_kernel, registered, resolve  # noqa: F401

PACKAGES = {p.__name__.rsplit(".", 1)[1]: p for p in (reference, numba_cpu, cython_cpu, numba_cuda, cuda, bnb)}
NAMES = tuple(PACKAGES)


@dataclass
class BackendInfo:
    name: str
    devices: tuple
    available: bool
    reason: str
    ops: tuple


_status: dict[str, tuple[bool, str]] = {}


def status(name: str) -> tuple[bool, str]:
    """(available, reason), with the backend's kernels loaded when it is available. A success is
    cached; an unavailable backend is asked again next time (the CUDA simulator, a late build)."""
    if name not in PACKAGES:
        return False, f"backend: unknown name {name!r}; expected one of {NAMES}"
    hit = _status.get(name)
    if hit is not None:
        return hit
    pkg = PACKAGES[name]
    try:
        ok, reason = pkg.available()
        if ok:
            pkg.load_kernels()
    except Exception as e:  # a broken optional dependency: the backend is off, the reason kept
        ok, reason = False, f"failed to load ({type(e).__name__}: {e})"
    if ok:
        _status[name] = (ok, reason)
    return ok, reason


def devices_of(name: str) -> tuple[str, ...]:
    return tuple(PACKAGES[name].DEVICES)  # a module attribute (numba_cuda computes it per access)


def ensure_available(name: str) -> None:
    ok, reason = status(name)
    if not ok:
        raise BackendUnavailable(f"backend {name!r} is not available here: {reason}")


def load_all() -> None:
    for name in NAMES:
        status(name)


def ops_of(name: str) -> tuple[str, ...]:
    from .registry import _kernels
    if not status(name)[0]:
        return ()
    return tuple(op for op, impls in _kernels.items() if name in impls)


def get_op(name: str, op: str, device: str | None = None):
    """The Python implementation of ``op`` on backend ``name`` ('auto' resolves by device), called
    directly, without the torch.library dispatch (parity harness, benches of the bare adapter)."""
    if device is None:
        if name == "auto":
            raise BackendUnavailable("backend='auto' needs a device")
        ensure_available(name)
        return kernel(op, name)
    return kernel(op, resolve(name, op, device))


def resolve_name(name: str, op: str, device: str, dtype=None) -> str:
    return resolve(name, op, device, dtype)


def list_backends() -> list[BackendInfo]:
    out = []
    for n in NAMES:
        ok, reason = status(n)
        out.append(BackendInfo(n, devices_of(n), ok, reason, ops_of(n)))
    return out
