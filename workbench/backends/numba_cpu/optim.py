"""Numba CPU optimizer updates (kernels: numba_kernels/cpu/optim.py), fused: one pass over memory."""
from numba_kernels.cpu import optim as K

from ...optim._cpu_adapter import make

OPS = ("optimizer_update_32bit", "optimizer_update_8bit_blockwise")
optimizer_update_32bit, optimizer_update_8bit_blockwise = make(K)
