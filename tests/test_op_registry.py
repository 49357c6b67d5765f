"""The op registry: each op declared once (workbench/library.py), kernels registered against it,
fake tensors with the right shapes, torch.compile(fullgraph=True) through the public API."""
from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

import workbench as wb
from workbench import codebooks as cbs
from workbench import library
from workbench.backends import NAMES, registered, status
from workbench.backends.registry import candidates, register_kernel, resolve
from workbench.int8 import int8_vectorwise_quant

ROOT = Path(__file__).resolve().parents[1]


def test_every_op_declared_once_and_found_by_grep():
    for op in library.DECLARED:
        hits = subprocess.run(["grep", "-rn", f'"workbench::{op}"', "workbench"], cwd=ROOT, capture_output=True,
                              text=True).stdout.splitlines()
        decls = [h for h in hits if h.startswith("workbench/library.py")]
        kernels = [h for h in hits if "register_kernel(" in h and "registry.py" not in h]
        assert len(decls) == 1, (op, decls)
        assert any("/reference/" in k for k in kernels), f"{op}: no reference kernel"
        # each grep hit names the backend whose kernel it registers, and that backend has it
        for k in kernels:
            backend = re.search(r'register_kernel\("workbench::\w+", "(\w+)"\)', k).group(1)
            assert backend in NAMES
            if status(backend)[0]:
                assert backend in registered(op), (op, backend)


def test_codebook_tables_are_built_in_one_module():
    """Backends take their codebook -> kernel tables from workbench/codebook_tables.py (one cache
    on the codebook), never by stashing their own entries in an object's __dict__."""
    offenders = [f"{p.relative_to(ROOT)}:{i}" for p in sorted((ROOT / "workbench/backends").rglob("*.py"))
                 for i, line in enumerate(p.read_text().splitlines(), 1)
                 if "__dict__.setdefault" in line or re.search(r"\b(cb|codebook)\.__dict__", line)]
    assert not offenders, offenders


def test_registering_an_undeclared_op_fails():
    with pytest.raises(LookupError, match="not declared"):
        register_kernel("workbench::no_such_op", "reference")


def test_auto_resolution_is_measured_then_fallback_and_cached():
    order = candidates("quantize_4bit", "cpu", "bfloat16")
    assert set(order) >= {"numba_cpu", "cython_cpu", "reference"}
    first = resolve("auto", "quantize_4bit", "cpu", "bfloat16")
    assert status(first)[0] and first == next(b for b in order if status(b)[0])
    assert resolve("auto", "quantize_4bit", "cpu", "bfloat16") is first


def test_dequantizers_rank_backends_by_their_output_dtype(monkeypatch):
    """The ranking of a dequantizer is measured per output dtype; its input codes are uint8 whatever
    the output, so resolving by the input's dtype found no entry and fell back to the fixed order."""
    from workbench import ops
    seen = []
    monkeypatch.setattr(ops, "resolve", lambda b, op, dev, dt: seen.append((op, dt)) or resolve(b, op, dev, dt))
    A = torch.randn(5000, dtype=torch.bfloat16)
    c, s8 = wb.quantize_blockwise(A)
    p, s4 = wb.quantize_4bit(A, quant_type="nf4")
    seen.clear()
    wb.dequantize_blockwise(c, s8)
    wb.dequantize_4bit(p, s4, dtype=torch.float16)
    assert seen == [("dequantize_blockwise", "bfloat16"), ("dequantize_4bit", "float16")]


def test_auto_skips_kernels_not_yet_run_on_a_gpu(monkeypatch):
    """Simulator-verified kernels run when named, but 'auto' on a GPU does not pick them."""
    from workbench.backends import registry
    assert "numba_cuda" in candidates("quantize_4bit", "cuda", "bfloat16")
    # affine groups: the CUDA C++ kernel, numba_cuda, then the reference (none is skipped since their GPU runs)
    assert candidates("quantize_kbit_affine", "cuda", None) == ("cuda", "numba_cuda", "reference")
    monkeypatch.setattr(registry, "NOT_YET_RUN_ON_A_GPU", {("numba_cuda", "quantize_4bit")})
    assert "numba_cuda" not in candidates("quantize_4bit", "cuda", "bfloat16")
    assert "numba_cuda" in candidates("dequantize_4bit", "cuda", "bfloat16")


def _fake_ops():
    gen = torch.Generator().manual_seed(0)
    A = torch.randn(1000, generator=gen, dtype=torch.float32).to(torch.bfloat16)
    cb = cbs.get("nf4")
    table, bounds, codes = cb.tensors("cpu")
    with FakeTensorMode(allow_non_fake_inputs=True) as mode:
        fA = mode.from_tensor(A)
        packed, absmax = torch.ops.workbench.quantize_4bit(fA, table, bounds, codes, 64, "reference")
        assert packed.shape == (500,) and packed.dtype == torch.uint8
        assert absmax.shape == (16,) and absmax.dtype == torch.float32
        out = torch.ops.workbench.dequantize_4bit(packed, absmax, table, 64, 1000, torch.float16, None, None, None,
                                                 "reference")
        assert out.shape == (1000,) and out.dtype == torch.float16
        c8, a8 = torch.ops.workbench.quantize_blockwise(fA, table, bounds, codes, 256, "reference")
        assert c8.shape == (1000,) and a8.shape == (4,)
        M = mode.from_tensor(torch.randn(7, 33))
        q, s, cols = torch.ops.workbench.int8_vectorwise_quant(M, 0.0, "reference")
        assert q.shape == (7, 33) and q.dtype == torch.int8 and s.shape == (7,) and cols is None
        C = torch.ops.workbench.int8_linear_matmul(q, mode.from_tensor(torch.zeros(5, 33, dtype=torch.int8)),
                                                   "reference")
        assert C.shape == (7, 5) and C.dtype == torch.int32


def test_fake_tensors_give_output_shapes():
    _fake_ops()


def _pipeline(W, X):
    packed, qs = wb.quantize_4bit(W, blocksize=64, quant_type="nf4", backend="reference")
    W_hat = wb.dequantize_4bit(packed, qs, backend="reference")
    codes, stats, _ = int8_vectorwise_quant(X, 0.0, backend="reference")
    return W_hat, codes, stats


@pytest.mark.parametrize("backend", ["aot_eager"])
def test_compile_fullgraph_quantize_dequantize_int8(backend):
    torch._dynamo.reset()
    gen = torch.Generator().manual_seed(1)
    W = torch.randn(64, 96, generator=gen).to(torch.bfloat16)
    X = torch.randn(8, 96, generator=gen)
    want = _pipeline(W, X)
    got = torch.compile(_pipeline, fullgraph=True, backend=backend)(W, X)
    for g, w in zip(got, want):
        assert torch.equal(g, w)


def test_compiled_raise_policy_still_raises():
    torch._dynamo.reset()
    W = torch.randn(64, 96)
    W[3, 5] = float("nan")
    f = torch.compile(lambda w: wb.quantize_4bit(w, quant_type="nf4", backend="reference", nan_policy="raise")[0], fullgraph=True,
                      backend="aot_eager")
    with pytest.raises(RuntimeError):
        f(W)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_compile_fullgraph_on_cuda():
    torch._dynamo.reset()

    def pipe(W, X):
        packed, qs = wb.quantize_4bit(W, blocksize=64, quant_type="nf4", backend="cuda", nan_policy="propagate")
        W_hat = wb.dequantize_4bit(packed, qs, backend="cuda")
        codes, stats, _ = int8_vectorwise_quant(X, 0.0, backend="cuda", nan_policy="propagate")
        return W_hat, codes, stats

    W = torch.randn(256, 320, device="cuda", dtype=torch.bfloat16)
    X = torch.randn(16, 320, device="cuda", dtype=torch.float16)
    want = pipe(W, X)
    got = torch.compile(pipe, fullgraph=True)(W, X)
    for g, w in zip(got, want):
        assert torch.equal(g, w)


def _strided_cases(device):
    """(op, args with strided / expanded tensors, the same args contiguous) on ``device``."""
    g = torch.Generator().manual_seed(7)
    cb = wb.kbit.kbit_codebook_tensor(None, 3).to(device)
    nf4 = cbs.get("nf4").tensors("cpu")
    one = torch.randn(1, generator=g).to(device)
    wide = torch.randn(40, 96, generator=g).to(device)
    every_other = wide.reshape(-1)[::2]                # the quantizers' ops take flat tensors
    cases = [("quantize_kbit", (one.expand(4000), cb, 3, 32, "bitplane", "e4m4", "exact")),
             ("quantize_kbit", (every_other, cb, 3, 32, "dense", "fp16", "exact")),
             ("quantize_4bit", (every_other, *nf4, 64)),
             ("int8_vectorwise_quant", (wide.t(), 0.0))]
    words, scales, ts, _ = torch.ops.workbench.quantize_kbit(wide.reshape(-1), cb, 3, 32, "bitplane", "fp32",
                                                             "exact", "reference")
    w2 = torch.stack([words, words], 1)[:, 0]          # the words at stride 2
    s2 = torch.stack([scales, scales], 1)[:, 1]
    cases.append(("dequantize_kbit", (w2, s2, ts, cb, 3, 32, wide.numel(), "bitplane", "fp32", torch.float32)))
    return [(op, args, tuple(a.contiguous() if isinstance(a, torch.Tensor) else a for a in args))
            for op, args in cases]


def _backends_on(device):
    from workbench.backends import devices_of
    return [b for b in NAMES if b != "bnb" and status(b)[0] and device in devices_of(b)]


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
def test_ops_called_directly_read_strided_and_expanded_inputs_in_place(device):
    """torch.ops.workbench.<op> with a transposed, sliced or expanded tensor: the kernels read flat memory, so the
    op hands them a contiguous copy (an expanded tensor read flat would run past its one-element storage). Every
    backend's result equals the contiguous call's, bit for bit; a tensor the op writes in place must be contiguous."""
    seen = 0
    for op, args, flat in _strided_cases(device):
        for b in _backends_on(device):
            if b not in registered(op) or (device == "cpu" and b == "numba_cuda"):
                continue
            got, want = getattr(torch.ops.workbench, op)(*args, b), getattr(torch.ops.workbench, op)(*flat, b)
            got, want = (got, want) if isinstance(got, (tuple, list)) else ((got,), (want,))
            assert all(x is None and y is None or torch.equal(x, y) for x, y in zip(got, want)), (op, b)
            seen += 1
    assert seen >= 10
    p = torch.zeros(8, 8, device=device).t()
    with pytest.raises(ValueError, match="^optimizer_update_32bit: p is written in place and must be contiguous"):
        torch.ops.workbench.optimizer_update_32bit("adam", torch.zeros(8, 8, device=device), p,
                                                   torch.zeros(8, 8, device=device), None, None, 0.0, 0.0, 0.9,
                                                   0.999, 0.0, 0.0, 1e-8, 0.0, 1, 1e-3, 1.0, False, "reference")
