"""Numba CUDA LLM.int8() kernels under the CUDA simulator (CPU, small inputs): exact vs the reference.

Same pattern as test_numba_cuda_sim.py: the simulator must be chosen before numba.cuda is first
imported; if this process already holds the real numba.cuda, the file re-runs itself in a subprocess.
"""
import pytest
import torch

import _cudasim  # first: selects the simulator before numba.cuda is imported
from _cudasim import sim

from workbench.backends.reference import int8 as R

DTYPES = (torch.float16, torch.bfloat16, torch.float32)

test_in_subprocess = _cudasim.subprocess_test(__file__)


@pytest.fixture(scope="module")
def N():
    _cudasim.simulator_backend()
    from workbench.backends.numba_cuda import int8
    return int8


def poison_empty(monkeypatch, module):
    """Outputs the backend allocates start as garbage, so unwritten elements show."""
    real = torch.empty
    fills = {torch.int8: -77, torch.uint8: 0xAB, torch.int32: 123456789, torch.int64: -1}

    def empty(*a, **k):
        t = real(*a, **k)
        return t.fill_(fills.get(t.dtype, float("nan")))

    monkeypatch.setattr(module.torch, "empty", empty)


def planted(rng, rows, cols, dtype, scale=2.0):
    """Gaussian activations with a few outlier columns, an all-zero row, an all-outlier row and
    values at the threshold's dtype rounding."""
    a = torch.randn(rows, cols, generator=rng) * scale
    hot = torch.randint(0, cols, (max(1, cols // 16),), generator=rng)
    a[:, hot] *= 8
    a[0] = 0
    if rows > 2:
        a[1] = 7.5
    a = a.to(dtype)
    a[-1, -1] = 6.0
    return a


def _eq(x, y, what):
    assert (x is None) == (y is None), what
    if x is not None:
        assert x.dtype == y.dtype and x.shape == y.shape, what
        assert torch.equal(x, y), f"{what}: {int((x != y).sum())} differ"


@sim
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("threshold", (0.0, 6.0))
def test_vectorwise_and_double_quant_exact(N, rng, monkeypatch, dtype, threshold):
    poison_empty(monkeypatch, N)
    rows, cols = int(torch.randint(2, 7, (1,), generator=rng)), int(torch.randint(9, 70, (1,), generator=rng))
    A = planted(rng, rows, cols, dtype)
    want = R.int8_double_quant(A, threshold)
    got = N.int8_double_quant(A, threshold)
    for name, x, y in zip(("codes", "col_codes", "row_stats", "col_stats", "outlier_cols"), want, got):
        _eq(x, y, f"{name} {dtype} thr={threshold} shape={tuple(A.shape)}")
    _eq(R.int8_vectorwise_quant(A, threshold)[0], N.int8_vectorwise_quant(A, threshold)[0], "codes")
    _eq(R.int8_outlier_cols(A, threshold), N.int8_outlier_cols(A, threshold), "outlier_cols")


@sim
def test_single_row_and_threshold_rounding(N):
    # 6.099 rounds to fp16 6.0977 and a value of exactly 6.0977 is an outlier (torch compares in fp16)
    A = torch.tensor([[6.09765625, 1.0, -2.0, 0.0]], dtype=torch.float16)
    for thr in (6.099, 6.0977, 7.0):
        _eq(R.int8_vectorwise_quant(A, thr)[0], N.int8_vectorwise_quant(A, thr)[0], f"thr={thr}")
        _eq(R.int8_vectorwise_quant(A, thr)[2], N.int8_vectorwise_quant(A, thr)[2], f"thr={thr}")
    assert R.int8_vectorwise_quant(A, 6.099)[2].tolist() == [0]


@sim
@pytest.mark.parametrize("dtype", (torch.float16, torch.bfloat16, torch.float32))
def test_matmul_dequant_exact(N, rng, monkeypatch, dtype):
    poison_empty(monkeypatch, N)
    m, k, n = (int(v) for v in torch.randint(3, 23, (3,), generator=rng))
    CA, SA, _ = R.int8_vectorwise_quant(torch.randn(m, k, generator=rng), 0.0)
    CB, SB, _ = R.int8_vectorwise_quant(torch.randn(n, k, generator=rng), 0.0)
    bias = torch.randn(n, generator=rng).to(dtype)
    _eq(R.int8_linear_matmul(CA, CB), N.int8_linear_matmul(CA, CB), "int32 matmul")
    C = R.int8_linear_matmul(CA, CB)
    for b in (None, bias):
        _eq(R.int8_mm_dequant(C, SA, SB, b, dtype), N.int8_mm_dequant(C, SA, SB, b, dtype), "mm_dequant")
        _eq(R.int8_scaled_mm(CA, CB, SA, SB, b, dtype), N.int8_scaled_mm(CA, CB, SA, SB, b, dtype), "scaled_mm")
    _eq(R.int8_vectorwise_dequant(CB, SB), N.int8_vectorwise_dequant(CB, SB), "vectorwise dequant")


@sim
def test_mixed_decomposition_matches_reference(N, rng):
    A = planted(rng, 6, 40, torch.float32)
    W = torch.randn(9, 40, generator=rng)
    CA, SA, cols = R.int8_vectorwise_quant(A, 6.0)
    CB, SB, _ = R.int8_vectorwise_quant(W, 0.0)
    assert cols.numel() > 0
    want, subA_w = R.int8_mixed_scaled_mm(A, CA, CB, SA, SB, cols, None)
    got, subA = N.int8_mixed_scaled_mm(A, CA, CB, SA, SB, cols, None)
    _eq(subA_w, subA, "subA")
    # int8 part is bit-exact; the fp32 addmm of the outlier columns is the same torch call
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-5)


@sim
@pytest.mark.parametrize("dtype", (torch.float16, torch.bfloat16))
def test_halfway_rows_and_tiny_absmax(N, rng, dtype):
    """Rows [m, m/2, -m/2]: the scale's rounding decides 63.5 -> 63 or 64, so the reciprocal-then-
    multiply rule (torch's 127.0 / row_stats) and an IEEE division 127/m give different codes on some
    rows. A bf16 row with a subnormal absmax makes 1/absmax overflow: codes are 0 there."""
    for _ in range(4):   # 64 rows (the simulator's budget) leave the two rules equal in ~1 of 2000 draws: redraw
        m = (torch.rand(64, generator=rng) * 100 + 0.01).to(dtype)
        A = torch.stack([m, m / 2, -m / 2, m / 4], dim=1).to(dtype)
        if dtype == torch.bfloat16:
            A[0] = torch.tensor([1e-39, -5e-40, 0.0, 1e-39]).to(dtype)
        want = R.int8_vectorwise_quant(A, 0.0)
        ieee = torch.round(A.float() * (torch.tensor(127.0) / want[1]).unsqueeze(1))
        ieee = torch.where(torch.isfinite(ieee), ieee, torch.zeros(())).to(torch.int8)
        if not torch.equal(ieee, want[0]):
            break
    assert not torch.equal(ieee, want[0]), "data does not separate the two scale rules"
    got = N.int8_vectorwise_quant(A, 0.0)
    _eq(want[0], got[0], "codes")
    _eq(want[1], got[1], "row_stats")
    if dtype == torch.bfloat16:
        assert got[0][0].tolist() == [0, 0, 0, 0]
