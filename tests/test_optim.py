"""Optimizer parity on CPU: compiled backends vs the reference (bit for bit) and the reference vs
bitsandbytes 0.50.2's CPU optimizer ops (stated tolerances, reasons next to them)."""
from __future__ import annotations

import os
import sys

import numpy as np
import pytest
import torch

sys.path.insert(0, os.path.dirname(__file__))
from test_optim_helpers import LR, clone, init_state, problem, step  # noqa: E402

from workbench.backends import get_op, status  # noqa: E402
from workbench.optim import functional as W  # noqa: E402

NAMES = W.NAMES
CPU_BACKENDS = [b for b in ("numba_cpu", "cython_cpu")]


def _op(bits):
    return "optimizer_update_32bit" if bits == 32 else "optimizer_update_8bit_blockwise"


def _ref(bits):
    return W.optimizer_update_32bit if bits == 32 else W.optimizer_update_8bit_blockwise


def _need(backend):
    ok, why = status(backend)
    if not ok:
        pytest.skip(f"{backend}: {why}")
    try:
        return {b: get_op(backend, _op(b), "cpu") for b in (32, 8)}
    except Exception as e:  # family module missing (e.g. Cython extension not built)
        pytest.skip(f"{backend} optim: {e}")


def _assert_state_equal(a, b, what):
    for k in a:
        if isinstance(a[k], torch.Tensor) and not k.startswith("qmap"):
            assert torch.equal(a[k], b[k]), f"{what}: {k} differs in {(a[k] != b[k]).sum().item()} elements"


# ---------------------------------------------------------------- compiled backends == reference, bit for bit

@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("bits", [32, 8])
@pytest.mark.parametrize("name", NAMES)
def test_backend_bitexact_vs_reference(backend, bits, name, rng):
    """After 1 step and after 100 steps (odd size with a partial last block, gnorm_scale, weight
    decay, skip_zeros on some steps, LAMB/LARS trust ratio in 32-bit): identical params, states,
    codes and absmax. Every path rounds the same float32 operations in the same order."""
    fn = _need(backend)[bits]
    n = 256 * 5 + int(torch.randint(1, 255, (1,), generator=rng))
    p0, grad = problem(n, rng)
    pa, pb = p0.clone(), p0.clone()
    sa = init_state(name, n, bits)
    sb = clone(sa)
    for t in range(1, 101):
        g = grad(pa)
        if t % 3 == 0:
            g[::5] = 0
        kw = dict(gnorm_scale=0.75 if t % 2 else 1.0, skip_zeros=(t % 3 == 0))
        step(_ref(bits), name, bits, g, pa, sa, t, **kw)
        step(fn, name, bits, g.clone(), pb, sb, t, **kw)
        if t in (1, 100):
            assert torch.equal(pa, pb), f"step {t}: params differ in {(pa != pb).sum().item()} elements"
            _assert_state_equal(sa, sb, f"step {t}")


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("bits", [32, 8])
def test_backend_half_params(backend, dtype, bits, rng):
    """bf16/fp16 params and grads: widened exactly, updated in float32, rounded once (as torch's copy_)."""
    fn = _need(backend)[bits]
    n = 700
    p0, grad = problem(n, rng)
    pa, pb = p0.to(dtype), p0.to(dtype)
    sa = init_state("adam", n, bits)
    sb = clone(sa)
    for t in range(1, 6):
        g = grad(pa)
        step(_ref(bits), "adam", bits, g, pa, sa, t)
        step(fn, "adam", bits, g.clone(), pb, sb, t)
    assert torch.equal(pa, pb)
    _assert_state_equal(sa, sb, "half params")


# ---------------------------------------------------------------- reference vs bitsandbytes' CPU ops

def _bnb_ops():
    pytest.importorskip("bitsandbytes")
    ok, why = status("bnb")
    if not ok:
        pytest.skip(why)
    import bitsandbytes  # noqa: F401  registers torch.ops.bitsandbytes
    return {32: torch.ops.bitsandbytes.optimizer_update_32bit,
            8: torch.ops.bitsandbytes.optimizer_update_8bit_blockwise}


# bnb's native CPU 8-bit quantizer rounds through a 65536-entry LUT over [-1, 1]: its pick may
# miss the nearest code value by up to 2/65535 (normalized units) near a decision bound.
LUT_SLACK = 2.0 / 65535


@pytest.mark.parametrize("name", NAMES)
def test_reference_vs_bnb_one_step_8bit(name, rng):
    """From a realistic state (10 reference steps), one step with each: absmax equal to 1e-6
    (states differ by float32 ulps: bnb's CPU path uses torch's approximate vector sqrt and fused
    add-with-alpha); codes identical except where bnb's LUT picks a value at most LUT_SLACK
    farther from the exact scaled state than ours (ours is the nearest by construction), and
    identical for >= 99% of the elements with |scaled state| >= 1e-3."""
    bnb = _bnb_ops()
    n = 256 * 8 + 77
    p0, grad = problem(n, rng)
    st = init_state(name, n, 8)
    p = p0.clone()
    for t in range(1, 11):
        step(W.optimizer_update_8bit_blockwise, name, 8, grad(p), p, st, t)
    g = grad(p)
    pa, pb, sa, sb = p.clone(), p.clone(), clone(st), clone(st)
    # our exact float32 state before requantization, to judge the picks
    b1, b2, b3 = __import__("test_optim_helpers").BETAS[name]
    k = W.scalars(name, b1, b2, b3, 0.5, 1e-8, 0.01, 11, LR[name], 1.0, True)
    if name == "ademamix":
        s1 = torch.stack([W._dq(st["state1"][i], st["absmax1"][i], st["qmap1"]) for i in range(2)])
    else:
        s1 = W._dq(st["state1"], st["absmax1"], st["qmap1"])
    s2 = W._dq(st["state2"], st["absmax2"], st["qmap2"]) if st["state2"] is not None else None
    _, ns1, ns2 = W._rule(name, g.float(), p.float(), s1, s2, k, 11, True)
    step(W.optimizer_update_8bit_blockwise, name, 8, g, pa, sa, 11)
    step(bnb[8], name, 8, g.clone(), pb, sb, 11)
    torch.testing.assert_close(pa, pb, rtol=1e-6, atol=1e-6)
    pairs = [("state1", "absmax1", "qmap1", ns1), ("state2", "absmax2", "qmap2", ns2)]
    for ck, ak, qk, exact in pairs:
        if sa[ck] is None:
            continue
        torch.testing.assert_close(sa[ak], sb[ak], rtol=1e-6, atol=0)
        ca, cb = sa[ck].reshape(-1), sb[ck].reshape(-1)
        q = sa[qk]
        absmax = sa[ak].reshape(-1, 1).expand(-1, 256) if name != "ademamix" or ck == "state2" else None
        nbl = (n + 255) // 256
        if absmax is None:
            absmax = sa[ak].reshape(2, nbl, 1).expand(2, nbl, 256).reshape(2, -1)[:, :n].reshape(-1)
        else:
            absmax = absmax.reshape(-1)[:n]
        s = (exact.reshape(-1) / absmax).clamp(-1, 1)
        diff = ca != cb
        # below ~1e-3 the dynamic maps hold many values per LUT cell, so bnb's picks often differ
        # there (by < LUT_SLACK); above, a difference needs s within a cell of a decision bound.
        big = s.abs() >= 1e-3
        frac = (diff & big).float().sum().item() / max(1, big.sum().item())
        assert frac < 0.01, f"{ck}: {frac:.3%} of codes with |s| >= 1e-3 differ"
        ea = (q[ca.long()] - s).abs()
        eb = (q[cb.long()] - s).abs()
        assert bool((eb[diff] <= ea[diff] + LUT_SLACK + 1e-6).all()), f"{ck}: bnb's pick is off by more than the LUT bound"
        assert bool((ea <= eb + 1e-6).all()), f"{ck}: our code is not the nearest"


@pytest.mark.parametrize("name", NAMES)
def test_reference_vs_bnb_one_step_32bit(name, rng):
    """One 32-bit step: params/states within a few float32 ulps (bnb: approximate vector sqrt, fused
    add-with-alpha; LAMB/LARS norms summed in a different order)."""
    bnb = _bnb_ops()
    n = 3001
    p0, grad = problem(n, rng)
    st = init_state(name, n, 32)
    p = p0.clone()
    for t in range(1, 6):
        step(W.optimizer_update_32bit, name, 32, grad(p), p, st, t)
    g = grad(p)
    pa, pb, sa, sb = p.clone(), p.clone(), clone(st), clone(st)
    step(W.optimizer_update_32bit, name, 32, g, pa, sa, 6)
    step(bnb[32], name, 32, g.clone(), pb, sb, 6)
    torch.testing.assert_close(pa, pb, rtol=2e-6, atol=1e-7)
    for key in ("state1", "state2"):
        if sa[key] is not None:
            scale = sa[key].abs().max().item()
            torch.testing.assert_close(sa[key], sb[key], rtol=1e-5, atol=4e-7 * scale)


@pytest.mark.parametrize("bits", [32, 8])
@pytest.mark.parametrize("name", NAMES)
def test_reference_vs_bnb_100_steps(name, bits, rng):
    """100 steps on a noisy quadratic, same gradients function, each optimizer on its own trajectory.

    32-bit: |dp| <= 1e-6 + 2e-6|p| -- per-step ulp differences (see the one-step test) are not
    amplified on a contracting problem (measured ~2.4e-7).
    8-bit: the trajectories are statistically equal, not bitwise: one code that bnb's LUT rounds
    differently changes that element's state by one quantization step, which feeds back through
    the gradient. Checks: |dp| <= the sum of both trajectories' travel (exact), at most 0.2% of
    elements farther apart than lr*steps (a diverged element), median |dp| <= 5e-3 lr*steps
    (8-bit Adam over 41 seeds: 1.2e-6 to 5.6e-4 lr*steps, one seed 1.6e-3; about 60 % of the elements
    differ at all). A plain max |dp| <= lr*steps bound failed for some seeds: a diverged
    8-bit Adam element can move more than lr per step."""
    bnb = _bnb_ops()
    n = 4099
    seed = int(torch.randint(0, 2 ** 31, (1,), generator=rng))
    res = []
    for fn in (_ref(bits), bnb[bits]):
        p0, grad = problem(n, torch.Generator().manual_seed(seed))
        p = p0.clone()
        st = init_state(name, n, bits)
        for t in range(1, 101):
            step(fn, name, bits, grad(p), p, st, t)
        res.append(p)
    d = (res[0] - res[1]).abs()
    assert torch.isfinite(res[0]).all()
    if bits == 32:
        assert bool((d <= 1e-6 + 2e-6 * res[1].abs()).all()), f"max |dp| {d.max().item():.3e}"
    else:
        travel = LR[name] * 100
        p0, _ = problem(n, torch.Generator().manual_seed(seed))
        # exact: two trajectories from one start can be no farther apart than their two travels
        assert bool((d <= (res[0] - p0).abs() + (res[1] - p0).abs() + 1e-6).all())
        # statistical: an element whose code rounded differently diverges (Adam's step is not bounded
        # by lr, so a single max bound is flaky); such elements stay rare and the bulk agrees
        far = (d > travel).float().mean().item()
        assert far <= 2e-3, f"{far:.2%} of elements differ by more than lr*steps {travel:.3e}"
        assert d.median().item() <= 5e-3 * travel, f"median |dp| {d.median().item():.3e}"


def test_codebook_cache_not_fooled_by_recycled_tensors():
    """A freed qmap's cached codebook must not be handed to a new tensor (same address or id)."""
    import gc
    for _ in range(20):
        a = W.qmap(True).clone()
        W.codebook_of(a)
        del a
        gc.collect()
        b = W.qmap(False).clone()
        assert (W.codebook_of(b).table == W.qmap(False).numpy()).all()
        b.mul_(0.5)  # written to: rebuilt
        assert (W.codebook_of(b).table == b.numpy()).all()


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("name", ["adam", "momentum", "lion"])
def test_nan_gradient_is_contained_in_its_block(backend, name, rng):
    """A NaN gradient element: after the step its parameter equals the reference's (NaN for Adam and
    Momentum; Lion's sign(NaN) is 0, as torch.sign's), and every 256-block that does not hold it stays
    bit-identical to the reference over further steps (params, codes, absmax). The block that holds it
    is poisoned (absmax NaN, every param NaN from the next step on) identically on every backend: that
    is tests/test_optim_nan.py's (NaN == NaN comparisons)."""
    fn = _need(backend)[8]
    n = 256 * 4 + 19
    p0, grad = problem(n, rng)
    pa, pb = p0.clone(), p0.clone()
    sa = init_state(name, n, 8)
    sb = clone(sa)
    bad = 256 + 77
    for t in (1, 2):
        g = grad(pa)
        if t == 1:
            g[bad] = float("nan")
        step(_ref(8), name, 8, g, pa, sa, t)
        step(fn, name, 8, g.clone(), pb, sb, t)
        if t == 1:  # afterwards the block's undefined state drives its params apart
            torch.testing.assert_close(pb[bad], pa[bad], rtol=0, atol=0, equal_nan=True)
            assert pa[bad].isnan() == (name != "lion")
    keep = torch.ones(n, dtype=torch.bool)
    keep[256:512] = False  # the block that held the NaN
    assert torch.equal(pa[keep], pb[keep])
    for k in ("state1", "state2"):
        if sa[k] is not None:
            assert torch.equal(sa[k][keep], sb[k][keep]), k
    for k in ("absmax1", "absmax2"):
        if sa[k] is not None:
            blocks = torch.ones(sa[k].numel(), dtype=torch.bool)
            blocks[1] = False
            assert torch.equal(sa[k][blocks], sb[k][blocks]), k


def test_update_constants_are_rounded_once_from_double():
    """scalar_vector / consts: every constant computed in double and rounded to float32 once (a float32
    intermediate, e.g. 1 - beta2 in float32, would differ), in the kernels' KBIT_K_* order."""
    import math

    from workbench.optim import _gpu_plan as G
    rng = np.random.default_rng(7)
    for _ in range(200):
        b1, b2, b3 = rng.uniform(0.5, 0.99999, 3)
        eps, wd, lr = 10 ** rng.uniform(-10, -6), rng.uniform(0, 0.1), 10 ** rng.uniform(-6, -1)
        step, gs, scale = int(rng.integers(1, 10 ** 5)), rng.uniform(0.1, 1), rng.uniform(0.5, 2)
        c1, c2 = 1.0 - b1 ** step, math.sqrt(1.0 - b2 ** step)
        want = [b1, b2, b3, 0.5, eps, 1 - b1, 1 - b2, 1 - b3, wd, 1 - lr * wd, gs, c1, c2, eps * c2, -lr, -lr / c1]
        for name, upd in (("adam", -lr * c2 / c1 * scale), ("lion", float(np.float32(-lr)) * scale)):
            k = G.consts(name, b1, b2, b3, 0.5, eps, wd, step, lr, gs, True, scale)
            assert k.dtype == np.float32 and k.shape == (17,)
            assert [float(np.float32(x)) for x in want + [upd]] == k.tolist()
        assert W.scalars("adam", b1, b2, b3, 0.5, eps, wd, step, lr, gs, True)["omb2"] == float(np.float32(1 - b2))
