"""``forceinlined``: a device function inlined by NVVM (LLVM's ``alwaysinline``) rather than in Numba's IR.

``cuda.jit(device=True, inline=True)`` inlines at the Numba IR level: every call site gets a deep copy of the
callee's IR, re-run through Numba's passes. A kernel with a few hundred such sites (the k-bit lane quantizer: 32
lookups a group, each a chain of helpers) then spends most of its compile in those copies (47 s for one instance;
cProfile: ``inline_closurecall`` and ``copy.deepcopy``). ``forceinline=True`` (numba-cuda) compiles the callee once
and lets NVVM inline it; constant arguments still fold there, so local arrays indexed by them stay in registers.
The simulator's ``cuda.jit`` has no ``forceinline``: there it is a plain device function.
"""
from __future__ import annotations

import inspect

from numba import cuda

if "forceinline" in inspect.signature(cuda.jit).parameters:
    forceinlined = cuda.jit(device=True, forceinline=True)
else:
    forceinlined = cuda.jit(device=True)

__all__ = ["forceinlined"]
