"""k-bit family (issue 19): the reference against bitsandbytes' k-bit oracle (tests/kbit_oracle.py),
every CPU backend against the reference bit for bit, the scale formats, the layouts, bad input."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

import kbit_oracle as bnb
from workbench import codebooks as cbs
from workbench import kbit as K
from workbench.backends import status
from workbench.backends.reference import kbit as R
from workbench.validation import QuantInputError

CPU_BACKENDS = [b for b in ("reference", "numba_cpu", "cython_cpu") if status(b)[0]]
COMPILED = [b for b in CPU_BACKENDS if b != "reference"]
FLOATS = (torch.float32, torch.float16, torch.bfloat16)


def _bits(t: torch.Tensor) -> torch.Tensor:
    """Bit patterns, so NaN == NaN and -0 != +0 in comparisons."""
    return t.view({1: torch.uint8, 2: torch.int16, 4: torch.int32}[t.element_size()])


def _data(n: int, dtype, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, generator=g) * torch.exp(torch.randn(n, generator=g))   # blocks of varied scale
    if n > 64:
        x[32:64] = 0.0                    # an all-zero block
        x[64:96] *= 1e-5                  # e4m4 subnormal scales
    return x.clamp(-30, 30).to(dtype)     # e4m4's range (bitsandbytes' encoder is not saturating above 31)


# ------------------------------------------------------------------ bitsandbytes' oracle

@pytest.mark.parametrize("k", range(2, 9))
def test_normal_float_codebook_is_bitsandbytes(k):
    assert torch.equal(_bits(cbs.create_normal_float_codebook(k)), _bits(bnb.create_normal_float_codebook(k)))


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("k", [2, 3, 4, 5])
def test_codes_words_and_scales_equal_bitsandbytes_oracle(k, backend):
    cb = bnb.create_normal_float_codebook(k)
    for i, (n, dtype) in enumerate([(1, torch.float32), (33, torch.bfloat16), (1000, torch.float16),
                                    (2083, torch.float32)]):
        A = _data(n, dtype, seed=10 * k + i)
        idx, absmax = bnb.quantize_kbit_ref(A, cb)
        words = bnb.pack_kbit_ref(idx, k)
        p32, s32 = K.quantize_kbit(A, k, cb, scale_format="fp32", backend=backend)
        p44, s44 = K.quantize_kbit(A, k, cb, scale_format="e4m4", backend=backend)
        assert torch.equal(p32, words) and torch.equal(p44, words)                     # packed words
        assert torch.equal(R.unpack_bitplane(p32, k, n).to(torch.uint8), idx)           # codes
        assert torch.equal(bnb.unpack_kbit_ref(p32, k, n), idx)
        assert torch.equal(_bits(s32.scales), _bits(absmax))                            # fp32 scales
        assert torch.equal(s44.scales, bnb.encode_absmax_e4m4(absmax))                  # E4M4 bytes
        # dequantization: the oracle's product, rounded once
        for out_dtype in FLOATS:
            want = bnb.dequantize_kbit_ref(idx, absmax, cb, dtype=out_dtype)
            assert torch.equal(_bits(K.dequantize_kbit(p32, s32, dtype=out_dtype, backend=backend)), _bits(want))
            want44 = bnb.dequantize_kbit_ref(idx, bnb.decode_absmax_e4m4(s44.scales), cb, dtype=out_dtype)
            assert torch.equal(_bits(K.dequantize_kbit(p44, s44, dtype=out_dtype, backend=backend)), _bits(want44))


def test_tie_breaking_is_bitsandbytes_first_index():
    cb = bnb.create_normal_float_codebook(3)
    mids = ((cb[:-1] + cb[1:]) / 2).tolist()      # values on (float32) midpoints: ties go to the lower entry
    A = torch.tensor(([1.0] + mids + [-m for m in mids] + [0.0] * 17)[:32], dtype=torch.float32)
    idx, _ = bnb.quantize_kbit_ref(A, cb)
    for backend in CPU_BACKENDS:
        p, _ = K.quantize_kbit(A, 3, cb, scale_format="fp32", backend=backend)
        assert torch.equal(R.unpack_bitplane(p, 3, 32).to(torch.uint8), idx)


def test_e4m4_encoding_equals_bitsandbytes_and_saturates_above_its_range():
    # every code's value, the midpoints between neighbours (round half to even), and a log sweep
    grid = bnb.decode_absmax_e4m4(torch.arange(1, 256, dtype=torch.int32).to(torch.uint8))
    mids = (grid[:-1] + grid[1:]) / 2
    sweep = torch.logspace(-5.5, math.log10(31.4), 1500)
    vals = torch.cat([grid, mids, sweep, torch.tensor([0.0, 1e-38, 2.0 ** -10, 2.0 ** -14 * 15.5, 31.0])])
    A = torch.zeros(vals.numel() * 32)
    A[::32] = vals                                 # one block per value: absmax = the value
    for backend in CPU_BACKENDS:
        _, st = K.quantize_kbit(A, 2, scale_format="e4m4", backend=backend)
        assert torch.equal(st.scales, bnb.encode_absmax_e4m4(vals))
        assert torch.equal(R.decode_e4m4(st.scales), bnb.decode_absmax_e4m4(st.scales))
        # above 31: the workbench saturates to 0xFF (31.0); bitsandbytes' encoder mixes a clamped
        # exponent with the unclamped mantissa (100 -> 25.0), a documented deviation
        big = torch.zeros(64)
        big[0], big[32] = 31.9, 100.0
        _, st = K.quantize_kbit(big, 2, scale_format="e4m4", backend=backend)
        assert st.scales.tolist() == [0xFF, 0xFF]
        assert bnb.decode_absmax_e4m4(bnb.encode_absmax_e4m4(torch.tensor([100.0]))).item() == 25.0


# ------------------------------------------------------------------ every backend == the reference

CASES = [  # (k, dtype, n, blocksize, scale_format, codes_against)
    (2, torch.float32, 4099, 32, "e4m4", "decoded"), (3, torch.bfloat16, 1000, 16, "e4m3", "exact"),
    (4, torch.float16, 777, 32, "e8m0", "exact"), (5, torch.float32, 70, 64, "fp16", "decoded"),
    (6, torch.bfloat16, 4099, 4096, "bf16", "exact"), (7, torch.float32, 33, 16, "e4m3", "decoded"),
    (8, torch.float16, 3001, 128, "fp32", "exact"), (8, torch.float32, 1, 32, "e8m0", "exact"),
]


@pytest.mark.parametrize("backend", COMPILED)
@pytest.mark.parametrize("k,dtype,n,blocksize,fmt,against", CASES)
def test_compiled_backends_bit_exact_with_poisoned_outputs(monkeypatch, backend, k, dtype, n, blocksize, fmt, against):
    from workbench.backends import _cpu_kbit as NB

    def poisoned(m, dt):
        t = torch.empty(m, dtype=dt)
        _bits(t).fill_(-1)  # NaN / 0xFFFFFFFF: an element a kernel forgets to write shows up
        return t
    monkeypatch.setattr(NB, "_empty", poisoned)
    g = torch.Generator().manual_seed(k)
    A = (torch.randn(n, generator=g) * 4 ** torch.randn(n, generator=g)).to(dtype)
    cb = torch.sort(torch.rand(2 ** k, generator=g) * 2 - 1).values   # an arbitrary sorted codebook
    for layout in R.LAYOUTS:
        pr, sr = K.quantize_kbit(A, k, cb, blocksize, layout, fmt, against, backend="reference")
        pn, sn = K.quantize_kbit(A, k, cb, blocksize, layout, fmt, against, backend=backend)
        assert torch.equal(pn, pr), (layout, fmt)
        assert torch.equal(_bits(sn.scales), _bits(sr.scales)) and torch.equal(sn.tensor_scale, sr.tensor_scale)
        for out_dtype in FLOATS:
            want = K.dequantize_kbit(pr, sr, dtype=out_dtype, backend="reference")
            assert torch.equal(_bits(K.dequantize_kbit(pr, sr, dtype=out_dtype, backend=backend)), _bits(want))


def test_duplicate_entries_take_the_lower_index_on_every_backend():
    cb = cbs.kbit_e2m1_mx()                                  # -0 at index 7, +0 at index 8
    A = torch.tensor([1.0, 0.0, -0.0, 1e-30, -1e-30] + [0.01] * 27)
    for backend in CPU_BACKENDS:
        p, st = K.quantize_kbit(A, 4, cb, scale_format="e8m0", backend=backend)
        codes = R.unpack_bitplane(p, 4, 32)
        assert codes[1:5].tolist() == [7, 7, 7, 7]


# ------------------------------------------------------------------ layouts and formats

def test_layouts_known_bit_patterns():
    codes = torch.tensor(list(range(8)) * 4 + [5, 3])      # 34 codes, k = 3
    bp = R.pack_bitplane(codes, 3)
    assert bp.numel() == 6 and (bp[0].item() & 0xFFFFFFFF) == 0xAAAAAAAA            # bit 0 of 0..7 repeated
    assert bp[3].item() == 0b11 and bp[4].item() == 0b10 and bp[5].item() == 0b01   # tail: 5 = 101b, 3 = 011b
    dn = R.pack_dense(codes, 3)
    assert dn.numel() == math.ceil(34 * 3 / 32)
    stream = sum(int(c) << (3 * i) for i, c in enumerate(codes.tolist()))
    assert [(w & 0xFFFFFFFF) for w in dn.tolist()] == [(stream >> (32 * j)) & 0xFFFFFFFF for j in range(dn.numel())]
    for k in range(2, 9):
        c = torch.randint(0, 2 ** k, (1001,))
        assert torch.equal(R.unpack_dense(R.pack_dense(c, k), k, 1001), c)
        assert torch.equal(R.unpack_bitplane(R.pack_bitplane(c, k), k, 1001), c)


def test_mxfp4_is_the_ocp_rule_off_ties():
    """e8m0 + E2M1: byte = MX scale X = 2**(floor(log2 amax) - 2), element = nearest E2M1 of x / X (OCP MX)."""
    g = torch.Generator().manual_seed(3)
    A = torch.randn(32 * 64, generator=g) * 3
    p, st = K.quantize_kbit(A, 4, cbs.kbit_e2m1_mx(), scale_format="e8m0")
    x = A.double().view(-1, 32)
    X = 2.0 ** (torch.floor(torch.log2(x.abs().amax(1))) - 2)
    assert torch.equal(st.scales.double(), torch.log2(X) + 127)
    e2m1 = torch.tensor([0, 0.5, 1, 1.5, 2, 3, 4, 6], dtype=torch.float64)
    r = (x / X.view(-1, 1)).abs().clamp(max=6).reshape(-1, 1)
    d = (r - e2m1).abs()
    tie = (d.sort(dim=1).values[:, 1] - d.min(dim=1).values) == 0
    want = torch.sign(x.reshape(-1)) * e2m1[d.argmin(dim=1)] * X.repeat_interleave(32)
    got = K.dequantize_kbit(p, st).double()
    assert torch.equal(got[~tie], want[~tie]) and (~tie).sum() > 2000 - 50


def test_nvfp4_scales_are_e4m3_of_absmax_over_tensor_scale():
    A = torch.randn(16 * 40) * 5
    p, st = K.quantize_kbit(A, 4, cbs.kbit_e2m1_nv(), blocksize=16, scale_format="e4m3")
    amax = A.view(-1, 16).abs().amax(1)
    ts = amax.max() / 448
    assert st.tensor_scale.item() == ts.item()
    assert torch.equal(st.scales, (amax / ts).clamp(max=448).to(torch.float8_e4m3fn).view(torch.uint8))
    assert st.scales.max().item() == 0x7E   # the largest block scale is 448


@pytest.mark.parametrize("fmt,bs", [("fp16", 32), ("bf16", 32), ("e4m4", 32), ("e4m3", 16)])
def test_codes_against_decoded_scale_never_worse_for_the_stored_scale(fmt, bs):
    g = torch.Generator().manual_seed(5)
    A = torch.randn(4096, generator=g)
    errs = {}
    for against in K.CODES_AGAINST:
        p, st = K.quantize_kbit(A, 3, blocksize=bs, scale_format=fmt, codes_against=against)
        errs[against] = float((K.dequantize_kbit(p, st) - A).pow(2).mean())
        assert torch.equal(st.scales, K.quantize_kbit(A, 3, blocksize=bs, scale_format=fmt)[1].scales)
    assert errs["decoded"] <= errs["exact"] * 1.0001


def test_fake_shapes():
    cb = cbs.create_normal_float_codebook(3)
    with FakeTensorMode(allow_non_fake_inputs=True) as mode:
        fA = mode.from_tensor(torch.randn(1000, dtype=torch.bfloat16))
        for layout, words in (("bitplane", 32 * 3), ("dense", 94)):
            p, s, ts, flag = torch.ops.workbench.quantize_kbit(fA, cb, 3, 16, layout, "e4m3", "exact", "reference")
            assert p.shape == (words,) and p.dtype == torch.int32 and flag.shape == (1,) and flag.dtype == torch.int32
            assert s.shape == (63,) and s.dtype == torch.uint8 and ts.shape == (1,)
            out = torch.ops.workbench.dequantize_kbit(p, s, ts, cb, 3, 16, 1000, layout, "e4m3", torch.float16,
                                                      "reference")
            assert out.shape == (1000,) and out.dtype == torch.float16


# ------------------------------------------------------------------ bad input

@pytest.mark.parametrize("kwargs,arg", [
    (dict(k=1), "k"), (dict(k=9), "k"), (dict(k=3.0), "k"),
    (dict(k=3, codebook=torch.linspace(-1, 1, 7)), "codebook"),
    (dict(k=2, codebook=torch.tensor([0.5, -1.0, 0.2, 1.0])), "codebook"),
    (dict(k=2, codebook=[0.0, 0.0, 0.0, 0.0]), "codebook"),
    (dict(k=2, codebook=[float("nan"), 0.0, 0.1, 1.0]), "codebook"),
    (dict(blocksize=8), "blocksize"), (dict(blocksize=48), "blocksize"), (dict(blocksize=8192), "blocksize"),
    (dict(scale_format="e8m0", blocksize=64), "scale_format"), (dict(scale_format="e4m3", blocksize=32), "scale_format"),
    (dict(scale_format="int8"), "scale_format"), (dict(layout="rows"), "layout"),
    (dict(codes_against="both"), "codes_against"),
])
def test_bad_arguments_name_the_argument(kwargs, arg):
    with pytest.raises(QuantInputError, match=rf"^{arg}:"):
        K.quantize_kbit(torch.randn(64), **kwargs)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_nonfinite_input_raises_on_every_backend_from_the_kernel_flag(bad):
    """The quantize kernels flag NaN/Inf in their absmax pass; the call raises, names A, and leaves A as it was."""
    A = torch.randn(2, 288)
    A[1, 257] = bad
    before = A.clone()
    for backend in CPU_BACKENDS:
        for kw in (dict(), dict(scale_format="e4m3", blocksize=16), dict(blocksize=96), dict(rotate=64)):
            with pytest.raises(QuantInputError, match="^A:.*non-finite"):
                K.quantize_kbit(A, 3, backend=backend, **kw)
            assert torch.equal(_bits(A), _bits(before))
        flag = torch.ops.workbench.quantize_kbit(torch.randn(100), cbs.create_normal_float_codebook(3), 3, 32,
                                                 "dense", "e4m4", "exact", backend)[3]
        assert flag.tolist() == [0]


def test_bad_tensors_and_states():
    with pytest.raises(QuantInputError, match="^A:"):
        K.quantize_kbit(torch.tensor([1.0, float("nan")]), 3)
    with pytest.raises(QuantInputError, match="^A:"):
        K.quantize_kbit(torch.arange(4), 3)
    p, st = K.quantize_kbit(torch.randn(100), 3, backend="reference")
    with pytest.raises(QuantInputError, match="^packed:"):
        K.dequantize_kbit(p[:-1], st)
    with pytest.raises(QuantInputError, match="^state"):
        K.dequantize_kbit(p, None)


def test_a_state_changed_after_its_first_dequantize_is_checked_again():
    """dequantize_kbit remembers a state's validation (a weight dequantized every forward pass is checked once);
    a field reassigned or a table edited in place afterwards is seen on the next call."""
    A = torch.randn(1000)
    p, st = K.quantize_kbit(A, 3, codebook=torch.linspace(-1, 1, 8))
    want = K.dequantize_kbit(p, st)
    assert st.memo is not None and torch.equal(K.dequantize_kbit(p, st), want)
    st.scales = st.scales[:-1]
    with pytest.raises(QuantInputError, match="^state.scales:"):
        K.dequantize_kbit(p, st)
    p, st = K.quantize_kbit(A, 3, codebook=torch.linspace(-1, 1, 8))
    K.dequantize_kbit(p, st)
    st.codebook[0] = 5.0                                       # unsorted now
    with pytest.raises(QuantInputError, match="^codebook:"):
        K.dequantize_kbit(p, st)
    p, st = K.quantize_kbit(A, 3)
    K.dequantize_kbit(p, st)
    st.k = 4
    with pytest.raises(QuantInputError, match="^codebook:|^packed:"):
        K.dequantize_kbit(p, st)
    p, st = K.quantize_kbit(A, 3)
    K.dequantize_kbit(p, st)
    with pytest.raises(QuantInputError, match="^packed:"):  # other words with the same state
        K.dequantize_kbit(p[:-1], st)
    assert K.dequantize_kbit(p, st, dtype=torch.float16).dtype == torch.float16


# ------------------------------------------------------------------ codebook builders and the study hook

@pytest.mark.parametrize("k", [2, 5, 8])
def test_codebook_builders_any_k(k):
    data = np.random.default_rng(k).standard_normal(1 << 14)
    for cb in (cbs.kbit_uniform(k), cbs.kbit_quantile(data, k), cbs.kbit_lloyd_max(data, k, iters=10),
               cbs.create_normal_float_codebook(k)):
        assert cb.dtype == torch.float32 and cb.numel() == 2 ** k and bool((cb[1:] >= cb[:-1]).all())
        p, st = K.quantize_kbit(torch.from_numpy(data[:512]).float(), k, cb, backend="reference")
        assert K.dequantize_kbit(p, st).shape == (512,)


def test_frontier_rows_bits_and_error():
    rows = K.frontier_rows(ks=range(2, 9), configs=(("fp32", 32), ("e4m4", 32), ("e4m3", 16)),
                           codes_against=("exact",), n=4096, backend="reference")
    assert len(rows) == 7 * 3
    for fmt in ("fp32", "e4m4", "e4m3"):
        sub = sorted((r for r in rows if r["scale_format"] == fmt), key=lambda r: r["k"])
        assert [r["bits_per_param"] for r in sub] == [k + {"fp32": 1.0, "e4m4": 0.25, "e4m3": 0.5}[fmt]
                                                      for k in range(2, 9)]
        assert all(a["mse"] > b["mse"] for a, b in zip(sub, sub[1:]))      # more bits, less error
    assert any(r["pareto"] for r in rows) and not all(r["pareto"] for r in rows)


def test_dq8_scales_are_the_double_quantized_fp32_absmax():
    from workbench.ops import dequantize_blockwise
    A = torch.randn(3000) * 2
    for backend in CPU_BACKENDS:
        p32, s32 = K.quantize_kbit(A, 3, blocksize=64, scale_format="fp32", backend=backend)
        p, st = K.quantize_kbit(A, 3, blocksize=64, scale_format="dq8", backend=backend)
        assert torch.equal(p, p32) and st.scales.dtype == torch.uint8 and st.scales.numel() == 47
        absmax = dequantize_blockwise(st.scales, st.state2, backend="reference") + st.offset
        want = (st.codebook[R.unpack_bitplane(p, 3, 3000)] * absmax.repeat_interleave(64)[:3000])
        assert torch.equal(K.dequantize_kbit(p, st, backend=backend), want)
    with pytest.raises(QuantInputError, match="^codes_against:"):
        K.quantize_kbit(A, 3, scale_format="dq8", codes_against="decoded")
    assert K.bits_per_param(3, 64, "dq8") == 3 + (8 + 32 / 256) / 64


def test_e4m4_exponent_is_exact_where_bitsandbytes_float_log2_rounds_up():
    """Just below 16, 8, 0.25, 0.125, 2**-6 float32 log2 rounds up to the integer, so bitsandbytes encodes
    2**e (mantissa clamped from -0); the workbench's exponent is exact: 2**(e-1) * (1 + 15/16). A
    documented deviation (the oracle's log2 is device- and library-dependent there)."""
    x = torch.nextafter(torch.tensor([16.0, 8.0, 0.25, 0.125, 2.0 ** -6]), torch.tensor(0.0))
    assert R.encode_e4m4(x).tolist() == [0xEF, 0xDF, 0x8F, 0x7F, 0x4F]
    assert torch.equal(R.decode_e4m4(R.encode_e4m4(x)), x.new_tensor([15.5, 7.75, 0.2421875, 0.12109375,
                                                                        0.01513671875]).float())


def test_codebook_cache_follows_in_place_edits_and_builds_the_default_once():
    """The public call caches the checked codebook per device (no scipy quantiles, no host copy per call); an
    in-place edit of the caller's tensor, or of the table a state holds, is seen on the next call."""
    A = torch.randn(256)
    cb = torch.linspace(-1, 1, 8)
    _, s1 = K.quantize_kbit(A, 3, cb)
    assert s1.codebook.data_ptr() != cb.data_ptr()            # the states never share the caller's storage
    cb.mul_(0.5)
    _, s2 = K.quantize_kbit(A, 3, cb)
    assert torch.equal(s2.codebook, cb) and not torch.equal(s1.codebook, s2.codebook)
    s2.codebook.add_(1.0)                                      # a user edits the table a state holds
    _, s3 = K.quantize_kbit(A, 3, cb)
    assert torch.equal(s3.codebook, cb)
    assert K.quantize_kbit(A, 3)[1].codebook is K.quantize_kbit(A, 3)[1].codebook
    with pytest.raises(QuantInputError, match="^codebook:"):  # a state whose table was broken after the fact
        s4 = K.quantize_kbit(A, 3)[1]
        p = K.quantize_kbit(A, 3)[0]
        s4.codebook[0] = float("nan")
        K.dequantize_kbit(p, s4)
