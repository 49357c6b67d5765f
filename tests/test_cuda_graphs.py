"""CUDA-graph capture of the public ops: captured once, replayed on new data, exact results
(bitsandbytes #1308 is the upstream failure). The default ``nan_policy="propagate"`` captures as
called; ``"raise"`` reads a flag on the host, which a graph cannot (the ops refuse it with a clear error)."""
from __future__ import annotations

import pytest
import torch

import workbench as wb
from workbench.backends import status
from workbench.int8 import int8_vectorwise_quant
from workbench.optim import functional as F
from workbench.validation import QuantInputError

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not (torch.cuda.is_available() and status("cuda")[0]), reason="needs the cuda backend")]


def _capture(fn):
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for _ in range(2):  # warm-up outside the graph: library load, fine tables, allocator pools
            fn()
    torch.cuda.current_stream().wait_stream(s)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        out = fn()
    return g, out


@pytest.mark.parametrize("n", [4096 * 7 + 129, 1 << 20])
def test_quantize_dequantize_4bit_replay_exact(n):
    A = torch.empty(n, device="cuda", dtype=torch.bfloat16)
    A.copy_(torch.randn(n, device="cuda"))

    def step():
        packed, qs = wb.quantize_4bit(A, blocksize=64, quant_type="nf4", backend="cuda")  # default nan_policy
        return packed, qs.absmax, wb.dequantize_4bit(packed, qs, backend="cuda")

    g, (packed, absmax, out) = _capture(step)
    for seed in range(3):
        A.copy_(torch.randn(n, device="cuda", generator=torch.Generator("cuda").manual_seed(seed)))
        g.replay()
        want_p, want_s = wb.quantize_4bit(A, blocksize=64, quant_type="nf4", backend="cuda")
        torch.cuda.synchronize()
        assert torch.equal(packed, want_p) and torch.equal(absmax, want_s.absmax)
        assert torch.equal(out, wb.dequantize_4bit(want_p, want_s, backend="cuda"))


def test_raise_policy_is_refused_during_capture():
    A = torch.randn(4096, device="cuda")
    wb.quantize_4bit(A, quant_type="nf4", backend="cuda")
    g = torch.cuda.CUDAGraph()
    with pytest.raises(QuantInputError, match="propagate"):
        with torch.cuda.graph(g):
            wb.quantize_4bit(A, quant_type="nf4", backend="cuda", nan_policy="raise")


@pytest.mark.parametrize("name", ["adam", "lion"])
def test_8bit_optimizer_step_replay_exact(name):
    """A captured 8-bit update replays bit-identically to the eager update with the same arguments
    (step-dependent constants are kernel arguments, captured with the graph)."""
    n = 256 * 41 + 17
    nb = -(-n // 256)
    gen = torch.Generator("cuda").manual_seed(1)
    p0 = torch.randn(n, device="cuda", generator=gen)
    grad = torch.empty_like(p0)

    def fresh():
        c1 = torch.full((n,), 128, dtype=torch.uint8, device="cuda")
        return (p0.clone(), c1, c1.clone(), torch.full((nb,), 1e-3, device="cuda"),
                torch.full((nb,), 1e-6, device="cuda"))

    p, c1, c2, a1, a2 = fresh()
    q1, q2 = F.qmap(True, "cuda"), F.qmap(False, "cuda")
    two = name == "adam"

    def step():
        F.update_8bit_blockwise(name, grad, p, c1, c2 if two else None, 0.9, 0.999, 0.0, 0.0, 1e-8, 3, 1e-3, q1,
                                q2 if two else None, a1, a2 if two else None, 0.0, backend="cuda")

    g, _ = _capture(step)
    for seed in range(3):
        grad.copy_(torch.randn(n, device="cuda", generator=torch.Generator("cuda").manual_seed(10 + seed)))
        fresh_state = fresh()
        for t, v in zip((p, c1, c2, a1, a2), fresh_state):
            t.copy_(v)
        g.replay()
        ep, ec1, ec2, ea1, ea2 = fresh()
        F.update_8bit_blockwise(name, grad, ep, ec1, ec2 if two else None, 0.9, 0.999, 0.0, 0.0, 1e-8, 3, 1e-3, q1,
                                q2 if two else None, ea1, ea2 if two else None, 0.0, backend="cuda")
        torch.cuda.synchronize()
        assert torch.equal(p, ep) and torch.equal(c1, ec1) and torch.equal(a1, ea1)
        if two:
            assert torch.equal(c2, ec2) and torch.equal(a2, ea2)


@pytest.mark.parametrize("threshold", [0.0, 6.0])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_int8_nan_rows_match_reference_and_raise(threshold, dtype):
    A = (torch.randn(37, 1030, device="cuda") * 2).to(dtype)
    A[3, 17] = float("nan")
    A[5, 1029] = float("nan")
    got = int8_vectorwise_quant(A, threshold, backend="cuda", nan_policy="propagate")
    want = int8_vectorwise_quant(A, threshold, backend="reference", nan_policy="propagate")
    assert torch.equal(got[0], want[0])
    assert torch.equal(got[1].isnan(), want[1].isnan())
    assert torch.equal(torch.nan_to_num(got[1]), torch.nan_to_num(want[1]))
    with pytest.raises(QuantInputError, match="non-finite"):
        int8_vectorwise_quant(A, threshold, backend="cuda", nan_policy="raise")
