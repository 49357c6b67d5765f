"""Builds the Cython CPU kernels (workbench/_native/*.pyx) with OpenMP.

Every .pyx in workbench/_native becomes an extension, so a new kernel family needs no
edit here. -ffp-contract=off and no -ffast-math: a fused multiply-add or a reassociated sum would
round differently from the reference, and codes must match it bit for bit.

``KBIT_BUILD_DEBUG=1`` builds, instead, the same sources as bounds-checked debug extensions
``workbench._native.<name>_debug`` (boundscheck, wraparound and initializedcheck on): an index
past the end of a memoryview raises IndexError instead of reading or writing out of bounds.
``KBIT_NATIVE_DEBUG=1`` makes the cython_cpu backend import them (the fuzz suite runs so in CI).
``KBIT_NATIVE=name[,name]`` builds only those .pyx (the GPU machine's scripts build cuda_launch alone).
A .pyx's ``# cython:`` header overrides cythonize's directives, so the debug build compiles a
copy under build/kbit_debug whose header line alone is rewritten.
"""
import glob
import os
import re

import numpy as np
from setuptools import Extension, setup

try:
    from Cython.Build import cythonize
except ImportError:  # a silent no-op build would leave stale extensions behind
    raise SystemExit("Cython >= 3.0 is needed to build workbench/_native (pip install 'cython>=3.0')") from None

omp = [] if os.environ.get("KBIT_NO_OPENMP") else ["-fopenmp"]
FP = ["-ffp-contract=off", "-fno-fast-math"]
RELEASE = {"boundscheck": False, "wraparound": False, "cdivision": True}
DEBUG = {"boundscheck": True, "wraparound": True, "initializedcheck": True}
SOURCES = sorted(glob.glob("workbench/_native/*.pyx"))
if os.environ.get("KBIT_NATIVE"):
    SOURCES = [p for p in SOURCES if os.path.splitext(os.path.basename(p))[0] in os.environ["KBIT_NATIVE"].split(",")]
HEADERS = sorted(glob.glob("workbench/_native/*.h"))
NO_DEBUG = {"cuda_launch"}   # no memoryviews: nothing for a bounds-checked build to check


def _ext(name: str, src: str, opt: list) -> Extension:
    # depends: a change to a header that a .pyx's verbatim C includes rebuilds the extensions
    return Extension(name, [src], include_dirs=[np.get_include(), "workbench/_native", "cuda_src"], depends=HEADERS,
                     extra_compile_args=[*opt, *FP, *omp], extra_link_args=omp,
                     define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")])


def _debug_copy(src: str, out_dir: str = "build/kbit_debug") -> str:
    """src with its ``# cython:`` header directives overridden by DEBUG, as <name>_debug.pyx (rewritten
    only when the text changes, so an unchanged source is not recompiled)."""
    lines = open(src, encoding="utf-8").read().splitlines(keepends=True)
    for i, line in enumerate(lines):
        m = re.match(r"#\s*cython:\s*(.*)$", line.rstrip("\n"))
        if m:
            d = dict(kv.split("=", 1) for kv in (x.strip().replace(" ", "") for x in m.group(1).split(",")) if kv)
            d.update({k: str(v) for k, v in DEBUG.items()})
            lines[i] = "# cython: " + ", ".join(f"{k}={v}" for k, v in d.items()) + "\n"
            break
        if line.strip() and not line.startswith("#"):
            lines.insert(0, "# cython: " + ", ".join(f"{k}={v}" for k, v in DEBUG.items()) + "\n")
            break
    text = "".join(lines)
    os.makedirs(out_dir, exist_ok=True)
    dst = os.path.join(out_dir, os.path.splitext(os.path.basename(src))[0] + "_debug.pyx")
    if not os.path.exists(dst) or open(dst, encoding="utf-8").read() != text:
        with open(dst, "w", encoding="utf-8") as f:
            f.write(text)
    return dst


def _stem(p: str) -> str:
    return os.path.splitext(os.path.basename(p))[0]


if os.environ.get("KBIT_BUILD_DEBUG", "") not in ("", "0"):
    exts = [_ext(f"workbench._native.{_stem(p)}_debug", _debug_copy(p), ["-O1", "-g", "-march=native"]) for p in SOURCES
            if _stem(p) not in NO_DEBUG]
    directives = {**RELEASE, **DEBUG}
else:
    exts = [_ext(f"workbench._native.{_stem(p)}", p, ["-O3", "-march=native"]) for p in SOURCES]
    directives = RELEASE

# Cython and the C compiler one process per core (make passes build_ext -j): the build is on CI's critical path.
setup(ext_modules=cythonize(exts, language_level=3, compiler_directives=directives, nthreads=os.cpu_count() or 1))
