"""Numba CUDA optimizer kernels under the CUDA simulator (CPU, tiny inputs): bit-exact vs the reference.

Every update rule, 8-bit blockwise and 32-bit state, one full 256-block plus a tail, two steps
(step 1 takes the momentum-init branch), skip_zeros on, gnorm_scale != 1, weight decay; for 32-bit
LAMB/LARS the trust ratio path (max_unorm > 0) too. The simulator must be chosen before numba.cuda
is imported; if this process already holds the real numba.cuda, the file re-runs itself in a
subprocess with NUMBA_ENABLE_CUDASIM=1 (as tests/test_numba_cuda_sim.py does).
"""
import pytest
import torch

import _cudasim  # first: selects the simulator before numba.cuda is imported
from _cudasim import sim

from workbench.optim import functional as W

NAMES = ("adam", "ademamix", "momentum", "lion", "rmsprop", "adagrad", "lamb", "lars")

test_in_subprocess = _cudasim.subprocess_test(__file__)


@pytest.fixture(scope="module")
def NC():
    _cudasim.simulator_backend()
    from workbench.backends.numba_cuda import optim
    return optim


def _state(name, n, eight):
    two = name in ("adam", "lamb", "ademamix")
    nb = (n + 255) // 256
    if eight:
        return dict(state1=torch.zeros((2, n) if name == "ademamix" else (n,), dtype=torch.uint8),
                    absmax1=torch.zeros((2, nb) if name == "ademamix" else (nb,)), qmap1=W.qmap(True).clone(),
                    state2=torch.zeros(n, dtype=torch.uint8) if two else None,
                    absmax2=torch.zeros(nb) if two else None, qmap2=W.qmap(False).clone() if two else None)
    return dict(state1=torch.zeros((2, n) if name == "ademamix" else (n,)),
                state2=torch.zeros(n) if two else None, unorm_vec=torch.zeros(1))


@sim
@pytest.mark.parametrize("eight", [True, False], ids=["8bit", "32bit"])
@pytest.mark.parametrize("name", NAMES)
def test_sim_equals_reference(NC, name, eight, rng):
    n = 256 + 45
    mu = 0.05 if (name in ("lamb", "lars") and not eight) else 0.0
    wd = 0.0 if name in ("lamb", "lars") else 0.02
    p0 = torch.randn(n, generator=rng)
    ps = [p0.clone(), p0.clone()]
    sts = [_state(name, n, eight), _state(name, n, eight)]
    fns = ([W.optimizer_update_8bit_blockwise, NC.optimizer_update_8bit_blockwise] if eight
           else [W.optimizer_update_32bit, NC.optimizer_update_32bit])
    for step in (1, 2):
        g = torch.randn(n, generator=rng) * 0.1
        g[::17] = 0
        for fn, p, st in zip(fns, ps, sts):
            if eight:
                fn(name, g, p, st["state1"], st["state2"], 0.9, 0.99, 0.999, 3.0, 1e-8, step, 2e-3, st["qmap1"],
                   st["qmap2"], st["absmax1"], st["absmax2"], wd, 0.75, True)
            else:
                fn(name, g, p, st["state1"], st["state2"], st["unorm_vec"] if mu else None, mu,
                   float(p.norm()) if mu else 0.0, 0.9, 0.99, 0.999, 3.0, 1e-8, wd, step, 2e-3, 0.75, True)
        assert torch.equal(ps[1], ps[0]), f"step {step}: params differ"
        for key in ("state1", "state2", "absmax1", "absmax2"):
            if sts[0].get(key) is not None:
                assert torch.equal(sts[1][key], sts[0][key]), f"step {step}: {key} differs"


@sim
@pytest.mark.parametrize("name", ("adam", "momentum"))
def test_sim_general_code_path(NC, name, rng):
    """qmaps stored in a shuffled order (bucket codes are not 0..255): the 8-bit kernel's general search
    with a code table, not the unrolled identity-code path the standard maps take."""
    from workbench.optim import _gpu_plan as G
    n = 256 + 45
    perm1, perm2 = torch.randperm(256, generator=rng), torch.randperm(256, generator=rng)
    p0 = torch.randn(n, generator=rng)
    ps = [p0.clone(), p0.clone()]
    sts = [_state(name, n, True), _state(name, n, True)]
    for st in sts:
        st["qmap1"] = st["qmap1"][perm1].contiguous()
        if st["qmap2"] is not None:
            st["qmap2"] = st["qmap2"][perm2].contiguous()
    assert not G.plan(sts[0]["qmap1"]).identity
    for step in (1, 2):
        g = torch.randn(n, generator=rng) * 0.1
        for fn, p, st in zip([W.optimizer_update_8bit_blockwise, NC.optimizer_update_8bit_blockwise], ps, sts):
            fn(name, g, p, st["state1"], st["state2"], 0.9, 0.99, 0.999, 3.0, 1e-8, step, 2e-3, st["qmap1"],
               st["qmap2"], st["absmax1"], st["absmax2"], 0.02, 1.0, False)
        assert torch.equal(ps[1], ps[0]), f"step {step}: params differ"
        for key in ("state1", "state2", "absmax1", "absmax2"):
            if sts[0].get(key) is not None:
                assert torch.equal(sts[1][key], sts[0][key]), f"step {step}: {key} differs"


@sim
@pytest.mark.parametrize("eight", [True, False], ids=["8bit", "32bit"])
def test_sim_matrix_parameter(NC, eight, rng):
    """A 2-D parameter (a weight matrix, as torch.optim classes pass it): the kernels see 1-D views."""
    shape = (3, 101)
    n = 3 * 101
    p0 = torch.randn(shape, generator=rng)
    ps = [p0.clone(), p0.clone()]
    sts = [_state("adam", n, eight), _state("adam", n, eight)]
    for st in sts:
        for key in ("state1", "state2"):
            st[key] = st[key].view(shape)
    for step in (1, 2):
        g = torch.randn(shape, generator=rng) * 0.1
        for fn, p, st in zip(([W.optimizer_update_8bit_blockwise, NC.optimizer_update_8bit_blockwise] if eight
                              else [W.optimizer_update_32bit, NC.optimizer_update_32bit]), ps, sts):
            if eight:
                fn("adam", g, p, st["state1"], st["state2"], 0.9, 0.99, 0.999, 3.0, 1e-8, step, 2e-3, st["qmap1"],
                   st["qmap2"], st["absmax1"], st["absmax2"], 0.0, 1.0, False)
            else:
                fn("adam", g, p, st["state1"], st["state2"], None, 0.0, 0.0, 0.9, 0.99, 0.999, 3.0, 1e-8, 0.0, step,
                   2e-3, 1.0, False)
        assert torch.equal(ps[1], ps[0]), f"step {step}: params differ"
        assert torch.equal(sts[1]["state1"], sts[0]["state1"])


def _same(a, b):
    """Equal bit for bit, any NaN equal to any NaN (payloads differ across implementations)."""
    if not a.is_floating_point():
        return torch.equal(a, b)
    an, bn = a.isnan(), b.isnan()
    return torch.equal(an, bn) and torch.equal(a[~an], b[~bn])


@sim
@pytest.mark.parametrize("general", [False, True, "wide"], ids=["identity_codes", "shuffled_qmaps", "sorted_wide"])
@pytest.mark.parametrize("name", ("adam", "ademamix", "momentum", "lion"))
def test_sim_nan_poisons_block_as_reference(NC, name, general, rng):
    """NaN/Inf semantics (functional.py, "NaN and Inf"): a NaN gradient in a full block and one in the tail
    block at step 1, an Inf at step 2: params, codes and absmax equal the reference's (NaN == NaN) -- the
    NaN blocks' absmax NaN and codes the last bucket's, Inf absmax -> 0.0's code -- on the kernel's
    identity-code fast path and on its general path (shuffled qmaps; and sorted maps reaching 2.0, whose
    bounds >= 1 make the last bucket differ from +1's code: not fast-path eligible)."""
    from workbench.optim import _gpu_plan as G
    n = 256 * 2 + 45
    p0 = torch.randn(n, generator=rng)
    ps = [p0.clone(), p0.clone()]
    sts = [_state(name, n, True), _state(name, n, True)]
    if general == "wide":
        for st in sts:
            st["qmap1"] = st["qmap1"] * 2
            if st["qmap2"] is not None:
                st["qmap2"] = st["qmap2"] * 2
        assert not G.plan(sts[1]["qmap1"]).identity
    elif general:
        perm1, perm2 = torch.randperm(256, generator=rng), torch.randperm(256, generator=rng)
        for st in sts:
            st["qmap1"] = st["qmap1"][perm1].contiguous()
            if st["qmap2"] is not None:
                st["qmap2"] = st["qmap2"][perm2].contiguous()
    for step in (1, 2, 3):
        g = torch.randn(n, generator=rng) * 0.1
        if step == 1:
            g[int(torch.randint(0, 256, (1,), generator=rng))] = float("nan")
            g[512 + int(torch.randint(0, 45, (1,), generator=rng))] = float("nan")
        if step == 2:
            g[256 + int(torch.randint(0, 256, (1,), generator=rng))] = float("inf")
        for fn, p, st in zip([W.optimizer_update_8bit_blockwise, NC.optimizer_update_8bit_blockwise], ps, sts):
            fn(name, g, p, st["state1"], st["state2"], 0.9, 0.99, 0.999, 3.0, 1e-8, step, 2e-3, st["qmap1"],
               st["qmap2"], st["absmax1"], st["absmax2"], 0.02, 1.0, False)
        assert _same(ps[1], ps[0]), f"step {step}: params differ"
        for key in ("state1", "state2", "absmax1", "absmax2"):
            if sts[0].get(key) is not None:
                assert _same(sts[1][key], sts[0][key]), f"step {step}: {key} differs"
    a1 = sts[0]["absmax1"].reshape(-1, 3)
    assert a1[:, 0].isnan().all() and a1[:, 2].isnan().all()
