"""Random codebooks for the kernel tests: -1, 1 and 2**bits - 2 uniform values between, distinct as float32
(a codebook rejects equal neighbours; 254 float64 draws collide after rounding about once in a few hundred seeds)."""
import numpy as np
import torch

from workbench import codebooks as cbs


def random_codebook(bits: int, rng: torch.Generator, name: str | None = None):
    g = np.random.default_rng(int(torch.randint(0, 2**31, (1,), generator=rng)))
    v = np.unique(g.uniform(-0.98, 0.98, 2**bits - 2).astype(np.float32))
    while v.size < 2**bits - 2:  # redraw what the rounding merged
        v = np.unique(np.r_[v, g.uniform(-0.98, 0.98, 2**bits - 2 - v.size).astype(np.float32)])
    return cbs.from_values(np.r_[-1.0, v.astype(np.float64), 1.0], name or f"random{bits}")
