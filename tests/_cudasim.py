"""Shared set-up of the CUDA-simulator test files (test_*_sim.py): import this module before
anything that imports numba.cuda.

The simulator must be chosen before numba.cuda is first imported. If this process already holds
the real numba.cuda (e.g. GPU tests ran first on a GPU box), ``sim`` skips the file's tests and
its ``subprocess_test`` re-runs the whole file in a subprocess with NUMBA_ENABLE_CUDASIM=1.
"""
import os
import subprocess
import sys

import pytest

PRELOADED = "numba.cuda" in sys.modules and os.environ.get("NUMBA_ENABLE_CUDASIM") != "1"
if not PRELOADED:
    os.environ["NUMBA_ENABLE_CUDASIM"] = "1"
    from numba.core import config as _config
    _config.reload_config()

sim = pytest.mark.skipif(PRELOADED, reason="numba.cuda already imported without the simulator (see test_in_subprocess)")


def subprocess_test(path: str):
    """A test that re-runs the file at ``path`` under the simulator when this process cannot."""
    @pytest.mark.skipif(not PRELOADED, reason="runs only when this process cannot use the simulator")
    def test_in_subprocess():
        env = dict(os.environ, NUMBA_ENABLE_CUDASIM="1")
        r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", path], env=env,
                           capture_output=True, text=True, timeout=600)
        assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]
    return test_in_subprocess


def simulator_backend():
    """workbench.backends.numba_cuda, asserted to run on the simulator."""
    from workbench.backends import numba_cuda
    ok, reason = numba_cuda.available()
    assert ok and reason == "CUDA simulator", reason
    return numba_cuda
