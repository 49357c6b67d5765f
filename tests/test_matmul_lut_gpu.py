"""GPU parity of the unscaled-lookup tensor-core GEMM (cuda_src/matmul_lut.cuh, ``kbit_gemm_4bit_lut``), which the
cuda backend runs for the rows of its dispatch rule (lut_rows): each output held to the reference's
error_bound_unscaled, every forced split count deterministic and over poisoned memory, the one-call and general
paths equal, CUDA-graph capture, and a table that does not fit fp16 sent to the rule-2 GEMM instead; the weight's
tiled copy (workbench/backends/cuda/gemm_layout.py) gives the row layout's bits, takes one-row calls on large
weights, follows in-place changes of the weight and is not made while a graph is captured.
Run on a GPU machine: ``pytest -m gpu tests/test_matmul_lut_gpu.py``."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from workbench import codebooks as cbs
from workbench.backends.reference import matmul as R
from workbench.matmul import matmul_4bit

from test_matmul_gpu import (_case, _need_cuda, _poison_allocator, _ratio, _replays_equal,
                             _split_runs_within_and_repeatable, _state_args, _within)

pytestmark = pytest.mark.gpu

# (N, K, blocksize): row tails, K not a multiple of the blocksize (blocks across rows), K % 256 != 0 (per-chunk
# scales), long rows, one block per row; all of at most 2^25 weights: the mma.sync form at every M
CASES = ((300, 640, 128), (129, 64, 64), (1000, 1536, 64), (517, 4160, 1024), (4096, 4096, 64), (64, 8192, 4096))
MS = (2, 3, 8, 9, 16, 17, 32, 33, 64)


def _count(monkeypatch):
    """Launches of the unscaled-lookup GEMM (both paths launch through gemm_lut_at)."""
    from workbench.backends.cuda import matmul as CM
    calls = []
    real = CM.gemm_lut_at
    monkeypatch.setattr(CM, "gemm_lut_at", lambda *a, **k: calls.append(1) or real(*a, **k))
    return calls


@pytest.mark.parametrize("dtype", (torch.bfloat16, torch.float16))
def test_lut_gemm_vs_reference(rng, monkeypatch, dtype):
    _need_cuda()
    calls = _count(monkeypatch)
    rand = cbs.from_values(np.sort(np.random.default_rng(5).uniform(-1, 1, 16)))
    worst = 0.0
    for i, (N, K, bs) in enumerate(CASES):
        for j, M in enumerate(MS):
            codebook = (None, cbs.get("af4"), rand)[(i + j) % 3]
            A, P, qs, b = _case(rng, N, K, M, dtype, bs, nested=(i + j) % 2 == 0, bias=j % 3 != 1,
                                codebook=codebook, quant_type="fp4" if i == 1 else "nf4")
            ref = matmul_4bit(A, P, qs, bias=b, backend="reference")
            n = len(calls)
            _poison_allocator()
            got = matmul_4bit(A, P, qs, bias=b, backend="cuda")
            assert len(calls) == n + 1, "the dispatch did not take the unscaled-lookup GEMM"
            _within(got, ref, A, P, qs, b)
            worst = max(worst, _ratio(got, ref, A, P, qs, b))
    print(f"lut {dtype}: max |err| / bound = {worst:.3g}")


@pytest.mark.parametrize("splits", [1, 2, 3, 7, 32])
def test_lut_split_k_is_deterministic_and_within_bound(rng, monkeypatch, splits):
    _need_cuda()
    from workbench.backends.cuda import matmul as CM
    monkeypatch.setattr(CM, "lut_splits", lambda *a, **k: splits)
    monkeypatch.setattr(CM, "_lut_plans", {})   # the one-call path's remembered plans
    calls = _count(monkeypatch)
    _split_runs_within_and_repeatable(rng, ((24, (300, 4160, 64)), (5, (1000, 8192, 64)), (2, (129, 256, 4096))))
    assert calls


def test_lut_one_call_equals_general_path(rng, monkeypatch):
    _need_cuda()
    calls = _count(monkeypatch)
    A, P, qs, b = _case(rng, 1000, 4096, 12, torch.bfloat16, 64, True, True)
    fast = matmul_4bit(A, P, qs, bias=b)                       # the one-call path
    out = torch.empty_like(fast)
    general = matmul_4bit(A, P, qs, bias=b, out=out)           # out= keeps it on the general path
    assert len(calls) == 2 and torch.equal(fast, general)
    base = torch.empty(12 * 4096 + 8, dtype=torch.bfloat16, device="cuda")
    Am = base[3:3 + 12 * 4096].view(3, 4, 4096)                # not 16-byte aligned: copied, same bits
    Am.copy_(A.view(3, 4, 4096))
    assert torch.equal(matmul_4bit(Am, P, qs, bias=b).view(12, -1), fast)


def test_lut_cuda_graph_capture(rng, monkeypatch):
    _need_cuda()
    calls = _count(monkeypatch)
    _replays_equal(*_case(rng, 4096, 4096, 16, torch.bfloat16, 64, True, True))
    assert calls


def test_table_outside_fp16_takes_the_rule2_gemm(rng, monkeypatch):
    """A kernel-level table with entries beyond fp16's range (public codebooks lie in [-1, 1]) would be inf as
    unscaled fp16 lookups; rule 2 scales them first, finite here. The backend's kernel entry, as the op calls it."""
    _need_cuda()
    from workbench.backends.cuda import matmul as CM
    from workbench.backends.reference import matmul as R
    calls = _count(monkeypatch)
    A, P, qs, _ = _case(rng, 256, 1024, 8, torch.float16, 64, False, False)
    table = qs.code.float() * 1e6
    absmax = torch.full_like(qs.absmax, 1e-5)   # |table[c] * s| <= 10: finite in fp16, and so are the sums
    ref = R.gemm_4bit(A, P, (256, 1024), absmax, table, 64)
    got = CM.gemm_4bit(A, P, (256, 1024), absmax, table, 64)
    assert not calls and torch.isfinite(got).all()
    W = R.dequantize_weight(P, (256, 1024), absmax, table, 64, torch.float16)
    assert ((got.float() - ref.float()).abs() <= R.error_bound(A, W, None, torch.float16, ref)).all()


def _lut_direct(A, P, qs, b):
    """The general path's launch of the unscaled-lookup GEMM, whatever the dispatch would pick for A's rows."""
    from workbench.backends.cuda import matmul as CM
    a2, a8, c2, off = _state_args(qs)
    N, K = int(qs.shape[0]), int(qs.shape[1])
    f32 = lambda t: None if t is None else t.float().reshape(-1).contiguous()
    return CM._gemm_lut(A, P.reshape(-1), N, K, a2, a8, f32(c2), None if off is None else off.float().reshape(1),
                        qs.code.float(), qs.blocksize, b)


@pytest.mark.parametrize("dtype", (torch.bfloat16, torch.float16))
def test_tiled_copy_gives_the_row_layouts_bits(rng, monkeypatch, dtype):
    _need_cuda()
    from workbench.backends.cuda import gemm_layout
    for i, (N, K, bs) in enumerate(((300, 640, 128), (1000, 1536, 64), (4100, 4096, 64))):
        for M in (1, 5, 16):
            A, P, qs, b = _case(rng, N, K, M, dtype, bs, nested=i != 0, bias=M != 5)
            monkeypatch.setattr(gemm_layout, "ENABLED", True)
            tiled = _lut_direct(A, P, qs, b)
            assert any(k[0] == P.data_ptr() for k in gemm_layout._copies), "no tiled copy was made"
            monkeypatch.setattr(gemm_layout, "ENABLED", False)
            rows = _lut_direct(A, P, qs, b)
            assert torch.equal(tiled, rows), (N, K, M)
            ref = matmul_4bit(A, P, qs, bias=b, backend="reference")   # the unscaled bound, whatever M's dispatch
            a2, a8, c2, off = _state_args(qs)
            bound = R.unscaled_bound_of(A, P, (N, K), a2, qs.code, qs.blocksize, b, a8, c2, off, ref=ref)
            assert ((tiled.float() - ref.float()).abs() <= bound).all(), (N, K, M)


def test_one_row_on_a_large_weight_takes_the_lut_gemm(rng, monkeypatch):
    _need_cuda()
    from workbench.backends.cuda import gemm_layout
    monkeypatch.setattr(gemm_layout, "ENABLED", True)   # one row takes the GEMM only with tiled copies
    calls = _count(monkeypatch)
    A, P, qs, b = _case(rng, 4100, 4096, 1, torch.bfloat16, 64, True, True)   # more than 2^24 weights, a row tail
    ref = matmul_4bit(A, P, qs, bias=b, backend="reference")
    got = matmul_4bit(A, P, qs, bias=b)          # the one-call path
    general = matmul_4bit(A, P, qs, bias=b, out=torch.empty_like(got))
    assert len(calls) == 2 and torch.equal(got, general)
    _within(got, ref, A, P, qs, b)
    small = _case(rng, 4096, 4096, 1, torch.bfloat16, 64, True, False)     # 2^24 weights: the GEMV
    matmul_4bit(small[0], small[1], small[2])
    assert len(calls) == 2


def test_tiled_copy_follows_in_place_changes(rng, monkeypatch):
    _need_cuda()
    calls = _count(monkeypatch)
    A, P, qs, b = _case(rng, 1000, 1536, 8, torch.bfloat16, 64, True, False)
    before = matmul_4bit(A, P, qs)
    P.bitwise_xor_(0x5A)                         # other codes, same address: the copy must be remade
    ref = matmul_4bit(A, P, qs, backend="reference")
    after = matmul_4bit(A, P, qs)
    assert len(calls) == 2 and not torch.equal(before, after)
    _within(after, ref, A, P, qs, None)


def test_no_tiled_copy_is_made_while_a_graph_is_captured(rng, monkeypatch):
    """Captured with no copy made yet (the warm-up call ran with copies off): the graph reads the row layout (same
    bits); the copy comes with the first eager call after it."""
    _need_cuda()
    from workbench.backends.cuda import gemm_layout
    calls = _count(monkeypatch)
    A, P, qs, b = _case(rng, 4096, 4096, 16, torch.bfloat16, 64, True, True)
    g = torch.cuda.CUDAGraph()
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        monkeypatch.setattr(gemm_layout, "ENABLED", False)
        matmul_4bit(A, P, qs, bias=b, backend="cuda")   # plans and the table check, outside the capture
        monkeypatch.setattr(gemm_layout, "ENABLED", True)
        with torch.cuda.graph(g):
            out = matmul_4bit(A, P, qs, bias=b, backend="cuda")
    torch.cuda.current_stream().wait_stream(s)
    assert not any(k[0] == P.data_ptr() for k in gemm_layout._copies)
    g.replay()
    torch.cuda.synchronize()
    want = matmul_4bit(A, P, qs, bias=b, backend="cuda")
    assert any(k[0] == P.data_ptr() for k in gemm_layout._copies)
    assert len(calls) == 3 and torch.equal(out, want)


def test_tiled_copy_past_the_cap_or_out_of_memory_reads_rows(rng, monkeypatch):
    """No room for a copy (the memory cap, or out of GPU memory while making it): the call reads the row layout, gives
    its bits, and makes no copy."""
    _need_cuda()
    from workbench.backends.cuda import gemm_layout
    monkeypatch.setattr(gemm_layout, "ENABLED", True)
    A, P, qs, b = _case(rng, 1000, 1536, 8, torch.bfloat16, 64, True, True)
    monkeypatch.setattr(gemm_layout, "ENABLED", False)
    rows = _lut_direct(A, P, qs, b)
    monkeypatch.setattr(gemm_layout, "ENABLED", True)
    gemm_layout.forget()
    monkeypatch.setattr(gemm_layout, "MAX_BYTES", 1024)
    assert torch.equal(_lut_direct(A, P, qs, b), rows) and gemm_layout.kept_bytes() == 0
    monkeypatch.setattr(gemm_layout, "MAX_BYTES", None)
    gemm_layout.forget()

    def oom(*a):
        raise torch.cuda.OutOfMemoryError("no room")

    monkeypatch.setattr(gemm_layout, "tile_codes", oom)
    assert torch.equal(_lut_direct(A, P, qs, b), rows) and gemm_layout.kept_bytes() == 0
    gemm_layout.forget()


@pytest.mark.parametrize("variant", (15, 16, 18, 19))
def test_lut_variant_gives_the_default_bits(rng, monkeypatch, variant):
    """kbit_gemm_lut_tuning's variants other than the diagnostics change how the kernel runs, not what it sums:
    variant 15 (the pair table through a generic pointer), 16 (two row tiles a warp), 18 (the default's lean form
    with registers for 3 CTAs per SM) and 19 (the general loop, where the default runs the lean form on the tiled
    copy: no per-chunk checks, rows past N and M read, not zeroed) give variant 0's bits,
    over row tails (and tiles past N), nested and plain scales, bias, 1..16 rows, and the planned, 3 and 7 splits
    (7: empty splits past the last group)."""
    _need_cuda()
    from workbench.backends.cuda import matmul as CM
    L = CM.lib()
    real = CM.lut_splits
    try:
        for forced in (None, 3, 7):
            monkeypatch.setattr(CM, "lut_splits", real if forced is None else lambda *a, **k: forced)
            monkeypatch.setattr(CM, "_lut_plans", {})
            for i, (N, K, bs) in enumerate(((300, 640, 128), (1000, 1536, 64), (4100, 4096, 64))):
                for M in (1, 5, 16):
                    A, P, qs, b = _case(rng, N, K, M, torch.bfloat16, bs, nested=i != 0, bias=M != 5)
                    L.kbit_gemm_lut_tuning(0)
                    want = _lut_direct(A, P, qs, b)
                    L.kbit_gemm_lut_tuning(variant)
                    _poison_allocator()
                    got = _lut_direct(A, P, qs, b)
                    assert torch.equal(got.view(torch.int16), want.view(torch.int16)), (N, K, M, forced)
    finally:
        L.kbit_gemm_lut_tuning(0)


def _wgmma_cases(rng, monkeypatch, CM):
    """The wgmma form's cases: each weight of CASES at 1, 8, 9, 17, 33 and 64 rows, bf16 / fp16, nested absmax and
    bias alternating, and forced splits 1, 3, 7 (more than the chunks too); yields (A, P, qs, bias, where)."""
    for i, (N, K, bs) in enumerate(CASES):
        for j, M in enumerate((1, 8, 9, 17, 33, 64)):
            dtype = (torch.bfloat16, torch.float16)[(i + j) % 2]
            splits = (1, 3, 7)[(i + j) % 3]
            monkeypatch.setattr(CM, "lut_splits", lambda *a, **k: splits)
            A, P, qs, b = _case(rng, N, K, M, dtype, bs, nested=(i + j) % 2 == 0 or bs == 64, bias=j % 2 == 0)
            yield A, P, qs, b, (N, K, bs, M, dtype, splits)


@pytest.mark.parametrize("variant", (20, 21, 22))
def test_lut_wgmma_form_within_bound_repeatable_and_layout_free(rng, monkeypatch, variant):
    """The kernel's wgmma form (cuda_src/matmul_lut_wgmma.cuh; kbit_gemm_lut_tuning 20: two warpgroups a CTA, 21:
    one, 22: 3 groups of codes in flight) sums as the mma.sync form does, on another instruction: each output
    within the unscaled bound over NaN-poisoned memory, with row tails, per-chunk and grouped scales, bias, bf16 and
    fp16, 1..64 rows and forced splits (more than the chunks too); a second call gives the same bits and the tiled
    copy the rows' bits. Whether it equals the mma.sync form bit for bit is printed, not assumed."""
    _need_cuda()
    from workbench.backends.cuda import gemm_layout
    from workbench.backends.cuda import matmul as CM
    L = CM.lib()
    monkeypatch.setattr(CM, "_lut_plans", {})
    same = runs = 0
    try:
        for A, P, qs, b, where in _wgmma_cases(rng, monkeypatch, CM):
            ref = matmul_4bit(A, P, qs, bias=b, backend="reference")
            a2, a8, c2, off = _state_args(qs)
            bound = R.unscaled_bound_of(A, P, where[:2], a2, qs.code, qs.blocksize, b, a8, c2, off, ref=ref)
            L.kbit_gemm_lut_tuning(variant)
            monkeypatch.setattr(gemm_layout, "ENABLED", False)
            _poison_allocator()
            rows = _lut_direct(A, P, qs, b)
            again = _lut_direct(A, P, qs, b)
            monkeypatch.setattr(gemm_layout, "ENABLED", True)
            tiled = _lut_direct(A, P, qs, b)
            L.kbit_gemm_lut_tuning(0)
            mma = _lut_direct(A, P, qs, b)
            assert ((rows.float() - ref.float()).abs() <= bound).all(), where
            assert torch.equal(rows, again) and torch.equal(rows, tiled), where
            same += bool(torch.equal(rows.view(torch.int16), mma.view(torch.int16)))
            runs += 1
    finally:
        L.kbit_gemm_lut_tuning(0)
        gemm_layout.forget()
    print(f"wgmma variant {variant}: the mma.sync form's bits in {same} of {runs} cases")


@pytest.mark.parametrize("variant", (29, 30))
def test_lut_wgmma_pipelined_form_gives_the_unpipelined_bits(rng, monkeypatch, variant):
    """The pipelined wgmma form (matmul_lut_wgmma.cuh, gemm_lut_wg_kernel with PIPE; 29: two warpgroups a CTA,
    30: one) decodes the next chunk while the tensor core runs this one: the same sums in the same order, so variant
    20's bits, over NaN-poisoned memory, row tails, per-chunk and grouped scales, bias, bf16 and fp16, 1..64 rows,
    forced splits (more than the chunks too: empty splits) and both layouts."""
    _need_cuda()
    from workbench.backends.cuda import gemm_layout
    from workbench.backends.cuda import matmul as CM
    L = CM.lib()
    monkeypatch.setattr(CM, "_lut_plans", {})
    try:
        for A, P, qs, b, where in _wgmma_cases(rng, monkeypatch, CM):
            for tiled in (False, True):
                monkeypatch.setattr(gemm_layout, "ENABLED", tiled)
                L.kbit_gemm_lut_tuning(20)
                want = _lut_direct(A, P, qs, b)
                L.kbit_gemm_lut_tuning(variant)
                _poison_allocator()
                got = _lut_direct(A, P, qs, b)
                assert torch.equal(got.view(torch.int16), want.view(torch.int16)), (*where, tiled)
    finally:
        L.kbit_gemm_lut_tuning(0)
        gemm_layout.forget()


def test_17_to_64_rows_take_the_pipelined_wgmma_form(rng, monkeypatch):
    """Past 16 rows the dispatch takes the unscaled-lookup GEMM and the kernel runs its pipelined wgmma form
    (lutwg::takes, variant 29): within the bound over poisoned memory, the one-call and general paths equal, and
    the bits of variants 29 and 20 forced; both scale modes (K % 256 == 0 groups them), row tails, large and small
    weights."""
    _need_cuda()
    from workbench.backends.cuda import matmul as CM
    L = CM.lib()
    calls = _count(monkeypatch)
    cases = ((4100, 8192, 64), (8200, 4160, 33), (1000, 1536, 17), (300, 2048, 24))
    try:
        for N, K, M in cases:
            assert CM.lut_rows(M, N, K)
            A, P, qs, b = _case(rng, N, K, M, torch.bfloat16, 64, True, M % 2 == 1)
            ref = matmul_4bit(A, P, qs, bias=b, backend="reference")
            _poison_allocator()
            got = matmul_4bit(A, P, qs, bias=b)
            general = matmul_4bit(A, P, qs, bias=b, out=torch.empty_like(got))
            _within(got, ref, A, P, qs, b)
            assert torch.equal(got, general), (N, K, M)
            for variant in (29, 20):
                monkeypatch.setattr(CM, "_lut_plans", {})
                L.kbit_gemm_lut_tuning(variant)
                forced = matmul_4bit(A, P, qs, bias=b)
                L.kbit_gemm_lut_tuning(0)
                assert torch.equal(got.view(torch.int16), forced.view(torch.int16)), (N, K, M, variant)
            monkeypatch.setattr(CM, "_lut_plans", {})
        assert len(calls) == 4 * len(cases)
    finally:
        L.kbit_gemm_lut_tuning(0)


def test_kept_partials_shared_by_calls_in_flight(rng, monkeypatch):
    """Split runs of different shapes issued back to back (no sync) share one kept partials buffer per stream
    (cuda matmul._split_scratch); a side stream gets its own. Each result equals the same call run alone on
    fresh partials."""
    _need_cuda()
    from workbench.backends.cuda import matmul as CM
    monkeypatch.setattr(CM, "lut_splits", lambda *a, **k: 4)
    monkeypatch.setattr(CM, "_lut_plans", {})
    monkeypatch.setattr(CM, "_partials", {})
    cases = [_case(rng, N, K, M, torch.bfloat16, 64, True, True) for N, K, M in
             ((1000, 4096, 16), (4096, 4096, 3), (300, 8192, 33), (1000, 4096, 16))]
    alone = []
    monkeypatch.setattr(CM, "PARTIALS_KEPT_MAX", 0)
    for A, P, qs, b in cases:
        alone.append(matmul_4bit(A, P, qs, bias=b, backend="cuda"))
        torch.cuda.synchronize()
    monkeypatch.setattr(CM, "PARTIALS_KEPT_MAX", 1 << 24)
    _poison_allocator()
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    got = [matmul_4bit(A, P, qs, bias=b, backend="cuda") for A, P, qs, b in cases]
    with torch.cuda.stream(side):
        got_side = [matmul_4bit(A, P, qs, bias=b, backend="cuda") for A, P, qs, b in cases]
    torch.cuda.synchronize()
    assert len(CM._partials) == 2
    for g, s, a in zip(got, got_side, alone):
        assert torch.equal(g, a) and torch.equal(s, a)
