"""Numba CPU adapter for the k-bit family (kernels: numba_kernels/cpu/kbit.py; rules: reference/kbit.py)."""
from numba_kernels.cpu import kbit as K

from .._cpu_kbit import bind
from ..registry import register_kernel

_ops = bind(K, __name__)
quantize_kbit = register_kernel("workbench::quantize_kbit", "numba_cpu")(_ops["quantize_kbit"])
dequantize_kbit = register_kernel("workbench::dequantize_kbit", "numba_cpu")(_ops["dequantize_kbit"])
quantize_kbit_affine = register_kernel("workbench::quantize_kbit_affine", "numba_cpu")(_ops["quantize_kbit_affine"])
dequantize_kbit_affine = register_kernel("workbench::dequantize_kbit_affine", "numba_cpu")(_ops["dequantize_kbit_affine"])
