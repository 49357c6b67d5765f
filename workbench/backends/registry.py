"""Which backend implements which op: one table, filled by the backends themselves.

Every op is declared once, as a torch.library custom op in :mod:`workbench.library`
(``workbench::quantize_4bit`` ...). A backend module registers its implementation next to
the function::

    @register_kernel("workbench::quantize_4bit", "cuda")
    def quantize_4bit(A, codebook, blocksize): ...

``grep -rn 'workbench::quantize_4bit'`` therefore finds the declaration and every kernel.
torch.library dispatches on the device; the workbench's own choice of implementation is the
``backend`` argument, looked up here (:func:`kernel`). ``backend="auto"`` resolves through
:func:`resolve`, once per (op, device, dtype), from the measured ranking in
``auto_ranking.json`` (``python -m workbench.backends.rank`` remeasures it on this machine).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

NAMESPACE = "workbench"
RANKING_FILE = Path(__file__).with_name("auto_ranking.json")
# Used when the ranking file has no entry for an (op, device, dtype): production first.
FALLBACK_ORDER = {"cpu": ("numba_cpu", "cython_cpu", "reference"),
                  "cuda": ("cuda", "numba_cuda", "reference")}

# (backend, op) that 'auto' skips on a GPU: kernels not yet verified on one (under the CUDA simulator, or compiled
# only). Named explicitly they run; a full GPU pass of their tests removes an entry. Empty now: the numba_cuda k-bit
# and affine kernels left it after reports/kbit-h200/numba_cuda/pytest_gpu_numba_cuda.txt, the CUDA C++ affine
# kernels after tests/test_kbit_gpu.py::test_cuda_affine_groups_bit_exact_with_reference (reports/kbit-h200/).
NOT_YET_RUN_ON_A_GPU: set[tuple[str, str]] = set()

_kernels: dict[str, dict[str, Callable]] = {}   # op -> backend -> implementation


class BackendUnavailable(RuntimeError):
    pass


def op_name(op: str) -> str:
    """'workbench::quantize_4bit' or 'quantize_4bit' -> 'quantize_4bit'."""
    ns, sep, name = op.partition("::")
    if sep and ns != NAMESPACE:
        raise ValueError(f"op {op!r}: expected the {NAMESPACE!r} namespace")
    return name if sep else op


def register_kernel(op: str, backend: str) -> Callable[[Callable], Callable]:
    """Decorator: ``fn`` implements ``op`` on ``backend``. The op must be declared in workbench.library."""
    from .. import library
    name = op_name(op)
    if name not in library.DECLARED:
        raise LookupError(f"register_kernel: {op!r} is not declared in workbench/library.py")

    def deco(fn: Callable) -> Callable:
        _kernels.setdefault(name, {})[backend] = fn
        return fn
    return deco


def registered(op: str) -> dict[str, Callable]:
    """backend -> implementation of ``op`` among the backends imported so far."""
    from . import load_all
    load_all()
    return dict(_kernels.get(op_name(op), {}))


def kernel(op: str, backend: str) -> Callable:
    """The implementation of ``op`` on a concrete backend (what the custom ops call)."""
    try:
        return _kernels[op][backend]
    except KeyError:
        pass
    from . import ensure_available
    ensure_available(backend)
    try:
        return _kernels[op][backend]
    except KeyError:
        raise BackendUnavailable(f"backend {backend!r} does not implement {op!r}") from None


def _ranking() -> dict:
    global _ranking_cache
    if _ranking_cache is None:
        try:
            _ranking_cache = json.loads(RANKING_FILE.read_text())
        except (OSError, ValueError):
            _ranking_cache = {}
    return _ranking_cache


_ranking_cache: dict | None = None
_resolved: dict[tuple, str] = {}


def candidates(op: str, device: str, dtype: str | None) -> tuple[str, ...]:
    """The backends 'auto' tries for ``op`` on ``device``, fastest first (measured where known)."""
    by_op = _ranking().get("ranking", {}).get(device, {}).get(op, {})
    measured = tuple(by_op.get(dtype or "", ()) or by_op.get("any", ()))
    rest = tuple(b for b in FALLBACK_ORDER.get(device, ()) if b not in measured)
    if device == "cuda":
        return tuple(b for b in measured + rest if (b, op) not in NOT_YET_RUN_ON_A_GPU)
    return measured + rest


def resolve(backend: str, op: str, device: str, dtype: str | None = None) -> str:
    """A concrete backend name for ``backend`` ('auto' or a name), checked to implement ``op`` on
    ``device``; cached, so the public API pays a dict lookup per call."""
    key = (backend, op, device, dtype)
    hit = _resolved.get(key)
    if hit is not None:
        return hit
    from . import NAMES, status, devices_of
    if backend == "auto":
        for cand in candidates(op, device, dtype):
            ok, _ = status(cand)
            if ok and device in devices_of(cand) and cand in _kernels.get(op, {}):
                _resolved[key] = cand
                return cand
        raise BackendUnavailable(f"no available backend implements {op!r} on {device}")
    if backend not in NAMES:
        raise BackendUnavailable(f"backend: unknown name {backend!r}; expected 'auto' or one of {NAMES}")
    ok, reason = status(backend)
    if not ok:
        raise BackendUnavailable(f"backend {backend!r} is not available here: {reason}")
    if device not in devices_of(backend):
        raise BackendUnavailable(f"backend {backend!r} runs on {devices_of(backend)}, but the input is on {device!r}")
    if backend not in _kernels.get(op, {}):
        raise BackendUnavailable(f"backend {backend!r} does not implement {op!r}")
    _resolved[key] = backend
    return backend
