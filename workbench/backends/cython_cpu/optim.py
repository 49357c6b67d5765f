"""Cython/OpenMP optimizer updates (kernels: workbench/_native/optim_cpu.pyx), fused: one pass over memory."""
from . import native

from ...optim._cpu_adapter import make

from ..registry import register_kernel
K = native("optim")  # optim_cpu, or the bounds-checked optim_cpu_debug under KBIT_NATIVE_DEBUG=1
optimizer_update_32bit, optimizer_update_8bit_blockwise = make(K)


# Importing this module registers its kernels against the declarations in workbench/library.py.
register_kernel("workbench::optimizer_update_32bit", "cython_cpu")(optimizer_update_32bit)
register_kernel("workbench::optimizer_update_8bit_blockwise", "cython_cpu")(optimizer_update_8bit_blockwise)
