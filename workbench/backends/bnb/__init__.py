"""bitsandbytes 0.50.2 as an external oracle (optional: ``pip install kbit-workbench[parity]``).

Only codebooks bitsandbytes knows run here: NF4/FP4 for 4-bit, 256-entry sorted tables
for 8-bit blockwise. On CPU bitsandbytes dispatches 8-bit blockwise quantization to a
native kernel that rounds through a 65536-entry lookup table (approximate nearest);
:func:`default_impl` reaches its exact torch implementation for bit-exact comparisons.
"""
from __future__ import annotations

import gc
import inspect
import logging
import types
import warnings

DEVICES = ("cpu", "cuda")
EXPECTED_VERSION = "0.50.2"


def available() -> tuple[bool, str]:
    try:
        logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
        import bitsandbytes
    except Exception as e:  # ImportError, or a broken native library
        return False, f"bitsandbytes not importable ({type(e).__name__}: {e})"
    if bitsandbytes.__version__ != EXPECTED_VERSION:
        return False, f"bitsandbytes {bitsandbytes.__version__} installed; the oracle is pinned to {EXPECTED_VERSION}"
    return True, f"bitsandbytes {bitsandbytes.__version__}"


_default_cache: dict[str, types.FunctionType] = {}


def default_impl(op: str) -> types.FunctionType:
    """bitsandbytes' registered *default* (pure torch) kernel for ``op``, e.g. 'quantize_blockwise'.

    Those functions are all named ``_`` in bitsandbytes.backends.default.ops; we find the one
    whose decorator names the op.
    """
    if op in _default_cache:
        return _default_cache[op]
    import bitsandbytes.backends.default.ops as dops
    src = inspect.getsource(dops).splitlines()
    tag = f'@register_kernel("bitsandbytes::{op}", "default")'
    try:
        line = next(i for i, s in enumerate(src, 1) if s.strip() == tag)
    except StopIteration:
        raise LookupError(f"bitsandbytes default backend has no kernel for {op!r}") from None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for obj in gc.get_objects():
            # a decorated function's co_firstlineno is its first decorator's line
            if (type(obj) is types.FunctionType and obj.__module__ == dops.__name__
                    and line <= obj.__code__.co_firstlineno <= line + 2):
                _default_cache[op] = obj
                return obj
    raise LookupError(f"could not locate bitsandbytes' default kernel for {op!r}")


def load_kernels() -> None:
    from . import quant  # noqa: F401  (importing a family module registers its kernels)
