"""Cython/OpenMP adapter for the quantization family (kernels: workbench/_native/quant_cpu.pyx)."""
from . import native

from .._cpu_quant import OPS, bind  # noqa: F401

K = native("quant")  # quant_cpu, or the bounds-checked quant_cpu_debug under KBIT_NATIVE_DEBUG=1
_ops = bind(K, __name__)
quantize_blockwise = _ops["quantize_blockwise"]
quantize_blockwise_stochastic = _ops["quantize_blockwise_stochastic"]
dequantize_blockwise = _ops["dequantize_blockwise"]
quantize_4bit = _ops["quantize_4bit"]
dequantize_4bit = _ops["dequantize_4bit"]
