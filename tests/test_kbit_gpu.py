"""k-bit family on the GPU (issue 19): the cuda backend (cuda_src/kbit.cu) bit for bit against the
reference computed on the CPU (the spec is device-independent), with poisoned outputs."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from _poison import bits, poison_empty
from workbench import kbit as K
from workbench.backends import status
from workbench.backends.numba_cuda import simulator as numba_cuda_simulator
from workbench.backends.reference import kbit as R

pytestmark = pytest.mark.gpu

CASES = [  # (k, dtype, n, blocksize, scale_format, codes_against)
    (2, torch.float32, 4099, 32, "e4m4", "exact"), (3, torch.bfloat16, 1000, 16, "e4m3", "decoded"),
    (4, torch.float16, 777, 32, "e8m0", "exact"), (5, torch.float32, 70, 64, "fp16", "decoded"),
    (6, torch.bfloat16, 40999, 4096, "bf16", "exact"), (8, torch.float16, 3001, 128, "fp32", "exact"),
    (8, torch.float32, 1, 32, "e4m4", "decoded"),
]


_bits = bits


def _skip_unless_on_gpu(backend):
    if not status(backend)[0]:
        pytest.skip(f"{backend} backend not available")
    if backend == "numba_cuda" and numba_cuda_simulator():
        pytest.skip("numba.cuda is the simulator in this process (a *_sim module was collected first): "
                    "run this file in a process of its own")


@pytest.mark.parametrize("backend", ["cuda", "numba_cuda"])
@pytest.mark.parametrize("k,dtype,n,blocksize,fmt,against", CASES)
def test_cuda_kbit_bit_exact_with_reference(monkeypatch, backend, k, dtype, n, blocksize, fmt, against):
    _skip_unless_on_gpu(backend)
    poison_empty(monkeypatch, "cuda")
    g = torch.Generator().manual_seed(k)
    A = (torch.randn(n, generator=g) * 4 ** torch.randn(n, generator=g)).to(dtype)
    cb = torch.sort(torch.rand(2 ** k, generator=g) * 2 - 1).values
    for layout in R.LAYOUTS:
        pr, sr = K.quantize_kbit(A, k, cb, blocksize, layout, fmt, against, backend="reference")
        pc, sc = K.quantize_kbit(A.cuda(), k, cb, blocksize, layout, fmt, against, backend=backend)
        assert torch.equal(pc.cpu(), pr), (layout, fmt)
        assert torch.equal(_bits(sc.scales.cpu()), _bits(sr.scales))
        assert torch.equal(sc.tensor_scale.cpu(), sr.tensor_scale)
        for out_dtype in (torch.float32, torch.float16, torch.bfloat16):
            want = K.dequantize_kbit(pr, sr, dtype=out_dtype, backend="reference")
            got = K.dequantize_kbit(pc, sc, dtype=out_dtype, backend=backend)
            assert torch.equal(_bits(got.cpu()), _bits(want))


@pytest.mark.parametrize("backend", ["cuda", "numba_cuda"])
@pytest.mark.parametrize("k", [2, 4, 7])
def test_cuda_kbit_default_format_every_e4m4_scale(backend, k):
    """The default format (bf16, blocksize 32, e4m4, exact: the lane kernel's compile-time instance) with block
    absmax values over the whole e4m4 range and past it: zero, subnormal e4m4 codes (absmax below 2^-10), every
    exponent, mantissas on and beside the rounding ties, the clamp to mantissa 15, saturation (2^5 and up).
    Scales and codes equal the reference's."""
    _skip_unless_on_gpu(backend)
    g = torch.Generator().manual_seed(k)
    mags = [0.0, 2.0 ** -30, 2.0 ** -15, 2.0 ** -12, 2.0 ** -11, 2.0 ** -10.5, 2.0 ** -10, 31.0, 32.0, 1e6, 3e38]
    for e in range(-10, 5):        # each exponent: mantissa 4-bit steps, their ties (x.5 / 16), the top of the binade
        for t in (0.0, 1 / 32, 3 / 32, 0.5, 15 / 16, 31 / 32, 63 / 64, 0.999):
            mags.append(2.0 ** e * (1 + t))
    blocks = []
    for a in mags:
        b = torch.randn(32, generator=g)
        b = b / b.abs().max() * a if a > 0 else torch.zeros(32)
        b[int(torch.randint(32, (1,), generator=g))] = a * (1 if len(blocks) % 2 else -1)
        blocks.append(b)
    A = torch.cat(blocks).to(torch.bfloat16)
    for layout in R.LAYOUTS:
        pr, sr = K.quantize_kbit(A, k, layout=layout, backend="reference")
        pc, sc = K.quantize_kbit(A.cuda(), k, layout=layout, backend=backend)
        assert torch.equal(_bits(sc.scales.cpu()), _bits(sr.scales)), layout
        assert torch.equal(pc.cpu(), pr), layout


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_groups_affine_and_rotation_on_cuda_equal_the_cpu_reference():
    """Row and 384/96-element groups on the production kernel (any group size: it indexes scales by i // bs),
    affine groups (the reference kernels on CUDA tensors) and the Hadamard rotation (torch, float32) give the
    CPU reference's words, scales and outputs bit for bit."""
    g = torch.Generator().manual_seed(0)
    W = (torch.randn(16, 384, generator=g) * 4 ** torch.randn(16, 1, generator=g)).to(torch.bfloat16)
    cuda_ok = status("cuda")[0]
    cases = [dict(blocksize="row", scale_format="fp16"), dict(blocksize=96, scale_format="e4m4"),
             dict(blocksize=384, scale_format="bf16", rotate=128),
             dict(blocksize=32, affine="minmax"), dict(blocksize="row", affine="mse", scale_format="bf16"),
             dict(blocksize=64, affine="mse", rotate=256)]
    for kw in cases:
        backend = "cuda" if cuda_ok and "affine" not in kw else "auto"
        pr, sr = K.quantize_kbit(W, 3, backend="reference", **kw)
        pc, sc = K.quantize_kbit(W.cuda(), 3, backend=backend, **kw)
        assert torch.equal(pc.cpu(), pr), kw
        assert torch.equal(_bits(sc.scales.cpu()), _bits(sr.scales)), kw
        if sr.zeros is not None:
            assert torch.equal(sc.zeros.cpu(), sr.zeros), kw
        want = K.dequantize_kbit(pr, sr, backend="reference")
        assert torch.equal(_bits(K.dequantize_kbit(pc, sc, backend=backend).cpu()), _bits(want)), kw


@pytest.mark.parametrize("backend", ["cuda", "numba_cuda"])
@pytest.mark.parametrize("k,blocksize,fmt,layout", [
    (3, 256, "e4m4", "dense"), (5, 256, "e4m3", "bitplane"), (2, 48, "fp32", "dense"), (7, 48, "e4m3", "bitplane"),
    (4, 32, "e4m4", "bitplane"), (6, 1024, "bf16", "dense"), (8, 32, "e4m4", "bitplane"), (8, 16, "fp16", "dense"),
    (7, 32, "e4m4", "dense")])
def test_cuda_kbit_every_kernel_path_on_a_grid_stride_size(backend, k, blocksize, fmt, layout):
    """Each quantize path of cuda_src/kbit.cu (the batched warp kernel with 1 or 8 chunks per block, the long-block
    kernel, the simple path for blocksizes that are neither 16 nor a multiple of 32, the e4m3 tensor-max pre-pass;
    the K = 8 lane quantizer's staged input, the K = 8 and dense K = 7 dequantizers' codebook copies) on a tensor
    large enough that the grid-stride loops turn more than once, with a partial last block. The oracle is the
    reference on the GPU (plain torch; its CPU twin checks it in the test above) at these sizes."""
    _skip_unless_on_gpu(backend)
    g = torch.Generator().manual_seed(blocksize + k)
    n = 132 * 64 * 8 * 8 * 32 + 7 * blocksize // 2 + 5   # > one grid's worth of blocks <= 256 on an H200, ragged tail
    A = ((torch.randn(n, generator=g) * 4 ** torch.randn(n, generator=g)).to(torch.bfloat16)).cuda()
    cb = torch.sort(torch.rand(2 ** k, generator=g) * 2 - 1).values
    ops = torch.ops.workbench                                  # the ops take any blocksize >= 16
    cb = cb.cuda()
    want = ops.quantize_kbit(A, cb, k, blocksize, layout, fmt, "exact", "reference")
    got = ops.quantize_kbit(A, cb, k, blocksize, layout, fmt, "exact", backend)
    for w, c in zip(want, got):
        assert torch.equal(_bits(c), _bits(w))
    for out_dtype in (torch.float32, torch.bfloat16):
        ref = ops.dequantize_kbit(*want[:3], cb, k, blocksize, n, layout, fmt, out_dtype, "reference")
        out = ops.dequantize_kbit(*got[:3], cb, k, blocksize, n, layout, fmt, out_dtype, backend)
        assert torch.equal(_bits(out), _bits(ref))


@pytest.mark.parametrize("backend", ["cuda", "numba_cuda"])
@pytest.mark.parametrize("blocksize", [16, 32])
@pytest.mark.parametrize("k", range(2, 9), ids=lambda k: f"K{k}")   # one case per K: Numba compiles ~20 s a kernel
def test_cuda_kbit_every_k_and_layout_through_the_group_kernels(backend, blocksize, k):
    """The thread-per-group kernels (quantize: K a template parameter, the branch-free table path for full groups
    and its element-by-element redo; dequantize: the K words of a group at once) for every K and both layouts:
    full groups, a partial last group, groups holding zeros or a quotient below 2^-40 (the redo), every output
    dtype."""
    _skip_unless_on_gpu(backend)
    g = torch.Generator().manual_seed(blocksize * 16 + k)
    n = 32 * 3000 + 21
    A = torch.randn(n, generator=g) * 4 ** torch.randn(n, generator=g)
    A[100:164:5] = 0.0
    A[1000:1032] = 1e-20
    A[1000] = 3.0
    cb = torch.sort(torch.rand(2 ** k, generator=g) * 2 - 1).values
    for dtype, layout in ((torch.bfloat16, "bitplane"), (torch.float32, "dense"),
                          (torch.float16, "bitplane"), (torch.bfloat16, "dense")):
        x = A.to(dtype)
        pr, sr = K.quantize_kbit(x, k, cb, blocksize, layout, "e4m4", backend="reference")
        pc, sc = K.quantize_kbit(x.cuda(), k, cb.cuda(), blocksize, layout, "e4m4", backend=backend)
        assert torch.equal(pc.cpu(), pr), (dtype, layout)
        assert torch.equal(_bits(sc.scales.cpu()), _bits(sr.scales)), (dtype, layout)
        for out_dtype in (torch.float32, torch.float16, torch.bfloat16):
            want = K.dequantize_kbit(pr, sr, dtype=out_dtype, backend="reference")
            got = K.dequantize_kbit(pc, sc, dtype=out_dtype, backend=backend)
            assert torch.equal(_bits(got.cpu()), _bits(want)), (layout, out_dtype)


@pytest.mark.parametrize("backend", ["cuda", "numba_cuda"])
@pytest.mark.parametrize("blocksize,fmt", [(32, "e4m4"), (16, "e4m3"), (48, "fp16"), (1024, "bf16")])
def test_cuda_kbit_nonfinite_flag_raises(backend, blocksize, fmt):
    from workbench.validation import QuantInputError
    _skip_unless_on_gpu(backend)
    A = torch.randn(96 * 1000, device="cuda")
    for bad in (float("nan"), float("inf"), -float("inf")):
        B = A.clone()
        B[96 * 1000 - 5] = bad
        with pytest.raises(QuantInputError, match="^A:.*non-finite"):
            K.quantize_kbit(B, 4, blocksize=blocksize, scale_format=fmt, backend=backend)
    K.quantize_kbit(A, 4, blocksize=blocksize, scale_format=fmt, backend=backend)   # finite: no error


@pytest.mark.parametrize("backend", ["cuda", "numba_cuda"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_cuda_kbit_unaligned_input(backend, dtype):
    """A view starting one element into its storage is not 16-byte aligned: the vector-load kernels take their
    scalar path and give the same words."""
    _skip_unless_on_gpu(backend)
    g = torch.Generator().manual_seed(7)
    full = (torch.randn(40001, generator=g) * 3).to(dtype)
    for layout in R.LAYOUTS:
        pr, sr = K.quantize_kbit(full[1:], 5, layout=layout, backend="reference")
        pc, sc = K.quantize_kbit(full.cuda()[1:], 5, layout=layout, backend=backend)
        assert torch.equal(pc.cpu(), pr) and torch.equal(_bits(sc.scales.cpu()), _bits(sr.scales))


@pytest.mark.parametrize("backend", ["cuda", "numba_cuda"])
@pytest.mark.parametrize("k", [2, 4, 8])
@pytest.mark.parametrize("blocksize,fmt,against", [(32, "fp32", "exact"), (16, "e4m4", "decoded"),
                                                    (32, "e8m0", "exact"), (64, "fp16", "decoded"),
                                                    (512, "bf16", "exact")])
def test_cuda_kbit_search_table_and_its_exact_path(backend, k, blocksize, fmt, against):
    """The fused kernels' one-load table search (numba_kernels/cell_plan.py:kbit_plan) and the elements that bypass
    it: zeros, quotients below 2^-40 (tiny values beside large ones), blocks of tiny values (divisor clamped to
    1e-8, or e8m0's divisor below 2^-60), blocks whose quotients pass the lane kernel's table (e4m4 decoded: a
    scale that rounds to 0), values on the codebook's thresholds, for the normal-float, uniform and FP4 (E2M1,
    unnormalised: s up to 12) codebooks, and one with a repeated value (its codes skip an index, which the lane
    kernel's table cannot say: every element takes the exact search)."""
    _skip_unless_on_gpu(backend)
    from numba_kernels.cell_plan import kbit_plan
    from workbench import codebooks as cbs
    g = torch.Generator().manual_seed(k * blocksize)
    books = [cbs.create_normal_float_codebook(k), torch.linspace(-1, 1, 2 ** k)]
    if k == 4:
        e2m1 = [0.0, 0.5, 1, 1.5, 2, 3, 4, 6]
        books.append(torch.tensor([-v for v in reversed(e2m1)] + e2m1))   # -0.0 and +0.0: 16 codes
    dup = cbs.create_normal_float_codebook(k).clone()
    dup[2] = dup[1]
    books.append(dup)
    n = 64 * 1024 + 3 * blocksize + 7
    for cb in books:
        plan = kbit_plan(cb.numpy())
        assert plan is not None
        b = torch.from_numpy(plan[0][:, 0].view(np.float32).copy())
        b = b[torch.isfinite(b)]
        A = torch.randn(n, generator=g) * 4 ** torch.randn(n, generator=g)
        A[: b.numel()] = b                                   # thresholds, in blocks whose absmax is 1 (fp32: q = 1)
        A[: b.numel(): blocksize] = 1.0
        A[5000:5000 + blocksize] = 1e-30 * torch.randn(blocksize, generator=g)
        A[9000:9000 + blocksize] = 2.0 ** -100
        A[20000:20100:3] = 0.0
        A[30000:30100] = 1e-20                               # tiny beside the block's large values
        A[30000] = 7.0
        A[40000:40000 + blocksize] = 3e-5 * torch.randn(blocksize, generator=g)
        for dtype in (torch.float32, torch.bfloat16):
            x = A.to(dtype)
            for layout in R.LAYOUTS:
                pr, sr = K.quantize_kbit(x, k, cb, blocksize, layout, fmt, against, backend="reference")
                pc, sc = K.quantize_kbit(x.cuda(), k, cb.cuda(), blocksize, layout, fmt, against, backend=backend)
                assert torch.equal(pc.cpu(), pr), (dtype, layout)
                assert torch.equal(_bits(sc.scales.cpu()), _bits(sr.scales))


@pytest.mark.parametrize("k,dtype,n,G,fmt,clip", [
    (2, torch.float32, 4099, 32, "fp16", "minmax"), (3, torch.bfloat16, 1000, 40, "fp32", "mse"),
    (4, torch.float16, 777, 96, "bf16", "mse"), (8, torch.float16, 3001, 128, "fp16", "minmax"),
    (4, torch.bfloat16, 16 * 384, 384, "fp16", "mse"), (5, torch.float32, 1, 32, "fp16", "mse"),
    (7, torch.bfloat16, 70001, 64, "bf16", "minmax"), (8, torch.float32, 1 << 20, 64, "bf16", "minmax")])
def test_cuda_affine_groups_bit_exact_with_reference(k, dtype, n, G, fmt, clip):
    """cuda_src/kbit_affine.cu (the cuda backend's affine groups) against the CPU reference: words, scales, zero
    points and every output dtype, both layouts, odd n, partial last groups, groups of one value and of zeros, the
    MSE clip search, float64 error sums included."""
    _skip_unless_on_gpu("cuda")
    ops = torch.ops.workbench
    g = torch.Generator().manual_seed(k * G + n)
    A = (torch.randn(n, generator=g) * 4 ** torch.randn(n, generator=g) + 0.3).to(dtype)
    if n >= 3 * G:
        A[G:2 * G] = 1.5
        A[2 * G:3 * G] = 0
    for layout in R.LAYOUTS:
        ref = ops.quantize_kbit_affine(A, k, G, layout, fmt, clip, "reference")
        got = ops.quantize_kbit_affine(A.cuda(), k, G, layout, fmt, clip, "cuda")
        for r, o in zip(ref, got):
            assert o.is_cuda and torch.equal(_bits(o.cpu()), _bits(r)), (layout, r.dtype)
        for dt in (torch.float32, torch.float16, torch.bfloat16):
            want = ops.dequantize_kbit_affine(*ref, k, G, n, layout, dt, "reference")
            out = ops.dequantize_kbit_affine(*[t.cuda() for t in ref], k, G, n, layout, dt, "cuda")
            assert torch.equal(_bits(out.cpu()), _bits(want)), (layout, dt)


def test_reciprocal_division_equals_ieee_division_on_the_gpu():
    """kk_code's division (r = RN(1/q), s0 = RN(x r), two exact-FMA corrections) against IEEE division, on 2^24
    pairs per divisor family: random divisors, all-ones mantissas, powers of two, the range ends 2^-60 and 2^100,
    every quotient with |s| >= 2^-40 (tests/test_kbit_plan.py proves it in exact arithmetic on fewer pairs)."""
    if not torch.cuda.is_available() or numba_cuda_simulator():
        pytest.skip("needs a GPU and numba.cuda without the simulator")
    from numba import cuda

    @cuda.jit
    def seq(x, q, out):
        i = cuda.grid(1)
        if i < x.size:
            r = np.float32(1.0) / q[i]
            s = x[i] * r
            for _ in range(2):
                s = cuda.fma(cuda.fma(-s, q[i], x[i]), r, s)
            out[i] = s

    g = torch.Generator(device="cuda").manual_seed(0)
    n = 1 << 24
    fams = [torch.rand(n, device="cuda", generator=g) * 1e3 + 1e-8,
            (torch.randint(0x00800000, 0x7F000000, (n,), device="cuda", generator=g).int() | 0x7FFFFF).view(torch.float32),
            2.0 ** torch.randint(-60, 100, (n,), device="cuda", generator=g).float()]
    for q in fams:
        q = q.clamp(2.0 ** -60, 2.0 ** 100).float()
        x = (torch.rand(n, device="cuda", generator=g) * 2 - 1) * q
        ok = (x / q).abs() >= 2.0 ** -40
        out = torch.empty_like(x)
        seq[(n + 255) // 256, 256](cuda.as_cuda_array(x), cuda.as_cuda_array(q), cuda.as_cuda_array(out))
        torch.cuda.synchronize()
        assert torch.equal(_bits(out[ok]), _bits((x / q)[ok]))


@pytest.mark.parametrize("backend", ["cuda", "numba_cuda"])
@pytest.mark.parametrize("k,layout,blocksize", [(6, "bitplane", 16), (3, "dense", 32)])
def test_cuda_kbit_dequantize_nonfinite_scales(backend, k, layout, blocksize):
    """The group dequantizers on scales that are zero, NaN, +-Inf or near the float32 maximum (fp32 scales given
    directly to the backend): NaN exactly where the reference has NaN (Inf * code 0 among them), every other
    output bit for bit, every output dtype, over many CTAs and a partial last group."""
    _skip_unless_on_gpu(backend)
    import importlib
    B = importlib.import_module(f"workbench.backends.{backend}.kbit")
    n = 32 * 5000 + 13
    g = torch.Generator().manual_seed(7 * k + blocksize)
    packed = torch.randint(-2 ** 31, 2 ** 31, (R.packed_words(n, k, layout),), generator=g,
                           dtype=torch.int64).to(torch.int32)
    scales = torch.rand(R.nblocks(n, blocksize), generator=g) * 3
    scales[[1, 5, 9, 12, 3000, -1]] = torch.tensor([0.0, float("nan"), float("inf"), -float("inf"), 3e38, -3e38])
    cb = torch.sort(torch.rand(2 ** k, generator=g) * 2 - 1).values
    cb[0] = 0.0
    for od in (torch.float32, torch.float16, torch.bfloat16):
        want = R.dequantize_kbit(packed, scales, None, cb, k, blocksize, n, layout, "fp32", od)
        got = B.dequantize_kbit(packed.cuda(), scales.cuda(), None, cb.cuda(), k, blocksize, n, layout, "fp32",
                                od).cpu()
        nan = torch.isnan(want)
        assert nan.any() and torch.equal(torch.isnan(got), nan), od
        assert torch.equal(_bits(got)[~nan], _bits(want)[~nan]), od


@pytest.mark.parametrize("k", [7, 8])
@pytest.mark.parametrize("lane_kb", [88, 176])
def test_cuda_kbit_lane_table_budget_knob_keeps_the_words(k, lane_kb):
    """``kbit_kbit_tuning``'s shared-memory budget for the lane table's copies (studies/probes/kbit_kernel_ab.py):
    past 48 KB the kernel gets more copies at fewer CTAs per SM, and the words and scales stay the reference's, on
    normal-float codes (their table is taken) with the bf16 defaults and an fp32 input."""
    _skip_unless_on_gpu("cuda")
    from workbench.backends.cuda import kbit as C
    lib = C.lib()
    lib.kbit_kbit_tuning.argtypes = [C._c.c_int, C._c.c_int]
    g = torch.Generator().manual_seed(k + lane_kb)
    A = torch.randn(32 * 5000 + 7, generator=g) * 4 ** torch.randn(32 * 5000 + 7, generator=g)
    try:
        lib.kbit_kbit_tuning(0, lane_kb)
        for dtype, layout in ((torch.bfloat16, "bitplane"), (torch.float32, "dense")):
            x = A.to(dtype)
            pr, sr = K.quantize_kbit(x, k, blocksize=32, layout=layout, backend="reference")
            pc, sc = K.quantize_kbit(x.cuda(), k, blocksize=32, layout=layout, backend="cuda")
            assert torch.equal(pc.cpu(), pr), (dtype, layout)
            assert torch.equal(_bits(sc.scales.cpu()), _bits(sr.scales)), (dtype, layout)
    finally:
        lib.kbit_kbit_tuning(0, 0)
