import os
import secrets

os.environ.setdefault("NUMBA_NUM_THREADS", "2")
os.environ.setdefault("MPLBACKEND", "Agg")  # tests draw to files; study code never picks a backend

import pytest  # noqa: E402
import torch  # noqa: E402

import workbench  # noqa: E402,F401  (installs the numpy shim before numba-cuda compiles)

HAS_CUDA = torch.cuda.is_available()


def pytest_collection_modifyitems(config, items):
    skip_gpu = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords and not HAS_CUDA:
            item.add_marker(skip_gpu)


@pytest.fixture(autouse=True)
def _close_figures():
    """Studies hand their figures to the caller (the report saves and closes them); tests only look at them, so
    they are closed after each test instead of piling up in a worker (matplotlib warns past 20)."""
    yield
    import sys
    if "matplotlib.pyplot" in sys.modules:
        sys.modules["matplotlib.pyplot"].close("all")


@pytest.fixture
def rng():
    """A fresh generator per test: new data every run unless KBIT_TEST_SEED pins it."""
    seed = int(os.environ.get("KBIT_TEST_SEED", secrets.randbelow(2 ** 31)))
    print(f"KBIT_TEST_SEED={seed}")  # shown with a failure's captured output, to replay it
    return torch.Generator().manual_seed(seed)


def pytest_report_header(config):
    return f"kbit-workbench: torch {torch.__version__}, cuda={'yes' if HAS_CUDA else 'no'}, KBIT_TEST_SEED={os.environ.get('KBIT_TEST_SEED', 'random')}"
