"""Cython/OpenMP adapter for the k-bit family (kernels: workbench/_native/kbit_cpu.pyx; rules: reference/kbit.py)."""
from . import native

from .._cpu_kbit import bind
from ..registry import register_kernel

K = native("kbit")  # kbit_cpu, or the bounds-checked kbit_cpu_debug under KBIT_NATIVE_DEBUG=1
_ops = bind(K, __name__)
quantize_kbit = register_kernel("workbench::quantize_kbit", "cython_cpu")(_ops["quantize_kbit"])
dequantize_kbit = register_kernel("workbench::dequantize_kbit", "cython_cpu")(_ops["dequantize_kbit"])
quantize_kbit_affine = register_kernel("workbench::quantize_kbit_affine", "cython_cpu")(_ops["quantize_kbit_affine"])
dequantize_kbit_affine = register_kernel("workbench::dequantize_kbit_affine", "cython_cpu")(_ops["dequantize_kbit_affine"])
