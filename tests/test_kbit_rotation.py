"""k-bit family (issue 19): the randomized Hadamard rotation (workbench/hadamard.py) -- orthogonal, its
inverse undoes it, the fast transform is the Walsh-Hadamard matrix -- and quantize_kbit(rotate=...): round trip
shape and dtype, the same codes on every CPU backend, less error on outlier-heavy data, bad input."""
from __future__ import annotations

import math

import pytest
import torch

from workbench import hadamard as H
from workbench import kbit as K
from workbench.backends import status
from workbench.validation import QuantInputError

CPU_BACKENDS = [b for b in ("reference", "numba_cpu", "cython_cpu") if status(b)[0]]


def _sylvester(R: int) -> torch.Tensor:
    h = torch.ones(1, 1, dtype=torch.float64)
    while h.shape[0] < R:
        h = torch.cat([torch.cat([h, h], 1), torch.cat([h, -h], 1)], 0)
    return h


def _heavy(n: int, seed: int) -> torch.Tensor:
    """Student-t with 2 degrees of freedom: rare, huge outliers."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, generator=g) / torch.randn(2, n, generator=g).pow(2).mean(dim=0).sqrt()


@pytest.mark.parametrize("R", [32, 64, 128, 4096])
def test_fwht_is_the_walsh_hadamard_matrix(R):
    x = torch.randn(3, R, dtype=torch.float64)
    assert torch.allclose(H.fwht(x), x @ _sylvester(R).T, rtol=0, atol=1e-9 * R)


@pytest.mark.parametrize("R", [32, 256, 1024])
def test_rotation_is_orthogonal(R):
    M = H.rotate(torch.eye(R).reshape(-1), R, seed=3).view(R, R).double()     # row i = the image of e_i
    assert torch.allclose(M @ M.T, torch.eye(R, dtype=torch.float64), atol=2e-6)
    x = torch.randn(R * 5)
    assert math.isclose(float(H.rotate(x, R, 3).norm()), float(x.norm()), rel_tol=1e-5)


@pytest.mark.parametrize("n,R", [(4096, 64), (1000, 128), (33, 32), (5000, 4096)])
def test_unrotate_undoes_rotate(n, R):
    x = torch.randn(n) * 10
    y = H.rotate(x, R, seed=11)
    assert y.numel() == H.padded_size(n, R) and y.numel() % R == 0
    back = H.unrotate(y, R, 11, n)
    assert back.shape == (n,) and torch.allclose(back, x, rtol=0, atol=1e-5 * float(x.abs().max()))
    assert not torch.allclose(H.unrotate(y, R, 12, n), x, atol=1e-2)        # the seed matters


def test_rotation_spreads_an_outlier_over_its_block():
    x = torch.zeros(256)
    x[5] = 16.0
    y = H.rotate(x, 256, seed=0)
    assert torch.allclose(y.abs(), torch.full_like(y, 1.0))                 # 16 / sqrt(256) everywhere


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_quantize_with_rotation_round_trips_shape_dtype_and_state(dtype):
    W = torch.randn(10, 100).to(dtype)                                       # 1000 elements: padded to 1024
    p, st = K.quantize_kbit(W, 8, blocksize=32, scale_format="fp32", rotate=256, rotate_seed=5)
    assert st.rotate == 256 and st.rotate_seed == 5 and st.n_coded == 1024 and st.scales.numel() == 32
    out = K.dequantize_kbit(p, st)
    assert out.shape == W.shape and out.dtype == dtype
    tol = 0.05 if dtype == torch.float32 else 0.08                           # 8 bits: close to W
    assert float((out.float() - W.float()).abs().max()) < tol * float(W.float().abs().max())


def test_rotated_codes_equal_on_every_cpu_backend():
    x = _heavy(5000, 1)
    ref = None
    for backend in CPU_BACKENDS:
        for affine in (None, "minmax"):
            p, st = K.quantize_kbit(x, 3, blocksize=64, scale_format="fp16", affine=affine, rotate=128,
                                    backend=backend)
            got = (p, st.scales, K.dequantize_kbit(p, st, backend=backend))
            if backend == "reference":
                ref = ref or {}
                ref[affine] = got
            else:
                assert all(torch.equal(a, b) for a, b in zip(got, ref[affine]))


@pytest.mark.parametrize("k", [2, 3, 4])
@pytest.mark.parametrize("affine", [None, "minmax"])
def test_rotation_reduces_error_on_outlier_heavy_data(k, affine):
    x = _heavy(1 << 15, seed=k)
    err = {}
    for R in (None, 64):
        p, st = K.quantize_kbit(x, k, blocksize=64, scale_format="fp16", affine=affine, rotate=R)
        err[R] = float((K.dequantize_kbit(p, st) - x).pow(2).mean())
    assert err[64] < 0.9 * err[None], err


@pytest.mark.parametrize("kwargs,arg", [
    (dict(rotate=48), "rotate"), (dict(rotate=16), "rotate"), (dict(rotate=8192), "rotate"),
    (dict(rotate=True), "rotate"), (dict(rotate="64"), "rotate"),
    (dict(rotate=64, rotate_seed=-1), "rotate_seed"), (dict(rotate=64, rotate_seed=1.5), "rotate_seed"),
])
def test_bad_rotation_arguments_name_the_argument(kwargs, arg):
    with pytest.raises(QuantInputError, match=rf"^{arg}:"):
        K.quantize_kbit(torch.randn(256), 3, **kwargs)


def test_bad_rotation_state_names_the_field():
    p, st = K.quantize_kbit(torch.randn(256), 3, rotate=64)
    st.rotate = 100
    with pytest.raises(QuantInputError, match=r"^state\.rotate:"):
        K.dequantize_kbit(p, st)
    p, st = K.quantize_kbit(torch.randn(300), 3, rotate=128)      # codes cover 384 elements
    st.rotate = 64                                                 # a valid size whose padding (320) differs
    with pytest.raises(QuantInputError, match=r"^state\.scales: expected 10 values"):
        K.dequantize_kbit(p, st)
