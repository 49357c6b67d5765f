"""Numba CUDA k-bit affine-group kernels (numba_kernels/cuda/kbit_affine.py) under the CUDA simulator (CPU, small
inputs): bit for bit vs the reference (workbench/backends/reference/kbit_affine.py), with poisoned outputs.

Same pattern as test_kbit_sim.py: the simulator must be chosen before numba.cuda is first imported; if this
process already holds the real numba.cuda, the file re-runs itself in a subprocess. The GPU case at the end runs
in a subprocess without the simulator (this process may hold either numba.cuda).
"""
import os
import subprocess
import sys

import pytest
import torch

import _cudasim  # first: selects the simulator before numba.cuda is imported
from _cudasim import sim
from _poison import bits, poison_empty

from workbench.backends.reference import kbit as R
from workbench.backends.reference import kbit_affine as RA

test_in_subprocess = _cudasim.subprocess_test(__file__)

OUT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
CASES = [  # (k, dtype, rows, cols, groupsize, scale_format, clip): odd n, partial last groups; G = cols: a row
    (2, torch.float32, 1, 301, 32, "fp16", "minmax"), (3, torch.bfloat16, 1, 213, 64, "bf16", "mse"),
    (4, torch.float16, 1, 389, 96, "fp32", "mse"), (8, torch.float32, 1, 257, 64, "fp16", "mse"),
    (8, torch.bfloat16, 1, 250, 96, "bf16", "minmax"), (4, torch.float32, 1, 1, 32, "fp16", "mse"),
    (3, torch.float16, 3, 75, 75, "fp16", "minmax"), (2, torch.float32, 4, 45, 45, "fp32", "mse"),
    (4, torch.bfloat16, 1, 130, 32, "fp16", "minmax"), (8, torch.float16, 1, 100, 32, "fp32", "minmax"),
    (2, torch.float16, 1, 330, 32, "bf16", "mse"),          # 8 of its 11 groups take a clip p < 1
]


@pytest.fixture(scope="module")
def N():
    _cudasim.simulator_backend()
    from workbench.backends.numba_cuda import kbit_affine
    return kbit_affine


@pytest.fixture
def poisoned(monkeypatch, N):
    poison_empty(monkeypatch)


_bits = bits


def _input(k, dtype, rows, cols, G, fmt, seed):
    g = torch.Generator().manual_seed(seed)
    A = (torch.randn(rows, cols, generator=g) * 4 ** torch.randn(rows, cols, generator=g) + 0.3).reshape(-1)
    n = A.numel()
    if n >= 2 * G:
        A[G: 2 * G] = 1.5                                    # an all-constant group: lo = 0, hi = 1.5
    if n >= 3 * G:
        A[2 * G: 3 * G] = 0                                  # all zero: s = EPS
    if n >= 4 * G:
        A[3 * G: 4 * G] = -2.25                              # all-constant negative
    if n >= 5 * G:
        A[4 * G: 5 * G] *= 1e-30 if dtype != torch.float16 else 1e-4   # tiny ranges (EPS clamp, subnormals)
    if n >= 6 * G and fmt == "fp16" and dtype != torch.float16:
        A[5 * G: 6 * G] *= 1e6                               # scales above fp16's max: saturate
    return A.to(dtype).reshape(rows, cols)


def _check(N, A, k, G, fmt, clip):
    n = A.numel()
    for layout in R.LAYOUTS:
        ref = RA.quantize_kbit_affine(A, k, G, layout, fmt, clip)
        got = N.quantize_kbit_affine(A, k, G, layout, fmt, clip)
        what = (k, A.dtype, n, G, fmt, clip, layout)
        for r, o in zip(ref, got):
            assert o.dtype == r.dtype and o.shape == r.shape and torch.equal(_bits(o), _bits(r)), (what, r.dtype)
        for od in OUT_DTYPES:
            want = RA.dequantize_kbit_affine(*ref, k, G, n, layout, od)
            got_o = N.dequantize_kbit_affine(*ref, k, G, n, layout, od)
            assert got_o.dtype == od and torch.equal(_bits(got_o), _bits(want)), (what, od)


@sim
@pytest.mark.filterwarnings("ignore:overflow encountered in cast:RuntimeWarning")   # fp16 outputs past 65504
@pytest.mark.parametrize("k,dtype,rows,cols,G,fmt,clip", CASES)
def test_affine_bit_exact_with_reference(N, poisoned, k, dtype, rows, cols, G, fmt, clip):
    _check(N, _input(k, dtype, rows, cols, G, fmt, 1000 * k + rows * cols), k, G, fmt, clip)


@sim
def test_affine_ties_and_clip_candidates(N, poisoned):
    """Values on rint's half-way points (x * r = m + 0.5: half to even) and groups whose MSE errors tie across clip
    candidates (the first p wins); through torch.ops with backend="numba_cuda" (registration, CPU under the
    simulator)."""
    import workbench.kbit  # noqa: F401  (declares the ops)
    half = torch.tensor([0.5, 1.5, 2.5, 3.5, -0.5, -1.5, 7.5, 0.0, 1.0, 2.0, 3.0, -3.0, 6.5, 4.5, 5.5, 7.0])
    A = torch.cat([half, half * 0.25, torch.full((32,), 3.0), torch.tensor([1.0, -1.0] * 16), half[:7]])
    ops = torch.ops.workbench
    for k, G, fmt, clip in ((3, 16, "fp32", "mse"), (4, 32, "bf16", "minmax"), (2, 16, "fp16", "mse")):
        for layout in R.LAYOUTS:
            ref = ops.quantize_kbit_affine(A, k, G, layout, fmt, clip, "reference")
            got = ops.quantize_kbit_affine(A, k, G, layout, fmt, clip, "numba_cuda")
            for r, o in zip(ref, got):
                assert torch.equal(_bits(o), _bits(r)), (k, G, fmt, clip, layout, r.dtype)
            want = ops.dequantize_kbit_affine(*ref, k, G, A.numel(), layout, torch.bfloat16, "reference")
            out = ops.dequantize_kbit_affine(*ref, k, G, A.numel(), layout, torch.bfloat16, "numba_cuda")
            assert torch.equal(_bits(out), _bits(want))


_GPU_SCRIPT = r"""
import torch
import workbench.kbit  # noqa: F401  (declares the ops)
from workbench.backends import status
ok, why = status("numba_cuda")
assert ok and why != "CUDA simulator", why
ops = torch.ops.workbench
def bits(t):
    return t.view({1: torch.uint8, 2: torch.int16, 4: torch.int32}[t.element_size()])
cases = [(2, torch.float32, 4099, 32, "fp16", "minmax"), (3, torch.bfloat16, 1000, 40, "fp32", "mse"),
         (4, torch.float16, 777, 96, "bf16", "mse"), (8, torch.float16, 3001, 128, "fp16", "minmax"),
         (4, torch.bfloat16, 16 * 384, 384, "fp16", "mse"), (5, torch.float32, 1, 32, "fp16", "mse"),
         (8, torch.float32, 1 << 20, 64, "bf16", "minmax")]
for k, dtype, n, G, fmt, clip in cases:
    g = torch.Generator().manual_seed(k)
    A = (torch.randn(n, generator=g) * 4 ** torch.randn(n, generator=g) + 0.3).to(dtype)
    if n >= 3 * G:
        A[G:2 * G] = 1.5
        A[2 * G:3 * G] = 0
    for layout in ("bitplane", "dense"):
        ref = ops.quantize_kbit_affine(A, k, G, layout, fmt, clip, "reference")
        got = ops.quantize_kbit_affine(A.cuda(), k, G, layout, fmt, clip, "numba_cuda")
        for r, o in zip(ref, got):
            assert o.is_cuda and torch.equal(bits(o.cpu()), bits(r)), (k, n, G, fmt, clip, layout, r.dtype)
        for dt in (torch.float32, torch.float16, torch.bfloat16):
            want = ops.dequantize_kbit_affine(*ref, k, G, n, layout, dt, "reference")
            out = ops.dequantize_kbit_affine(*[t.cuda() for t in ref], k, G, n, layout, dt, "numba_cuda")
            assert torch.equal(bits(out.cpu()), bits(want)), (k, n, G, fmt, clip, layout, dt)
print("OK")
"""


@pytest.mark.gpu
def test_affine_numba_cuda_on_the_gpu_bit_exact_with_the_cpu_reference():
    """The real kernels (no simulator, a fresh process) against the CPU reference, both layouts, every output
    dtype, group sizes 32..384 and odd ones, a 2**20 tensor (grid-stride loops turn)."""
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_ENABLE_CUDASIM"}
    r = subprocess.run([sys.executable, "-c", _GPU_SCRIPT], env=env, capture_output=True, text=True, timeout=900,
                       cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert r.returncode == 0 and "OK" in r.stdout, r.stdout[-4000:] + r.stderr[-4000:]
