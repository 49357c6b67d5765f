"""The one-load "fine" search tables (numba_kernels/cell_plan.py:fine_plan, the numpy twin of the
CUDA quantizers' build_fine) give the spec's bucket, ``bucket_codes[#{bounds < clamp(s, -1, 1)}]``,
for every registered codebook in both index modes: on every bound, its float32 neighbours, +-0,
tiny magnitudes and random values; NaN stays in bounds; too-dense codebooks get no table."""
import numpy as np
import pytest
import torch

from numba_kernels.cell_plan import FINE_MAX, fine_lookup, fine_plan
from workbench import codebooks as cbs


def edge_values(cb) -> torch.Tensor:
    """Every bound of ``cb``, its float32 neighbours, their negatives, +-0 and tiny magnitudes:
    the values where a search table's cell edges and the spec's ``s > bound`` rule can disagree."""
    b = torch.tensor(cb.bounds, dtype=torch.float32)
    b = b[b.abs() <= 1]
    inf = torch.tensor(float("inf"))
    v = torch.cat([b, torch.nextafter(b, inf), torch.nextafter(b, -inf), -b,
                   torch.tensor([0.0, -0.0, 1e-38, -1e-38, 1e-30, -1e-30, 2.0 ** -60, 1.0, -1.0])])
    return v[v.abs() <= 1]


def spec_codes(cb, s: np.ndarray) -> np.ndarray:
    b = np.asarray(cb.bounds, np.float32)
    return np.asarray(cb.bucket_codes)[np.searchsorted(b, np.clip(s, -1, 1), "left")]


# bounds on cell edges: -0.125 and +-0.5 are powers of two (their low mantissa bits are 0)
GRID = cbs.from_values([-1.0, -0.75, -0.25, 0.0, 0.25, 0.75, 1.0], "grid-test", pad_to_pow2=True)


@pytest.mark.parametrize("clamped", [False, True], ids=["direct-or-clamped", "clamped"])
@pytest.mark.parametrize("name", cbs.names() + ["grid"])
def test_fine_table_equals_spec(name, clamped):
    cb = GRID if name == "grid" else cbs.get(name)
    plan = fine_plan(cb.bounds, cb.bucket_codes, clamped_only=clamped)
    assert plan is not None, f"{name}: no fine table"  # every registered codebook has one
    e, m, kp, kn, half = plan
    assert len(e) <= FINE_MAX
    rng = np.random.default_rng(3)
    s = np.concatenate([edge_values(cb).numpy(), rng.uniform(-1, 1, 20000).astype(np.float32),
                        (rng.standard_normal(20000) * 1e-3).astype(np.float32),
                        np.nextafter(np.float32(1), np.float32(2), dtype=np.float32)[None]])
    got = fine_lookup(plan, s)
    want = spec_codes(cb, s)
    bad = np.flatnonzero(got != want)
    assert bad.size == 0, f"{name}: {bad.size} mismatches, e.g. s={s[bad[:3]]} got {got[bad[:3]]} want {want[bad[:3]]}"


def test_nan_stays_in_bounds():
    for name in ("dynamic", "dynamic-unsigned", "nf4"):
        cb = cbs.get(name)
        for clamped in (False, True):
            plan = fine_plan(cb.bounds, cb.bucket_codes, clamped_only=clamped)
            s = np.array([np.nan, -np.nan], np.float32)
            s[1] = np.float32(-np.nan) if not np.signbit(s[1]) else s[1]
            fine_lookup(plan, s)  # an IndexError would mean an out-of-bounds read in the kernels


def test_dense_codebook_has_no_fine_table():
    dense = cbs.from_values(sorted([-1.0, 0.0, 1.0] + [0.5 + k * 5e-7 for k in range(253)]), "dense")
    assert fine_plan(dense.bounds, dense.bucket_codes) is None
