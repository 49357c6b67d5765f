"""Cython/OpenMP adapter for the quantization family (kernels: workbench/_native/quant_cpu.pyx)."""
from . import native

from .._cpu_quant import bind
from ..registry import register_kernel

K = native("quant")  # quant_cpu, or the bounds-checked quant_cpu_debug under KBIT_NATIVE_DEBUG=1
_ops = bind(K, __name__)
quantize_blockwise = register_kernel("workbench::quantize_blockwise", "cython_cpu")(_ops["quantize_blockwise"])
quantize_blockwise_stochastic = register_kernel("workbench::quantize_blockwise_stochastic", "cython_cpu")(_ops["quantize_blockwise_stochastic"])
dequantize_blockwise = register_kernel("workbench::dequantize_blockwise", "cython_cpu")(_ops["dequantize_blockwise"])
quantize_4bit = register_kernel("workbench::quantize_4bit", "cython_cpu")(_ops["quantize_4bit"])
dequantize_4bit = register_kernel("workbench::dequantize_4bit", "cython_cpu")(_ops["dequantize_4bit"])
