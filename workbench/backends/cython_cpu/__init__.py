"""Cython CPU backend: OpenMP kernels in workbench/_native/*.pyx, built by setup.py
(`make build` or `python setup.py build_ext --inplace`).

``KBIT_NATIVE_DEBUG=1`` selects the bounds-checked debug builds of the same sources
(``workbench._native.<family>_cpu_debug``, `make build-debug`): an out-of-bounds index raises
IndexError instead of corrupting memory. CI runs the fuzz suite so."""
import importlib
import os

DEVICES = ("cpu",)


def debug() -> bool:
    """True when KBIT_NATIVE_DEBUG asks for the bounds-checked debug extensions."""
    return os.environ.get("KBIT_NATIVE_DEBUG", "") not in ("", "0")


def native(family: str):
    """The compiled kernel module of ``family`` ('quant', 'optim'): workbench._native.<family>_cpu,
    or its ``_debug`` build under KBIT_NATIVE_DEBUG=1 (never a silent fallback to the release one)."""
    name = f"workbench._native.{family}_cpu" + ("_debug" if debug() else "")
    try:
        return importlib.import_module(name)
    except ImportError as e:
        hint = "`make build-debug` (KBIT_NATIVE_DEBUG=1 is set)" if debug() else "`make build`"
        raise ImportError(f"Cython extension {name} not built ({e}); run {hint}") from e


def available() -> tuple[bool, str]:
    try:
        quant_cpu = native("quant")
    except ImportError as e:
        return False, str(e)
    return True, f"OpenMP threads: {quant_cpu.max_threads()}" + (" (bounds-checked debug build)" if debug() else "")


def load_kernels() -> None:
    from . import kbit, matmul, optim, quant  # noqa: F401  (importing a family module registers its kernels)
