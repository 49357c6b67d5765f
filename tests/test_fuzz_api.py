"""Property-based fuzzing of the public API on every available CPU backend (issue 17): the quantizers, codebooks,
LLM.int8(), k-bit, the 4-bit matmul and the optimizers' states.

Each example builds an input (valid or not), calls the public op with ``backend="reference"``
and with the backend under test, and requires

* a clear error (QuantInputError, CodebookError, OptimizerStateError, or TypeError with a message) from both, or
* results equal to the reference backend's, bit for bit (blocks holding NaN/Inf under
  ``nan_policy="propagate"`` are undefined and not compared; bitsandbytes' native 8-bit
  quantizer may differ by one code step, docs/ARCHITECTURE.md; the 4-bit matmul, whose backends
  sum in their own order, within the reference's stated bound),

never another exception and never a crash. Inputs must come back unmodified. Inputs known to
be valid must succeed on the reference; inputs known to be invalid must be rejected.

CI runs this file twice (Makefile ``test``): once as part of the suite and once against the
bounds-checked builds (``KBIT_NATIVE_DEBUG=1`` Cython debug extensions, ``NUMBA_BOUNDSCHECK=1``
with its own ``NUMBA_CACHE_DIR``), where an out-of-bounds access raises instead of corrupting
memory. Derandomized (the same examples on every run), no shrinking (bounded CI time; the
failing example is printed as generated).
"""
from __future__ import annotations

import json
import math
import os

import numpy as np
import pytest
import torch

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, Phase, given, note, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

import workbench as wb  # noqa: E402
from workbench import codebooks as cbs  # noqa: E402
from workbench import int8 as i8  # noqa: E402
from workbench.backends import ops_of, status  # noqa: E402
from workbench.codebooks import Codebook, CodebookError  # noqa: E402
from workbench.matmul import gemm_4bit, gemv_4bit, matmul_4bit  # noqa: E402
import workbench.optim as wopt  # noqa: E402
from workbench.optim.state_check import OptimizerStateError  # noqa: E402
from workbench.quant_state import QuantState, pack_dict_to_tensor  # noqa: E402
from workbench.validation import QuantInputError  # noqa: E402

CLEAR = (QuantInputError, CodebookError, TypeError, OptimizerStateError)
FLOATS = (torch.float32, torch.float16, torch.bfloat16)
BAD_DTYPES = (torch.float64, torch.int32, torch.int8, torch.uint8, torch.bool, torch.complex64, torch.int64)
BLOCKSIZES = (32, 64, 128, 256, 512, 1024, 2048, 4096)
BAD_BLOCKSIZES = (0, 16, 48, 100, 8192, -64, "64", 64.0, True, None)
CPU_BACKENDS = ("reference", "numba_cpu", "cython_cpu", "bnb")

_BASE = settings(derandomize=True, database=None, deadline=None, print_blob=False,
                 phases=(Phase.explicit, Phase.generate), suppress_health_check=list(HealthCheck))


def fuzz(max_examples: int):
    """Reproducible CI settings: derandomized, no example database, no deadline, no shrinking."""
    return settings(_BASE, max_examples=max_examples)


def _backends(op: str) -> list[str]:
    out = []
    for b in CPU_BACKENDS:
        try:
            if status(b)[0] and op in ops_of(b):
                out.append(b)
        except Exception:  # noqa: BLE001  a backend that cannot even report is not fuzzed here
            pass
    return out


def backends_for(*ops: str):
    names = sorted(set.intersection(*(set(_backends(op)) for op in ops)), key=CPU_BACKENDS.index)
    return pytest.mark.parametrize("backend", names)


# ------------------------------------------------------------------------------------ oracle


class Err:
    def __init__(self, e: BaseException):
        self.e = e

    def __repr__(self):
        return f"{type(self.e).__name__}({self.e})"


def outcome(fn):
    """fn()'s result, or Err for a clear error; any other exception propagates (a test failure)."""
    try:
        return fn()
    except CLEAR as e:
        msg = str(e).strip()
        assert msg and msg != "None", f"{type(e).__name__} without a message"
        return Err(e)


def _bits(t: torch.Tensor) -> torch.Tensor:
    t = t.detach().cpu().contiguous()
    if t.dtype.is_floating_point:
        it = {8: torch.int64, 4: torch.int32, 2: torch.int16, 1: torch.int8}[t.element_size()]
        return t.view(it)
    return t


def same_tensor(a: torch.Tensor, b: torch.Tensor, what: str, mask: torch.Tensor | None = None, step: int = 0):
    assert isinstance(b, torch.Tensor), f"{what}: reference gives a tensor, backend {type(b).__name__}"
    assert a.dtype == b.dtype, f"{what}: dtype {b.dtype}, reference {a.dtype}"
    assert a.shape == b.shape, f"{what}: shape {tuple(b.shape)}, reference {tuple(a.shape)}"
    a, b = a.detach().cpu().reshape(-1), b.detach().cpu().reshape(-1)
    if mask is not None:
        a, b = a[mask], b[mask]
    if a.dtype.is_floating_point:
        na, nb = torch.isnan(a), torch.isnan(b)
        assert torch.equal(na, nb), f"{what}: NaN at {int((na != nb).sum())} other positions than the reference"
        a, b = a[~na], b[~na]
    if step:
        d = (a.long() - b.long()).abs()
        assert d.numel() == 0 or int(d.max()) <= step, f"{what}: {int((d > step).sum())} codes more than {step} step apart"
        return
    eq = _bits(a) == _bits(b)
    assert bool(eq.all()), (f"{what}: {int((~eq).sum())} of {eq.numel()} differ from the reference "
                            f"(first at {int((~eq).nonzero()[0])})")


def bnb_codes_close(rc: torch.Tensor, gc: torch.Tensor, table: torch.Tensor, mask=None, zero=None):
    """bitsandbytes' native 8-bit quantizer may pick a neighbouring code within one LUT cell (2/65535)
    of a threshold: codes one step apart, or values two cells apart where the code is dense. In an
    all-zero block (``zero``: absmax 0 per element) any code dequantizes to +-0, and bitsandbytes emits
    code 0 there: those elements are not compared."""
    assert rc.shape == gc.shape and rc.dtype == gc.dtype, "codes: layout differs from the reference"
    r, g = rc.reshape(-1).long(), gc.reshape(-1).long()
    keep = torch.ones_like(r, dtype=torch.bool) if mask is None else mask.reshape(-1).clone()
    if zero is not None:
        keep &= ~zero.reshape(-1)
    r, g = r[keep], g[keep]
    t = table.float().cpu()
    ok = ((r - g).abs() <= 1) | ((t[r] - t[g]).abs() <= 4 / 65535)
    assert bool(ok.all()), f"codes: {int((~ok).sum())} codes beyond bitsandbytes' LUT tolerance"


def bnb_nested_absmax_close(a: QuantState, b: QuantState):
    """Double-quantized absmax through bitsandbytes' native 8-bit quantizer: codes may differ within
    its LUT tolerance (and it codes an all-zero nested block as code 0), so the decoded absmax values
    are compared, within 4/65535 of each nested block's scale."""
    da = wb.dequantize_blockwise(a.absmax, a.state2, backend="reference") + a.offset
    db = wb.dequantize_blockwise(b.absmax, b.state2, backend="reference") + b.offset
    tol = (4 / 65535) * a.state2.absmax.float().repeat_interleave(a.state2.blocksize)[:da.numel()] + 1e-12
    assert bool(((da - db).abs() <= tol).all()), "state.absmax (nested): decoded values beyond bitsandbytes' LUT tolerance"


def same_state(a: QuantState, b: QuantState, what: str, absmax_mask=None, compare_absmax=True):
    assert isinstance(b, QuantState), f"{what}: not a QuantState ({type(b).__name__})"
    for f in ("blocksize", "dtype", "quant_type", "nested"):
        assert getattr(a, f) == getattr(b, f), f"{what}.{f}: {getattr(b, f)!r}, reference {getattr(a, f)!r}"
    assert (a.shape is None) == (b.shape is None) and (a.shape is None or tuple(a.shape) == tuple(b.shape)), \
        f"{what}.shape: {b.shape}, reference {a.shape}"
    same_tensor(a.code, b.code, f"{what}.code")
    if compare_absmax:
        same_tensor(a.absmax, b.absmax, f"{what}.absmax", absmax_mask)
        if a.nested:
            same_tensor(a.offset, b.offset, f"{what}.offset")
            same_state(a.state2, b.state2, f"{what}.state2")
    else:
        assert a.absmax.shape == b.absmax.shape and a.absmax.dtype == b.absmax.dtype, f"{what}.absmax layout"


def agree(ref, got, what: str) -> bool:
    """Both clear errors (False) or both results (True; the caller compares them)."""
    if isinstance(ref, Err) or isinstance(got, Err):
        assert isinstance(ref, Err) and isinstance(got, Err), f"{what}: reference -> {ref!r}, backend -> {got!r}"
        return False
    return True


def same_dequant(ref: torch.Tensor, got: torch.Tensor, backend: str, what: str):
    """Dequantized values equal to the reference, bit for bit; for bitsandbytes (the oracle) two
    upstream differences are stated instead: its kernels return +0.0 for FP4's -0.0 code, and its
    bf16 dequantize gives 0, not NaN, in a block whose absmax is NaN."""
    if backend != "bnb":
        same_tensor(ref, got, what)
        return
    assert ref.dtype == got.dtype and ref.shape == got.shape, what
    keep = ~torch.isnan(ref.cpu())
    a, b = ref.cpu()[keep], got.cpu()[keep]
    assert bool((a == b).all()), f"{what}: {int((a != b).sum())} values differ from the reference (+-0 equal)"


def same_tree(a, b, what: str):
    if isinstance(a, torch.Tensor):
        same_tensor(a, b, what)
    elif isinstance(a, QuantState):
        same_state(a, b, what)
    elif isinstance(a, (tuple, list)):
        assert isinstance(b, (tuple, list)) and len(a) == len(b), f"{what}: {b!r} vs reference {a!r}"
        for i, (x, y) in enumerate(zip(a, b)):
            same_tree(x, y, f"{what}[{i}]")
    else:
        assert a == b, f"{what}: {b!r}, reference {a!r}"


def unchanged(before, after, what: str):
    if isinstance(before, torch.Tensor):
        assert after.dtype == before.dtype and after.shape == before.shape, f"{what} was modified (layout)"
        assert torch.equal(_bits(before), _bits(after)), f"{what} was modified by the call"


def snapshot(t):
    return t.detach().clone() if isinstance(t, torch.Tensor) else None


# -------------------------------------------------------------------------------- strategies

SPECIALS = (float("nan"), float("inf"), -float("inf"), -0.0, 0.0, 1e-45, 3e38, -65504.0, 1e-40)


@st.composite
def shapes(draw, max_numel: int = 2500):
    kind = draw(st.sampled_from(["1d", "1d", "2d", "3d", "scalar"]))
    if kind == "scalar":
        return ()
    if kind == "1d":
        return (draw(st.one_of(st.integers(1, 70), st.integers(1, max_numel))),)
    nd = 2 if kind == "2d" else 3
    dims = draw(st.lists(st.integers(1, 64), min_size=nd, max_size=nd))
    while math.prod(dims) > max_numel:
        dims[dims.index(max(dims))] //= 2
    return tuple(dims)


@st.composite
def float_tensors(draw, dtypes=FLOATS, finite: bool | None = None, max_numel: int = 2500):
    """A float tensor in some layout: contiguous, transposed, strided, expanded, offset, with grad."""
    dtype = draw(st.sampled_from(dtypes))
    shape = draw(shapes(max_numel))
    layout = draw(st.sampled_from(["contiguous", "contiguous", "transposed", "strided", "expanded", "offset"]))
    scale = draw(st.sampled_from([1.0, 1.0, 1e-3, 1e4, 1e-39, 0.0]))
    seed = draw(st.integers(0, 2 ** 31 - 1))
    if finite is None:
        specials = draw(st.lists(st.tuples(st.integers(0, 10 ** 6), st.sampled_from(SPECIALS)), max_size=3))
    elif finite:
        specials = draw(st.lists(st.tuples(st.integers(0, 10 ** 6), st.sampled_from(SPECIALS[3:])), max_size=3))
    else:
        specials = draw(st.lists(st.tuples(st.integers(0, 10 ** 6), st.sampled_from(SPECIALS[:3])), min_size=1,
                                 max_size=3))
    grad = draw(st.booleans()) if dtype.is_floating_point else False
    g = torch.Generator().manual_seed(seed)
    n = math.prod(shape)
    if layout == "transposed" and len(shape) >= 2:
        base_shape = shape[::-1]
    elif layout == "strided" and shape:
        base_shape = shape[:-1] + (2 * shape[-1],)
    elif layout == "expanded" and shape:
        base_shape = (1,) + shape[1:]
    elif layout == "offset":
        base_shape = (n + 3,)
    else:
        base_shape = shape
    base = torch.randn(base_shape, generator=g) * scale
    flat = base.view(-1)
    for pos, v in specials:
        if flat.numel():
            flat[pos % flat.numel()] = v
    if finite:  # scaling/casting must not overflow a value a "finite" input promised
        base = base.clamp(-60000.0, 60000.0)
    base = base.to(dtype) if dtype != torch.bool else base > 0
    if layout == "transposed" and len(shape) >= 2:
        A = base.permute(*reversed(range(len(shape))))
    elif layout == "strided" and shape:
        A = base[..., ::2]
    elif layout == "expanded" and shape:
        A = base.expand(shape)
    elif layout == "offset":
        A = base[3:].view(shape)
    else:
        A = base
    assert tuple(A.shape) == shape
    if finite is False and _is_finite(A):  # the layout dropped the planted values: plant one it keeps
        if layout == "offset":
            base[3] = specials[0][1]
        else:  # A's first element is base's first element in every other layout
            base[(0,) * base.dim()] = specials[0][1]
        assert not _is_finite(A)
    if grad:  # a leaf that requires grad, in the same (possibly non-contiguous) layout
        A = A.detach().requires_grad_(True)
    note(f"A: {dtype} shape {shape} layout {layout} scale {scale} seed {seed} specials {specials} grad {grad}")
    return A


def _is_finite(A: torch.Tensor) -> bool:
    return bool(torch.isfinite(A.detach().float()).all())


def finite_block_mask(A: torch.Tensor, blocksize: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(element mask, block mask): the blocks of A (flattened in logical order) without NaN/Inf."""
    flat = A.detach().float().reshape(-1)
    nb = -(-flat.numel() // blocksize)
    pad = torch.zeros(nb * blocksize)
    pad[: flat.numel()] = flat
    blocks = torch.isfinite(pad).view(nb, blocksize).all(1)
    return blocks.repeat_interleave(blocksize)[: flat.numel()], blocks


def _table_tensor(kind: str, draw) -> torch.Tensor | list:
    g = torch.Generator().manual_seed(draw(st.integers(0, 2 ** 31 - 1)))
    if kind == "sorted256":
        return torch.sort(torch.rand(256, generator=g) * 2 - 1).values
    if kind == "sorted16":
        return torch.sort(torch.rand(16, generator=g) * 2 - 1).values
    if kind == "sorted2":
        return torch.tensor([-1.0, 1.0])
    if kind == "unsorted256":
        return torch.rand(256, generator=g) * 2 - 1
    if kind == "nan256":
        t = torch.linspace(-1, 1, 256)
        t[draw(st.integers(0, 255))] = float("nan")
        return t
    if kind == "size7":
        return torch.linspace(-1, 1, 7)
    if kind == "size512":
        return torch.linspace(-1, 1, 512)
    if kind == "2d":
        return torch.linspace(-1, 1, 256).view(16, 16)
    if kind == "float64":
        return torch.linspace(-1, 1, 256, dtype=torch.float64)
    if kind == "int":
        return torch.arange(256, dtype=torch.int32)
    if kind == "list":
        return torch.linspace(-1, 1, 256).tolist()
    if kind == "empty":
        return torch.empty(0)
    raise AssertionError(kind)


VALID_CODE_KINDS = ("default", "dynamic", "dynamic-unsigned", "linear8", "nf4", "fp4", "linear4", "e2m1",
                    "custom-values", "sorted256", "sorted16", "sorted2")
INVALID_CODE_KINDS = ("nan256", "size7", "size512", "2d", "int", "list", "empty", "unknown-name", "float64")


def blockwise_code(draw, kind: str):
    """(kwargs for quantize_blockwise, whether bnb's 256-entry kernel can run it)."""
    if kind == "default":
        return {}, True
    if kind in ("dynamic", "dynamic-unsigned", "linear8"):
        return {"codebook": kind}, True
    if kind in ("nf4", "fp4", "linear4", "e2m1"):
        return {"codebook": kind}, False
    if kind == "custom-values":
        m = draw(st.sampled_from([2, 3, 16, 100, 256]))
        v = np.unique(np.random.default_rng(draw(st.integers(0, 2 ** 31 - 1))).uniform(-1, 1, m).astype(np.float32))
        return {"codebook": cbs.from_values(v, "fuzz", pad_to_pow2=True)}, False
    if kind == "unknown-name":
        return {"codebook": "no-such-codebook"}, False
    t = _table_tensor(kind, draw)
    return {"code": t}, kind == "sorted256"


# ----------------------------------------------------------------------------- 8-bit blockwise


@backends_for("quantize_blockwise", "dequantize_blockwise")
@fuzz(30)
@given(data=st.data())
def test_blockwise_valid_roundtrip(backend, data):
    """Valid inputs: the reference succeeds; the backend's codes, state and dequantized values equal it."""
    draw = data.draw
    A = draw(float_tensors(finite=draw(st.sampled_from([True, True, None]))))
    bs = draw(st.sampled_from(BLOCKSIZES))
    nested = draw(st.booleans())
    kind = draw(st.sampled_from(VALID_CODE_KINDS))
    kw, bnb_ok = blockwise_code(draw, kind)
    policy = "raise" if _is_finite(A) else "propagate"
    out_dtype = draw(st.sampled_from([None, *FLOATS]))
    note(f"blocksize {bs} nested {nested} code {kind} nan_policy {policy} dtype {out_dtype}")
    before = snapshot(A)
    ref = outcome(lambda: wb.quantize_blockwise(A, blocksize=bs, nested=nested, nan_policy=policy,
                                                backend="reference", **kw))
    assert not isinstance(ref, Err), f"reference rejects a valid input: {ref!r}"
    unchanged(before, A, "A")
    if backend == "bnb" and not bnb_ok:
        return
    got = outcome(lambda: wb.quantize_blockwise(A, blocksize=bs, nested=nested, nan_policy=policy,
                                                backend=backend, **kw))
    unchanged(before, A, "A")
    assert agree(ref, got, "quantize_blockwise")
    (rc, rs), (gc, gs) = ref, got
    emask, bmask = finite_block_mask(A, bs)
    if backend == "bnb":  # its native 8-bit quantizer rounds through a 65536-cell LUT (ARCHITECTURE.md)
        a = A.detach().float().cpu().reshape(-1)
        nb = -(-a.numel() // bs)
        blockmax = torch.nn.functional.pad(a.abs(), (0, nb * bs - a.numel())).view(nb, bs).amax(dim=1)
        zero = (blockmax == 0).repeat_interleave(bs)[:a.numel()]
        bnb_codes_close(rc, gc, rs.code, emask if policy == "propagate" else None, zero)
    else:
        same_tensor(rc, gc, "codes", emask if policy == "propagate" else None)
    amask = bmask if policy == "propagate" else None
    if backend == "bnb" and not nested:  # all-zero blocks: its native kernel stores absmax 0, its torch kernel
        live = rs.absmax.cpu() > 1e-38     # (our spec) the clamped 1e-38
        amask = live if amask is None else (amask & live)
    same_state(rs, gs, "state", absmax_mask=amask,
               compare_absmax=not (nested and (policy == "propagate" or backend == "bnb")))
    if nested and backend == "bnb" and policy == "raise":
        bnb_nested_absmax_close(rs, gs)
    # dequantize the reference's codes and state on both backends
    rs_before = snapshot(rs.absmax)
    d_ref = outcome(lambda: wb.dequantize_blockwise(rc, rs, dtype=out_dtype, backend="reference"))
    assert not isinstance(d_ref, Err), f"reference cannot dequantize its own output: {d_ref!r}"
    d_got = outcome(lambda: wb.dequantize_blockwise(rc, rs, dtype=out_dtype, backend=backend))
    unchanged(rs_before, rs.absmax, "quant_state.absmax")
    assert agree(d_ref, d_got, "dequantize_blockwise")
    same_dequant(d_ref, d_got, backend, "dequantized")
    assert d_ref.shape == A.shape and d_ref.dtype == (out_dtype or A.dtype)


@backends_for("quantize_blockwise")
@fuzz(25)
@given(data=st.data())
def test_blockwise_invalid_input(backend, data):
    """Invalid A, blocksize, nan_policy or code: a clear error, the same on every backend."""
    draw = data.draw
    what = draw(st.sampled_from(["dtype", "empty", "not-a-tensor", "blocksize", "nonfinite", "nan_policy",
                                 "code", "meta"]))
    A = torch.randn(draw(st.integers(1, 600)))
    bs, kw, policy = draw(st.sampled_from(BLOCKSIZES)), {}, "raise"
    if what == "dtype":
        A = A.to(draw(st.sampled_from(BAD_DTYPES)))
    elif what == "empty":
        A = torch.empty(draw(st.sampled_from([(0,), (0, 5), (3, 0)])), dtype=draw(st.sampled_from(FLOATS)))
    elif what == "not-a-tensor":
        A = draw(st.sampled_from([A.tolist(), A.numpy(), None, 1.5, "A"]))
    elif what == "blocksize":
        bs = draw(st.sampled_from(BAD_BLOCKSIZES))
    elif what == "nonfinite":
        A = draw(float_tensors(finite=False))
    elif what == "nan_policy":
        policy = draw(st.sampled_from(["ignore", None, "RAISE", 0]))
    elif what == "code":
        kw, _ = blockwise_code(draw, draw(st.sampled_from(INVALID_CODE_KINDS)))
    elif what == "meta":
        A = torch.empty(100, device="meta")
    note(f"invalid {what}: blocksize {bs!r} nan_policy {policy!r} code {kw!r}"[:300])
    before = snapshot(A)
    ref = outcome(lambda: wb.quantize_blockwise(A, blocksize=bs, nan_policy=policy, backend="reference", **kw))
    assert isinstance(ref, Err), f"reference accepts an invalid {what}"
    got = outcome(lambda: wb.quantize_blockwise(A, blocksize=bs, nan_policy=policy, backend=backend, **kw))
    assert isinstance(got, Err), f"backend accepts an invalid {what}"
    if before is not None and before.device.type != "meta":
        unchanged(before, A, "A")


@backends_for("quantize_blockwise")
@pytest.mark.parametrize("kind", INVALID_CODE_KINDS)
def test_blockwise_invalid_code_table(backend, kind):
    """Every broken code table (the fuzz above samples them): a clear error on every backend."""
    kw, _ = blockwise_code(lambda strategy: 0, kind)  # every draw (a seed, a position) is 0
    A = torch.randn(300)
    got = outcome(lambda: wb.quantize_blockwise(A, blocksize=64, backend=backend, **kw))
    assert isinstance(got, Err), f"quantize_blockwise accepts a broken code table ({kind})"


NONFINITE = {"all-nan": [float("nan")] * 51, "nan-first": [float("nan"), 1.0, 2.0], "nan-last": [1.0, 2.0, float("nan")],
             "inf": [1.0, float("inf"), 2.0], "-inf-only": [-float("inf")]}


@backends_for("quantize_blockwise", "quantize_4bit")
@pytest.mark.parametrize("pattern", sorted(NONFINITE))
@pytest.mark.parametrize("dtype", FLOATS, ids=str)
def test_nonfinite_rejected_on_every_backend(backend, pattern, dtype):
    """nan_policy='raise' rejects NaN/Inf whatever the backend's absmax does with them; the default
    ('propagate') flags them in the state."""
    A = torch.tensor(NONFINITE[pattern]).to(dtype)
    for op in (lambda **kw: wb.quantize_blockwise(A, blocksize=64, backend=backend, **kw),
               lambda **kw: wb.quantize_4bit(A, blocksize=64, quant_type="nf4", backend=backend, **kw)):
        got = outcome(lambda: op(nan_policy="raise"))
        assert isinstance(got, Err) and isinstance(got.e, QuantInputError) and "non-finite" in str(got.e), \
            f"non-finite input ({pattern}, {dtype}) accepted under nan_policy='raise': {got!r}"[:300]
        assert op()[1].has_nonfinite(), f"non-finite input ({pattern}, {dtype}) not flagged by the default"


def _mutate_state(draw, qs: QuantState, A: torch.Tensor, four_bit: bool):
    """One corruption of a valid state (or of the codes A). Returns (A, qs, description)."""
    qs = QuantState(absmax=qs.absmax.clone(), shape=qs.shape, code=qs.code.clone(), blocksize=qs.blocksize,
                    quant_type=qs.quant_type, dtype=qs.dtype, offset=qs.offset, state2=qs.state2)
    if qs.nested:
        s2 = qs.state2
        qs.state2 = QuantState(absmax=s2.absmax.clone(), code=s2.code.clone(), blocksize=s2.blocksize, dtype=s2.dtype)
    options = ["absmax-short", "absmax-empty", "absmax-long", "absmax-2d", "absmax-dtype", "absmax-list",
               "absmax-strided", "absmax-nonfinite", "code-size", "code-2d", "code-dtype", "code-none",
               "code-nan", "blocksize", "dtype", "A-short", "A-long", "A-dtype", "A-strided", "A-2d"]
    if four_bit:
        options += ["shape", "shape-none", "shape-bad", "code-256"]
    if qs.nested:
        options += ["nested-absmax-short", "nested-code-size", "offset-none", "offset-2", "state2-none",
                    "nested-blocksize", "nested-absmax-dtype"]
    m = draw(st.sampled_from(options))
    k = draw(st.integers(1, 5))
    if m == "absmax-short":
        qs.absmax = qs.absmax[:-k] if qs.absmax.numel() > k else qs.absmax[:0]
    elif m == "absmax-empty":
        qs.absmax = qs.absmax[:0]
    elif m == "absmax-long":
        qs.absmax = torch.cat([qs.absmax, qs.absmax[:1].repeat(k)])
    elif m == "absmax-2d":
        qs.absmax = qs.absmax.view(1, -1) if draw(st.booleans()) else qs.absmax.view(-1, 1)
    elif m == "absmax-dtype":
        qs.absmax = qs.absmax.to(draw(st.sampled_from([torch.float16, torch.float64, torch.int32, torch.uint8,
                                                        torch.float32])))
    elif m == "absmax-list":
        qs.absmax = qs.absmax.tolist()
    elif m == "absmax-strided":
        qs.absmax = torch.stack([qs.absmax, qs.absmax], 1)[:, 0]
    elif m == "absmax-nonfinite":
        if not qs.nested and qs.absmax.numel():
            qs.absmax[draw(st.integers(0, qs.absmax.numel() - 1))] = draw(st.sampled_from(SPECIALS[:3]))
    elif m == "code-size":
        qs.code = qs.code[: draw(st.sampled_from([0, 1, 7, 15, 17]))] if qs.code.numel() > 17 else \
            torch.cat([qs.code, qs.code[:k]])
    elif m == "code-256":
        qs.code = torch.linspace(-1, 1, 256)
    elif m == "code-2d":
        qs.code = qs.code.view(2, -1)
    elif m == "code-dtype":
        qs.code = qs.code.to(draw(st.sampled_from([torch.float64, torch.float16, torch.int64])))
    elif m == "code-none":
        qs.code = None
    elif m == "code-nan":
        qs.code[draw(st.integers(0, qs.code.numel() - 1))] = float("nan")
    elif m == "blocksize":
        qs.blocksize = draw(st.sampled_from(BLOCKSIZES + BAD_BLOCKSIZES))
    elif m == "dtype":
        qs.dtype = draw(st.sampled_from([torch.float64, torch.int32, None, "float32", *FLOATS]))
    elif m == "shape":
        n = math.prod(qs.shape)
        qs.shape = torch.Size([max(0, n + draw(st.sampled_from([-2, -1, 1, 2, 64, -64])))])
    elif m == "shape-none":
        qs.shape = None
    elif m == "shape-bad":
        qs.shape = draw(st.sampled_from(["abc", (-1, 4), (2.5,), [None], 7]))
    elif m == "A-short":
        A = A.reshape(-1)[:-k] if A.numel() > k else A.reshape(-1)[:0]
    elif m == "A-long":
        A = torch.cat([A.reshape(-1), A.reshape(-1)[:1].repeat(k)])
    elif m == "A-dtype":
        A = A.to(draw(st.sampled_from([torch.int8, torch.float32, torch.int32, torch.bool, torch.float16])))
    elif m == "A-strided":
        A = torch.stack([A.reshape(-1), A.reshape(-1)], 1)[:, 0]
    elif m == "A-2d":
        A = A.reshape(1, -1) if draw(st.booleans()) else A.reshape(-1, 1)
    elif m == "nested-absmax-short":
        qs.state2.absmax = qs.state2.absmax[:-1]
    elif m == "nested-code-size":
        qs.state2.code = qs.state2.code[: draw(st.sampled_from([0, 16, 255]))]
    elif m == "offset-none":
        qs.offset = None
    elif m == "offset-2":
        qs.offset = qs.offset.reshape(1).repeat(2)
    elif m == "state2-none":
        qs.state2 = None
    elif m == "nested-blocksize":
        qs.state2.blocksize = draw(st.sampled_from(BLOCKSIZES + BAD_BLOCKSIZES))
    elif m == "nested-absmax-dtype":
        qs.state2.absmax = qs.state2.absmax.to(torch.float16)
    return A, qs, m


@backends_for("dequantize_blockwise")
@fuzz(40)
@given(data=st.data())
def test_dequantize_blockwise_corrupted_state(backend, data):
    """A corrupted state or codes: a clear error, or the reference's result (never a crash)."""
    draw = data.draw
    A = draw(float_tensors(dtypes=(torch.float32,), finite=True, max_numel=2000))
    bs = draw(st.sampled_from(BLOCKSIZES))
    nested = draw(st.booleans())
    codes, qs = wb.quantize_blockwise(A, blocksize=bs, nested=nested, backend="reference")
    codes, qs, m = _mutate_state(draw, qs, codes, four_bit=False)
    use_state = draw(st.booleans()) or nested
    note(f"blocksize {bs} nested {nested} mutation {m} via {'quant_state' if use_state else 'absmax=/code='}")
    if use_state:
        def call(b):
            return wb.dequantize_blockwise(codes, qs, backend=b)
    else:
        def call(b):
            return wb.dequantize_blockwise(codes, absmax=qs.absmax, code=qs.code, blocksize=qs.blocksize,
                                           dtype=qs.dtype, backend=b)
    before = [snapshot(x) for x in (codes, qs.absmax)]
    ref = outcome(lambda: call("reference"))
    got = ref if backend == "reference" else outcome(lambda: call(backend))
    unchanged(before[0], codes, "A")
    unchanged(before[1], qs.absmax, "quant_state.absmax")
    if agree(ref, got, f"dequantize_blockwise({m})"):
        same_tensor(ref, got, "dequantized")


# ------------------------------------------------------------------------------------- 4-bit


FOUR_BIT = [("quant_type", "nf4"), ("quant_type", "fp4"), ("codebook", "nf4"), ("codebook", "af4"),
            ("codebook", "e2m1"), ("codebook", "int4-asym"), ("codebook", "linear4"), ("custom", None)]


def four_bit_kwargs(draw):
    how, name = draw(st.sampled_from(FOUR_BIT))
    if how == "quant_type":
        return {"quant_type": name}, True
    if how == "codebook":
        return {"codebook": name}, name == "nf4"
    v = np.unique(np.random.default_rng(draw(st.integers(0, 2 ** 31 - 1))).uniform(-1, 1, 16).astype(np.float32))
    if draw(st.booleans()):
        return {"codebook": cbs.from_values(v, "fuzz4", pad_to_pow2=True)}, False
    return {"codebook": cbs.from_table(np.resize(v, 16), "fuzz4-table")}, False


@backends_for("quantize_4bit", "dequantize_4bit")
@fuzz(30)
@given(data=st.data())
def test_4bit_valid_roundtrip(backend, data):
    draw = data.draw
    A = draw(float_tensors(finite=draw(st.sampled_from([True, True, None]))))
    bs = draw(st.sampled_from(BLOCKSIZES))
    compress = draw(st.booleans())
    kw, bnb_ok = four_bit_kwargs(draw)
    storage = draw(st.sampled_from([torch.uint8, torch.uint8, torch.int8]))
    policy = "raise" if _is_finite(A) else "propagate"
    out_dtype = draw(st.sampled_from([None, *FLOATS]))
    note(f"blocksize {bs} compress {compress} {kw} storage {storage} nan_policy {policy} dtype {out_dtype}")
    before = snapshot(A)

    def call(b):
        return wb.quantize_4bit(A, blocksize=bs, compress_statistics=compress, quant_storage=storage,
                                nan_policy=policy, backend=b, **kw)
    ref = outcome(lambda: call("reference"))
    unchanged(before, A, "A")
    assert not isinstance(ref, Err), f"reference rejects a valid input: {ref!r}"
    if backend == "bnb" and not bnb_ok:
        return
    got = ref if backend == "reference" else outcome(lambda: call(backend))
    unchanged(before, A, "A")
    if not agree(ref, got, "quantize_4bit"):
        return
    (rp, rs), (gp, gs) = ref, got
    emask, bmask = finite_block_mask(A, bs)
    if policy == "propagate":
        bytes_mask = emask[::2]
        same_tensor(rp.view(torch.uint8), gp.view(torch.uint8), "packed", bytes_mask)
    else:
        same_tensor(rp, gp, "packed")
    same_state(rs, gs, "state", absmax_mask=bmask if policy == "propagate" else None,
               compare_absmax=not (compress and (policy == "propagate" or backend == "bnb")))
    if compress and backend == "bnb" and policy == "raise":
        bnb_nested_absmax_close(rs, gs)
    rs_before = snapshot(rs.absmax)
    d_ref = outcome(lambda: wb.dequantize_4bit(rp, rs, dtype=out_dtype, backend="reference"))
    assert not isinstance(d_ref, Err), f"reference cannot dequantize its own output: {d_ref!r}"
    d_got = d_ref if backend == "reference" else outcome(lambda: wb.dequantize_4bit(rp, rs, dtype=out_dtype,
                                                                                     backend=backend))
    unchanged(rs_before, rs.absmax, "quant_state.absmax")
    assert agree(d_ref, d_got, "dequantize_4bit")
    same_dequant(d_ref, d_got, backend, "dequantized")
    assert d_ref.shape == A.shape and d_ref.dtype == (out_dtype or A.dtype)


@backends_for("quantize_4bit", "dequantize_4bit")
@fuzz(15)
@given(data=st.data())
def test_4bit_quant_storage(backend, data):
    """quant_storage other than uint8 (bitsandbytes' FSDP option): packed bytes viewed as that dtype,
    or a clear error when the byte count does not fit it; dequantize_4bit reads them back."""
    draw = data.draw
    A = draw(float_tensors(finite=True, max_numel=2000))
    storage = draw(st.sampled_from([torch.int8, torch.float16, torch.bfloat16, torch.float32, torch.int32,
                                    torch.int64, torch.float64]))
    bs = draw(st.sampled_from(BLOCKSIZES))
    note(f"storage {storage} blocksize {bs}")

    def call(b):
        return wb.quantize_4bit(A, blocksize=bs, quant_type="nf4", quant_storage=storage, backend=b)
    ref = outcome(lambda: call("reference"))
    got = ref if backend == "reference" else outcome(lambda: call(backend))
    if not agree(ref, got, "quantize_4bit"):
        return
    same_tree(ref, got, "quantize_4bit")
    d_ref = outcome(lambda: wb.dequantize_4bit(*ref, backend="reference"))
    d_got = d_ref if backend == "reference" else outcome(lambda: wb.dequantize_4bit(*ref, backend=backend))
    assert not isinstance(d_ref, Err), f"reference cannot dequantize its own output: {d_ref!r}"
    assert agree(d_ref, d_got, "dequantize_4bit")
    same_dequant(d_ref, d_got, backend, "dequantized")


@backends_for("quantize_4bit")
@fuzz(25)
@given(data=st.data())
def test_4bit_invalid_input(backend, data):
    draw = data.draw
    what = draw(st.sampled_from(["dtype", "empty", "not-a-tensor", "blocksize", "nonfinite", "nan_policy",
                                 "quant_type", "codebook", "preallocated", "meta"]))
    A = torch.randn(draw(st.integers(1, 600)))
    bs, kw, policy = draw(st.sampled_from(BLOCKSIZES)), {"quant_type": "nf4"}, "raise"
    if what == "dtype":
        A = A.to(draw(st.sampled_from(BAD_DTYPES)))
    elif what == "empty":
        A = torch.empty(draw(st.sampled_from([(0,), (0, 5), (3, 0)])))
    elif what == "not-a-tensor":
        A = draw(st.sampled_from([A.tolist(), A.numpy(), None, 1.5]))
    elif what == "blocksize":
        bs = draw(st.sampled_from(BAD_BLOCKSIZES))
    elif what == "nonfinite":
        A = draw(float_tensors(finite=False))
    elif what == "nan_policy":
        policy = draw(st.sampled_from(["ignore", None, 1]))
    elif what == "quant_type":
        kw = {"quant_type": draw(st.sampled_from(["int4", "NF4x", None, 4, "dynamic"]))}
    elif what == "codebook":
        kw = {"codebook": draw(st.sampled_from(["dynamic", "linear8", "no-such", 16, torch.linspace(-1, 1, 16)]))}
    elif what == "preallocated":
        kw["absmax"] = torch.empty(100)
    elif what == "meta":
        A = torch.empty(100, device="meta")
    note(f"invalid {what}: blocksize {bs!r} nan_policy {policy!r} {kw!r}"[:300])

    def call(b):
        return wb.quantize_4bit(A, blocksize=bs, nan_policy=policy, backend=b, **kw)
    ref = outcome(lambda: call("reference"))
    assert isinstance(ref, Err), f"reference accepts an invalid {what}"
    got = outcome(lambda: call(backend))
    assert isinstance(got, Err), f"backend accepts an invalid {what}"


@backends_for("dequantize_4bit")
@fuzz(40)
@given(data=st.data())
def test_dequantize_4bit_corrupted_state(backend, data):
    draw = data.draw
    A = draw(float_tensors(dtypes=(torch.float32, torch.bfloat16), finite=True, max_numel=2000))
    bs = draw(st.sampled_from(BLOCKSIZES))
    compress = draw(st.booleans())
    qt = draw(st.sampled_from(["nf4", "fp4"]))
    packed, qs = wb.quantize_4bit(A, blocksize=bs, compress_statistics=compress, quant_type=qt, backend="reference")
    packed, qs, m = _mutate_state(draw, qs, packed, four_bit=True)
    note(f"blocksize {bs} compress {compress} {qt} mutation {m}")
    if backend == "bnb" and (not isinstance(qs.code, torch.Tensor) or qs.code.numel() != 16
                             or not torch.equal(qs.code, cbs.get(qt).tensors()[0])):
        return  # bitsandbytes identifies the code as nf4 or fp4; other tables are outside its domain
    before = [snapshot(x) for x in (packed, qs.absmax)]
    ref = outcome(lambda: wb.dequantize_4bit(packed, qs, backend="reference"))
    got = ref if backend == "reference" else outcome(lambda: wb.dequantize_4bit(packed, qs, backend=backend))
    unchanged(before[0], packed, "A")
    unchanged(before[1], qs.absmax, "quant_state.absmax")
    if agree(ref, got, f"dequantize_4bit({m})"):
        same_tensor(ref, got, "dequantized")


# --------------------------------------------------------------------------- QuantState.from_dict


def _garbage(draw):
    return draw(st.sampled_from([None, 0, -1, 2.5, "abc", "", [], [1, 2], {}, {"a": 1}, b"xyz", True,
                                 torch.zeros(3), torch.zeros(2, 2), torch.zeros(0), torch.zeros(3, dtype=torch.uint8),
                                 torch.tensor(1.0), float("nan")]))


@backends_for("dequantize_4bit")
@fuzz(40)
@given(data=st.data())
def test_from_dict_malformed(backend, data):
    """from_dict on a corrupted dict: a clear error, or a state that dequantizes like the reference."""
    draw = data.draw
    n = draw(st.integers(1, 2000))
    A = torch.randn(n, generator=torch.Generator().manual_seed(n))
    compress = draw(st.booleans())
    blockwise = draw(st.booleans())
    if blockwise:
        codes, qs = wb.quantize_blockwise(A, blocksize=draw(st.sampled_from(BLOCKSIZES)), nested=compress,
                                          backend="reference")
    else:
        codes, qs = wb.quantize_4bit(A, blocksize=draw(st.sampled_from(BLOCKSIZES)), compress_statistics=compress,
                                     quant_type=draw(st.sampled_from(["nf4", "fp4"])), backend="reference")
    packed = draw(st.booleans()) and not blockwise
    d = dict(qs.as_dict(packed=packed))
    pk = next((k for k in d if "quant_state" in k), None)
    inner = json.loads(bytes(d[pk].numpy()).decode()) if pk else None
    m = draw(st.sampled_from(["drop", "unknown", "garbage", "truncate-json", "random-bytes", "json-list",
                              "inner-garbage", "inner-drop", "dtype", "shape", "not-a-dict", "prefix", "none"]))
    keys = sorted(d)
    if m == "drop":
        d.pop(draw(st.sampled_from(keys)))
    elif m == "unknown":
        d["bogus_key"] = 1
    elif m == "garbage":
        d[draw(st.sampled_from(keys))] = _garbage(draw)
    elif m == "truncate-json" and pk:
        d[pk] = d[pk][: draw(st.integers(0, d[pk].numel() - 1))]
    elif m == "random-bytes" and pk:
        d[pk] = torch.randint(0, 256, (draw(st.integers(0, 40)),), dtype=torch.uint8)
    elif m == "json-list" and pk:
        d[pk] = pack_dict_to_tensor([1, 2, 3])  # a JSON array, not an object
    elif m in ("inner-garbage", "inner-drop") and pk:
        k = draw(st.sampled_from(sorted(inner)))
        if m == "inner-drop":
            inner.pop(k)
        else:
            inner[k] = draw(st.sampled_from([None, "abc", -5, 2.5, [1, "x"], {"a": 1}, [-3], "float128", 1e300]))
        d[pk] = pack_dict_to_tensor(inner)
    elif m == "dtype":
        v = draw(st.sampled_from(["float128", "int8", "torch.float16", "bfloat16", "", "float64"]))
        if pk:
            inner["dtype"] = v
            d[pk] = pack_dict_to_tensor(inner)
        else:
            d["dtype"] = v
    elif m == "shape":
        v = draw(st.sampled_from(["abc", [-1], [3, -4], [n + 1], [2.5], None, [n], [1, n], [True]]))
        if pk:
            inner["shape"] = v
            d[pk] = pack_dict_to_tensor(inner)
        else:
            d["shape"] = v
    elif m == "not-a-dict":
        d = draw(st.sampled_from([None, [], "state", 3]))
    elif m == "prefix":
        d = {f"weight.{k}": v for k, v in d.items()}
    note(f"{'blockwise' if blockwise else '4-bit'} n {n} compress {compress} packed {packed} mutation {m}")
    st_ = outcome(lambda: QuantState.from_dict(d))
    if isinstance(st_, Err):
        return
    if blockwise:
        ref = outcome(lambda: wb.dequantize_blockwise(codes, st_, backend="reference"))
        got = outcome(lambda: wb.dequantize_blockwise(codes, st_, backend=backend)) \
            if "dequantize_blockwise" in ops_of(backend) else ref
    else:
        ref = outcome(lambda: wb.dequantize_4bit(codes, st_, backend="reference"))
        got = outcome(lambda: wb.dequantize_4bit(codes, st_, backend=backend))
    if agree(ref, got, f"dequantize after from_dict({m})"):
        same_dequant(ref, got, backend, "dequantized")


# ------------------------------------------------------------------------------------ Codebook


@st.composite
def codebook_args(draw):
    """Codebook fields, usually well formed, often broken in one way."""
    k = draw(st.integers(1, 8))
    n = 2 ** k
    rng = np.random.default_rng(draw(st.integers(0, 2 ** 31 - 1)))
    table = rng.uniform(-1, 1, n).astype(np.float32)
    m = draw(st.integers(1, n))
    codes = rng.permutation(n)[:m].astype(np.uint8)
    bounds = np.sort(rng.uniform(-1, 1, m - 1)).astype(np.float32)
    bounds = np.unique(bounds)
    codes = codes[: bounds.size + 1]
    fault = draw(st.sampled_from(["none", "none", "none", "unsorted", "nan-bound", "inf-bound", "code-range",
                                  "too-many-bounds", "too-few-bounds", "table-size", "table-f64", "table-nan",
                                  "table-inf", "codes-int64", "table-list", "table-2d", "too-many-buckets",
                                  "empty-codes", "dup-bound", "name"]))
    name, applied = "fuzz", False
    if fault == "unsorted" and bounds.size >= 2:
        applied = True
        bounds = bounds[::-1].copy()
    elif fault == "nan-bound" and bounds.size:
        applied = True
        bounds[draw(st.integers(0, bounds.size - 1))] = np.nan
    elif fault == "inf-bound" and bounds.size:
        applied = True
        bounds[-1] = np.inf
    elif fault == "code-range":
        applied = True
        codes = codes.copy()
        codes[draw(st.integers(0, codes.size - 1))] = draw(st.integers(n, 255)) if n < 256 else 0
    elif fault == "too-many-bounds":
        applied = True
        bounds = np.append(bounds, np.float32(2.0))
    elif fault == "too-few-bounds" and bounds.size:
        applied = True
        bounds = bounds[:-1]
    elif fault == "table-size":
        applied = True
        table = table[: draw(st.sampled_from([0, 1, 3, n - 1]))] if n > 2 else np.zeros(3, np.float32)
    elif fault == "table-f64":
        applied = True
        table = table.astype(np.float64)
    elif fault == "table-nan":
        applied = True
        table[draw(st.integers(0, n - 1))] = np.nan
    elif fault == "table-inf":
        applied = True
        table[0] = -np.inf
    elif fault == "codes-int64":
        applied = True
        codes = codes.astype(np.int64)
    elif fault == "table-list":
        applied = True
        table = table.tolist()
    elif fault == "table-2d":
        applied = True
        table = table.reshape(-1, 1) if n > 1 else table
    elif fault == "too-many-buckets" and n < 256:
        applied = True
        codes = np.concatenate([codes, np.zeros(n + 1 - codes.size, np.uint8)])
        bounds = np.linspace(-0.9, 0.9, codes.size - 1).astype(np.float32)
    elif fault == "empty-codes":
        applied = True
        codes, bounds = codes[:0], bounds[:0]
    elif fault == "dup-bound" and bounds.size >= 2:
        applied = True
        bounds[1] = bounds[0]
    elif fault == "name":
        applied = True
        name = draw(st.sampled_from([None, 3]))
    if not applied:
        fault = "none"
    note(f"codebook fault {fault}: table {n}, buckets {np.size(codes)}, bounds {np.size(bounds)}")
    return name, table, bounds, codes, fault


@backends_for("quantize_blockwise", "dequantize_blockwise")
@fuzz(30)
@given(args=codebook_args(), data=st.data())
def test_codebook_construction(backend, args, data):
    """Hand-built Codebooks: CodebookError for a broken one; a valid one quantizes alike everywhere."""
    name, table, bounds, codes, fault = args
    cb = outcome(lambda: Codebook(name, table, bounds, codes))
    if isinstance(cb, Err):
        assert isinstance(cb.e, CodebookError), f"Codebook(...) raised {cb!r}; expected CodebookError"
        return
    assert fault == "none" or (fault == "code-range" and np.size(table) == 256), f"Codebook accepted a broken {fault}"
    if backend == "bnb":
        return  # bitsandbytes runs its own codebooks only
    A = torch.randn(data.draw(st.integers(1, 700)), generator=torch.Generator().manual_seed(7))
    bs = data.draw(st.sampled_from(BLOCKSIZES))
    ops = [("quantize_blockwise", lambda b: wb.quantize_blockwise(A, blocksize=bs, codebook=cb, backend=b))]
    if cb.size == 16:
        ops.append(("quantize_4bit", lambda b: wb.quantize_4bit(A, blocksize=bs, codebook=cb, backend=b)))
    for op, call in ops:
        ref = outcome(lambda: call("reference"))
        assert not isinstance(ref, Err), f"{op}: reference rejects a valid codebook: {ref!r}"
        got = outcome(lambda: call(backend))
        assert agree(ref, got, op)
        same_tree(ref, got, op)


# --------------------------------------------------------------------------------- LLM.int8()


@backends_for("int8_vectorwise_quant")
@fuzz(30)
@given(data=st.data())
def test_int8_vectorwise_quant(backend, data):
    draw = data.draw
    valid = draw(st.booleans())
    threshold = draw(st.sampled_from([0.0, 0.0, 6.0, 1.5]))
    if valid:
        A = draw(float_tensors(finite=draw(st.sampled_from([True, True, None])), max_numel=2000))
        if A.dim() < 2:
            A = A.reshape(1, -1) if draw(st.booleans()) else A.reshape(-1, 1)
    else:
        what = draw(st.sampled_from(["dtype", "1d", "empty", "threshold", "not-a-tensor", "nonfinite", "nan_policy"]))
        A = torch.randn(draw(st.integers(1, 30)), draw(st.integers(1, 30)))
        if what == "dtype":
            A = A.to(draw(st.sampled_from(BAD_DTYPES)))
        elif what == "1d":
            A = A.reshape(-1)
        elif what == "empty":
            A = torch.empty(draw(st.sampled_from([(0, 4), (4, 0), (0,)])))
        elif what == "threshold":
            threshold = draw(st.sampled_from([-1.0, float("nan"), "6", None, True]))
        elif what == "not-a-tensor":
            A = A.tolist()
        elif what == "nonfinite":
            A = draw(float_tensors(finite=False))
            A = A.reshape(1, -1) if A.dim() < 2 else A
        note(f"invalid {what}")
    policy = "raise"
    if valid and not _is_finite(A):
        policy = "propagate"
    elif not valid and what == "nan_policy":
        policy = draw(st.sampled_from(["ignore", None]))
    note(f"threshold {threshold!r} nan_policy {policy}")
    before = snapshot(A)

    def call(b):
        return i8.int8_vectorwise_quant(A, threshold, backend=b, nan_policy=policy)
    ref = outcome(lambda: call("reference"))
    if valid:
        assert not isinstance(ref, Err), f"reference rejects a valid input: {ref!r}"
    else:
        assert isinstance(ref, Err), "reference accepts an invalid input"
    got = ref if backend == "reference" else outcome(lambda: call(backend))
    unchanged(before, A, "A")
    if not agree(ref, got, "int8_vectorwise_quant"):
        return
    if policy == "propagate":  # rows holding NaN/Inf are undefined
        rows = torch.isfinite(A.detach().float().reshape(-1, A.shape[-1])).all(1)
        cols_ok = ref[2] is None or (threshold > 0 and bool(torch.isfinite(A.detach().float()).all()))
        same_tensor(ref[0].reshape(-1, A.shape[-1])[rows], got[0].reshape(-1, A.shape[-1])[rows], "codes")
        same_tensor(ref[1][rows], got[1][rows], "row stats")
        if cols_ok:
            same_tree(ref[2], got[2], "outlier columns")
    else:
        same_tree(ref, got, "int8_vectorwise_quant")


@backends_for("int8_vectorwise_dequant")
@fuzz(25)
@given(data=st.data())
def test_int8_vectorwise_dequant(backend, data):
    """Codes and row stats, valid or corrupted: a clear error or the reference's values."""
    draw = data.draw
    A = draw(float_tensors(finite=True, max_numel=2000))
    A = A.reshape(1, -1) if A.dim() < 2 else A
    codes, stats, _ = i8.int8_vectorwise_quant(A, 0.0, backend="reference")
    m = draw(st.sampled_from(["none", "none", "stats-short", "stats-2d", "stats-f16", "stats-nan", "codes-u8",
                              "codes-strided", "stats-list", "stats-long", "codes-3d"]))
    if m == "stats-long":
        stats = torch.cat([stats, stats[:1]])
    elif m == "codes-3d":
        codes = codes.unsqueeze(0)
    elif m == "stats-short":
        stats = stats[:-1]
    elif m == "stats-2d":
        stats = stats.view(-1, 1)
    elif m == "stats-f16":
        stats = stats.half()
    elif m == "stats-nan" and stats.numel():
        stats = stats.clone()
        stats[0] = float("nan")
    elif m == "codes-u8":
        codes = codes.view(torch.uint8)
    elif m == "codes-strided":
        codes = torch.stack([codes, codes], -1)[..., 0]
    elif m == "stats-list":
        stats = stats.tolist()
    note(f"dequant mutation {m}")
    d_ref = outcome(lambda: i8.int8_vectorwise_dequant(codes, stats, backend="reference"))
    d_got = d_ref if backend == "reference" else outcome(lambda: i8.int8_vectorwise_dequant(codes, stats,
                                                                                             backend=backend))
    if agree(d_ref, d_got, f"int8_vectorwise_dequant({m})"):
        same_tensor(d_ref, d_got, "dequantized")


def _int8_matmul_call(draw, g):
    """(op, mutation, input tensors, call(backend)) for one of int8_linear_matmul, int8_mm_dequant and int8_linear
    on valid arguments (mutation "none"), or with one of them broken."""
    m, n, k = draw(st.integers(1, 9)), draw(st.integers(1, 9)), draw(st.integers(1, 70))
    op = draw(st.sampled_from(["int8_linear_matmul", "int8_mm_dequant", "int8_linear"]))
    bad = {"int8_linear_matmul": ["B-inner", "B-int32", "A-1d", "A-float", "B-list", "B-meta"],
           "int8_mm_dequant": ["C-int8", "row-short", "col-long", "row-list", "col-int", "bias-short", "bias-2d",
                               "bias-int", "bias-meta", "dtype-int", "dtype-str"],
           "int8_linear": ["A-inner", "W-stats-short", "W-codes-float", "W-codes-1d", "bias-short", "threshold-neg",
                           "threshold-nan", "threshold-str", "A-int8"]}[op]
    mut = draw(st.sampled_from(["none", "none"] + bad))
    i8s = lambda *shape: torch.randint(-127, 128, shape, generator=g).to(torch.int8)   # noqa: E731
    if op == "int8_linear_matmul":
        A, B = i8s(m, k), i8s(n, k)
        A = {"A-1d": A.reshape(-1), "A-float": A.float()}.get(mut, A)
        B = {"B-inner": i8s(n, k + 1), "B-int32": B.int(), "B-list": B.tolist(),
             "B-meta": torch.empty(n, k, dtype=torch.int8, device="meta")}.get(mut, B)
        return op, mut, [A, B], lambda b: i8.int8_linear_matmul(A, B, backend=b)
    if op == "int8_mm_dequant":
        C = torch.randint(-2 ** 20, 2 ** 20, (m, n), generator=g).to(torch.int32)
        rs, cs = torch.rand(m, generator=g) * 100, torch.rand(n, generator=g) * 100
        bias = torch.randn(n, generator=g).half() if draw(st.booleans()) else None
        dtype = draw(st.sampled_from(FLOATS))
        C = {"C-int8": C.to(torch.int8)}.get(mut, C)
        rs = {"row-short": rs[:-1], "row-list": rs.tolist()}.get(mut, rs)
        cs = {"col-long": torch.cat([cs, cs[:1]]), "col-int": cs.int()}.get(mut, cs)
        bias = {"bias-short": torch.zeros(n - 1), "bias-2d": torch.zeros(1, n), "bias-int": torch.zeros(n).int(),
                "bias-meta": torch.zeros(n, device="meta")}.get(mut, bias)
        dtype = {"dtype-int": torch.int32, "dtype-str": "float16"}.get(mut, dtype)
        return op, mut, [C, rs, cs, bias], lambda b: i8.int8_mm_dequant(C, rs, cs, bias, dtype, backend=b)
    dt = draw(st.sampled_from(FLOATS))
    A = (torch.randn(m, k, generator=g) * draw(st.sampled_from([1.0, 4.0]))).to(dt)
    W = i8.quantize_weight(torch.randn(n, k, generator=g), backend="reference")
    bias = torch.randn(n, generator=g).to(dt) if draw(st.booleans()) else None
    threshold = draw(st.sampled_from([0.0, 2.0, 6.0]))
    A = {"A-inner": A[:, :-1] if k > 1 else torch.zeros(m, 2, dtype=dt), "A-int8": i8s(m, k)}.get(mut, A)
    W = {"W-stats-short": i8.Int8Weight(W.codes, W.stats[:-1]), "W-codes-float": i8.Int8Weight(W.codes.float(), W.stats),
         "W-codes-1d": i8.Int8Weight(W.codes.reshape(-1), W.stats)}.get(mut, W)
    bias = {"bias-short": torch.zeros(n + 1, dtype=dt)}.get(mut, bias)
    threshold = {"threshold-neg": -1.0, "threshold-nan": float("nan"), "threshold-str": "6"}.get(mut, threshold)
    return op, mut, [A, W.codes, W.stats, bias], lambda b: i8.int8_linear(A, W, bias, threshold, backend=b)


@backends_for("int8_linear_matmul", "int8_mm_dequant")
@fuzz(50)
@given(data=st.data())
def test_int8_matmul_family(backend, data):
    """int8_linear_matmul, int8_mm_dequant and int8_linear with valid arguments (the reference's bits) or one broken
    (a clear error naming it, from both backends: a short stats or bias tensor, a wrong dtype, a tensor on another
    device); inputs unmodified."""
    g = torch.Generator().manual_seed(data.draw(st.integers(0, 2 ** 31 - 1)))
    op, mut, inputs, call = _int8_matmul_call(data.draw, g)
    note(f"{op} with {mut}")
    before = [(snapshot(t), t) for t in inputs if isinstance(t, torch.Tensor) and not t.is_meta]
    ref = outcome(lambda: call("reference"))
    got = ref if backend == "reference" else outcome(lambda: call(backend))
    for b, t in before:
        unchanged(b, t, op + " input")
    assert isinstance(ref, Err) != (mut == "none"), f"{op}: reference -> {ref!r} with {mut}"
    if agree(ref, got, f"{op}({mut})"):
        same_tensor(ref, got, op)


# ------------------------------------------------------------------------------------- k-bit


def _kbit_case(draw):
    """(A, packed, state): a valid k-bit quantization of a fresh tensor (codebook or affine, rotated or not)."""
    k = draw(st.integers(2, 8))
    affine = draw(st.sampled_from([None, None, "minmax"]))
    fmt = draw(st.sampled_from([None, "fp32", "bf16"] + ([] if affine else ["e4m4", "e8m0", "dq8", "e4m3"])))
    bs = {"e4m3": 16, "e8m0": 32}.get(fmt) or draw(st.sampled_from([16, 32, 64, 256]))
    n = draw(st.integers(1, 3000))
    g = torch.Generator().manual_seed(draw(st.integers(0, 2 ** 31 - 1)))
    A = torch.randn(n, generator=g) * draw(st.sampled_from([1.0, 1e-3, 40.0]))
    kw = dict(k=k, blocksize=bs, layout=draw(st.sampled_from(["bitplane", "dense"])), scale_format=fmt,
              affine=affine, rotate=draw(st.sampled_from([None, None, 64])), backend="reference")
    note(f"quantize_kbit(n={n}, {kw})")
    packed, state = wb.kbit.quantize_kbit(A, **kw)
    return A, packed, state


def _kbit_corrupt(draw, packed, state, after_a_call: bool):
    """One change to a k-bit state (fields reassigned, tensors edited or resized in place) or to its words."""
    options = ["scales-short", "scales-long", "scales-dtype", "scales-list", "scales-resized", "k", "blocksize",
               "layout", "scale_format", "shape-longer", "shape-shorter", "dtype", "tensor_scale",
               "packed-short", "packed-long", "packed-dtype", "rotate", "affine"]
    if state.affine is None:
        options += ["codebook-short", "codebook-unsorted", "codebook-nan", "codebook-none", "codebook-resized"]
    else:
        options += ["zeros-short", "zeros-none", "zeros-dtype"]
    m = draw(st.sampled_from(options))
    s = state
    if m == "scales-short":
        s.scales = s.scales[:-1]
    elif m == "scales-long":
        s.scales = torch.cat([s.scales, s.scales[:1]])
    elif m == "scales-dtype":
        s.scales = s.scales.to(draw(st.sampled_from([torch.float64, torch.int32, torch.float16, torch.uint8])))
    elif m == "scales-list":
        s.scales = s.scales.tolist()
    elif m == "scales-resized":
        s.scales.resize_(max(0, s.scales.numel() - 1))
    elif m == "k":
        s.k = draw(st.sampled_from([2, 3, 5, 8, 0, 9, "3", 3.0]))
    elif m == "blocksize":
        s.blocksize = draw(st.sampled_from([16, 32, 64, 128, 0, -32, 48, "64", True]))
    elif m == "layout":
        s.layout = draw(st.sampled_from(["bitplane", "dense", "planes", None]))
    elif m == "scale_format":
        s.scale_format = draw(st.sampled_from(["fp32", "fp16", "e4m4", "e8m0", "e4m3", "dq8", "int8", None]))
    elif m == "shape-longer":
        s.shape = torch.Size([s.n + draw(st.sampled_from([1, 64, 4096]))])
    elif m == "shape-shorter":
        s.shape = torch.Size([max(0, s.n - draw(st.sampled_from([1, 64])))])
    elif m == "dtype":
        s.dtype = draw(st.sampled_from([torch.float64, torch.int32, torch.float16, "float32"]))
    elif m == "tensor_scale":
        s.tensor_scale = draw(st.sampled_from([torch.zeros(0), torch.ones(1), torch.ones(2)]))
    elif m == "packed-short":
        packed = packed[:-1]
    elif m == "packed-long":
        packed = torch.cat([packed, packed[:1]])
    elif m == "packed-dtype":
        packed = packed.view(torch.uint8) if draw(st.booleans()) else packed.float()
    elif m == "rotate":
        s.rotate = draw(st.sampled_from([0, 32, 64, 128, 48, -64]))
    elif m == "affine":
        s.affine = None if s.affine else "minmax"
    elif m == "codebook-short":
        s.codebook = s.codebook[:-1]
    elif m == "codebook-unsorted":
        s.codebook[0] = 5.0
    elif m == "codebook-nan":
        s.codebook[-1] = float("nan")
    elif m == "codebook-none":
        s.codebook = None
    elif m == "codebook-resized":
        s.codebook.resize_(s.codebook.numel() // 2)
    elif m == "zeros-short":
        s.zeros = s.zeros[:-1]
    elif m == "zeros-none":
        s.zeros = None
    elif m == "zeros-dtype":
        s.zeros = s.zeros.int()
    return packed, f"{m}{' after a call' if after_a_call else ''}"


@backends_for("dequantize_kbit", "dequantize_kbit_affine")
@fuzz(60)
@given(data=st.data())
def test_dequantize_kbit_corrupted_state(backend, data):
    """A k-bit state or its words changed -- before any call, or after a call has remembered the state's validation
    (workbench/kbit.py ``_dequantize_plan``): a clear error from both backends or the reference's bits, never a
    kernel reading past a table; the words unmodified."""
    draw = data.draw
    A, packed, state = _kbit_case(draw)
    after = draw(st.booleans())
    if after:
        wb.kbit.dequantize_kbit(packed, state, backend=backend)
    packed, m = _kbit_corrupt(draw, packed, state, after)
    note(m)
    words = snapshot(packed)
    got = outcome(lambda: wb.kbit.dequantize_kbit(packed, state, backend=backend))   # first: the remembered plan
    ref = outcome(lambda: wb.kbit.dequantize_kbit(packed, state, backend="reference"))
    unchanged(words, packed, "packed")
    if agree(ref, got, f"dequantize_kbit({m})"):
        same_tensor(ref, got, "dequantized")


# ----------------------------------------------------------------------------- the 4-bit matmul


def _matmul_case(draw, fast: bool = False):
    """(A, P, qs, bias, lead): a valid matmul_4bit problem. ``fast``: the shapes the one-call GEMV path takes on CPU
    (fp16/bf16 A, K % 64 == 0, blocksize >= 64, at most 32 rows)."""
    N = draw(st.integers(1, 70))
    if fast or draw(st.booleans()):
        K = 64 * draw(st.integers(1, 8))
    else:
        K = draw(st.integers(1, 300))
    dtype = draw(st.sampled_from(FLOATS[1:] if fast else FLOATS))
    bs = draw(st.sampled_from(BLOCKSIZES[1:] if fast else BLOCKSIZES))
    lead = draw(st.sampled_from([(), (1,), (draw(st.integers(0, 32 if fast else 40)),), (2, draw(st.integers(1, 9)))]))
    kw, _ = four_bit_kwargs(draw)
    g = torch.Generator().manual_seed(draw(st.integers(0, 2 ** 31 - 1)))
    W = torch.randn(N, K, generator=g) * draw(st.sampled_from([1.0, 1e-3, 50.0]))
    P, qs = wb.quantize_4bit(W.to(dtype), blocksize=bs, compress_statistics=draw(st.booleans()), backend="reference",
                             **kw)
    A = torch.randn(*lead, K, generator=g).to(dtype)
    if len(lead) == 1 and not fast and draw(st.booleans()):
        A = A.t().contiguous().t()                     # a transposed view: strided rows
    bias = torch.randn(N, generator=g).to(dtype) if draw(st.booleans()) else None
    note(f"N {N} K {K} A {tuple(A.shape)} {dtype} blocksize {bs} nested {qs.nested} {kw} bias {bias is not None}")
    return A, P, qs, bias


def _matmul_call(draw):
    op = draw(st.sampled_from(["matmul_4bit", "gemm_4bit", "gemv_4bit"]))

    def call(A, P, qs, bias, backend):
        if op == "gemv_4bit":
            return gemv_4bit(A, P, state=qs, backend=backend)
        if op == "gemm_4bit":
            return gemm_4bit(A, P, qs, bias, backend=backend)
        return matmul_4bit(A, P, qs, bias=bias, backend=backend)
    return op, call


def close_to_reference(ref, got, A, P, qs, bias, what: str):
    """got within the bound of every float32-accumulating kernel of the family (error_bound for fp32 A; for fp16/bf16
    A error_bound_unscaled, which also holds the unscaled-lookup loops); non-finite where the reference is."""
    from workbench.backends.reference import matmul as R
    assert got.dtype == ref.dtype and got.shape == ref.shape, f"{what}: {got.dtype} {tuple(got.shape)}, reference " \
                                                              f"{ref.dtype} {tuple(ref.shape)}"
    if ref.numel() == 0:
        return
    N, K = int(qs.shape[0]), int(qs.shape[1])
    A2, r, o = A.reshape(-1, K), ref.reshape(-1, N).float(), got.reshape(-1, N).float()
    finite = torch.isfinite(r)
    assert torch.equal(torch.isfinite(o), finite), f"{what}: non-finite at other outputs than the reference's"
    if A.dtype == torch.float32:
        W = wb.dequantize_4bit(P, qs, backend="reference").to(A.dtype)
        bound = R.error_bound(A2, W, bias, A.dtype, r)
    else:
        a2, a8, c2, off = ((qs.state2.absmax, qs.absmax, qs.state2.code, qs.offset) if qs.nested
                           else (qs.absmax, None, None, None))
        bound = R.unscaled_bound_of(A2, P, (N, K), a2, qs.code, qs.blocksize, bias, a8, c2, off, ref=r)
    err = (o - r).abs()[finite]
    assert bool((err <= bound[finite]).all()), f"{what}: {int((err > bound[finite]).sum())} outputs beyond the bound"


def _inputs(A, P, qs, bias):
    return [(snapshot(t), t, name) for t, name in ((A, "A"), (P, "B"), (qs.absmax, "quant_state.absmax"),
                                                   (qs.code, "quant_state.code"), (bias, "bias"))
            if isinstance(t, torch.Tensor)]


@backends_for("gemm_4bit", "gemv_4bit")
@fuzz(40)
@given(data=st.data())
def test_matmul_4bit_valid(backend, data):
    """Any shape, dtype, blocksize, codebook, nesting, bias and leading dims: the reference's result within the
    family's bound, the same bits on a second call (the remembered plan), inputs unmodified."""
    draw = data.draw
    A, P, qs, bias = _matmul_case(draw)
    op, call = _matmul_call(draw)
    before = _inputs(A, P, qs, bias)
    ref = call(A, P, qs, bias, "reference")
    got = call(A, P, qs, bias, backend)
    close_to_reference(ref, got, A, P, qs, None if op == "gemv_4bit" else bias, op)
    same_tensor(got, call(A, P, qs, bias, backend), f"{op}, second call")
    for b, t, name in before:
        unchanged(b, t, name)


def _bad_arguments(draw, A, P, qs, bias):
    """One argument of a valid call made invalid (the state's corruptions are _mutate_state's)."""
    m = draw(st.sampled_from(["A-int", "A-f64", "A-inner", "A-0d", "A-list", "A-meta", "B-list", "B-bytes",
                              "bias-len", "bias-dtype", "bias-2d", "state-none", "state-str"]))
    K = int(qs.shape[1])
    if m == "A-int":
        A = A.to(torch.int32)
    elif m == "A-f64":
        A = A.double()
    elif m == "A-inner":
        A = torch.zeros(*A.shape[:-1], K + draw(st.sampled_from([-1, 1, 64])), dtype=A.dtype)
    elif m == "A-0d":
        A = A.reshape(-1)[:1].reshape(())
    elif m == "A-list":
        A = A.tolist()
    elif m == "A-meta":
        A = torch.empty(A.shape, dtype=A.dtype, device="meta")
    elif m == "B-list":
        P = P.tolist()
    elif m == "B-bytes":
        P = torch.cat([P.reshape(-1), P.reshape(-1)[:1]])
    elif m == "bias-len":
        bias = torch.zeros(int(qs.shape[0]) + 1, dtype=A.dtype)
    elif m == "bias-dtype":
        bias = torch.zeros(int(qs.shape[0]), dtype=torch.float64)
    elif m == "bias-2d":
        bias = torch.zeros(1, int(qs.shape[0]), dtype=A.dtype)
    elif m == "state-none":
        qs = None
    elif m == "state-str":
        qs = "nf4"
    return A, P, qs, bias, m


@backends_for("gemm_4bit", "gemv_4bit")
@fuzz(50)
@given(data=st.data())
def test_matmul_4bit_bad_input(backend, data):
    """A corrupted state or packed weight, or one bad argument: a clear error from both backends, or both accept it
    and agree within the bound (never a crash); inputs unmodified."""
    draw = data.draw
    A, P, qs, bias = _matmul_case(draw)
    op, call = _matmul_call(draw)
    if draw(st.booleans()):
        P, qs, m = _mutate_state(draw, qs, P, four_bit=True)
    else:
        A, P, qs, bias, m = _bad_arguments(draw, A, P, qs, bias)
    note(f"{op} with {m}")
    before = _inputs(A, P, qs, bias) if isinstance(qs, QuantState) else []
    ref = outcome(lambda: call(A, P, qs, bias, "reference"))
    got = outcome(lambda: call(A, P, qs, bias, backend))
    for b, t, name in before:
        unchanged(b, t, name)
    if agree(ref, got, f"{op}({m})"):
        close_to_reference(ref, got, A, P, qs, None if op == "gemv_4bit" else bias, f"{op}({m})")


def _change_in_place(draw, qs: QuantState):
    """One change to the state object itself (its attributes, or its tensors in place) after a call has remembered
    a plan for it: replaced, resized or re-pointed tensors, new values, a new shape or blocksize."""
    options = ["absmax-replaced-short", "absmax-resized", "absmax-set-longer", "absmax-values", "code-values",
               "code-256", "code-resized", "shape-K", "shape-N", "blocksize"]
    if qs.nested:
        options += ["nested-absmax-short", "nested-absmax-values", "offset-values", "offset-replaced",
                    "nested-code-values", "state2-none"]
    m = draw(st.sampled_from(options))
    n = qs.absmax.numel()
    if m == "absmax-replaced-short":
        qs.absmax = qs.absmax[:-1].clone()
    elif m == "absmax-resized":
        qs.absmax.resize_(n - 1)
    elif m == "absmax-set-longer":
        qs.absmax.set_(torch.cat([qs.absmax, qs.absmax[:3]]))
    elif m == "absmax-values":
        qs.absmax[draw(st.integers(0, n - 1))] = qs.absmax[0] if qs.nested else 2.5
    elif m == "code-values":
        qs.code[draw(st.integers(0, 15))] = draw(st.sampled_from([0.5, -0.75, 0.0]))
    elif m == "code-256":
        qs.code = torch.linspace(-1, 1, 256)
    elif m == "code-resized":
        qs.code.resize_(8)
    elif m == "shape-K":
        qs.shape = torch.Size([qs.shape[0], qs.shape[1] + 64])
    elif m == "shape-N":
        qs.shape = torch.Size([qs.shape[0] + 1, qs.shape[1]])
    elif m == "blocksize":
        qs.blocksize = draw(st.sampled_from([b for b in BLOCKSIZES if b != qs.blocksize]))
    elif m == "nested-absmax-short":
        qs.state2.absmax = qs.state2.absmax[:-1].clone()
    elif m == "nested-absmax-values":
        qs.state2.absmax.mul_(3.0)
    elif m == "offset-values":
        qs.offset.fill_(0.125)
    elif m == "offset-replaced":
        qs.offset = torch.tensor(-0.25)
    elif m == "nested-code-values":
        qs.state2.code[draw(st.integers(0, 255))] = 0.5
    elif m == "state2-none":
        qs.state2 = None
    return m


@backends_for("gemm_4bit", "gemv_4bit")
@fuzz(40)
@given(data=st.data())
def test_matmul_4bit_state_changed_after_a_call(backend, data):
    """The one-call path remembers what it checked about a state (workbench.matmul._remembered): after the state
    object is changed, the next call on it gives the reference's result on the changed state, or both raise a
    clear error -- never a kernel reading the old sizes."""
    draw = data.draw
    A, P, qs, bias = _matmul_case(draw, fast=True)
    matmul_4bit(A, P, qs, bias=bias, backend=backend)      # the plan, remembered on qs
    m = _change_in_place(draw, qs)
    note(f"changed: {m}")
    got = outcome(lambda: matmul_4bit(A, P, qs, bias=bias, backend=backend))   # before the reference
    ref = outcome(lambda: matmul_4bit(A, P, qs, bias=bias, backend="reference"))
    if agree(ref, got, f"matmul_4bit after {m}"):
        close_to_reference(ref, got, A, P, qs, bias, f"matmul_4bit after {m}")


# ------------------------------------------------------------------------------------ optimizers

OPTIMIZERS = ("Adam8bit", "AdamW8bit", "Lion8bit", "SGD8bit", "Momentum8bit", "RMSprop8bit", "Adagrad8bit",
              "LAMB8bit", "LARS8bit", "AdEMAMix8bit", "Adam32bit", "Lion32bit", "LAMB32bit", "AdEMAMix32bit")


def _optim_change(draw, st_: dict) -> tuple:
    """(entry, how, dtype): one change to a parameter's optimizer state (see _apply_change)."""
    key = draw(st.sampled_from(sorted(k for k, v in st_.items() if isinstance(v, torch.Tensor)) + ["step"]))
    if key == "step":
        return key, draw(st.sampled_from(["negative", "float", "str", "none", "missing"])), None
    how = draw(st.sampled_from(["short", "long", "dtype", "flat", "list", "none", "missing", "resized", "set-other",
                                "nan"]))
    dtype = draw(st.sampled_from([torch.float16, torch.float64, torch.uint8, torch.int32])) if how == "dtype" else None
    return key, how, dtype


def _apply_change(st_: dict, key: str, how: str, dtype) -> None:
    """The change, made in place on the dict the optimizer holds: an entry replaced, resized, re-pointed,
    retyped or removed, or the step counter broken."""
    if key == "step":
        if how == "missing":
            del st_["step"]
        else:
            st_["step"] = {"negative": -1, "float": 1.5, "str": "1", "none": None}[how]
        return
    t = st_[key]
    if how == "short":
        st_[key] = t.reshape(-1)[:-1].clone() if t.numel() > 1 else t.reshape(-1)[:0].clone()
    elif how == "long":
        st_[key] = torch.cat([t.reshape(-1), t.reshape(-1)[:1]])
    elif how == "dtype":
        st_[key] = t.to(dtype)
    elif how == "flat":
        st_[key] = t.reshape(-1)
    elif how == "list":
        st_[key] = t.tolist()
    elif how == "none":
        st_[key] = None
    elif how == "missing":
        del st_[key]
    elif how == "resized":
        t.resize_(max(0, t.numel() - 1))
    elif how == "set-other":
        t.set_(torch.zeros(t.numel() + 7, dtype=t.dtype))
    elif how == "nan" and t.is_floating_point() and t.numel():
        t.view(-1)[0] = float("nan")


@pytest.mark.parametrize("backend", [b for b in ("numba_cpu", "cython_cpu") if status(b)[0]])
@fuzz(40)
@given(data=st.data())
def test_optimizer_state_corrupted_between_steps(backend, data):
    """An optimizer's state changed in place between two steps (entries resized, re-pointed, retyped, removed;
    the step counter broken): the next step raises a clear error on this backend exactly when it does on the
    reference, and otherwise gives the reference's parameters bit for bit -- never a kernel on a state that does
    not fit its parameter."""
    draw = data.draw
    cls = draw(st.sampled_from(OPTIMIZERS))
    n_in, n_out = draw(st.integers(1, 90)), draw(st.integers(1, 9))
    seed = draw(st.integers(0, 2 ** 31 - 1))
    runs = []
    for b in ("reference", backend):
        torch.manual_seed(seed)
        model = torch.nn.Linear(n_in, n_out)
        kw = {"momentum": 0.9} if cls.startswith(("SGD", "Momentum")) else {}
        opt = getattr(wopt, cls)(model.parameters(), lr=1e-2, min_8bit_size=64, backend=b, **kw)
        g = torch.Generator().manual_seed(seed)

        def step(model=model, opt=opt, g=g):
            opt.zero_grad()
            model(torch.randn(3, n_in, generator=g)).square().mean().backward()
            opt.step()
        step()
        runs.append((model, opt, step))
    change = _optim_change(draw, runs[0][1].state[runs[0][0].weight])
    for model, opt, _ in runs:        # the same change in both
        _apply_change(opt.state[model.weight], *change)
    what = f"{cls} Linear({n_in}, {n_out}): {change[0]} {change[1]}"
    note(what)
    outs = [outcome(step) for _, _, step in runs]
    if agree(outs[0], outs[1], f"step after {what}"):
        for a, b in zip(runs[0][0].parameters(), runs[1][0].parameters()):
            same_tensor(a, b, f"parameters after {what}")


# --------------------------------------------------------------------- the bounds-checked builds


def test_cpu_backends_are_fuzzed():
    """A backend that fails to load would silently drop out of every parametrization above."""
    import importlib.util
    required = ["reference", "numba_cpu", "cython_cpu"]
    if importlib.util.find_spec("bitsandbytes") is not None:
        required.append("bnb")
    for b in required:
        ok, reason = status(b)
        assert ok, f"backend {b} is not available, so it is not fuzzed: {reason}"
    for op in ("quantize_blockwise", "dequantize_blockwise", "quantize_4bit", "dequantize_4bit"):
        assert set(required) <= set(_backends(op)), f"{op}: fuzzed on {_backends(op)} only"
    for op in ("gemm_4bit", "gemv_4bit"):
        assert {"reference", "numba_cpu", "cython_cpu"} <= set(_backends(op)), f"{op}: fuzzed on {_backends(op)} only"
    for op in ("int8_vectorwise_quant", "int8_vectorwise_dequant"):
        assert {"reference", "numba_cpu"} <= set(_backends(op)), f"{op}: fuzzed on {_backends(op)} only"


def test_debug_switches_take_effect():
    """Under KBIT_NATIVE_DEBUG=1 / NUMBA_BOUNDSCHECK=1 the fuzz run really uses checked kernels."""
    if os.environ.get("KBIT_NATIVE_DEBUG", "") not in ("", "0"):
        ok, reason = status("cython_cpu")
        assert ok, f"KBIT_NATIVE_DEBUG=1 but cython_cpu is unavailable: {reason}"
        from workbench.backends.cython_cpu import optim as cy_optim
        from workbench.backends.cython_cpu import quant as cy_quant
        assert cy_quant.K.__name__ == "workbench._native.quant_cpu_debug", cy_quant.K.__name__
        assert cy_optim.K.__name__ == "workbench._native.optim_cpu_debug", cy_optim.K.__name__
    if os.environ.get("NUMBA_BOUNDSCHECK", "") not in ("", "0"):
        from numba.core import config
        assert config.BOUNDSCHECK, "NUMBA_BOUNDSCHECK is set but numba does not see it"
        # Numba's cache key ignores the boundscheck flag: kernels cached without checks would be
        # loaded silently, so the checked run needs a cache of its own.
        assert os.environ.get("NUMBA_CACHE_DIR"), "NUMBA_BOUNDSCHECK=1 needs its own NUMBA_CACHE_DIR"


def _short_absmax_args(n=1000, blocksize=64):
    codes = np.zeros(n, np.uint8)
    absmax = np.ones(2, np.float32)  # ceil(1000 / 64) = 16 blocks need 16 absmax
    table = np.linspace(-1, 1, 256).astype(np.float32)
    return codes, absmax, table, np.empty(n, np.float32)


def test_debug_cython_kernel_catches_short_absmax():
    """The dequantizers' and quantize_4bit's entry points check their absmax length (ValueError, in both builds).
    Where no such check stands, the debug build turns a kernel's out-of-bounds access into IndexError (the release
    one would write past the buffer): proof that the fuzz run against it catches a missed validation."""
    try:
        from workbench._native import quant_cpu_debug as K
    except ImportError:
        pytest.skip("debug Cython extensions not built (make build-debug)")
    from workbench.codebook_tables import cpu_search_plan
    codes, absmax, table, out = _short_absmax_args()
    with pytest.raises(ValueError, match="absmax"):
        K.dequantize_blockwise(codes, absmax, table, 64, 0, out)
    packed = np.zeros(500, np.uint8)
    with pytest.raises(ValueError, match="absmax"):
        K.dequantize_4bit(packed, absmax, table[:16].copy(), 64, 1000, 0, out)
    p = cpu_search_plan(cbs.get("nf4"))
    x = np.zeros(1000, np.float32)
    with pytest.raises(ValueError, match="absmax"):
        K.quantize_4bit(x, 0, 64, p.bnd15, p.bucket_codes, p.identity, np.uint8(p.zero_code), p.cell_base,
                        p.cell_bounds, p.cell_slots, packed, absmax)
    p8 = cpu_search_plan(cbs.get("dynamic"))
    with pytest.raises(IndexError, match="[Oo]ut of bounds"):   # 16 blocks, room for 2 absmax outputs
        K.quantize_blockwise(x, 0, 64, p8.mode, p8.bnd15, p8.bucket_codes, p8.kbound, p8.kcode_lo, p8.kcode_hi,
                             p8.bounds_pad, np.zeros(1000, np.uint8), absmax)
    K.dequantize_blockwise(codes, np.ones(16, np.float32), table, 64, 0, out)  # the right size runs
    assert np.all(out == table[0])


def test_numba_boundscheck_catches_short_absmax():
    if os.environ.get("NUMBA_BOUNDSCHECK", "") in ("", "0"):
        pytest.skip("runs in the bounds-checked fuzz run (NUMBA_BOUNDSCHECK=1)")
    from numba_kernels.cpu import quant as K
    codes, absmax, table, out = _short_absmax_args()
    # a bounds error inside a prange loop surfaces as SystemError caused by IndexError
    with pytest.raises((IndexError, SystemError)) as ei:
        K.dequantize_blockwise(codes, absmax, table, 64, 0, out)
    e = ei.value
    assert isinstance(e, IndexError) or isinstance(e.__cause__, IndexError) or isinstance(e.__context__, IndexError)
