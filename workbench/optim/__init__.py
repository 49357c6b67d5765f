"""Optimizers with 32-bit and 8-bit blockwise state (bitsandbytes 0.50.2 numerics) on every backend."""
from .functional import (optimizer_update_32bit, optimizer_update_8bit_blockwise,  # noqa: F401
                         percentile_clipping, update_32bit, update_8bit_blockwise)
from .optimizers import *  # noqa: F401,F403
from .optimizers import __all__ as _opt_all

__all__ = ["optimizer_update_32bit", "optimizer_update_8bit_blockwise", "percentile_clipping",
           "update_32bit", "update_8bit_blockwise", *_opt_all]
