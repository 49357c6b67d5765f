"""The CUDA 8-bit quantizers' compact search table (4-byte entries; numba_kernels/cell_plan.py:compact_plan,
the numpy twin of build_compact in cuda_src/quant.cu) gives the spec's bucket,
``bucket_codes[#{bounds < clamp(s, -1, 1)}]``, for every registered codebook it can hold: on every bound,
its float32 neighbours, +-0, magnitudes below the table's lowest cell, and random values of every binade."""
import numpy as np
import pytest

from numba_kernels.cell_plan import COMPACT_MAX, compact_lookup, compact_plan
from workbench import bnb_cuda_codebooks as bcb
from workbench import codebooks as cbs

from test_fine_plan import GRID, edge_values, spec_codes

TWINS = {"dynamic-bnb-cuda": bcb.dynamic_bnb_cuda, "blockwise-bnb-cuda": bcb.blockwise_bnb_cuda}
# 8-bit codebooks the CUDA quantizers run through the compact table (tests/test_gpu_quant.py uses them)
MUST_FIT = ("dynamic", "dynamic-signed", "dynamic-unsigned", "linear8", "nf4", "linear4", *TWINS)


@pytest.mark.parametrize("name", cbs.names() + ["grid"] + list(TWINS))
def test_compact_table_equals_spec(name):
    cb = GRID if name == "grid" else TWINS[name]() if name in TWINS else cbs.get(name)
    plan = compact_plan(cb.bounds, cb.bucket_codes)
    if plan is None:
        assert name not in MUST_FIT, f"{name}: no compact table"
        return
    e, kbase, limit = plan
    assert len(e) == limit + 1 <= COMPACT_MAX
    rng = np.random.default_rng(5)
    lowest = np.uint32(kbase << 16).view(np.float32)
    s = np.concatenate([
        edge_values(cb).numpy(), rng.uniform(-1, 1, 20000).astype(np.float32),
        (np.sign(rng.uniform(-1, 1, 20000)) * 2.0 ** rng.uniform(-40, 0, 20000)).astype(np.float32),
        np.float32([lowest, -lowest, np.nextafter(lowest, 0), -np.nextafter(lowest, 0), 1e-45, -1e-45, 0.0, -0.0]),
        np.float32(1 + 2 ** -23) * np.float32([1, -1])]).astype(np.float32)
    got = compact_lookup(plan, s)
    want = spec_codes(cb, s)
    bad = np.flatnonzero(got != want)
    assert bad.size == 0, f"{name}: {bad.size} mismatches, e.g. s={s[bad[:3]]} got {got[bad[:3]]} want {want[bad[:3]]}"


def test_no_compact_table_with_a_bound_at_zero():
    # fp4's +-0 split puts a bound at 0: no cell (-lowest, lowest) without one
    assert compact_plan(cbs.get("fp4").bounds, cbs.get("fp4").bucket_codes) is None
