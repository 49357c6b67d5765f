"""Reference optimizer updates: the plain-torch spec in :mod:`workbench.optim.functional`."""
from ...optim.functional import optimizer_update_32bit, optimizer_update_8bit_blockwise  # noqa: F401

from ..registry import register_kernel


# Importing this module registers its kernels against the declarations in workbench/library.py.
register_kernel("workbench::optimizer_update_32bit", "reference")(optimizer_update_32bit)
register_kernel("workbench::optimizer_update_8bit_blockwise", "reference")(optimizer_update_8bit_blockwise)
