"""The CUDA k-bit quantizers' search (cuda_src/kbit.cu: kk_code) on the CPU.

* numba_kernels/cell_plan.py:kbit_plan, the numpy twin of the kernels' table lookup, gives the spec's code
  (argmin fl(|s - c|), first index on ties) for normal-float, uniform, FP4 (E2M1, unnormalised), duplicated and
  random codebooks of K = 2..8, on every threshold and codebook value with their float32 neighbours, +-0, tiny
  and huge magnitudes, and values past the table's range; a codebook too dense for a table gets none.
* The kernels' division (per-block reciprocal, two FMA corrections) is the IEEE quotient, checked in exact
  rational arithmetic on adversarial pairs (divisors with all-ones mantissas, quotients near 1 and near the
  binade edges)."""
from fractions import Fraction

import numpy as np
import pytest

from numba_kernels.cell_plan import (FINE_MAX, KBIT_TINY, LANE_BYTES, _from_order_key, _order_key, kbit_lane_copies,
                                     kbit_lane_lookup, kbit_lane_table, kbit_lookup, kbit_nearest, kbit_plan)
from workbench import codebooks as cbs

E2M1 = sorted({v * s for v in (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0) for s in (1, -1)}) + [-0.0]


def _codebooks():
    rng = np.random.default_rng(7)
    out = {"e2m1": np.array(E2M1, np.float32), "sym-no-zero": np.array([-1, -0.3, 0.3, 1], np.float32)}
    for k in range(2, 9):
        out[f"nf{k}"] = cbs.create_normal_float_codebook(k).numpy()
        out[f"uniform{k}"] = np.linspace(-1, 1, 2 ** k).astype(np.float32)
        r = np.sort(rng.uniform(-1, 1, 2 ** k).astype(np.float32))
        r[2] = r[1]                                           # a duplicate: the lower index wins
        out[f"random{k}"] = r
    return out


CODEBOOKS = _codebooks()


def _probe_values(c, plan, rng):
    e, *_, safe = plan
    b = e[:, 0].view(np.float32)
    b = b[np.isfinite(b)]
    big = float(np.abs(c).max())
    pts = np.concatenate([b, -b, c, [0.0, -0.0, KBIT_TINY, -KBIT_TINY, 1e-30, 3e38, -3e38],
                          safe * np.float32([1, -1, 0.5]), rng.standard_normal(4000) * big,
                          rng.standard_normal(1000) * 4 * big]).astype(np.float32)
    return _from_order_key((_order_key(pts)[:, None] + np.arange(-4, 5)[None, :]).ravel())


@pytest.mark.parametrize("name", sorted(CODEBOOKS))
def test_kbit_table_gives_the_spec_code(name):
    c = CODEBOOKS[name]
    plan = kbit_plan(c)
    if plan is None:
        assert name.startswith("random"), f"{name}: no table"   # random draws may be too dense; the rest never
        return
    assert len(plan[0]) <= FINE_MAX and plan[4] >= 2 * np.abs(c).max()   # decoded scales: s up to ~2 max|c|
    s = _probe_values(c, plan, np.random.default_rng(len(c)))
    s = s[np.isfinite(s)]
    np.testing.assert_array_equal(kbit_lookup(plan, s, c), kbit_nearest(s, c))


@pytest.mark.parametrize("name", sorted(CODEBOOKS))
def test_kbit_lane_table_gives_the_spec_code(name):
    """The lane quantizer's table (one-sided clamp, code below + the sign of bound - s) below its top, where the
    kernel uses it, on every cell edge too; its top covers the quotients of decoded scales (up to 2 max|c|) or
    reaches the plan's safe bound. A repeated value inside the codebook (codes that skip an index) gets none."""
    c = CODEBOOKS[name]
    lane = kbit_lane_table(kbit_plan(c))
    if lane is None:
        assert name.startswith("random"), f"{name}: no lane table"
        return
    t, sh, kbase, top = lane
    s = _probe_values(c, kbit_plan(c), np.random.default_rng(len(c) + 1))
    edges = (np.arange(kbase, top >> sh + 1) << sh).astype(np.uint32).view(np.float32)   # every cell edge
    s = np.concatenate([s, _from_order_key((_order_key(np.concatenate([edges, -edges]))[:, None]
                                            + np.arange(-2, 3)[None, :]).ravel())])
    s = s[np.isfinite(s) & ((np.abs(s).view(np.uint32)) < top)]
    np.testing.assert_array_equal(kbit_lane_lookup(lane, s), kbit_nearest(s, c))
    assert np.uint32(top).view(np.float32) >= min(2 * np.abs(c).max(), kbit_plan(c)[4])


@pytest.mark.parametrize("k", range(2, 9))
def test_kbit_lane_copies_interleave_the_lane_table(k):
    """The Numba lane quantizer's staged table: entry i of copy c at i * rep + c, each (bound bits | code below
    << 32), as many copies (16, 8, ..) as LANE_BYTES holds (the kernel's static shared array)."""
    lane = kbit_lane_table(kbit_plan(cbs.create_normal_float_codebook(k).numpy()))
    words, rep = kbit_lane_copies(lane)
    t = lane[0].astype(np.uint64)
    assert words.dtype == np.uint64 and words.nbytes <= LANE_BYTES
    assert rep == 16 or words.nbytes * 2 > LANE_BYTES
    for c in range(rep):
        np.testing.assert_array_equal(words[c::rep], t[:, 0] | (t[:, 1] << np.uint64(32)))
    assert kbit_lane_copies(lane, max_bytes=len(t) * 8 - 8) is None          # not even one copy fits


def test_too_dense_codebook_has_no_table():
    c = np.sort(np.concatenate([np.linspace(-1, 1, 14), [0.5 + 1e-7, 0.5 + 2e-7]])).astype(np.float32)
    assert kbit_plan(c) is None
    assert kbit_plan(np.zeros(4, np.float32)) is None


def _f(x):
    return Fraction(float(x))


def _rn32(q: Fraction) -> np.float32:
    """Round a rational to the nearest float32, ties to even (normal range)."""
    f = np.float32(float(q))                      # within one float32 ulp of q: pick among the neighbours
    cands = [np.nextafter(f, np.float32(-np.inf)), f, np.nextafter(f, np.float32(np.inf))]
    d = [abs(_f(v) - q) for v in cands]
    best = min(d)
    ties = [v for v, dv in zip(cands, d) if dv == best]
    return min(ties, key=lambda v: int(np.float32(v).view(np.uint32)) & 1)


def _kernel_quotient(x, q):
    """cuda_src/kbit.cu:kk_code's division with exact FMAs: r = RN(1/q), s0 = RN(x r), two corrections."""
    r = _rn32(1 / _f(q))
    s = _rn32(_f(x) * _f(r))
    for _ in range(2):
        e = _rn32(_f(x) - _f(s) * _f(q))
        s = _rn32(_f(s) + _f(e) * _f(r))
    return s


def _kernel_quotient1(x, q):
    """cuda_src/kbit.cu:kk_quotient1: the same with one correction."""
    r = _rn32(1 / _f(q))
    s = _rn32(_f(x) * _f(r))
    return _rn32(_f(s) + _f(_rn32(_f(x) - _f(s) * _f(q))) * _f(r))


def test_one_correction_is_the_ieee_quotient_of_16_bit_values():
    """The lane kernels' division for 16-bit input and a divisor of at most 11 significant bits (KK_SHORT_Q): every
    pair of bf16 significands, with quotients in both binades of a power of two (a scale by 2^k changes nothing
    but the exponent), and fp16 significands on 3000 random pairs plus the all-ones ones."""
    for mq in range(128, 256):
        for mx in range(128, 256):
            q = np.float32(mq / 128)
            for x in (np.float32(mx / 128), np.float32(mx / 256)):
                assert _kernel_quotient1(x, q) == x / q, (x, q)
    rng = np.random.default_rng(5)
    pairs = [(2047, 2047), (2047, 1024), (1024, 2047), (2046, 2047)]
    pairs += [tuple(p) for p in rng.integers(1024, 2048, (3000, 2))]
    for mx, mq in pairs:
        q = np.float32(mq / 1024)
        for x in (np.float32(mx / 1024), np.float32(mx / 2048)):
            assert _kernel_quotient1(x, q) == x / q, (x, q)


def test_kernel_division_is_the_ieee_quotient():
    rng = np.random.default_rng(3)
    ones = np.float32(1.0).view(np.uint32) | np.uint32(0x7FFFFF)
    edges = [np.uint32(ones).view(np.float32), 1.0, 3.0, 1e-8, np.float32(2.0 ** -59), np.float32(2.0 ** 99)]
    qs = np.concatenate([rng.uniform(1e-8, 1e3, 60), edges]).astype(np.float32)
    n = 0
    for q in qs:
        xs = np.concatenate([q * rng.uniform(-1, 1, 40), q * np.float32([1, -1, 0.5, 0.75, 1 - 2 ** -24]),
                             np.nextafter(q, np.float32(0)) * np.float32([1, -1])]).astype(np.float32)
        for x in xs:
            if x == 0 or abs(x / q) < KBIT_TINY:
                continue
            assert _kernel_quotient(x, q) == np.float32(x) / np.float32(q), (x, q)
            n += 1
    assert n > 3000


@pytest.mark.parametrize("backend", ["numba_cpu", "cython_cpu"])
def test_cpu_kernels_table_and_exact_paths_equal_the_reference(backend):
    """The CPU kernels through the table, and the elements that leave it: |s| >= safe (fp16 scales saturate at
    65504, so a block of 1e30 gives s ~ 1.5e25, where the spec's distances all round equal and the lowest index
    wins), whole-block and tail groups, and a codebook too dense for a table."""
    import torch
    from workbench import kbit as K
    from workbench.backends import status
    if not status(backend)[0]:
        pytest.skip(f"{backend} not available")
    g = torch.Generator().manual_seed(11)
    n = 32 * 46 + 13
    A = torch.randn(n, generator=g) * 4 ** torch.randn(n, generator=g)
    A[64:96] = 1e30 * torch.randn(32, generator=g)
    A[96:128] = 1e-30
    dense = np.sort(np.concatenate([np.linspace(-1, 1, 254), [0.5 + 1e-7, 0.5 + 2e-7]])).astype(np.float32)
    assert kbit_plan(dense) is None
    for k, cb in ((4, None), (8, torch.from_numpy(dense))):
        for fmt, against in (("fp16", "decoded"), ("e4m4", "exact"), ("fp32", "exact")):
            for x, bs in ((A, 32), (A, 16), (A[:1440].reshape(5, 288), 48)):   # 48: a group dividing the row
                for layout in ("bitplane", "dense"):
                    pr, sr = K.quantize_kbit(x, k, cb, bs, layout, fmt, against, backend="reference")
                    pc, sc = K.quantize_kbit(x, k, cb, bs, layout, fmt, against, backend=backend)
                    assert torch.equal(pc, pr), (k, fmt, bs, layout)
