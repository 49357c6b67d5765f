"""Numba CPU adapter for the quantization family (kernels: numba_kernels/cpu/quant.py)."""
from numba_kernels.cpu import quant as K

from .._cpu_quant import OPS, bind  # noqa: F401

_ops = bind(K, __name__)
quantize_blockwise = _ops["quantize_blockwise"]
quantize_blockwise_stochastic = _ops["quantize_blockwise_stochastic"]
dequantize_blockwise = _ops["dequantize_blockwise"]
quantize_4bit = _ops["quantize_4bit"]
dequantize_4bit = _ops["dequantize_4bit"]
