"""Optimizer state vs its parameter (issue 17, defects 1 and 12).

The compiled kernels trust every size. Before: load_state_dict of a checkpoint that does not fit -- a
resized model, a truncated absmax1, a 16-entry qmap1, an AdEMAMix state loaded into Adam8bit -- loaded
silently and the next step wrote out of bounds (SIGSEGV/SIGABRT, an OpenMP deadlock) or ran on garbage;
float64 parameters failed with a KeyError deep in the compiled backends. Now
``workbench.optim.state_check.validate_state`` runs on load_state_dict (strict), before every update in
the functional dispatch and again in the adapters right before the kernels (metadata only), and float64
parameters are refused when added. The tests only step after the expected error was raised (a test
that fails must not run a kernel on a bad state).
"""
from __future__ import annotations

import copy
import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(__file__))
from test_optim_helpers import init_state  # noqa: E402

import workbench.optim as O  # noqa: E402
from workbench.backends import get_op, status  # noqa: E402
from workbench.optim import functional as W  # noqa: E402
from workbench.optim.state_check import OptimizerStateError, UnsupportedDtypeError, validate_state  # noqa: E402

BACKENDS = ["reference", "numba_cpu", "cython_cpu"]


def _backend(name):
    ok, why = status(name)
    if not ok:
        pytest.skip(f"{name}: {why}")
    return name


def _model(rng, out=80, dtype=torch.float32):
    torch.manual_seed(int(torch.randint(0, 2 ** 31, (1,), generator=rng)))
    return torch.nn.Sequential(torch.nn.Linear(96, out), torch.nn.GELU(), torch.nn.Linear(out, 7)).to(dtype)


def _train(model, opt, rng, steps=2):
    for _ in range(steps):
        opt.zero_grad()
        model(torch.randn(8, 96, generator=rng)).square().mean().backward()
        opt.step()


def _trained(cls, rng, out=80, **kw):
    m = _model(rng, out)
    opt = getattr(O, cls)(m.parameters(), min_8bit_size=256, **kw)
    _train(m, opt, rng)
    return m, opt


def _expect(opt, sd, *words):
    """load_state_dict(sd) raises OptimizerStateError mentioning every word; opt is left unchanged."""
    before = {k: (dict(v) if isinstance(v, dict) else v) for k, v in opt.state.items()}
    with pytest.raises(OptimizerStateError) as e:
        opt.load_state_dict(sd)
    msg = str(e.value)
    for w in words:
        assert w in msg, f"{w!r} not in: {msg}"
    assert {k: dict(v) for k, v in opt.state.items()} == before  # nothing loaded
    return msg


@pytest.mark.parametrize("backend", BACKENDS)
def test_load_resized_model_refused(backend, rng):
    """Adam8bit state of Linear(96, 80) into Linear(96, 81): error at load naming parameter 0, state1,
    the expected and found shapes; the optimizer stays usable."""
    _backend(backend)
    _, opt = _trained("Adam8bit", rng, backend=backend)
    m2 = _model(rng, out=81)
    opt2 = O.Adam8bit(m2.parameters(), min_8bit_size=256, backend=backend)
    _expect(opt2, opt.state_dict(), "parameter 0", "'state1'", "[81, 96]", "[80, 96]")
    _train(m2, opt2, rng)  # fresh state, steps fine
    assert opt2.state[m2[0].weight]["step"] == 2


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", ["absmax1_truncated", "absmax2_long", "qmap1_16", "qmap2_float16",
                                  "state2_wrong_dtype", "step_negative", "step_missing", "state1_missing"])
def test_load_bad_8bit_entry_refused(backend, case, rng):
    _backend(backend)
    _, opt = _trained("Adam8bit", rng, backend=backend)
    sd = copy.deepcopy(opt.state_dict())  # torch's state_dict shares the state dicts with the optimizer
    st = sd["state"][0]                    # Linear(96, 80).weight: 7680 elements, 30 blocks
    key = {"absmax1_truncated": "absmax1", "absmax2_long": "absmax2", "qmap1_16": "qmap1", "qmap2_float16": "qmap2",
           "state2_wrong_dtype": "state2", "step_negative": "step", "step_missing": "step",
           "state1_missing": "state1"}[case]
    if case == "absmax1_truncated":
        st["absmax1"] = st["absmax1"][:-1].clone()
    elif case == "absmax2_long":
        st["absmax2"] = torch.cat([st["absmax2"], st["absmax2"][:1]])
    elif case == "qmap1_16":
        st["qmap1"] = st["qmap1"][::16].clone()
    elif case == "qmap2_float16":
        st["qmap2"] = st["qmap2"].half()
    elif case == "state2_wrong_dtype":
        st["state2"] = st["state2"].float()
    elif case == "step_negative":
        st["step"] = -1
    elif case == "step_missing":
        del st["step"]
    else:
        del st["state1"]
    fresh = O.Adam8bit(_model(rng).parameters(), min_8bit_size=256, backend=backend)
    _expect(fresh, sd, "Adam8bit.load_state_dict", "parameter 0", f"'{key}'", "expected", "found")


@pytest.mark.parametrize("backend", BACKENDS)
def test_load_other_optimizers_state_refused(backend, rng):
    """AdEMAMix8bit's state (state1 (2, *shape), absmax1 (2, nblocks)) into Adam8bit, Adam8bit's into
    AdEMAMix8bit, and Adam8bit's (with state2) into Lion8bit: refused at load."""
    _backend(backend)
    _, ade = _trained("AdEMAMix8bit", rng, backend=backend)
    _, adam = _trained("Adam8bit", rng, backend=backend)
    msg = _expect(O.Adam8bit(_model(rng).parameters(), min_8bit_size=256, backend=backend), ade.state_dict(),
                  "'state1'", "uint8[80, 96]", "uint8[2, 80, 96]")
    assert "parameter 0" in msg
    _expect(O.AdEMAMix8bit(_model(rng).parameters(), min_8bit_size=256, backend=backend), adam.state_dict(),
            "'state1'", "uint8[2, 80, 96]")
    _expect(O.Lion8bit(_model(rng).parameters(), min_8bit_size=256, backend=backend), adam.state_dict(),
            "'state2'", "lion keeps one state")


@pytest.mark.parametrize("backend", BACKENDS)
def test_load_32bit_mismatch_and_names(backend, rng):
    """32-bit state of the wrong size, and an 8-bit absmax left in a 32-bit state; with named parameters
    the error names the parameter."""
    _backend(backend)
    m, opt = _trained("AdamW32bit", rng, backend=backend)
    sd = copy.deepcopy(opt.state_dict())
    sd["state"][1]["state2"] = sd["state"][1]["state2"][:-3].clone()
    m2 = _model(rng)
    named = O.AdamW32bit(list(m2.named_parameters()), backend=backend)
    _expect(named, sd, "parameter 1 ('0.bias')", "'state2'", "float32[80]", "float32[77]")
    sd = copy.deepcopy(opt.state_dict())
    sd["state"][0]["absmax1"] = torch.zeros(30)
    _expect(O.AdamW32bit(_model(rng).parameters(), backend=backend), sd, "'absmax1'")


@pytest.mark.parametrize("backend", BACKENDS)
def test_round_trip_still_bit_exact(backend, rng):
    """A valid checkpoint loads and training continues exactly as without the round trip (odd sizes: 96*80,
    80, 80*7, 7 elements; 8-bit and 32-bit states in one model)."""
    _backend(backend)
    for cls in ("Adam8bit", "AdEMAMix8bit", "Lion8bit"):
        m, opt = _trained(cls, rng, backend=backend)
        m2 = copy.deepcopy(m)
        opt2 = getattr(O, cls)(m2.parameters(), min_8bit_size=256, backend=backend)
        opt2.load_state_dict(copy.deepcopy(opt.state_dict()))
        seed = int(torch.randint(0, 2 ** 31, (1,), generator=rng))
        _train(m, opt, torch.Generator().manual_seed(seed), 3)
        _train(m2, opt2, torch.Generator().manual_seed(seed), 3)
        for a, b in zip(m.parameters(), m2.parameters()):
            assert torch.equal(a, b), cls


@pytest.mark.parametrize("backend", BACKENDS)
def test_step_refuses_state_changed_after_load(backend, rng):
    """A state edited in place after loading (truncated absmax1) is refused by the step's check, which names
    the parameter, before any kernel runs; the step counter is not advanced."""
    _backend(backend)
    m, opt = _trained("Adam8bit", rng, backend=backend)
    st = opt.state[m[0].weight]
    st["absmax1"] = st["absmax1"][:-2]
    with pytest.raises(OptimizerStateError, match=r"Adam8bit: parameter 0: .*'absmax1'.*float32\[30\].*float32\[28\]"):
        _train(m, opt, rng, 1)
    assert st["step"] == 2


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("cls", ["Adam8bit", "Adam32bit", "Lion8bit", "AdEMAMix8bit"])
def test_float64_params_refused_with_a_clear_error(backend, cls, rng):
    """float64 parameters: refused at construction (UnsupportedDtypeError, a TypeError, naming the parameter
    and the supported dtypes) -- before: a KeyError in the compiled backends; and at the step for a model
    converted after construction."""
    _backend(backend)
    m = _model(rng)
    m[2].double()
    with pytest.raises(UnsupportedDtypeError, match=r"parameter 2: .*float64.*float32, float16, bfloat16"):
        getattr(O, cls)(m.parameters(), min_8bit_size=256, backend=backend)
    m = _model(rng)
    opt = getattr(O, cls)(m.parameters(), min_8bit_size=256, backend=backend)
    m.double()
    with pytest.raises(UnsupportedDtypeError, match=r"parameter 0: .*float64"):
        opt.zero_grad()
        m(torch.randn(8, 96, dtype=torch.float64, generator=rng)).square().mean().backward()
        opt.step()


def _direct_args(name, n, rng, bits):
    p = torch.randn(n, generator=rng)
    g = torch.randn(n, generator=rng)
    st = init_state(name, n, bits)
    st = {k: (v.clone() if isinstance(v, torch.Tensor) else v) for k, v in st.items()}
    return p, g, st


def _call(fn, name, bits, p, g, st, step=1):
    if bits == 8:
        fn(name, g, p, st["state1"], st["state2"], 0.9, 0.99, 0.999, 0.5, 1e-8, step, 1e-3, st["qmap1"], st["qmap2"],
           st["absmax1"], st["absmax2"], 0.0, 1.0, False)
    else:
        fn(name, g, p, st["state1"], st["state2"], None, 0.0, 0.0, 0.9, 0.99, 0.999, 0.5, 1e-8, 0.0, step, 1e-3,
           1.0, False)


CASES8 = {
    "absmax1_short": ("adam", lambda st: st.update(absmax1=st["absmax1"][:-1].clone())),
    "absmax2_short": ("adam", lambda st: st.update(absmax2=st["absmax2"][:1].clone())),
    "qmap1_16": ("adam", lambda st: st.update(qmap1=st["qmap1"][::16].clone())),
    "qmap2_float64": ("adam", lambda st: st.update(qmap2=st["qmap2"].double())),
    "state1_short": ("momentum", lambda st: st.update(state1=st["state1"][:-5].clone())),
    "ademamix_state1_1d": ("ademamix", lambda st: st.update(state1=st["state1"][0].clone())),
    "ademamix_absmax1_1d": ("ademamix", lambda st: st.update(absmax1=st["absmax1"][0].clone())),
    "adam_without_state2": ("adam", lambda st: st.update(state2=None, absmax2=None, qmap2=None)),
    "absmax1_float16": ("lion", lambda st: st.update(absmax1=st["absmax1"].half())),
    "codes_as_int8": ("lion", lambda st: st.update(state1=st["state1"].to(torch.int8))),
}


@pytest.mark.parametrize("backend", ["numba_cpu", "cython_cpu", "reference"])
@pytest.mark.parametrize("case", list(CASES8))
def test_direct_8bit_calls_refused(backend, case, rng):
    """The backends' ops called directly (get_op, no optimizer class), and the functional dispatch: an
    inconsistent state raises OptimizerStateError (a ValueError) naming the key before the kernel runs
    (before: out-of-bounds reads/writes in numba_cpu/cython_cpu)."""
    _backend(backend)
    fn = get_op(backend, "optimizer_update_8bit_blockwise", "cpu")
    name, spoil = CASES8[case]
    n = 256 * 3 + 71
    p, g, st = _direct_args(name, n, rng, 8)
    spoil(st)
    p0 = p.clone()
    with pytest.raises(OptimizerStateError):
        _call(fn, name, 8, p, g, st)
    with pytest.raises(OptimizerStateError):
        _call(lambda *a: W.update_8bit_blockwise(*a, backend=backend), name, 8, p, g, st)
    assert torch.equal(p, p0)


CASES32 = {
    "state1_short": ("rmsprop", lambda st: st.update(state1=st["state1"][:-1].clone())),
    "adam_without_state2": ("adam", lambda st: st.update(state2=None)),
    "ademamix_state1_1d": ("ademamix", lambda st: st.update(state1=st["state1"][0].clone())),
    "state2_float16": ("adam", lambda st: st.update(state2=st["state2"].half())),
    "uint8_state_in_32bit_op": ("momentum", lambda st: st.update(state1=torch.zeros_like(st["state1"],
                                                                                         dtype=torch.uint8))),
}


@pytest.mark.parametrize("backend", ["numba_cpu", "cython_cpu", "reference"])
@pytest.mark.parametrize("case", list(CASES32))
def test_direct_32bit_calls_refused(backend, case, rng):
    _backend(backend)
    fn = get_op(backend, "optimizer_update_32bit", "cpu")
    name, spoil = CASES32[case]
    p, g, st = _direct_args(name, 1000, rng, 32)
    spoil(st)
    with pytest.raises(OptimizerStateError):
        _call(fn, name, 32, p, g, st)
    with pytest.raises(OptimizerStateError):
        _call(lambda *a: W.update_32bit(*a, backend=backend), name, 32, p, g, st)


@pytest.mark.parametrize("backend", ["numba_cpu", "cython_cpu"])
def test_direct_calls_refuse_float64_and_bad_step(backend, rng):
    _backend(backend)
    fn = get_op(backend, "optimizer_update_8bit_blockwise", "cpu")
    p, g, st = _direct_args("adam", 700, rng, 8)
    with pytest.raises(UnsupportedDtypeError, match="float64"):
        _call(fn, "adam", 8, p.double(), g, st)
    with pytest.raises(UnsupportedDtypeError, match="gradient"):
        _call(fn, "adam", 8, p, g.double(), st)
    with pytest.raises(OptimizerStateError, match="step"):
        _call(fn, "adam", 8, p, g, st, step=0)
    with pytest.raises(OptimizerStateError, match="gradient"):
        _call(fn, "adam", 8, p, g[:-1], st)
    _call(fn, "adam", 8, p, g, st)  # and the untouched state still runs


def test_validate_state_table(rng):
    """The one check, directly: a state built as the classes build it passes, strict and not; every entry
    of the table in state_check's doc is checked."""
    for name in W.NAMES:
        for bits in (8, 32):
            p = torch.randn(13, 37, generator=rng)
            n = p.numel()
            st = init_state(name, n, bits)
            st = {k: (v.reshape((2, 13, 37) if (k == "state1" and name == "ademamix") else
                                (13, 37) if k in ("state1", "state2") else v.shape) if v is not None else None)
                  for k, v in st.items()}
            st = {k: v for k, v in st.items() if v is not None}
            st["step"] = 0
            assert validate_state(name, p, st, strict=True) == bits
            st["step"] = 3
            assert validate_state(name, p, st) == bits
            bad = dict(st, state1=st["state1"].reshape(-1)) if bits == 8 else dict(st, gnorm_vec=torch.zeros(99))
            if bits == 8:
                validate_state(name, p, bad)  # element counts are enough for the kernels
            with pytest.raises(OptimizerStateError):
                validate_state(name, p, bad, strict=True)
