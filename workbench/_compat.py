"""Compatibility shims, in one place.

numba-cuda 0.30.4 calls ``numpy.row_stack``, which numpy 2.5 removed; every CUDA kernel
compile then fails with "module 'numpy' has no attribute 'row_stack'". Restoring the alias
before the first compile fixes it. Imported by ``workbench/__init__`` and ``numba_kernels``.
"""
import numpy as _np

if not hasattr(_np, "row_stack"):
    _np.row_stack = _np.vstack
