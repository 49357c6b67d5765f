"""k-bit family (issue 19): scale groups beyond power-of-two blocks (per row, any group dividing the row) and
affine groups (scale + zero point, int-k): the spec against its formulas, every CPU backend against the
reference bit for bit, bad input."""
from __future__ import annotations

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

from workbench import kbit as K
from workbench.backends import status
from workbench.backends.reference import kbit as R
from workbench.backends.reference import kbit_affine as RA
from workbench.validation import QuantInputError

CPU_BACKENDS = [b for b in ("reference", "numba_cpu", "cython_cpu") if status(b)[0]]
COMPILED = [b for b in CPU_BACKENDS if b != "reference"]
FLOATS = (torch.float32, torch.float16, torch.bfloat16)


def _bits(t: torch.Tensor) -> torch.Tensor:
    return t.view({1: torch.uint8, 2: torch.int16, 4: torch.int32}[t.element_size()])


def _weights(rows: int, cols: int, dtype=torch.float32, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    scale = 4 ** torch.randn(rows, 1, generator=g)                       # rows of different magnitude
    return (torch.randn(rows, cols, generator=g) * scale).to(dtype)


def _poison(monkeypatch):
    from workbench.backends import _cpu_kbit as NB

    def poisoned(m, dt):
        t = torch.empty(m, dtype=dt)
        _bits(t).fill_(-1)
        return t
    monkeypatch.setattr(NB, "_empty", poisoned)


# ------------------------------------------------------------------ groups: per row, any divisor of the row

@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_per_row_scale_is_the_rows_absmax(backend):
    W = _weights(12, 384)
    p, st = K.quantize_kbit(W, 3, blocksize="row", scale_format="fp32", backend=backend)
    assert st.blocksize == 384 and torch.equal(st.scales, W.abs().amax(dim=1))
    groups, st96 = K.quantize_kbit(W, 3, blocksize=96, scale_format="fp32", backend=backend)
    assert torch.equal(st96.scales, W.view(-1, 96).abs().amax(dim=1))
    # a group of 96 never straddles a row: the same codes as quantizing each row on its own
    for r in (0, 5, 11):
        pr, _ = K.quantize_kbit(W[r].clone(), 3, blocksize=96, scale_format="fp32", backend=backend)
        codes = R.unpack_bitplane(groups, 3, W.numel()).view(12, 384)[r]
        assert torch.equal(codes, R.unpack_bitplane(pr, 3, 384))


@pytest.mark.parametrize("backend", COMPILED)
@pytest.mark.parametrize("blocksize,fmt,against", [("row", "e4m4", "exact"), (384, "fp16", "decoded"),
                                                   (96, "bf16", "exact"), (48, "dq8", "exact"), (24, "fp32", "exact")])
def test_group_sizes_bit_exact_on_compiled_backends(monkeypatch, backend, blocksize, fmt, against):
    _poison(monkeypatch)
    W = _weights(7, 384, torch.bfloat16, seed=3)[:, :360 if blocksize == 24 else 384].contiguous()
    for layout in R.LAYOUTS:
        pr, sr = K.quantize_kbit(W, 5, None, blocksize, layout, fmt, against, backend="reference")
        pn, sn = K.quantize_kbit(W, 5, None, blocksize, layout, fmt, against, backend=backend)
        assert torch.equal(pn, pr) and torch.equal(_bits(sn.scales), _bits(sr.scales))
        for dt in FLOATS:
            want = K.dequantize_kbit(pr, sr, dtype=dt, backend="reference")
            assert torch.equal(_bits(K.dequantize_kbit(pr, sr, dtype=dt, backend=backend)), _bits(want))


def test_smaller_groups_lower_the_error_of_rows_with_mixed_magnitudes():
    W = _weights(64, 384, seed=1) * torch.linspace(0.1, 3, 384)          # columns of growing magnitude
    err = {}
    for bs in ("row", 192, 96, 32):
        p, st = K.quantize_kbit(W, 3, blocksize=bs, scale_format="fp16")
        err[bs] = float((K.dequantize_kbit(p, st) - W).pow(2).mean())
    assert err["row"] > err[192] > err[96] > err[32]


# ------------------------------------------------------------------ affine groups: the spec

def _affine_by_hand(x: torch.Tensor, k: int, G: int):
    """The spec's formulas, one group at a time in Python floats rounded to float32 at each step."""
    f32 = lambda v: torch.tensor(v, dtype=torch.float32)   # noqa: E731
    codes, outs = [], []
    for g in range(0, x.numel(), G):
        grp = x[g:g + G]
        lo, hi = min(0.0, float(grp.min())), max(0.0, float(grp.max()))
        s = torch.clamp((f32(hi) - f32(lo)) / f32(2 ** k - 1), min=RA.EPS)
        z = min(max(-float(torch.round(f32(lo) / s)), 0.0), 2 ** k - 1)
        r = f32(1.0) / s
        for v in grp.tolist():
            q = min(max(float(torch.round(f32(v) * r)) + z, 0.0), 2 ** k - 1)
            codes.append(int(q))
            outs.append(float((f32(q) - f32(z)) * s))
    return torch.tensor(codes), torch.tensor(outs, dtype=torch.float32)


@pytest.mark.parametrize("k,G", [(2, 32), (3, 48), (4, 32), (8, 64)])
def test_affine_minmax_is_the_torchao_formula(k, G):
    g = torch.Generator().manual_seed(k)
    x = torch.randn(G * 5 + 7, generator=g) * 3
    x[:G] = x[:G].abs() + 0.5                 # an all-positive group: zero still in range (preserve_zero)
    x[G:2 * G] = 0.0                          # an all-zero group: the scale clamps at EPS
    codes, want = _affine_by_hand(x, k, G)
    for layout in R.LAYOUTS:
        p, S, z = RA.quantize_kbit_affine(x, k, G, layout, "fp32", "minmax")
        assert torch.equal(R.unpack(p, k, x.numel(), layout), codes)
        out = RA.dequantize_kbit_affine(p, S, z, k, G, x.numel(), layout, torch.float32)
        assert torch.equal(out, want)
    assert (out[G:2 * G] == 0).all() and z[1].item() == 0


def test_affine_zero_is_exact_and_error_within_half_a_step():
    x = torch.randn(4096) * 2
    x[::7] = 0.0
    for k in (2, 4, 8):
        p, st = K.quantize_kbit(x, k, blocksize=64, affine="minmax", scale_format="fp32")
        out = K.dequantize_kbit(p, st)
        assert (out[::7] == 0).all()
        step = st.scales.repeat_interleave(64)
        assert bool(((out - x).abs() <= step / 2 * (1 + 1e-5)).all())


def test_mse_clip_never_worse_than_minmax_per_group_and_better_on_outliers():
    g = torch.Generator().manual_seed(7)
    n = 64 * 256
    x = torch.randn(n, generator=g) / torch.randn(3, n, generator=g).pow(2).mean(dim=0).sqrt()   # Student-t, 3 dof
    for k in (2, 3, 4):
        errs = {}
        for clip in RA.CLIPS:
            p, st = K.quantize_kbit(x, k, blocksize=64, affine=clip)
            errs[clip] = (K.dequantize_kbit(p, st) - x).double().pow(2).view(-1, 64).sum(dim=1)
        assert bool((errs["mse"] <= errs["minmax"]).all())
        assert errs["mse"].sum() < 0.97 * errs["minmax"].sum(), k


# ------------------------------------------------------------------ affine groups: every backend == the reference

AFFINE_CASES = [  # (k, dtype, n, groupsize, scale_format, clip)
    (2, torch.float32, 4099, 32, "fp16", "minmax"), (3, torch.bfloat16, 1000, 40, "fp32", "mse"),
    (4, torch.float16, 777, 32, "bf16", "mse"), (5, torch.float32, 70, 64, "fp16", "minmax"),
    (6, torch.bfloat16, 4099, 4096, "bf16", "minmax"), (7, torch.float32, 33, 16, "fp32", "mse"),
    (8, torch.float16, 3001, 128, "fp16", "minmax"), (4, torch.float32, 1, 32, "fp16", "mse"),
]


@pytest.mark.parametrize("backend", COMPILED)
@pytest.mark.parametrize("k,dtype,n,G,fmt,clip", AFFINE_CASES)
def test_affine_compiled_backends_bit_exact_with_poisoned_outputs(monkeypatch, backend, k, dtype, n, G, fmt, clip):
    _poison(monkeypatch)
    g = torch.Generator().manual_seed(k)
    A = (torch.randn(n, generator=g) * 4 ** torch.randn(n, generator=g) + 0.3).to(dtype)
    ops = torch.ops.workbench
    for layout in R.LAYOUTS:
        ref = ops.quantize_kbit_affine(A, k, G, layout, fmt, clip, "reference")
        got = ops.quantize_kbit_affine(A, k, G, layout, fmt, clip, backend)
        for r, o in zip(ref, got):
            assert r.dtype == o.dtype and torch.equal(_bits(o), _bits(r)), (layout, r.dtype)
        for dt in FLOATS:
            want = ops.dequantize_kbit_affine(*ref, k, G, n, layout, dt, "reference")
            assert torch.equal(_bits(ops.dequantize_kbit_affine(*ref, k, G, n, layout, dt, backend)), _bits(want))


def test_affine_public_api_and_fake_shapes():
    W = _weights(4, 384, torch.bfloat16)
    p, st = K.quantize_kbit(W, 4, blocksize="row", affine="mse")
    assert st.scale_format == "fp16" and st.codebook is None and st.zeros.dtype == torch.uint8
    assert st.scales.shape == (4,) and K.dequantize_kbit(p, st).shape == W.shape
    assert K.bits_per_param(4, 32, "fp16", affine="minmax") == 4 + 24 / 32
    with FakeTensorMode(allow_non_fake_inputs=True) as mode:
        fA = mode.from_tensor(torch.randn(1000))
        p, s, z = torch.ops.workbench.quantize_kbit_affine(fA, 3, 40, "dense", "bf16", "mse", "reference")
        assert p.shape == (94,) and s.shape == (25,) and s.dtype == torch.bfloat16 and z.dtype == torch.uint8


# ------------------------------------------------------------------ bad input

@pytest.mark.parametrize("kwargs,arg", [
    (dict(blocksize=48), "blocksize"), (dict(blocksize=8), "blocksize"), (dict(blocksize="col"), "blocksize"),
    (dict(blocksize=96.0), "blocksize"), (dict(blocksize="row", scale_format="e8m0"), "scale_format"),
    (dict(affine="absmax"), "affine"), (dict(affine="minmax", scale_format="e4m4"), "scale_format"),
    (dict(affine="mse", codebook=[-1.0, -0.5, 0.0, 0.5, 1.0, 1.5, 2.0, 3.0], k=3), "codebook"),
])
def test_bad_group_and_affine_arguments_name_the_argument(kwargs, arg):
    with pytest.raises(QuantInputError, match=rf"^{arg}:"):
        K.quantize_kbit(torch.randn(4, 64), **kwargs)


def test_bad_affine_state_names_the_field():
    p, st = K.quantize_kbit(torch.randn(256), 3, affine="minmax")
    st.zeros = st.zeros[:-1]
    with pytest.raises(QuantInputError, match=r"^state\.zeros:"):
        K.dequantize_kbit(p, st)
