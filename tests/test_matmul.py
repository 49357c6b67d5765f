"""The 4-bit matmul family (issue 18): reference vs bitsandbytes 0.50.2 on CPU, numba_cpu vs the reference,
any codebook, nested absmax, bias, autograd, bad input.

Levels (workbench/backends/reference/matmul.py):
* dequantized weight (rule 2): bit for bit equal to bitsandbytes' ``dequantize_4bit(...).to(A.dtype)``.
* outputs: float32 accumulation in a different order (bitsandbytes: torch ``linear`` in A's dtype; numba_cpu:
  8 float32 lanes) -> held to ``error_bound`` (summation error of any order + 2 ulp of the output dtype).
"""
from __future__ import annotations

import warnings

import pytest
import torch
from _poison import bits

import workbench as wb
from workbench import codebooks as cbs
from workbench.backends.reference import matmul as R
from workbench.matmul import gemm_4bit, gemv_4bit, matmul_4bit
from workbench.ops import _nested_args
from workbench.validation import QuantInputError

DTYPES = [torch.bfloat16, torch.float16, torch.float32]
# (N, K, M, blocksize): odd K (rows start on a low nibble), K not a multiple of 8, blocks straddling rows
SHAPES = [(64, 128, 1, 64), (33, 77, 3, 32), (130, 256, 1, 128), (40, 96, 12, 64), (17, 4100, 2, 4096),
          (96, 512, 1, 256)]


def _case(rng, N, K, M, dtype, bs, quant_type="nf4", nested=False, bias=False, codebook=None):
    W = torch.randn(N, K, generator=rng).to(dtype)
    A = torch.randn(M, K, generator=rng).to(dtype)
    b = torch.randn(N, generator=rng).to(dtype) if bias else None
    P, qs = wb.quantize_4bit(W, blocksize=bs, quant_type=quant_type, compress_statistics=nested, codebook=codebook,
                             backend="reference")
    return A, P, qs, b


def _state_args(qs):
    """(absmax, absmax_8bit, absmax_code, absmax_offset) as the kernels take them."""
    if qs.nested:
        return qs.state2.absmax, qs.absmax, qs.state2.code, qs.offset
    return qs.absmax, None, None, None


def _bound(A, P, qs, b, ref, unscaled=False):
    """The (M, N) bound on |out - ref|: error_bound, or error_bound_unscaled (the unscaled-lookup kernels')."""
    K = A.shape[-1]
    A2, N = A.reshape(-1, K), int(qs.shape[0])
    if unscaled:
        a2, a8, c2, off = _state_args(qs)
        return R.unscaled_bound_of(A2, P, (N, K), a2, qs.code, qs.blocksize, b, a8, c2, off, ref=ref.reshape(-1, N))
    W = wb.dequantize_4bit(P, qs, backend="reference").to(A.dtype)
    return R.error_bound(A2, W, b, A.dtype, ref.reshape(-1, N))


def _check_bound(got, ref, A, P, qs, b, unscaled=False):
    """got within _bound of ref; returns the fraction of outputs equal to ref."""
    bound = _bound(A, P, qs, b, ref, unscaled)
    err = (got.float() - ref.float()).abs().reshape(bound.shape)
    assert (err <= bound).all(), (err - bound).max()
    return (err == 0).float().mean().item()


def _cython_bound(got, ref, A, P, qs, b):
    """_check_bound with the bound of the cython_cpu loop that the call takes (takes_unscaled)."""
    from workbench.backends.cython_cpu.matmul import takes_unscaled
    K = A.shape[-1]
    return _check_bound(got, ref, A, P, qs, b, unscaled=takes_unscaled(A.dtype, A.numel() // K, K, qs.blocksize))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("nested", [False, True])
def test_numba_cpu_vs_reference(rng, dtype, nested):
    for i, (N, K, M, bs) in enumerate(SHAPES):
        A, P, qs, b = _case(rng, N, K, M, dtype, bs, nested=nested, bias=i % 2 == 1,
                            codebook=None if i % 3 else cbs.get("af4"))
        ref = matmul_4bit(A, P, qs, bias=b, backend="reference")
        got = matmul_4bit(A, P, qs, bias=b, backend="numba_cpu")
        assert got.dtype == dtype and got.shape == (M, N)
        _check_bound(got, ref, A, P, qs, b)
        g1 = gemv_4bit(A, P, state=qs, backend="numba_cpu")
        _check_bound(g1, gemv_4bit(A, P, state=qs, backend="reference"), A, P, qs, None)


def test_nested_absmax_rule_matches_dequantize_blockwise(rng):
    A, P, qs, _ = _case(rng, 300, 256, 1, torch.float32, 64, nested=True)
    args = _nested_args(qs, "reference")
    s = R.resolve_absmax(*args)
    want = wb.dequantize_blockwise(qs.absmax, qs.state2, backend="reference") + qs.offset
    assert torch.equal(s, want)
    from numba_kernels.cpu import quant as numba_quant
    from workbench.backends._cpu_quant import block_scales
    from workbench.backends.cython_cpu import native
    for kernels in (numba_quant, native("quant")):   # each compiled CPU backend's resolve_nested
        assert torch.equal(torch.from_numpy(block_scales(kernels, *args)), s), kernels


@pytest.mark.parametrize("backend", ["numba_cpu", "cython_cpu"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_rows_above_the_fused_kernels_decode_the_weight_in_pieces(backend, dtype, rng, monkeypatch):
    """_cpu_quant.dequant_matmul decodes a few rows of the weight at a time. One-hot rows of A give every weight bit
    for bit, so each piece is decoded from its own bytes and scales into its own columns: blocks that straddle rows
    (K = 96, blocksize 64: pieces of an even number of rows), a partial last piece, nested scales. Random rows with a
    bias stay within the reference's bound (torch's order of a sum may change with a piece's width)."""
    from workbench.backends import _cpu_quant
    N, K = 53, 96
    _, P, qs, b = _case(rng, N, K, 1, dtype, 64, nested=True, bias=True)
    args = _state_args(qs)
    gemm = lambda A, bias=None: torch.ops.workbench.gemm_4bit(A, P.view(-1), [N, K], args[0], qs.code, 64, bias,
                                                              *args[1:], backend)
    W = R.dequantize_weight(P, (N, K), R.resolve_absmax(*args), qs.code, 64, dtype)
    monkeypatch.setattr(_cpu_quant, "CHUNK_BYTES", 7 * K * torch.finfo(dtype).bits // 8)   # 6 rows a piece
    assert _cpu_quant.chunk_rows(N, K, 64, torch.finfo(dtype).bits // 8, _cpu_quant.CHUNK_BYTES) == 6
    one_hot = torch.eye(K, dtype=dtype)
    assert torch.equal(bits(gemm(one_hot)), bits(W.t().contiguous()))
    A = torch.randn(40, K, generator=rng).to(dtype)
    _check_bound(gemm(A, b), R.gemm_4bit(A, P, (N, K), *args[:1], qs.code, 64, b, *args[1:]), A, P, qs, b)


@pytest.mark.parametrize("backend", ["reference", "numba_cpu", "cython_cpu"])
def test_an_empty_weight_gives_the_bias(backend):
    """The op called directly with N = 0 or K = 0 (the public quantizers reject empty weights): the bias rows."""
    table = cbs.get("nf4").tensors("cpu")[0]
    for N, K in ((0, 64), (64, 0)):
        A, b = torch.randn(40, K).to(torch.bfloat16), torch.randn(N).to(torch.bfloat16)
        y = torch.ops.workbench.gemm_4bit(A, torch.empty(0, dtype=torch.uint8), [N, K], torch.empty(0), table, 64, b,
                                          None, None, None, backend)
        assert torch.equal(y, b.expand(40, N)), (N, K)


def test_any_codebook_and_leading_dims(rng):
    cb = cbs.from_values(torch.linspace(-1, 1, 16).numpy(), name="lin16")
    W = torch.randn(48, 64, generator=rng, dtype=torch.bfloat16)
    A = torch.randn(2, 3, 64, generator=rng, dtype=torch.bfloat16)
    P, qs = wb.quantize_4bit(W, blocksize=32, codebook=cb)
    W_hat = wb.dequantize_4bit(P, qs).to(torch.bfloat16)
    ref = matmul_4bit(A, P, qs, backend="reference")
    assert ref.shape == (2, 3, 48)
    want = (A.double() @ W_hat.double().t()).float().to(torch.bfloat16)
    assert torch.equal(ref, want)
    _check_bound(matmul_4bit(A, P, qs, backend="numba_cpu"), ref, A, P, qs, None)


def test_autograd_matches_autograd_on_dequantized_weight(rng):
    A, P, qs, b = _case(rng, 40, 64, 5, torch.float32, 32, nested=True, bias=True)
    A1 = A.clone().requires_grad_(True)
    b1 = b.clone().requires_grad_(True)
    y = matmul_4bit(A1.view(1, 5, 64), P, qs, bias=b1, backend="numba_cpu")
    g = torch.randn(y.shape, generator=rng)
    y.backward(g)
    W = wb.dequantize_4bit(P, qs)
    A2 = A.clone().requires_grad_(True)
    b2 = b.clone().requires_grad_(True)
    torch.nn.functional.linear(A2.view(1, 5, 64), W, b2).backward(g)
    assert torch.allclose(A1.grad, A2.grad, rtol=1e-5, atol=1e-5)
    assert torch.allclose(b1.grad, b2.grad, rtol=1e-5, atol=1e-5)


def test_kn_orientation_warns_like_bitsandbytes(rng):
    W = torch.randn(64, 32, generator=rng)   # stored as (K, N)
    P, qs = wb.quantize_4bit(W, blocksize=64, quant_type="nf4")
    A = torch.randn(2, 64, generator=rng)
    with pytest.warns(DeprecationWarning, match=r"\[K, N\]"):
        y = matmul_4bit(A, P, qs, backend="reference")
    assert y.shape == (2, 32)


def test_bad_input_names_the_argument(rng):
    A, P, qs, _ = _case(rng, 32, 64, 1, torch.bfloat16, 64)
    with pytest.raises(QuantInputError, match="A: inner dimension 63"):
        matmul_4bit(A[:, :63], P, qs)
    with pytest.raises(QuantInputError, match="A: dtype"):
        matmul_4bit(A.to(torch.int32), P, qs)
    with pytest.raises(QuantInputError, match="B: 2048 packed bytes"):
        matmul_4bit(A, torch.cat([P, P]), qs)
    with pytest.raises(QuantInputError, match="quant_state.shape"):
        qs1 = wb.QuantState(qs.absmax, shape=(2048,), code=qs.code, blocksize=64, quant_type="nf4",
                            dtype=torch.bfloat16)
        matmul_4bit(A, P, qs1)
    with pytest.raises(QuantInputError, match="quant_state.absmax"):
        qs2 = wb.QuantState(qs.absmax[:-1], shape=qs.shape, code=qs.code, blocksize=64, quant_type="nf4",
                            dtype=torch.bfloat16)
        matmul_4bit(A, P, qs2)
    with pytest.raises(QuantInputError, match="bias: expected a 1-D tensor of 32"):
        matmul_4bit(A, P, qs, bias=torch.zeros(31, dtype=torch.bfloat16))
    with pytest.raises(QuantInputError, match="bias: dtype"):
        matmul_4bit(A, P, qs, bias=torch.zeros(32))
    with pytest.raises(QuantInputError, match="state: required"):
        gemv_4bit(A, P)
    with pytest.raises(QuantInputError, match="quant_state.absmax"):   # before any kernel: out left as it was
        matmul_4bit(A, P, qs2, out=torch.full((1, 32), 7.0, dtype=torch.bfloat16))


def test_out_must_be_the_result_exactly(rng):
    """``out=`` (bitsandbytes' signature) is checked like its ``.out`` ops check theirs: the result's shape, A's
    dtype and device, so a copy into it can neither broadcast (a (2, 3, N) out would take a (3, N) result) nor
    cast; a rejected out is left as it was."""
    A, P, qs, _ = _case(rng, 32, 64, 3, torch.bfloat16, 64)
    want = matmul_4bit(A, P, qs)
    for fn in (lambda o: matmul_4bit(A, P, qs, out=o), lambda o: gemv_4bit(A, P, o, state=qs)):
        for bad, msg in ((torch.zeros(2, 3, 32, dtype=torch.bfloat16), r"out: shape \(2, 3, 32\), expected \(3, 32\)"),
                         (torch.zeros(3, 31, dtype=torch.bfloat16), r"out: shape \(3, 31\)"),
                         (torch.zeros(3, 32), "out: dtype torch.float32 must match A's dtype torch.bfloat16"),
                         (torch.zeros(3, 32, dtype=torch.bfloat16, device="meta"), "out: on meta"),
                         ([0.0] * 96, "out: expected a tensor or None, got list")):
            before = bad.clone() if isinstance(bad, torch.Tensor) and not bad.is_meta else None
            with pytest.raises(QuantInputError, match=msg):
                fn(bad)
            if before is not None:
                assert torch.equal(bad, before)
        out = torch.full((3, 32), float("nan"), dtype=torch.bfloat16)
        assert fn(out) is out and torch.equal(out, want)
    with pytest.raises(QuantInputError, match="quant_state: expected a workbench QuantState"):
        gemm_4bit(A, P, "nf4")


@pytest.mark.parametrize("backend", ["numba_cpu", "cython_cpu"])
def test_rows_above_the_fused_kernels_round_once_after_the_bias(rng, backend):
    """Above the fused kernels' rows the CPU backends multiply the dequantized weight with torch
    (_cpu_common.dense_matmul; bf16: torch's bf16 kernel, float32 sums and the bias added before its one rounding).
    A bias that cancels a row's sum, where a rounding before the bias would leave up to half a bf16 ulp of the sum
    against a bound of a few float32 ulps, stays within error_bound; so do random biases and no bias."""
    from workbench.backends import status
    if not status(backend)[0]:
        pytest.skip(f"{backend} not available here")
    A, P, qs, b = _case(rng, 48, 256, 40, torch.bfloat16, 64, nested=True, bias=True)
    Wd = wb.dequantize_4bit(P, qs, backend="reference").to(torch.bfloat16)
    cancel = (-(A[0].float() @ Wd.float().t())).to(torch.bfloat16)
    for bias in (cancel, b, None):
        ref = matmul_4bit(A, P, qs, bias=bias, backend="reference")
        got = matmul_4bit(A, P, qs, bias=bias, backend=backend)
        bound = R.error_bound(A, Wd, bias, torch.bfloat16, ref)
        assert ((got.float() - ref.float()).abs() <= bound).all(), (backend, bias is cancel)


@pytest.mark.parametrize("backend", ["reference", "numba_cpu", "cython_cpu"])
def test_strided_weight_and_bias_are_read_as_their_values(rng, backend):
    """The general path runs the backend's kernel directly in eager mode (ops.call_op), so what the op's guard did
    for a direct torch.ops call, a contiguous copy of a strided input, is the public path's job: a weight or bias
    view with stride 2 gives the contiguous one's result, and is left as it was."""
    from workbench.backends import status
    if not status(backend)[0]:
        pytest.skip(f"{backend} not available here")
    A, P, qs, b = _case(rng, 24, 128, 40, torch.bfloat16, 64, nested=True, bias=True)
    want = matmul_4bit(A, P, qs, bias=b, backend=backend)
    Ps = torch.stack([P.reshape(-1), torch.full_like(P.reshape(-1), 0xFF)], 1).reshape(-1)[::2]
    bs = torch.stack([b, torch.full_like(b, float("nan"))], 1).reshape(-1)[::2]
    assert not Ps.is_contiguous() and not bs.is_contiguous()
    before = Ps.clone(), bs.clone()
    assert torch.equal(matmul_4bit(A, Ps, qs, bias=bs, backend=backend), want)
    assert torch.equal(gemm_4bit(A, Ps, qs, bias=bs, backend=backend), want)
    assert torch.equal(Ps, before[0]) and torch.equal(bs, before[1])


def test_fake_tensor_shapes():
    from torch._subclasses.fake_tensor import FakeTensorMode
    with FakeTensorMode():
        A = torch.empty(3, 64, dtype=torch.bfloat16)
        y = torch.ops.workbench.gemm_4bit(A, torch.empty(1024, dtype=torch.uint8), [32, 64],
                                          torch.empty(32), torch.empty(16), 64, None, None, None, None, "reference")
    assert y.shape == (3, 32) and y.dtype == torch.bfloat16


# ------------------------------------------------------------------ bitsandbytes 0.50.2 (CPU)

@pytest.mark.bnb
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("quant_type", ["nf4", "fp4"])
def test_reference_vs_bitsandbytes(rng, dtype, quant_type):
    bnb = pytest.importorskip("bitsandbytes")
    F = pytest.importorskip("bitsandbytes.functional")
    from workbench.backends.bnb import default_impl
    # bitsandbytes 0.50.2's CPU backend (backends/cpu/ops.py) has native kernels that are other numeric specs:
    # - with AVX512-BF16, a bf16 gemv_4bit that rounds absmax to bf16 and aborts the process on shapes such as
    #   K = 4160 ("Unexpected block size"); matmul_4bit with one row dispatches to it;
    # - with AVX-512, a dequantize_4bit that assumes blocks never cross a row (wrong where they do, and so is the
    #   matmul built on it; tests/test_bnb_parity.py::test_bnb_native_4bit_dequant_bug_when_blocks_straddle_rows).
    # There rule 2 is checked against bitsandbytes' own torch kernel, and the calls built on them are skipped.
    native_gemv = F.has_avx512bf16()
    native_dequant = torch.backends.cpu.get_cpu_capability() == "AVX512"
    exact = []
    for i, (N, K, M, bs) in enumerate(SHAPES):
        for nested in (False, True):
            A, P, qs, b = _case(rng, N, K, M, dtype, bs, quant_type=quant_type, nested=nested, bias=i % 2 == 0)
            bqs = qs.to_bnb()
            straddles = native_dequant and K % bs != 0 and K % 2 == 0
            # rule 2: the dequantized weight is bitsandbytes' B_dq, bit for bit
            if straddles:
                am = F.dequantize_blockwise(bqs.absmax, bqs.state2) + bqs.offset if bqs.nested else bqs.absmax
                theirs_w = default_impl("dequantize_4bit")(P, am, bs, quant_type, (N, K), torch.float32)
            else:
                theirs_w = F.dequantize_4bit(P, bqs)
            assert torch.equal(R.dequantize_weight(P, (N, K), R.resolve_absmax(*_nested_args(qs, "reference")),
                                                   qs.code, bs, dtype), theirs_w.to(dtype))
            if straddles or (native_gemv and M == 1):
                continue
            ref = matmul_4bit(A, P, qs, bias=b, backend="reference")
            with torch.no_grad(), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                theirs = bnb.matmul_4bit(A, P, bqs, bias=b)
            exact.append(_check_bound(theirs, ref, A, P, qs, b))
            if b is None and not native_gemv:
                _check_bound(F.gemv_4bit(A, P, state=bqs), gemv_4bit(A, P, state=qs, backend="reference"),
                             A, P, qs, None)
    print(f"{quant_type} {dtype}: fraction of outputs equal to bitsandbytes: {sum(exact) / len(exact):.3f}")


def _cython_or_skip():
    from workbench.backends import status
    ok, reason = status("cython_cpu")
    if not ok:
        pytest.skip(reason)
    from workbench.backends.cython_cpu import native
    return native("matmul")


@pytest.fixture(params=["512-bit", "512-bit, integer rounding", "256-bit"])
def plane_width(request):
    """The byte-plane kernel's rule-2 loops: 512-bit (AVX-512 machines, K % 128 == 0) and 256-bit, each with its own
    float32 order: both are held to the same tests. The 512-bit loop rounds bf16 tables by vcvtne2ps2bf16 where the
    CPU has AVX512_BF16 (and a block's products are normal or zero), else by integer adds: both ways run here. The
    unscaled-lookup loop, which bf16 rows take by default where the CPU has AVX512_BF16, is off here (its own tests
    follow)."""
    from workbench.backends.cython_cpu import native
    lib = native("matmul")
    wide = request.param.startswith("512")
    if wide and not lib.HAS_PLANES512:
        pytest.skip("no AVX-512 F/BW/VL/VBMI here")
    old, old_round = lib.set_wide(wide), lib.set_bf16_round(request.param == "512-bit")
    old_unscaled = lib.set_unscaled(False)
    yield request.param
    lib.set_wide(old)
    lib.set_bf16_round(old_round)
    lib.set_unscaled(old_unscaled)


def _takes_planes(lib, A, K, bs):
    """The cython_cpu adapter's byte-plane condition (its own float32 order, not numba_cpu's lanes)."""
    from workbench.backends.cython_cpu.matmul import PLANES_MAX_M
    return (A.reshape(-1, K).shape[0] <= PLANES_MAX_M and A.dtype != torch.float32 and K % lib.UNIT == 0
            and bs % lib.UNIT == 0 and lib.HAS_PLANES)


@pytest.mark.parametrize("dtype", DTYPES)
def test_cython_cpu_equals_numba_cpu_bit_for_bit(rng, dtype):
    """Same lanes, same order: for one row the Cython lane kernel (AVX2 for K % 8 == 0, scalar otherwise) and the
    Numba kernel give identical outputs; for more rows both decode the weight in pieces (exact) for the same torch
    matmul. Cases on the byte-plane path are held to the reference's bound."""
    lib = _cython_or_skip()
    for i, (N, K, M, bs) in enumerate(SHAPES + [(256, 1024, 1, 32), (40, 200, 1, 64)]):
        A, P, qs, b = _case(rng, N, K, M, dtype, bs, nested=i % 2 == 0, bias=i % 3 == 0)
        x = matmul_4bit(A, P, qs, bias=b, backend="cython_cpu")
        if _takes_planes(lib, A, K, bs):
            _cython_bound(x, matmul_4bit(A, P, qs, bias=b, backend="reference"), A, P, qs, b)
            continue
        y = matmul_4bit(A, P, qs, bias=b, backend="numba_cpu")
        assert torch.equal(x, y), (N, K, M)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("nested", [False, True])
def test_cython_cpu_byte_planes_vs_reference(rng, plane_width, dtype, nested):
    """The GEMV hot path (M = 1, 16-bit activations, K and blocksize multiples of 64): weights exactly rule 2, its
    own float32 order -> error_bound; any codebook, bias, blocks spanning rows (blocksize > K)."""
    lib = _cython_or_skip()
    if not lib.HAS_PLANES:
        pytest.skip("no AVX2/F16C/FMA")
    exact = []
    for i, (N, K, bs) in enumerate([(64, 64, 64), (33, 4096, 64), (130, 768, 128), (17, 1024, 4096),
                                    (200, 2048, 256)]):
        A, P, qs, b = _case(rng, N, K, 1, dtype, bs, nested=nested, bias=i % 2 == 1,
                            codebook=cbs.get("af4") if i % 3 == 2 else None)
        A = A * 8  # larger products: more rounding for the bound to cover
        ref = matmul_4bit(A, P, qs, bias=b, backend="reference")
        got = matmul_4bit(A, P, qs, bias=b, backend="cython_cpu")
        assert got.dtype == dtype and got.shape == (1, N)
        exact.append(_check_bound(got, ref, A, P, qs, b))
        g1 = gemv_4bit(A, P, state=qs, backend="cython_cpu")
        _check_bound(g1, gemv_4bit(A, P, state=qs, backend="reference"), A, P, qs, None)
    print(f"{dtype} nested={nested}: fraction equal to the reference {sum(exact) / len(exact):.3f}")


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("nested", [False, True])
def test_cython_cpu_byte_planes_weights_exact(rng, plane_width, dtype, nested):
    """Rule 2 exactly: with one-hot activation rows the sums hold one product each, so the outputs are the dequantized
    weights' columns bit for bit (the tables, the in-kernel nested scales, the permutation of the activations)."""
    lib = _cython_or_skip()
    if not lib.HAS_PLANES:
        pytest.skip("no AVX2/F16C/FMA")
    # 1280 / 288 / 10 / 560 weight blocks (at 896 columns the 512-bit loop's chunks of nested scales cross
    # 256-block groups)
    for N, K, bs in [(40, 2048, 64), (9, 4096, 128), (300, 128, 4096), (40, 896, 64)]:
        W = (torch.randn(N, K, generator=rng) * 3).to(dtype)
        if dtype == torch.bfloat16:   # rows of tiny scales: products below 2^-126 (bf16 subnormal weights, or 0)
            W[::3] *= 2.0 ** -125
            W[1::7] *= 2.0 ** -120
        P, qs = wb.quantize_4bit(W, blocksize=bs, compress_statistics=nested, backend="reference")
        Wd = wb.dequantize_4bit(P, qs, backend="reference").to(dtype)
        ks = torch.randperm(K, generator=rng)[:32]
        A = torch.zeros(32, K, dtype=dtype)
        A[torch.arange(32), ks] = 1
        got = matmul_4bit(A, P, qs, backend="cython_cpu")
        assert torch.equal(got, Wd[:, ks].t()), (N, K, bs)
        assert torch.equal(matmul_4bit(A[:1], P, qs, backend="cython_cpu"), Wd[:, ks[:1]].t())


def test_cython_cpu_byte_planes_tiny_activations_exact(rng, plane_width):
    """IEEE float32 throughout (no instruction that flushes subnormals, such as vdpbf16ps, which an earlier variant
    had to gate: reports/matmul-cpu/gemv_bf16_dot_ab_xeon.md): single products that IEEE arithmetic keeps exactly (a
    subnormal activation times a large weight, a tiny activation times a tiny weight) come out exactly."""
    lib = _cython_or_skip()
    if not lib.HAS_PLANES:
        pytest.skip("no AVX2/F16C/FMA")
    N, K = 48, 1024
    W = (torch.randn(N, K, generator=rng) * 3).to(torch.bfloat16)
    W[::4] *= 2.0 ** 60                    # large weights: x * w normal for a subnormal x
    W[1::4] *= 2.0 ** -60                  # tiny weights: x * w near 2^-126 for x near 2^-64
    P, qs = wb.quantize_4bit(W, blocksize=64, backend="reference")
    Wd = wb.dequantize_4bit(P, qs, backend="reference").to(torch.bfloat16)
    for x in (2.0 ** -130, 2.0 ** -64, 3.0 * 2.0 ** -70):
        A = torch.zeros(2, K, dtype=torch.bfloat16)
        A[0, 77] = x
        A[1, 900] = -x
        want = (A.double() @ Wd.double().t()).to(torch.bfloat16)   # one product per output: exact, one rounding
        got = matmul_4bit(A, P, qs, backend="cython_cpu")
        assert torch.equal(got, want), x
        assert torch.equal(matmul_4bit(A[:1], P, qs, backend="cython_cpu"), want[:1]), x


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_cython_cpu_byte_planes_batch_invariant(rng, plane_width, dtype):
    """M > 1 decodes each weight row once and takes every activation row's products in the one-row order: each
    output row equals the M = 1 call on that row, bit for bit (and the reference within the bound)."""
    lib = _cython_or_skip()
    if not lib.HAS_PLANES:
        pytest.skip("no AVX2/F16C/FMA")
    for N, K, M, bs in [(70, 512, 3, 64), (33, 1024, 8, 128), (16, 256, 5, 4096)]:
        A, P, qs, b = _case(rng, N, K, M, dtype, bs, nested=True, bias=True)
        got = matmul_4bit(A, P, qs, bias=b, backend="cython_cpu")
        for m in range(M):
            assert torch.equal(got[m:m + 1], matmul_4bit(A[m:m + 1], P, qs, bias=b, backend="cython_cpu")), m
        _check_bound(got, matmul_4bit(A, P, qs, bias=b, backend="reference"), A, P, qs, b)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_cython_cpu_byte_planes_nonfinite_scale(rng, plane_width, dtype):
    """A NaN or Inf block scale takes the scalar rounding rule for that block's table: NaN/Inf land where the
    reference puts them (its weights: table * NaN = NaN, 0 * Inf = NaN)."""
    lib = _cython_or_skip()
    if not lib.HAS_PLANES:
        pytest.skip("no AVX2/F16C/FMA")
    N, K, bs = 8, 256, 64
    W = torch.randn(N, K, generator=rng).to(dtype)
    W[2, 5] = float("nan")
    W[5, 70] = float("inf")
    A = torch.randn(1, K, generator=rng).to(dtype)
    P, qs = wb.quantize_4bit(W, blocksize=bs, backend="reference", nan_policy="propagate")
    ref = matmul_4bit(A, P, qs, backend="reference")
    got = matmul_4bit(A, P, qs, backend="cython_cpu")
    assert torch.equal(torch.isnan(got), torch.isnan(ref))
    fin = torch.isfinite(ref)
    assert not fin.all() and fin.any()
    Wd = wb.dequantize_4bit(P, qs, backend="reference").to(dtype)
    rows = fin.reshape(-1)
    bound = R.error_bound(A, Wd[rows], None, dtype, ref[:, rows])
    assert ((got[:, rows].float() - ref[:, rows].float()).abs() <= bound).all()


# --- the unscaled-lookup loop (matmul_cpu_unscaled.h): bf16 rows, AVX512_BF16, K % 128 == 0 ---

@pytest.fixture
def unscaled():
    """The cython_cpu kernel with its unscaled-lookup loop on (the default where the CPU has AVX512_BF16)."""
    lib = _cython_or_skip()
    if not lib.HAS_UNSCALED:
        pytest.skip("no AVX512_BF16 (vdpbf16ps) here")
    old, old_wide = lib.set_unscaled(True), lib.set_wide(True)
    yield lib
    lib.set_unscaled(old)
    lib.set_wide(old_wide)


def _rule2(lib, *args, **kw):
    """The same call with the unscaled loop off (the rule-2 512-bit loop)."""
    old = lib.set_unscaled(False)
    try:
        return matmul_4bit(*args, backend="cython_cpu", **kw)
    finally:
        lib.set_unscaled(old)


def test_cython_cpu_unscaled_vs_reference(rng, unscaled):
    """Within error_bound_unscaled over block sizes (blocks spanning rows too), nested scales, bias, codebooks and
    1..32 rows; and not the rule-2 loop: its outputs differ from the unscaled ones, and somewhere the rule-2 bound
    alone is exceeded."""
    differs = beyond_rule2 = 0
    for i, (N, K, M, bs) in enumerate([(64, 128, 1, 64), (33, 4096, 1, 64), (130, 768, 3, 128), (17, 1024, 1, 4096),
                                       (200, 2048, 32, 256), (40, 1280, 5, 64), (96, 4096, 16, 64)]):
        A, P, qs, b = _case(rng, N, K, M, torch.bfloat16, bs, nested=i % 2 == 0, bias=i % 3 == 1,
                            codebook=cbs.get(("af4", "fp4", "student-t5")[i % 3]) if i % 2 else None)
        A = A * 8
        ref = matmul_4bit(A, P, qs, bias=b, backend="reference")
        got = matmul_4bit(A, P, qs, bias=b, backend="cython_cpu")
        assert got.dtype == torch.bfloat16 and got.shape == (M, N)
        _check_bound(got, ref, A, P, qs, b, unscaled=True)
        differs += int((got != _rule2(unscaled, A, P, qs, bias=b)).sum())
        W = wb.dequantize_4bit(P, qs, backend="reference").to(A.dtype)
        beyond_rule2 += int(((got.float() - ref.float()).abs() > R.error_bound(A, W, b, A.dtype, ref)).sum())
    assert differs > 0 and beyond_rule2 > 0, (differs, beyond_rule2)


@pytest.mark.parametrize("nested", [False, True])
def test_cython_cpu_unscaled_weights_exact(rng, unscaled, nested):
    """One-hot activation rows: each output is one weight, bf16(float32(bf16(table[c]) * s)) -- the codebook
    rounded, times the block scale, rounded again -- bit for bit (the planes, the activations' permutation, the
    step scales, the in-kernel nested scales: chunks of 64 blocks that cross a 256-block group at 896 and 14336
    columns, shorter chunks at a row's end)."""
    for N, K, bs in [(40, 2048, 64), (9, 4096, 128), (300, 128, 4096), (40, 896, 64), (5, 14336, 64)]:
        W = (torch.randn(N, K, generator=rng) * 3).to(torch.bfloat16)
        P, qs = wb.quantize_4bit(W, blocksize=bs, compress_statistics=nested, backend="reference")
        a2, a8, c2, off = _state_args(qs)
        S32 = R.dequantize_weight(P, (N, K), R.resolve_absmax(a2, a8, c2, off), torch.ones(16), bs, torch.float32)
        T = R.dequantize_weight(P, (N, K), torch.ones(N * K // bs + 1), qs.code.to(torch.bfloat16).float(), bs,
                                torch.float32)
        want_w = (T * S32).to(torch.bfloat16)
        ks = torch.randperm(K, generator=rng)[:32]
        A = torch.zeros(32, K, dtype=torch.bfloat16)
        A[torch.arange(32), ks] = 1
        assert torch.equal(matmul_4bit(A, P, qs, backend="cython_cpu"), want_w[:, ks].t()), (N, K, bs)
        assert torch.equal(matmul_4bit(A[:1], P, qs, backend="cython_cpu"), want_w[:, ks[:1]].t())


def test_cython_cpu_unscaled_batch_invariant(rng, unscaled):
    """M > 1 decodes each weight row once and replays the one-row instructions per activation row."""
    for N, K, M, bs in [(70, 512, 3, 64), (33, 1024, 8, 128), (16, 256, 5, 4096), (50, 2048, 32, 64)]:
        A, P, qs, b = _case(rng, N, K, M, torch.bfloat16, bs, nested=True, bias=True)
        got = matmul_4bit(A, P, qs, bias=b, backend="cython_cpu")
        for m in range(M):
            assert torch.equal(got[m:m + 1], matmul_4bit(A[m:m + 1], P, qs, bias=b, backend="cython_cpu")), m
        _check_bound(got, matmul_4bit(A, P, qs, bias=b, backend="reference"), A, P, qs, b, unscaled=True)


def test_cython_cpu_unscaled_guards_take_rule2(rng, unscaled):
    """What vdpbf16ps would get wrong takes the rule-2 loop (IEEE throughout), exactly its outputs: an activation row
    that holds a subnormal (read as zero), while the other rows stay unscaled; a codebook with an entry that is
    subnormal in bf16; a weight row with a NaN or Inf block scale (NaN and Inf where the reference has them)."""
    N, K, bs = 48, 1024, 64
    A, P, qs, _ = _case(rng, N, K, 4, torch.bfloat16, bs, nested=True)
    A[2, 300] = 2.0 ** -130
    got = matmul_4bit(A, P, qs, backend="cython_cpu")
    r2 = _rule2(unscaled, A, P, qs)
    assert torch.equal(got[2], r2[2])
    assert torch.equal(matmul_4bit(A[2:3], P, qs, backend="cython_cpu"), r2[2:3])
    for m in (0, 1, 3):
        assert torch.equal(got[m:m + 1], matmul_4bit(A[m:m + 1], P, qs, backend="cython_cpu"))
    assert not torch.equal(got[[0, 1, 3]], r2[[0, 1, 3]])

    t = cbs.get("nf4").table.copy()
    t[8] = 2.0 ** -130                     # nf4's smallest positive entry, now subnormal in bf16
    tiny = cbs.from_table(t, "nf4-subnormal")
    W = torch.randn(N, K, generator=rng).to(torch.bfloat16)
    P2, qs2 = wb.quantize_4bit(W, blocksize=bs, codebook=tiny, backend="reference")
    A2 = A[[0, 1]]
    assert torch.equal(matmul_4bit(A2, P2, qs2, backend="cython_cpu"), _rule2(unscaled, A2, P2, qs2))

    W[2, 5] = float("nan")
    W[5, 70] = float("inf")
    P3, qs3 = wb.quantize_4bit(W, blocksize=bs, backend="reference", nan_policy="propagate")
    for A3 in (A[:1], A[[0, 1, 3]]):
        got = matmul_4bit(A3, P3, qs3, backend="cython_cpu")
        ref = matmul_4bit(A3, P3, qs3, backend="reference")
        assert torch.equal(torch.isnan(got), torch.isnan(ref)) and not torch.isfinite(ref).all()
        r2 = _rule2(unscaled, A3, P3, qs3)
        assert torch.equal(got[:, [2, 5]].view(torch.int16), r2[:, [2, 5]].view(torch.int16))   # NaN bits too
        assert not torch.equal(got, r2)
        for m in range(A3.shape[0]):      # weight rows 2 and 5 are decoded beside rows 3 and 4: batch invariant still
            one = matmul_4bit(A3[m:m + 1], P3, qs3, backend="cython_cpu")
            assert torch.equal(got[m:m + 1].view(torch.int16), one.view(torch.int16))


