"""bitsandbytes, the benches' oracle, when it imports: the module, or None after one line saying why (a machine
without its wheel still runs our rows)."""
from __future__ import annotations

import importlib
import sys


def bitsandbytes(module: str = "bitsandbytes", stream=None):
    """``import module`` (``bitsandbytes`` or one of its submodules); None, with the reason printed, where that
    fails for any reason (no wheel, no CUDA build, a broken install)."""
    try:
        return importlib.import_module(module)
    except Exception as e:  # noqa: BLE001
        print(f"bitsandbytes unavailable: {e}", file=stream or sys.stdout)
        return None
