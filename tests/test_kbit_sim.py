"""Numba CUDA k-bit kernels under the CUDA simulator (CPU, small inputs): bit for bit vs the reference.

Same pattern as test_int8_sim.py: the simulator must be chosen before numba.cuda is first imported; if
this process already holds the real numba.cuda, the file re-runs itself in a subprocess. The simulator
runs every lane as a Python thread and every warp collective as a barrier, so inputs stay small.
"""
import pytest
import torch

import _cudasim  # first: selects the simulator before numba.cuda is imported
from _cudasim import sim
from _poison import bits, poison_empty

from workbench.backends.reference import kbit as R

test_in_subprocess = _cudasim.subprocess_test(__file__)

OUT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
CASES = [  # (k, dtype, n, blocksize, scale_format, codes_against): odd n, partial last blocks
    (2, torch.float32, 301, 32, "e4m4", "exact"), (3, torch.bfloat16, 213, 16, "e4m3", "decoded"),
    (4, torch.float16, 389, 96, "e8m0", "exact"), (5, torch.float32, 257, 128, "fp16", "decoded"),
    (6, torch.bfloat16, 301, 32, "bf16", "exact"), (7, torch.float32, 150, 64, "e4m3", "exact"),
    (8, torch.float16, 203, 128, "fp32", "exact"), (3, torch.float32, 1, 16, "e8m0", "decoded"),
    (6, torch.bfloat16, 1100, 512, "fp16", "exact"),       # above 256: the fused kernel's generic loop
    # blocksizes neither 16 nor a multiple of 32: the two-kernel path (absmax_scales, then codes)
    (4, torch.bfloat16, 205, 40, "e4m4", "decoded"), (5, torch.float16, 171, 24, "e4m3", "exact"),
]


@pytest.fixture(scope="module")
def N():
    _cudasim.simulator_backend()
    from workbench.backends.numba_cuda import kbit
    return kbit


@pytest.fixture
def poisoned(monkeypatch, N):
    poison_empty(monkeypatch)


_bits = bits


def _check(N, A, cb, k, bs, fmt, against, layouts=R.LAYOUTS):
    n = A.numel()
    for layout in layouts:
        pr, sr, tr, fr = R.quantize_kbit(A, cb, k, bs, layout, fmt, against)
        pn, sn, tn, fn = N.quantize_kbit(A, cb, k, bs, layout, fmt, against)
        what = (k, A.dtype, n, bs, fmt, against, layout)
        assert pn.dtype == torch.int32 and torch.equal(pn, pr), what
        assert sn.dtype == sr.dtype and torch.equal(_bits(sn), _bits(sr)), what
        assert torch.equal(tn, tr), what
        assert fn.dtype == torch.int32 and fn.tolist() == [0] == fr.tolist(), what
        for od in OUT_DTYPES:
            want = R.dequantize_kbit(pr, sr, tr, cb, k, bs, n, layout, fmt, od)
            got = N.dequantize_kbit(pn, sn, tn, cb, k, bs, n, layout, fmt, od)
            assert got.dtype == od and torch.equal(_bits(got), _bits(want)), (what, od)


@sim
@pytest.mark.parametrize("k,dtype,n,blocksize,fmt,against", CASES)
def test_kbit_bit_exact_with_reference(N, poisoned, k, dtype, n, blocksize, fmt, against):
    g = torch.Generator().manual_seed(1000 * k + n)
    A = torch.randn(n, generator=g) * 4 ** torch.randn(n, generator=g)
    A[blocksize: 2 * blocksize] = 0                       # an all-zero block: q = 1e-8 (e8m0: 2**-127)
    A[2 * blocksize: 3 * blocksize] *= 1e-30              # scales that underflow or go subnormal
    cb = torch.sort(torch.rand(2 ** k, generator=g) * 2 - 1).values
    _check(N, A.to(dtype), cb, k, blocksize, fmt, against)


@sim
def test_ties_and_duplicate_codebook_values(N, poisoned):
    """s exactly on entries and midpoints, and a duplicated entry: the lowest index wins, as argmin."""
    cb = torch.tensor([-1.0, -0.5, -0.5, 0.0, 0.25, 0.25, 0.5, 1.0])
    vals = torch.tensor([-1.0, -0.75, -0.5, -0.25, 0.0, 0.125, 0.25, 0.375, 0.5, 0.75, 1.0, -0.0, 0.9, -0.6])
    A = vals.repeat(12)[:161]
    _check(N, A, cb, 3, 16, "fp32", "exact")
    _check(N, A.to(torch.bfloat16), cb, 3, 96, "e4m4", "decoded", layouts=("dense",))
    _check(N, A, cb, 3, 22, "fp32", "exact")                  # blocks end inside 4-element quads


@sim
@pytest.mark.filterwarnings("ignore::RuntimeWarning")   # NumPy on NaN / Inf arithmetic in the simulator
def test_nonfinite_flag(N, poisoned):
    cb = torch.linspace(-1, 1, 8)
    for bad, dtype, pos, fmt in ((float("nan"), torch.float32, 0, "e4m4"), (float("inf"), torch.bfloat16, 77, "e4m3"),
                                 (float("-inf"), torch.float16, 40, "fp16"), (float("nan"), torch.float16, 89, "e8m0")):
        A = torch.randn(90)
        A[pos] = bad
        fl = N.quantize_kbit(A.to(dtype), cb, 3, 32, "bitplane", fmt, "exact")[3]
        assert fl.dtype == torch.int32 and fl.tolist() == [1], (bad, dtype, pos)
    zeros = torch.zeros(40)
    packed, scales, ts, fl = N.quantize_kbit(zeros, cb, 3, 16, "dense", "e4m3", "exact")
    assert fl.tolist() == [0] and ts.tolist() == [1.0]                       # all-zero tensor: t = 1
    assert torch.equal(packed, R.quantize_kbit(zeros, cb, 3, 16, "dense", "e4m3", "exact")[0])


@sim
@pytest.mark.filterwarnings("ignore::RuntimeWarning")   # NumPy on NaN / Inf arithmetic in the simulator
@pytest.mark.parametrize("k,layout,blocksize", [(3, "bitplane", 16), (6, "bitplane", 64), (8, "bitplane", 32),
                                                (5, "dense", 16), (7, "dense", 32)])
def test_dequantize_whole_ctas_and_tail(N, poisoned, k, layout, blocksize):
    """The group dequantizer (blocksize 16 or a multiple of 32) over two whole CTAs (their stores go through the
    warps' shared stage) and a partial third: random words, fp32 scales with a zero, NaN, +-Inf and huge values
    (a NaN output, and Inf * code 0), every output dtype. NaN outputs: NaN in both, other bits equal."""
    from numba_kernels.cuda.kbit import THREADS
    n = 2 * THREADS * 32 + 45
    g = torch.Generator().manual_seed(31 * k + blocksize)
    words = torch.randint(-2 ** 31, 2 ** 31, (R.packed_words(n, k, layout),), generator=g, dtype=torch.int64)
    packed = words.to(torch.int32)
    scales = torch.rand(R.nblocks(n, blocksize), generator=g) * 3
    scales[[1, 5, 9, 12, -1]] = torch.tensor([0.0, float("nan"), float("inf"), -float("inf"), 3e38])
    cb = torch.sort(torch.rand(2 ** k, generator=g) * 2 - 1).values
    cb[0] = 0.0
    for od in OUT_DTYPES:
        want = R.dequantize_kbit(packed, scales, None, cb, k, blocksize, n, layout, "fp32", od)
        got = N.dequantize_kbit(packed, scales, None, cb, k, blocksize, n, layout, "fp32", od)
        nan = torch.isnan(want)
        assert nan.any() and torch.equal(torch.isnan(got), nan), (od, layout)
        assert torch.equal(_bits(got)[~nan], _bits(want)[~nan]), (od, layout)


@sim
@pytest.mark.filterwarnings("ignore::RuntimeWarning")   # NumPy's uint32 products wrap in the simulator
@pytest.mark.parametrize("k,dtype,blocksize,fmt", [(2, torch.bfloat16, 32, "e4m4"), (3, torch.float16, 16, "bf16"),
                                                   (4, torch.float32, 32, "fp32"), (5, torch.bfloat16, 16, "e8m0"),
                                                   (6, torch.float16, 32, "e4m3"), (7, torch.bfloat16, 32, "fp16"),
                                                   (8, torch.float32, 16, "e4m4")])
def test_lane_quantizer_table_and_exact_groups(N, poisoned, k, dtype, blocksize, fmt):
    """The lane quantizer (blocksizes 16, 32) with a codebook its table accepts (normal-float), over whole groups
    that code from the table and groups that take the exact path: an all-zero block, blocks scaled to 1e-30
    (divisors below 2^-60), a block with a huge outlier next to tiny values, the partial last group. Both
    layouts; codes against the exact scale (even K) or the decoded one (odd K)."""
    from workbench.codebook_tables import kbit_lane_search_table
    from workbench.codebooks import create_normal_float_codebook
    cb = create_normal_float_codebook(k)
    assert kbit_lane_search_table(cb, torch.device("cpu"))[1] > 0, k   # the table path is exercised
    from numba_kernels.cuda.kbit import THREADS
    n = 32 * THREADS + 109                     # the simulator's one CTA goes round its loop: 3 whole groups, 13 left
    g = torch.Generator().manual_seed(7 * k + blocksize)
    A = torch.randn(n, generator=g) * 3 ** torch.randn(n, generator=g)
    A[64: 96] = 0
    A[96: 160] *= 1e-30
    A[200] = 6e4
    A[-40:] *= 1e-30
    _check(N, A.to(dtype), cb, k, blocksize, fmt, "decoded" if k % 2 else "exact")


@sim
@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_lane_quantizer_unaligned_view(N, poisoned):
    """A view one element into its storage (not 16-byte aligned: the lane kernel reads whole groups as uint64
    words) quantizes as a fresh tensor does."""
    from workbench.codebooks import create_normal_float_codebook
    full = torch.randn(3 * 32 + 12, generator=torch.Generator().manual_seed(5))
    for dtype in (torch.bfloat16, torch.float32):
        x = full.to(dtype)[1:]
        assert x.data_ptr() % 16
        _check(N, x, create_normal_float_codebook(4), 4, 32, "e4m4", "exact", layouts=("bitplane",))
