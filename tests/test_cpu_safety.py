"""Compiled-CPU-backend defects of issue 17 (besides the quantizers' NaN handling, see
test_nonfinite.py): LLM.int8() non-finite values and threshold rounding on numba_cpu, tensors that
require grad, unsupported output dtypes, bnb's 4-bit decode of other codes, and numba without a
usable on-disk cache."""
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

import workbench as wb
from workbench import codebooks as cbs
from workbench.backends import get_op, status

CPU_BACKENDS = ["reference", "numba_cpu", "cython_cpu", "bnb"]
COMPILED = ["numba_cpu", "cython_cpu"]
DTYPES = [torch.float32, torch.float16, torch.bfloat16]
NAN, INF = float("nan"), float("inf")
ROOT = Path(__file__).resolve().parents[1]


def _need(backend):
    ok, why = status(backend)
    if not ok:
        pytest.fail(f"{backend} unavailable: {why}")


def _nan_equal(a, b):
    return a.shape == b.shape and torch.equal(torch.isnan(a), torch.isnan(b)) and \
        torch.equal(a.masked_fill(torch.isnan(a), 0), b.masked_fill(torch.isnan(b), 0))


# ------------------------------------------------------------------ LLM.int8() on numba_cpu

def _int8_case(rng, dtype):
    rows = int(torch.randint(2, 40, (1,), generator=rng))
    cols = int(torch.randint(3, 300, (1,), generator=rng))
    A = (torch.randn(rows, cols, generator=rng) * 3).to(dtype)
    # values exactly at bf16(6.01) = 6.0 and just below/above it in every dtype
    for v in (6.0, 6.01, 5.99, -6.0, 6.03125):
        i, j = (int(torch.randint(0, n, (1,), generator=rng)) for n in (rows, cols))
        A[i, j] = v
    return A


def _check_int8(A, threshold):
    got = get_op("numba_cpu", "int8_vectorwise_quant")(A, threshold)
    ref = get_op("reference", "int8_vectorwise_quant")(A, threshold)
    assert torch.equal(got[0], ref[0]), (threshold, int((got[0] != ref[0]).sum()))
    assert _nan_equal(got[1], ref[1]), (threshold, got[1], ref[1])
    if ref[2] is None:
        assert got[2] is None
    else:
        assert torch.equal(got[2], ref[2]), (threshold, got[2], ref[2])


@pytest.mark.parametrize("dtype", DTYPES)
def test_int8_threshold_compared_in_input_dtype(rng, dtype):
    """|a| >= threshold as torch evaluates it: the threshold rounded to A's dtype (6.01 -> 6.0 in
    bf16), so outlier columns, row stats and codes equal the reference (and bitsandbytes)."""
    _need("numba_cpu")
    for _ in range(4):
        A = _int8_case(rng, dtype)
        for t in (0.0, 6.0, 6.01, 5.99, 6.02, 2.5 + float(torch.rand(1, generator=rng))):
            _check_int8(A, t)
    if dtype == torch.bfloat16:  # the case, stated outright
        A = torch.ones(3, 8, dtype=dtype)
        A[1, 5] = 6.0
        codes, stats, cols = get_op("numba_cpu", "int8_vectorwise_quant")(A, 6.01)
        assert cols.tolist() == [5] and codes[:, 5].eq(0).all() and stats[1] == 1.0


@pytest.mark.parametrize("dtype", DTYPES)
def test_int8_nonfinite_matches_reference(rng, dtype):
    """NaN: never an outlier, its row's stat NaN, the row's codes 0. +-Inf: an outlier when
    threshold > 0, else the row's stat Inf and its codes 0. Subnormal/zero rows: codes 0."""
    _need("numba_cpu")
    for _ in range(3):
        A = _int8_case(rng, dtype)
        rows, cols = A.shape
        for v in (NAN, INF, -INF, NAN):
            A[int(torch.randint(0, rows, (1,), generator=rng)), int(torch.randint(0, cols, (1,), generator=rng))] = v
        A[-1] = 0.0  # an all-zero row
        if dtype == torch.float32:
            A[0] = torch.where(torch.isfinite(A[0]), torch.full_like(A[0], 1e-40), A[0])  # 127/stat overflows
        for t in (0.0, 6.01, 1e9):
            _check_int8(A, t)


# ------------------------------------------------------------------ tensors that require grad

@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_parameter_input_every_cpu_backend(rng, backend):
    """An nn.Parameter goes in as it is (the adapters detach; inputs are only read)."""
    _need(backend)
    lin = torch.nn.Linear(97, 33).to(torch.bfloat16)
    w = lin.weight
    assert w.requires_grad
    p, s = wb.quantize_4bit(w, blocksize=64, quant_type="nf4", backend=backend)
    p_ref, s_ref = wb.quantize_4bit(w.detach(), blocksize=64, quant_type="nf4", backend="reference")
    assert torch.equal(p, p_ref) and torch.equal(s.absmax, s_ref.absmax)
    assert torch.equal(wb.dequantize_4bit(p, s, backend=backend), wb.dequantize_4bit(p_ref, s_ref, backend="reference"))
    c, s8 = wb.quantize_blockwise(w, blocksize=256, backend=backend)
    assert c.shape == w.shape and not c.requires_grad
    if backend in COMPILED:  # the kernel level too, including the stochastic quantizer's rand
        cb = cbs.dynamic()
        rand = torch.rand(w.numel(), requires_grad=True)
        got = get_op(backend, "quantize_blockwise_stochastic")(w.reshape(-1), cb, 64, rand)
        ref = get_op("reference", "quantize_blockwise_stochastic")(w.detach().reshape(-1), cb, 64, rand.detach())
        assert torch.equal(got[0], ref[0]) and torch.equal(got[1], ref[1])
        absmax = s.absmax.clone().requires_grad_(True)
        out = get_op(backend, "dequantize_4bit")(p.reshape(-1), absmax, cbs.get("nf4").tensors()[0], 64, w.numel(), torch.float32)
        assert torch.isfinite(out).all()
    assert torch.equal(w.detach(), lin.weight.detach())


def test_numba_int8_parameter_input():
    _need("numba_cpu")
    w = torch.nn.Parameter(torch.randn(5, 40))
    got = get_op("numba_cpu", "int8_vectorwise_quant")(w, 0.0)
    ref = get_op("reference", "int8_vectorwise_quant")(w.detach(), 0.0)
    assert torch.equal(got[0], ref[0]) and torch.equal(got[1], ref[1])


# ------------------------------------------------------------------ unsupported dtypes

@pytest.mark.parametrize("backend", [*COMPILED, "bnb"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.int32, torch.uint8])
def test_dequant_unsupported_out_dtype_is_typeerror(backend, dtype):
    _need(backend)
    cb = cbs.get("nf4")
    table = cb.tensors()[0]
    A = torch.randn(300)
    p, a = get_op("reference", "quantize_4bit")(A, cb, 64)
    with pytest.raises(TypeError, match="float32"):
        get_op(backend, "dequantize_4bit")(p, a, table, 64, 300, dtype)
    dyn = cbs.dynamic()
    c, a8 = get_op("reference", "quantize_blockwise")(A, dyn, 64)
    with pytest.raises(TypeError, match="float32"):
        get_op(backend, "dequantize_blockwise")(c, a8, dyn.tensors()[0], 64, dtype)


@pytest.mark.parametrize("backend", COMPILED)
def test_quant_unsupported_input_dtype_is_typeerror(backend):
    _need(backend)
    with pytest.raises(TypeError, match="float32"):
        get_op(backend, "quantize_4bit")(torch.randn(128, dtype=torch.float64), cbs.get("nf4"), 64)


# ------------------------------------------------------------------ bnb: the state's code table

def test_bnb_dequantize_4bit_uses_the_table(rng):
    """A 4-bit code other than NF4/FP4 is decoded with its own table (bitsandbytes' generic
    decode), not with whichever of NF4/FP4 the sign of table[1] suggests; NF4/FP4 still go to
    bitsandbytes' kernels and equal the reference."""
    _need("bnb")
    dq = get_op("bnb", "dequantize_4bit")
    rdq = get_op("reference", "dequantize_4bit")
    v = np.r_[-1.0, np.sort(torch.rand(14, generator=rng).numpy() * 1.9 - 0.95), 1.0]
    others = [cbs.from_values(v, "random4"), cbs.from_values(-v[::-1], "negated4"),
              cbs.from_values(np.linspace(-1, 1, 16), "linear4"), cbs.get("fp4"), cbs.get("nf4")]
    for cb in others:
        table = cb.tensors()[0]
        for n, bs in ((1000, 64), (999, 32), (4096 + 33, 128), (5000, 4096)):
            A = torch.randn(n, generator=rng)
            p, a = get_op("reference", "quantize_4bit")(A, cb, bs)
            for dtype in DTYPES:
                assert torch.equal(dq(p, a, table, bs, n, dtype), rdq(p, a, table, bs, n, dtype)), (cb.name, n, bs, dtype)


def test_bnb_table_identification_is_exact():
    from workbench.backends.bnb.quant import bnb_quant_type_of_table
    _need("bnb")
    nf4 = cbs.get("nf4").tensors()[0]
    assert bnb_quant_type_of_table(nf4) == "nf4"
    assert bnb_quant_type_of_table(cbs.get("fp4").tensors()[0]) == "fp4"
    bumped = nf4.clone()
    bumped[3] = torch.nextafter(bumped[3], torch.tensor(1.0))
    assert bnb_quant_type_of_table(bumped) is None
    assert bnb_quant_type_of_table(torch.linspace(-1, 1, 16)) is None


# ------------------------------------------------------------------ numba without a usable cache

_CHILD = textwrap.dedent("""
    # every numba_kernels CPU module (all declare cache=True) imports, and a kernel runs, through the
    # adapter the numba_cpu backend registers (kept off the registry so the test pins this fix only)
    import torch
    from numba_kernels.cpu import int8, optim, quant  # noqa: F401  (int8/optim: decoration only)
    from workbench import codebooks as cbs
    from workbench.backends._cpu_quant import bind
    from workbench.backends.reference import quant as ref
    A = torch.randn(1000)
    p, a = bind(quant, "child")["quantize_4bit"](A, cbs.get("nf4"), 64)
    p2, a2 = ref.quantize_4bit(A, cbs.get("nf4"), 64)
    assert torch.equal(p, p2) and torch.equal(a, a2)
    print("CHILD-OK")
""")
_WARNING = "numba cache unusable"


def _run_child(cache_dir: Path, home: Path, unprivileged: bool = False):
    env = dict(os.environ, NUMBA_CACHE_DIR=str(cache_dir), HOME=str(home), XDG_CACHE_HOME=str(home / "cache"),
               # only NUMBA_CACHE_DIR may hold the cache: a read-only install has no writable
               # __pycache__ next to the kernels (and HOME is not writable either, above)
               NUMBA_CACHE_LOCATOR_CLASSES="UserProvidedCacheLocator", PYTHONDONTWRITEBYTECODE="1",
               NUMBA_NUM_THREADS="2")
    preexec = None
    if unprivileged and os.geteuid() == 0:
        # root writes through 0o555: the child keeps uid 0 but loses CAP_DAC_OVERRIDE and
        # CAP_DAC_READ_SEARCH (dropped from the bounding set before exec), so modes apply to it
        def preexec():
            import ctypes
            libc = ctypes.CDLL(None, use_errno=True)
            for cap in (1, 2):
                if libc.prctl(24, cap, 0, 0, 0) != 0:  # PR_CAPBSET_DROP
                    os._exit(77)
    r = subprocess.run([sys.executable, "-c", _CHILD], cwd=ROOT, env=env, capture_output=True, text=True,
                       timeout=600, preexec_fn=preexec)
    if r.returncode == 77 and preexec is not None:
        pytest.skip("running as root and cannot drop CAP_DAC_OVERRIDE: no read-only directory possible")
    return r


def _read_only(path: Path):
    for p in [path, *path.rglob("*")]:
        p.chmod(0o555 if p.is_dir() else 0o444)


@pytest.fixture(scope="module")
def warm_cache(tmp_path_factory):
    """A NUMBA_CACHE_DIR filled by a first process (the normal, writable case: no warning)."""
    base = tmp_path_factory.mktemp("numba-cache")
    cache, home = base / "cache", base / "home"
    home.mkdir()
    r = _run_child(cache, home)
    assert r.returncode == 0 and "CHILD-OK" in r.stdout, r.stderr[-3000:]
    assert _WARNING not in r.stderr
    assert list(cache.rglob("*.nbi")), "the first run wrote no cache index"
    return cache


def test_numba_read_only_warm_cache_dir(warm_cache, tmp_path):
    import shutil
    cache = tmp_path / "ro-cache"
    shutil.copytree(warm_cache, cache)
    home = tmp_path / "home"
    home.mkdir()
    _read_only(cache)
    _read_only(home)
    try:
        r = _run_child(cache, home, unprivileged=True)
    finally:
        for p in [cache, home, *cache.rglob("*"), *home.rglob("*")]:
            p.chmod(0o755)
    assert r.returncode == 0 and "CHILD-OK" in r.stdout, r.stderr[-3000:]
    lines = [ln for ln in r.stderr.splitlines() if _WARNING in ln]
    assert len(lines) == 1, r.stderr[-3000:]
    assert "RuntimeWarning" in lines[0] and "cannot cache" in lines[0]
    assert "Traceback" not in r.stderr


def test_numba_corrupted_cache(warm_cache, tmp_path):
    import shutil
    cache = tmp_path / "bad-cache"
    shutil.copytree(warm_cache, cache)
    files = [*cache.rglob("*.nbi"), *cache.rglob("*.nbc")]
    assert files
    for i, f in enumerate(files):
        data = f.read_bytes()
        # truncated after the version header, or garbage: both made the first call die before
        f.write_bytes(data[: max(1, len(data) // 3)] if i % 2 else data[:40] + b"\x80\x04garbage" * 8)
    r = _run_child(cache, tmp_path)
    assert r.returncode == 0 and "CHILD-OK" in r.stdout, r.stderr[-3000:]
    lines = [ln for ln in r.stderr.splitlines() if _WARNING in ln]
    assert len(lines) == 1, r.stderr[-3000:]
    assert "Traceback" not in r.stderr
