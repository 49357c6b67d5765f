"""Cython/OpenMP optimizer updates (kernels: workbench/_native/optim_cpu.pyx), fused: one pass over memory."""
from workbench._native import optim_cpu as K

from ...optim._cpu_adapter import make

OPS = ("optimizer_update_32bit", "optimizer_update_8bit_blockwise")
optimizer_update_32bit, optimizer_update_8bit_blockwise = make(K)
