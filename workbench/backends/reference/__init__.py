"""Reference backend: plain torch, the executable spec (CPU and CUDA tensors)."""
import torch

DEVICES = ("cpu", "cuda")


def available() -> tuple[bool, str]:
    return True, "torch " + torch.__version__


def load_kernels() -> None:
    from . import int8, kbit, matmul, optim, quant  # noqa: F401  (importing a family module registers its kernels)
