"""NaN/Inf semantics of the 8-bit optimizers (issue 17, defect 6), defined once in the spec
(workbench/optim/functional.py, "NaN and Inf") and followed by every CPU backend bit for bit:

* a NaN in a block's new state makes the block's absmax NaN (NaN-propagating max), every code of the
  block the last bucket's (torch.bucketize puts NaN after every bound), and from the next step on every
  element of the block NaN: the whole 256-block is poisoned for good; other blocks are untouched;
* an Inf absmax scales the finite elements to +-0 (the code of 0.0) and the Inf ones to NaN.

Before, numba_cpu (and cython_cpu's general path) took a float max that drops NaN, so one NaN gradient
poisoned one element there and the whole block in the reference. NaN payloads are not compared
(NaN == NaN here). GPU kernels: tests/test_optim_gpu_sim.py (Numba CUDA, simulator) and
tests/test_optim_gpu.py (gpu-marked).
"""
from __future__ import annotations

import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(__file__))
from test_optim_helpers import clone, init_state, problem, step  # noqa: E402

from workbench.backends import get_op, status  # noqa: E402
from workbench.optim import functional as W  # noqa: E402

KEYS = ("state1", "state2", "absmax1", "absmax2")


def same(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Equal, bit for bit except that any NaN equals any NaN (payloads and signs differ across backends)."""
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    if not a.is_floating_point():
        return torch.equal(a, b)
    an, bn = a.isnan(), b.isnan()
    return torch.equal(an, bn) and torch.equal(a[~an], b[~bn])


def _fn(backend):
    ok, why = status(backend)
    if not ok:
        pytest.skip(f"{backend}: {why}")
    try:
        return get_op(backend, "optimizer_update_8bit_blockwise", "cpu")
    except Exception as e:
        pytest.skip(f"{backend} optim: {e}")


def test_reference_poisons_the_block(rng):
    """The spec itself: a NaN gradient poisons its block (absmax NaN, codes = the last bucket's, all of the
    block's params NaN one step later) and only its block; an Inf absmax gives 0.0's code to finite values."""
    n = 256 * 3 + 101                    # a partial last block
    p0, grad = problem(n, rng)
    p = p0.clone()
    st = init_state("adam", n, 8)
    bad_full, bad_tail = int(torch.randint(0, 256, (1,), generator=rng)), 768 + int(torch.randint(0, 101, (1,),
                                                                                                    generator=rng))
    g = grad(p)
    g[bad_full], g[bad_tail] = float("nan"), float("nan")
    step(W.optimizer_update_8bit_blockwise, "adam", 8, g, p, st, 1)
    nan_code, zero_code = W.nonfinite_codes(W.codebook_of(st["qmap1"]))
    assert nan_code == 255 and W.nonfinite_codes(W.codebook_of(st["qmap2"]))[0] == 255
    for k in ("absmax1", "absmax2"):
        assert st[k][[0, 3]].isnan().all() and torch.isfinite(st[k][[1, 2]]).all(), k
    for k in ("state1", "state2"):
        assert (st[k][:256] == 255).all() and (st[k][768:] == 255).all(), k
    assert p.isnan().sum() == 2
    step(W.optimizer_update_8bit_blockwise, "adam", 8, grad(p), p, st, 2)
    assert p[:256].isnan().all() and p[768:].isnan().all()
    assert torch.isfinite(p[256:768]).all()
    # Inf: a state value of +inf (absmax Inf) -> finite values get 0.0's code, the Inf one NaN's
    st2 = init_state("momentum", n, 8)
    q = p0.clone()
    g = grad(q)
    g[300] = float("inf")
    step(W.optimizer_update_8bit_blockwise, "momentum", 8, g, q, st2, 1, wd=0.0)
    assert st2["absmax1"][1].isinf()
    codes = st2["state1"][256:512]
    assert codes[300 - 256] == nan_code and (codes[torch.arange(256) != 300 - 256] == zero_code).all()


@pytest.mark.parametrize("backend", ["numba_cpu", "cython_cpu"])
@pytest.mark.parametrize("name", W.NAMES)
@pytest.mark.parametrize("variant", ["f32", "f32_skip", "bf16"])
def test_cpu_backend_nan_semantics_equal_reference(backend, name, variant, rng):
    """NaN gradients in a full block and in the tail block at step 1, an Inf gradient in another block at
    step 2, then two more steps: params, codes and absmax equal the reference's (NaN == NaN) after every
    step. f32: the kernels' fast paths; f32 with skip_zeros and bf16 params: their general paths."""
    fn = _fn(backend)
    dt = torch.bfloat16 if variant == "bf16" else torch.float32
    skip = variant == "f32_skip"
    n = 256 * 4 + 1 + int(torch.randint(0, 254, (1,), generator=rng))
    p0, grad = problem(n, rng)
    pa, pb = p0.to(dt).clone(), p0.to(dt).clone()
    sa = init_state(name, n, 8)
    sb = clone(sa)
    r = lambda lo, hi: int(torch.randint(lo, hi, (1,), generator=rng))  # noqa: E731
    for t in range(1, 5):
        g = grad(pa)
        if skip:
            g[::7] = 0
        if t == 1:
            g[r(256, 512)] = float("nan")
            g[r(1024, n)] = float("nan")
        if t == 2:
            g[r(512, 768)] = float("inf") if t % 2 == 0 else float("-inf")
        step(W.optimizer_update_8bit_blockwise, name, 8, g, pa, sa, t, skip_zeros=skip)
        step(fn, name, 8, g.clone(), pb, sb, t, skip_zeros=skip)
        assert same(pa, pb), f"step {t}: params differ"
        for k in KEYS:
            if sa[k] is not None:
                assert same(sa[k], sb[k]), f"step {t}: {k} differs"
    a1 = sa["absmax1"].reshape(-1, (n + 255) // 256)
    assert a1[:, 1].isnan().all() and a1[:, -1].isnan().all()   # the NaN blocks stay poisoned
    assert torch.isfinite(a1[:, 0]).all()                        # untouched block
