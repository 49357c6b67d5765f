"""Cython CPU backend: OpenMP kernels in workbench/_native/*.pyx, built by setup.py
(`make build` or `python setup.py build_ext --inplace`)."""
DEVICES = ("cpu",)


def available() -> tuple[bool, str]:
    try:
        from workbench._native import quant_cpu
    except ImportError as e:
        return False, f"Cython extension not built ({e}); run `make build`"
    return True, f"OpenMP threads: {quant_cpu.max_threads()}"
