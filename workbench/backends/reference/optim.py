"""Reference optimizer updates: the plain-torch spec in :mod:`workbench.optim.functional`."""
from ...optim.functional import optimizer_update_32bit, optimizer_update_8bit_blockwise  # noqa: F401

OPS = ("optimizer_update_32bit", "optimizer_update_8bit_blockwise")
