"""Reference backend: plain torch, the executable spec (CPU and CUDA tensors)."""
import torch

DEVICES = ("cpu", "cuda")


def available() -> tuple[bool, str]:
    return True, "torch " + torch.__version__
