"""kbit-workbench: low-bit quantization numerics on several backends that must agree."""
from . import _compat  # noqa: F401  (numpy shim for numba-cuda; must run before any kernel compiles)
from . import codebooks
from .codebooks import Codebook
from .ops import (dequantize_4bit, dequantize_blockwise, quantize_4bit, quantize_blockwise, quantize_fp4,
                  quantize_nf4)
from .kbit import KbitState, dequantize_kbit, quantize_kbit
from .quant_state import QuantState
from . import matmul, nn  # noqa: E402,F401  (issue 18: fused 4-bit matmul, quantized Linear modules)
from .matmul import gemm_4bit, gemv_4bit, matmul_4bit  # noqa: E402
from .validation import QuantInputError

__version__ = "0.1.0"
__all__ = ["codebooks", "Codebook", "QuantState", "QuantInputError", "quantize_blockwise", "dequantize_blockwise",
           "quantize_4bit", "dequantize_4bit", "quantize_nf4", "quantize_fp4",
           "quantize_kbit", "dequantize_kbit", "KbitState"]
