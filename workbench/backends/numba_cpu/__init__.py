"""Numba CPU backend: @njit(parallel) kernels from numba_kernels/cpu, cached on disk."""
DEVICES = ("cpu",)


def available() -> tuple[bool, str]:
    try:
        import numba
    except ImportError as e:
        return False, f"numba not importable: {e}"
    return True, f"numba {numba.__version__}"


def load_kernels() -> None:
    from . import int8, kbit, matmul, optim, quant  # noqa: F401  (importing a family module registers its kernels)
