"""Builds the Cython CPU kernels (workbench/_native/*.pyx) with OpenMP.

Every .pyx in workbench/_native becomes an extension, so a new kernel family needs no
edit here. -ffp-contract=off and no -ffast-math: a fused multiply-add or a reassociated sum would
round differently from the reference, and codes must match it bit for bit.
"""
import glob
import os

import numpy as np
from setuptools import Extension, setup

try:
    from Cython.Build import cythonize
except ImportError:  # a silent no-op build would leave stale extensions behind
    raise SystemExit("Cython >= 3.0 is needed to build workbench/_native (pip install 'cython>=3.0')") from None

omp = [] if os.environ.get("KBIT_NO_OPENMP") else ["-fopenmp"]
exts = [
    Extension(
        "workbench._native." + os.path.splitext(os.path.basename(p))[0],
        [p],
        include_dirs=[np.get_include(), "workbench/_native"],
        extra_compile_args=["-O3", "-march=native", "-ffp-contract=off", "-fno-fast-math", *omp],
        extra_link_args=omp,
        define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
    )
    for p in sorted(glob.glob("workbench/_native/*.pyx"))
]

setup(ext_modules=cythonize(exts, language_level=3,
                             compiler_directives={"boundscheck": False, "wraparound": False, "cdivision": True}))
