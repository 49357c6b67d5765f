"""Randomized Hadamard rotation: the k-bit family's optional pre-transform (issue 19, item 4).

The flat tensor is cut into blocks of R elements (R a power of two, 32..4096; the tail zero-padded to a whole
block) and each block x becomes ``y = H (s * x) / sqrt(R)``: ``s`` a random +-1 vector (one per tensor, from
``seed``), ``H`` the R x R Walsh-Hadamard matrix applied by the fast transform (log2 R butterfly stages).
``H / sqrt(R)`` is symmetric and orthogonal, so the inverse is ``s * H y / sqrt(R)``: a block-diagonal
orthogonal map that spreads an outlier over its block, so the block's absmax tracks its RMS.

Float32 throughout (torch, CPU or CUDA): a round trip is exact up to float32 rounding (a few ulp), not bit
for bit; the rotation is the same on every backend because it runs here, outside the kernels.
"""
from __future__ import annotations

import math

import torch

from .validation import QuantInputError

ROTATE_SIZES = tuple(2 ** e for e in range(5, 13))   # 32 .. 4096


def check_rotate(rotate, rotate_seed) -> int:
    """0 (no rotation) or the validated block size."""
    if rotate is None or rotate is False or rotate == 0:
        return 0
    if isinstance(rotate, bool) or not isinstance(rotate, int) or rotate not in ROTATE_SIZES:
        raise QuantInputError(f"rotate: expected None or a power of two in 32..4096 (the Hadamard block), "
                              f"got {rotate!r}")
    if isinstance(rotate_seed, bool) or not isinstance(rotate_seed, int) or not 0 <= rotate_seed < 2 ** 63:
        raise QuantInputError(f"rotate_seed: expected an int in 0..2**63-1, got {rotate_seed!r}")
    return rotate


def padded_size(n: int, R: int) -> int:
    return -(-n // R) * R


def random_signs(R: int, seed: int, device) -> torch.Tensor:
    """The +-1 float32 diagonal, drawn on the CPU so every device gets the same one."""
    g = torch.Generator().manual_seed(seed)
    return (torch.randint(0, 2, (R,), generator=g) * 2 - 1).to(device, torch.float32)


def fwht(x: torch.Tensor) -> torch.Tensor:
    """Unnormalized Walsh-Hadamard transform of each row of x (rows, R), R a power of two."""
    rows, R = x.shape
    y = x
    h = 1
    while h < R:
        y = y.reshape(rows, R // (2 * h), 2, h)
        a, b = y[:, :, 0], y[:, :, 1]
        y = torch.stack((a + b, a - b), dim=2)
        h *= 2
    return y.reshape(rows, R)


def rotate(x: torch.Tensor, R: int, seed: int) -> torch.Tensor:
    """Flat float32 of padded_size(n, R) elements: each block of R -> H (s * x) / sqrt(R)."""
    a = x.reshape(-1).float()
    m = padded_size(a.numel(), R)
    a = torch.nn.functional.pad(a, (0, m - a.numel())).view(-1, R)
    return (fwht(a * random_signs(R, seed, a.device)) * (1.0 / math.sqrt(R))).reshape(-1)


def unrotate(y: torch.Tensor, R: int, seed: int, n: int) -> torch.Tensor:
    """The inverse of :func:`rotate`, float32, the first n elements."""
    b = y.reshape(-1, R).float()
    return (fwht(b) * (1.0 / math.sqrt(R)) * random_signs(R, seed, b.device)).reshape(-1)[:n]
