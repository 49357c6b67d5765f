"""Numba CPU optimizer updates (kernels: numba_kernels/cpu/optim.py), fused: one pass over memory."""
from numba_kernels.cpu import optim as K

from ...optim._cpu_adapter import make

from ..registry import register_kernel
optimizer_update_32bit, optimizer_update_8bit_blockwise = make(K)


# Importing this module registers its kernels against the declarations in workbench/library.py.
register_kernel("workbench::optimizer_update_32bit", "numba_cpu")(optimizer_update_32bit)
register_kernel("workbench::optimizer_update_8bit_blockwise", "numba_cpu")(optimizer_update_8bit_blockwise)
