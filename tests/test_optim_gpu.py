"""GPU optimizer kernels (CUDA production and Numba CUDA) equal the reference (the spec, run by torch
on CPU copies of the same inputs) bit for bit: params, 8-bit codes and absmax (or 32-bit states) after
1 and after several steps, for every update rule, float32 and bfloat16 params, odd lengths (tail
blocks), skip_zeros and gnorm_scale.
Exception, with a stated tolerance: the 32-bit LAMB/LARS trust ratio divides by ||u||, a float64
sum whose order differs between torch and the kernels' reductions (relative ~1e-16), so the float32
step multiplier may differ by one ulp, which moves the rounding of p + u*step by at most one ulp of
p (plus one ulp of the update near p = 0): params within rtol 3e-7 (2.5 ulp) + atol 1e-8 there,
compared step by step (the kernel's state is reset to the reference's after each step).
Why CPU for the reference: torch's CUDA kernels divide by a Python scalar as a multiply by its
reciprocal (x * (1/c)), which is not the IEEE division of the spec (~0.1% of 8-bit Adam params
differ by an ulp when the reference itself runs on CUDA tensors).
Run on a GPU machine: ``pytest -m gpu tests/test_optim_gpu.py``.
"""
import importlib

import pytest
import torch

from workbench.backends import status
from workbench.optim import functional as W

pytestmark = pytest.mark.gpu

NAMES = ("adam", "ademamix", "momentum", "lion", "rmsprop", "adagrad", "lamb", "lars")


def _mod(backend):
    ok, reason = status(backend)
    if not ok:
        pytest.skip(f"{backend}: {reason}")
    return importlib.import_module(f"workbench.backends.{backend}.optim")


def _state(name, n, eight, dev):
    two = name in ("adam", "lamb", "ademamix")
    nb = (n + 255) // 256
    # the reference (CPU) uses the module's shared qmaps; the kernels get per-parameter clones as the classes do
    q = (lambda signed: W.qmap(signed, dev)) if dev == "cpu" else (lambda signed: W.qmap(signed, dev).clone())
    if eight:
        return dict(state1=torch.zeros((2, n) if name == "ademamix" else (n,), dtype=torch.uint8, device=dev),
                    absmax1=torch.zeros((2, nb) if name == "ademamix" else (nb,), device=dev),
                    qmap1=q(True),
                    state2=torch.zeros(n, dtype=torch.uint8, device=dev) if two else None,
                    absmax2=torch.zeros(nb, device=dev) if two else None,
                    qmap2=q(False) if two else None)
    return dict(state1=torch.zeros((2, n) if name == "ademamix" else (n,), device=dev),
                state2=torch.zeros(n, device=dev) if two else None, unorm_vec=torch.zeros(1, device=dev))


def _step(fn, name, eight, g, p, st, step, max_unorm, gs, skip):
    wd = 0.0 if name in ("lamb", "lars") else 0.02
    if eight:
        fn(name, g, p, st["state1"], st["state2"], 0.9, 0.99, 0.999, 3.0, 1e-8, step, 2e-3, st["qmap1"], st["qmap2"],
           st["absmax1"], st["absmax2"], wd, gs, skip)
    else:
        pn = float(p.float().norm()) if max_unorm else 0.0
        fn(name, g, p, st["state1"], st["state2"], st["unorm_vec"] if max_unorm else None, max_unorm, pn,
           0.9, 0.99, 0.999, 3.0, 1e-8, wd, step, 2e-3, gs, skip)


@pytest.mark.parametrize("backend", ["cuda", "numba_cuda"])
@pytest.mark.parametrize("eight", [True, False], ids=["8bit", "32bit"])
@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("n,dtype", [(256 * 41 + 77, torch.float32), (256 * 9, torch.bfloat16), (1, torch.float32)])
def test_gpu_update_equals_reference(backend, eight, name, n, dtype, rng):
    mod = _mod(backend)
    fn = mod.optimizer_update_8bit_blockwise if eight else mod.optimizer_update_32bit
    ref = W.optimizer_update_8bit_blockwise if eight else W.optimizer_update_32bit
    mu = 0.05 if (name in ("lamb", "lars") and not eight) else 0.0
    p0 = torch.randn(n, generator=rng).to(dtype)
    p_ref, p_k = p0.clone(), p0.cuda()
    st_ref, st_k = _state(name, n, eight, "cpu"), _state(name, n, eight, "cuda")
    for step in range(1, 8):
        g = (torch.randn(n, generator=rng) * 0.1).to(dtype)
        g[::13] = 0
        skip = step % 2 == 0
        gs = 0.7 if step == 3 else 1.0
        _step(ref, name, eight, g, p_ref, st_ref, step, mu, gs, skip)
        _step(fn, name, eight, g.cuda(), p_k, st_k, step, mu, gs, skip)
        if mu:
            torch.testing.assert_close(p_k.cpu(), p_ref, rtol=3e-7, atol=1e-8)
            p_k.copy_(p_ref)  # keep the comparison per step
            for key in ("state1", "state2"):
                if st_ref[key] is not None:
                    st_k[key].copy_(st_ref[key])
            continue
        assert torch.equal(p_k.cpu(), p_ref), f"step {step}: params differ"
        for key in ("state1", "state2", "absmax1", "absmax2"):
            if st_ref.get(key) is not None:
                assert torch.equal(st_k[key].cpu(), st_ref[key]), f"step {step}: {key} differs"


@pytest.mark.parametrize("backend", ["cuda", "numba_cuda"])
def test_gpu_classes_backend(backend, rng):
    """Adam8bit(backend=...) on a CUDA parameter equals Adam8bit(backend='reference') on a CPU copy."""
    _mod(backend)
    from workbench.optim import Adam8bit
    w0 = torch.randn(4096 + 300, generator=rng)
    ws = [torch.nn.Parameter(w0.clone()), torch.nn.Parameter(w0.cuda())]
    opts = [Adam8bit([ws[0]], backend="reference"), Adam8bit([ws[1]], backend=backend)]
    for _ in range(5):
        g = torch.randn(w0.shape, generator=rng)
        ws[0].grad, ws[1].grad = g.clone(), g.cuda()
        for o in opts:
            o.step()
    assert torch.equal(ws[0].detach(), ws[1].detach().cpu())
    s0, s1 = opts[0].state[ws[0]], opts[1].state[ws[1]]
    assert s1["state1"].dtype == torch.uint8
    for k in ("state1", "state2", "absmax1", "absmax2"):
        assert torch.equal(s0[k], s1[k].cpu()), k


def _same(a, b):
    """Equal bit for bit, any NaN equal to any NaN (payloads differ across implementations)."""
    if not a.is_floating_point():
        return torch.equal(a, b)
    an, bn = a.isnan(), b.isnan()
    return torch.equal(an, bn) and torch.equal(a[~an], b[~bn])


@pytest.mark.parametrize("backend", ["cuda", "numba_cuda"])
@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("dtype,skip", [(torch.float32, False), (torch.float32, True), (torch.bfloat16, False)])
@pytest.mark.parametrize("general", [False, True], ids=["identity_codes", "shuffled_qmaps"])
def test_gpu_nan_poisons_block_as_reference(backend, name, dtype, skip, general, rng):
    """NaN/Inf semantics (workbench/optim/functional.py, "NaN and Inf"; issue 17): NaN gradients in a full
    block and in the tail block at step 1, an Inf at step 2, then two more steps: params, codes and absmax
    equal the reference's bit for bit (NaN == NaN) -- a NaN block's absmax is NaN (the kernels' absmax is
    an integer max of |x| bits, not fmaxf), its codes the last bucket's, and its params NaN from the next
    step on; an Inf absmax gives finite values 0.0's code. Identity-code fast path and general path."""
    mod = _mod(backend)
    n = 256 * 37 + 1 + int(torch.randint(0, 254, (1,), generator=rng))
    nb = (n + 255) // 256
    p0 = torch.randn(n, generator=rng).to(dtype)
    p_ref, p_k = p0.clone(), p0.cuda()
    st_ref, st_k = _state(name, n, True, "cpu"), _state(name, n, True, "cuda")
    if general:
        perm1, perm2 = torch.randperm(256, generator=rng), torch.randperm(256, generator=rng)
        for st in (st_ref, st_k):
            st["qmap1"] = st["qmap1"][perm1.to(st["qmap1"].device)].contiguous()
            if st["qmap2"] is not None:
                st["qmap2"] = st["qmap2"][perm2.to(st["qmap2"].device)].contiguous()
    for step in range(1, 5):
        g = (torch.randn(n, generator=rng) * 0.1).to(dtype)
        if skip:
            g[::13] = 0
        if step == 1:
            g[256 * 5 + int(torch.randint(0, 256, (1,), generator=rng))] = float("nan")
            g[256 * (nb - 1) + int(torch.randint(0, n - 256 * (nb - 1), (1,), generator=rng))] = float("nan")
        if step == 2:
            g[256 * 9 + int(torch.randint(0, 256, (1,), generator=rng))] = float("inf")
        _step(W.optimizer_update_8bit_blockwise, name, True, g, p_ref, st_ref, step, 0.0, 1.0, skip)
        _step(mod.optimizer_update_8bit_blockwise, name, True, g.cuda(), p_k, st_k, step, 0.0, 1.0, skip)
        assert _same(p_k.cpu(), p_ref), f"step {step}: params differ"
        for key in ("state1", "state2", "absmax1", "absmax2"):
            if st_ref.get(key) is not None:
                assert _same(st_k[key].cpu(), st_ref[key]), f"step {step}: {key} differs"
    a1 = st_ref["absmax1"].reshape(-1, nb)
    assert a1[:, 5].isnan().all() and a1[:, nb - 1].isnan().all() and torch.isfinite(a1[:, 0]).all()


@pytest.mark.parametrize("backend", ["cuda", "numba_cuda"])
def test_gpu_adapters_refuse_inconsistent_state(backend, rng):
    """Issue 17: the GPU adapters check the state against the parameter before any launch (a kernel would
    read/write out of bounds or dereference a host pointer): truncated absmax, a 16-entry qmap, a qmap or
    absmax left on the CPU, AdEMAMix codes of the wrong size, Adam without state2, a float64 parameter;
    the parameter and state stay untouched and the context stays usable."""
    from workbench.optim.state_check import OptimizerStateError, UnsupportedDtypeError
    mod = _mod(backend)
    n = 256 * 5 + 33
    spoil = {
        "absmax1_short": ("adam", lambda st: st.update(absmax1=st["absmax1"][:-1].clone())),
        "qmap1_16": ("adam", lambda st: st.update(qmap1=st["qmap1"][::16].clone())),
        "qmap2_on_cpu": ("adam", lambda st: st.update(qmap2=st["qmap2"].cpu())),
        "absmax1_on_cpu": ("momentum", lambda st: st.update(absmax1=st["absmax1"].cpu())),
        "ademamix_state1_1d": ("ademamix", lambda st: st.update(state1=st["state1"][0].clone())),
        "adam_without_state2": ("adam", lambda st: st.update(state2=None, absmax2=None, qmap2=None)),
    }
    for case, (name, f) in spoil.items():
        st = _state(name, n, True, "cuda")
        f(st)
        p = torch.randn(n, generator=rng).cuda()
        p0 = p.clone()
        with pytest.raises(OptimizerStateError):
            _step(mod.optimizer_update_8bit_blockwise, name, True, torch.randn(n, generator=rng).cuda(), p, st, 1,
                  0.0, 1.0, False)
        assert torch.equal(p, p0), case
    st = _state("adam", n, False, "cuda")
    st["state2"] = st["state2"][:-1]
    with pytest.raises(OptimizerStateError):
        _step(mod.optimizer_update_32bit, "adam", False, torch.randn(n).cuda(), torch.randn(n).cuda(), st, 1, 0.0,
              1.0, False)
    with pytest.raises(UnsupportedDtypeError):
        _step(mod.optimizer_update_8bit_blockwise, "adam", True, torch.randn(n).cuda().double(),
              torch.randn(n).cuda().double(), _state("adam", n, True, "cuda"), 1, 0.0, 1.0, False)
    torch.cuda.synchronize()
