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


@pytest.fixture(autouse=True)
def _eager_calls_keep_the_op_contracts(monkeypatch):
    """In every test, every public call reaches its kernel (``workbench.ops.call_op`` in eager mode) only with
    arguments that keep the op's size contract and are contiguous -- what ``torch.ops.workbench.<op>`` enforces when
    called directly (workbench/library.py, op_checks.py). A public function that lets through a size its kernel
    trusts fails here, whatever that kernel would then have done with it (tests/test_fuzz_api.py generates such
    calls)."""
    from workbench import ops as wops
    from workbench.op_checks import CHECKS
    real = wops.kernel

    def kernel(op, name):
        # the quantizers' kernels take the Codebook itself, not the op's tables (rebuilt by content)
        fn, check = real(op, name), None if op.startswith("quantize_") and "kbit" not in op else CHECKS.get(op)

        def run(*args):
            if check is not None:
                try:
                    check(*args)
                except ValueError as e:
                    raise AssertionError(f"a public call reached the {name} kernel of {op} against its contract: "
                                         f"{e}") from None
            bad = [i for i, a in enumerate(args) if isinstance(a, torch.Tensor) and not a.is_contiguous()]
            assert not bad, f"a public call gave the {name} kernel of {op} non-contiguous arguments {bad}"
            return fn(*args)
        return run
    monkeypatch.setattr(wops, "kernel", kernel)


@pytest.fixture
def rng():
    """A fresh generator per test: new data every run unless KBIT_TEST_SEED pins it."""
    seed = int(os.environ.get("KBIT_TEST_SEED", secrets.randbelow(2 ** 31)))
    print(f"KBIT_TEST_SEED={seed}")  # shown with a failure's captured output, to replay it
    return torch.Generator().manual_seed(seed)


def pytest_report_header(config):
    return f"kbit-workbench: torch {torch.__version__}, cuda={'yes' if HAS_CUDA else 'no'}, KBIT_TEST_SEED={os.environ.get('KBIT_TEST_SEED', 'random')}"
