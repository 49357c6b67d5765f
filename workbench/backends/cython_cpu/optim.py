"""Cython/OpenMP optimizer updates (kernels: workbench/_native/optim_cpu.pyx), fused: one pass over memory."""
from . import native

from ...optim._cpu_adapter import make

OPS = ("optimizer_update_32bit", "optimizer_update_8bit_blockwise")
K = native("optim")  # optim_cpu, or the bounds-checked optim_cpu_debug under KBIT_NATIVE_DEBUG=1
optimizer_update_32bit, optimizer_update_8bit_blockwise = make(K)
