"""Backends registry.

A backend is a package ``workbench.backends.<name>`` whose ``__init__`` defines
``DEVICES`` (tuple of 'cpu'/'cuda') and ``available() -> (bool, reason)``. Its ops live
in submodules by family -- ``quant`` (blockwise/4-bit), ``int8`` (LLM.int8()), ``optim``
(optimizer updates) -- so each family can grow on its own. Every backend function has the
reference's signature; the public API in :mod:`workbench.ops` validates arguments first,
so backends receive flat, contiguous, checked tensors on their device.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from types import ModuleType

NAMES = ("reference", "numba_cpu", "cython_cpu", "numba_cuda", "cuda", "bnb")
FAMILIES = ("quant", "int8", "optim")
# 'auto' picks the first available backend implementing the op, per device.
PREFERENCE = {"cpu": ("cython_cpu", "numba_cpu", "reference"),
              "cuda": ("cuda", "numba_cuda", "reference")}


class BackendUnavailable(RuntimeError):
    pass


@dataclass
class BackendInfo:
    name: str
    devices: tuple
    available: bool
    reason: str
    ops: tuple


_pkg_cache: dict[str, ModuleType | Exception] = {}
_fam_cache: dict[tuple[str, str], ModuleType | None] = {}


def _package(name: str) -> ModuleType:
    if name not in NAMES:
        raise BackendUnavailable(f"backend: unknown name {name!r}; expected one of {NAMES} or 'auto'")
    if name not in _pkg_cache:
        try:
            _pkg_cache[name] = importlib.import_module(f"{__name__}.{name}")
        except Exception as e:  # an optional dependency is missing: record why
            _pkg_cache[name] = e
    pkg = _pkg_cache[name]
    if isinstance(pkg, Exception):
        raise BackendUnavailable(f"backend {name!r} failed to import: {pkg}")
    return pkg


def _family(name: str, fam: str) -> ModuleType | None:
    key = (name, fam)
    if key not in _fam_cache:
        try:
            _fam_cache[key] = importlib.import_module(f"{__name__}.{name}.{fam}")
        except ModuleNotFoundError as e:
            if e.name != f"{__name__}.{name}.{fam}":
                raise
            _fam_cache[key] = None
    return _fam_cache[key]


def status(name: str) -> tuple[bool, str]:
    try:
        return _package(name).available()
    except BackendUnavailable as e:
        return False, str(e)


def ops_of(name: str) -> tuple[str, ...]:
    found = []
    for fam in FAMILIES:
        try:
            mod = _family(name, fam)
        except Exception:
            continue
        if mod is not None:
            found += [k for k in getattr(mod, "OPS", ())]
    return tuple(found)


def get_op(name: str, op: str, device: str | None = None):
    """The function implementing ``op`` on backend ``name`` ('auto' resolves by device)."""
    if name == "auto":
        if device is None:
            raise BackendUnavailable("backend='auto' needs a device")
        for cand in PREFERENCE[device]:
            ok, _ = status(cand)
            if ok and op in ops_of(cand):
                return get_op(cand, op, device)
        raise BackendUnavailable(f"no available backend implements {op!r} on {device}")
    pkg = _package(name)
    ok, reason = pkg.available()
    if not ok:
        raise BackendUnavailable(f"backend {name!r} is not available here: {reason}")
    if device is not None and device not in pkg.DEVICES:
        raise BackendUnavailable(f"backend {name!r} runs on {pkg.DEVICES}, but the input is on {device!r}")
    for fam in FAMILIES:
        mod = _family(name, fam)
        if mod is not None and op in getattr(mod, "OPS", ()):
            return getattr(mod, op)
    raise BackendUnavailable(f"backend {name!r} does not implement {op!r}")


def resolve_name(name: str, op: str, device: str) -> str:
    fn = get_op(name, op, device)
    return fn.__module__.split(".")[2]


def list_backends() -> list[BackendInfo]:
    out = []
    for n in NAMES:
        ok, reason = status(n)
        devs = getattr(_pkg_cache.get(n), "DEVICES", ())
        out.append(BackendInfo(n, tuple(devs), ok, reason, ops_of(n) if ok else ()))
    return out
