"""Numba CPU adapter for the quantization family (kernels: numba_kernels/cpu/quant.py)."""
from numba_kernels.cpu import quant as K

from .._cpu_quant import bind
from ..registry import register_kernel

_ops = bind(K, __name__)
quantize_blockwise = register_kernel("workbench::quantize_blockwise", "numba_cpu")(_ops["quantize_blockwise"])
quantize_blockwise_stochastic = register_kernel("workbench::quantize_blockwise_stochastic", "numba_cpu")(_ops["quantize_blockwise_stochastic"])
dequantize_blockwise = register_kernel("workbench::dequantize_blockwise", "numba_cpu")(_ops["dequantize_blockwise"])
quantize_4bit = register_kernel("workbench::quantize_4bit", "numba_cpu")(_ops["quantize_4bit"])
dequantize_4bit = register_kernel("workbench::dequantize_4bit", "numba_cpu")(_ops["dequantize_4bit"])
