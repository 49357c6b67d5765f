"""CUDA production kernels for the matmul family (cuda_src/matmul.cu) behind the reference signatures.

Dispatch on the number of activation rows M, from the H200 measurements in reports/matmul-h200:

* fp16/bf16 A, 2 <= M <= LUT_MAX_M, or M = 1 on a weight of more than LUT_M1_MIN_WEIGHTS elements with tiled
  copies on, K % 64 == 0, blocksize >= 64, a codebook finite in A's dtype: the tensor-core GEMM with unscaled
  lookups ``kbit_gemm_4bit_lut`` (cuda_src/matmul_lut.cuh, and its pipelined wgmma form matmul_lut_wgmma.cuh for
  17..64 rows: each weight is dtype(table[c]), the block scale multiplies the block's float32 partial sum; held
  to the reference's ``error_bound_unscaled``, not rule 2 bit for bit). It reads the weight's tiled copy
  (gemm_layout.py: made once per weight, kept with it), or the row layout when copies are off;
* otherwise fp16/bf16 A, K % 32 == 0, MMA_MIN_M <= M <= MMA_MAX_M: the fused dequant + tensor-core GEMM
  ``kbit_gemm_4bit_mma`` (cuda_src/matmul_mma.cuh: rule 2 exactly, mma.sync m16n8k16, float32 accumulators,
  split-K over enough CTAs to fill the GPU, partials summed in split order by the last CTA of a tile);
* otherwise M <= GEMV_MAX_M: the fused dequant-GEMV ``kbit_gemv_4bit`` (nested absmax decoded in the kernel,
  codebook in shared memory, bias in its epilogue; also fp32 A and any K);
* otherwise: the weight dequantized once to A's dtype (one launch, the nested absmax decoded in it:
  ``dequant_mm_at``) and multiplied by cuBLAS with float32 accumulation and no reduced-precision split-K reduction
  (bias added in float32, one rounding).

Numerics and bound: workbench/backends/reference/matmul.py.
"""
from __future__ import annotations

import ctypes
import os

import torch

from . import check, f32, gemm_layout, kernels, launch, load, on, on_device, ptr, raw_stream
from ..registry import register_kernel

from ...wire import DTYPE_CODE
GEMV_MAX_M = 4
# H200: the GEMM beats the GEMV from M = 2 on the large shapes (1.4-2.6x at M = 4, a tie at M = 2 on the small
# ones); dequantize + cuBLAS beats the GEMM from M = 128 on every shape measured (at M = 64 already on 4096x4096).
MMA_MIN_M = 2
MMA_MAX_M = 64
# H200 (reports/matmul-h200/lut_gemm): the unscaled-lookup GEMM beats the rule-2 GEMM at M = 4, 16 and 32 on
# the five shapes measured (1.07-2.2x; a tie at M = 32 on 8192x28672) and at M = 64 on the three of at most 2^26
# weights (1.25-1.61x), and its wgmma form beats the rule-2 GEMM at M = 64 on the two of 235 M weights too (1.08 /
# 1.11x, lut_gemm/wgmma_ab); the kernel runs that form, pipelined, past 16 rows (matmul-h100/wgmma_pipeline). At
# M = 1, reading the tiled copy, it beats the GEMV by 1.05-1.39x on the four shapes of more than 2^24 weights and
# loses on 4096x4096.
LUT_MIN_M = 1
LUT_MAX_M = 64
LUT_M1_MIN_WEIGHTS = 1 << 24
# How the kernel reads the codebook (0: one shared table, 1: a copy per lane, 3: byte-indexed pairs): equal
# results, different speed; KBIT_MMA_LOOKUP overrides the measured default.
LOOKUP = int(os.environ.get("KBIT_MMA_LOOKUP", "0"))
# The GEMM's m16 row tiles per warp (0: the kernel's measured default; 1 or 2 forced) and weight path (-1: the
# default; 1 registers, 0 shared memory): equal results per split plan, different speed; KBIT_GEMM_ROW_TILES and
# KBIT_GEMM_WEIGHTS_IN_REGISTERS override (studies/probes/gemm_tiling_ab.py measures them).
ROW_TILES = int(os.environ.get("KBIT_GEMM_ROW_TILES", "0"))
WEIGHTS_IN_REGISTERS = int(os.environ.get("KBIT_GEMM_WEIGHTS_IN_REGISTERS", "-1"))
_c = ctypes
_P, _I = _c.c_void_p, _c.c_int
_lib = None


def lib() -> ctypes.CDLL:
    """The family's library with the knobs above applied; its knobs and queries through ctypes."""
    global _lib
    if _lib is None:
        L = load("matmul")
        L.kbit_matmul_ieee_build.restype = _I
        L.kbit_gemv_tuning.argtypes = [_I]           # A/B knob (studies/probes/gemv_rows_ab.py)
        L.kbit_gemv_tuning.restype = None
        L.kbit_gemm_4bit_mma_tile.argtypes = [_I, _I, _P, _P, _P]
        L.kbit_gemm_4bit_mma_tile.restype = _I
        L.kbit_gemm_tuning.argtypes = [_I, _I]
        L.kbit_gemm_tuning.restype = None
        L.kbit_gemm_tuning(ROW_TILES, WEIGHTS_IN_REGISTERS)
        L.kbit_gemm_4bit_lut_ctas.argtypes = [_I, _c.c_longlong, _c.c_longlong, _I, _P]
        L.kbit_gemm_4bit_lut_ctas.restype = _I
        L.kbit_gemm_lut_tuning.argtypes = [_I]      # A/B knob (studies/probes/matmul_lut_ab.py)
        L.kbit_gemm_lut_tuning.restype = None
        _lib = L
    return _lib


def _kernels():
    """The launch functions (``cuda_launch``), this family's library loaded through lib() (its knobs applied)."""
    if _lib is None:
        lib()
    return launch


def lut_rows(M: int, N: int, K: int) -> bool:
    """Whether M rows against an (N, K) weight are in the unscaled-lookup GEMM's measured range (one row: only
    with tiled copies, gemm_layout.py)."""
    if M < LUT_MIN_M:
        return False
    if M == 1:
        return gemm_layout.ENABLED and N * K > LUT_M1_MIN_WEIGHTS
    return M <= LUT_MAX_M


def takes_lut(dtype: torch.dtype, M: int, N: int, K: int, blocksize: int, table_fits: bool) -> bool:
    """Whether gemm_4bit's dispatch sends M rows of ``dtype`` to the unscaled-lookup GEMM; ``table_fits``: every
    codebook entry is finite in ``dtype`` (:func:`table_fits`; callers ask only when :func:`lut_rows` holds)."""
    return dtype != torch.float32 and lut_rows(M, N, K) and K % 64 == 0 and blocksize >= 64 and table_fits


def takes_mma(dtype: torch.dtype, M: int, K: int) -> bool:
    """Whether gemm_4bit's dispatch sends M rows of ``dtype`` to the tensor-core GEMM (unless takes_lut)."""
    return dtype != torch.float32 and K % 32 == 0 and MMA_MIN_M <= M <= MMA_MAX_M


def takes_gemv(dtype: torch.dtype, M: int, K: int) -> bool:
    """Whether gemm_4bit's dispatch below sends M rows of ``dtype`` to the fused GEMV."""
    return 1 <= M <= GEMV_MAX_M and not takes_mma(dtype, M, K)


_fits: dict = {}  # (table address, version, dtype) -> (table, answer): the table held, so its address stays its own


def table_fits(table: torch.Tensor, dtype: torch.dtype) -> bool:
    """Every codebook entry finite once rounded to ``dtype`` (the unscaled-lookup GEMM's condition: it rounds the
    entries themselves, rule 2 rounds their products with the block scale). One device sync per table and version."""
    key = (table.data_ptr(), table._version, dtype)
    hit = _fits.get(key)
    if hit is None or hit[0] is not table:
        if len(_fits) >= 1024:
            _fits.clear()
        hit = _fits[key] = (table, bool((table.float().abs() <= torch.finfo(dtype).max).all()))
    return hit[1]


def gemv_4bit_at(A, M, N, K, B, state_args, bias_ptr, out, device_index):
    """kbit_gemv_4bit with the state as raw pointers (workbench.matmul's one-call path, which has checked them):
    state_args = (absmax, absmax_8bit, absmax_code, absmax_offset, table, blocksize), 0 for absent pointers
    (the float32 absmax first when not nested); A, B, the bias and out on the current device ``device_index``."""
    a2, a8, c2, off, tab, bs = state_args
    st = _kernels().kbit_gemv_4bit(A.data_ptr(), DTYPE_CODE[A.dtype], M, N, K, B.data_ptr(), a2, a8, c2, off, tab, bs,
                                   bias_ptr, out.data_ptr(), raw_stream(device_index))
    check(st, "kbit_gemv_4bit")


def dequant_mm_at(A, M, N, K, B, state_args, bias, device_index):
    """The rows above the fused kernels (``_dequant_cublas``) with the state as raw pointers (the one-call path,
    which has checked them; state_args as gemv_4bit_at's): the weight dequantized in A's dtype by one launch, the
    nested absmax decoded in it, then cuBLAS."""
    a2, a8, c2, off, tab, bs = state_args
    W = torch.empty((N, K), dtype=A.dtype, device=A.device)
    q = kernels("quant")
    st = raw_stream(device_index)
    dt = DTYPE_CODE[A.dtype]
    if a8:
        check(q.kbit_dequantize_4bit_nested(B.data_ptr(), a2, a8, c2, off, tab, N * K, bs, W.data_ptr(), dt, st),
              "kbit_dequantize_4bit_nested")
    else:
        check(q.kbit_dequantize_4bit(B.data_ptr(), a2, tab, N * K, bs, W.data_ptr(), dt, st), "kbit_dequantize_4bit")
    return _dense_tail(A.view(M, K), W, bias)


def gemm_4bit(A, B, shapeB, absmax, table, blocksize, bias=None, absmax_8bit=None, absmax_code=None,
              absmax_offset=None):
    N, K = int(shapeB[0]), int(shapeB[1])
    M = A.shape[0]
    dev = A.device
    try:
        dt = DTYPE_CODE[A.dtype]
    except KeyError:
        raise TypeError(f"A: dtype {A.dtype} not supported by the cuda backend (float32/float16/bfloat16)") from None
    tab = f32(table, dev)
    code2 = None if absmax_8bit is None else f32(absmax_code, dev)
    off = None if absmax_8bit is None else f32(absmax_offset.reshape(1), dev)
    if takes_lut(A.dtype, M, N, K, blocksize, lut_rows(M, N, K) and table_fits(tab, A.dtype)):
        return _gemm_lut(A, B, N, K, absmax, absmax_8bit, code2, off, tab, blocksize, bias)
    if takes_mma(A.dtype, M, K):
        return _gemm_mma(A, B, N, K, absmax, absmax_8bit, code2, off, tab, blocksize, bias)
    if M <= GEMV_MAX_M:
        out = torch.empty((M, N), dtype=A.dtype, device=dev)
        check(on_device(dev.index, _kernels().kbit_gemv_4bit, ptr(A), dt, M, N, K, ptr(B), ptr(absmax),
                        ptr(absmax_8bit), ptr(code2), ptr(off), ptr(tab), blocksize, ptr(bias), ptr(out)),
              "kbit_gemv_4bit")
        return out
    return _dequant_cublas(A, B, N, K, absmax, absmax_8bit, code2, off, tab, blocksize, bias)


# --- the tensor-core GEMM: tile shape, split-K plan, counters ---------------------------------------------------

CHUNK = 128  # k per pipeline step of the kernel (matmul_mma.cuh kChunk)
MAX_SPLITS = 32
_tiles: dict = {}
_sms: dict = {}


def mma_tile(M: int, device: torch.device) -> tuple[int, int, int]:
    """(block_m, block_n, CTAs resident per SM) of the kernel instance that serves M rows."""
    key = (8 if M <= 8 else 16 if M <= 16 else 32 if M <= 32 else 64, LOOKUP)
    if key not in _tiles:
        bm, bn, occ = _c.c_int(), _c.c_int(), _c.c_int()
        with on(device):
            check(lib().kbit_gemm_4bit_mma_tile(M, LOOKUP, _c.byref(bm), _c.byref(bn), _c.byref(occ)),
                  "kbit_gemm_4bit_mma_tile")
        _tiles[key] = (bm.value, bn.value, max(1, occ.value))
    return _tiles[key]


def plan_splits(M: int, N: int, K: int, block_m: int, block_n: int, capacity: int) -> int:
    """How many K ranges to split into. Cost model in bytes: the weight stream lasts (waves x chunks per split)
    full waves of ``capacity`` CTAs, each CTA reading 64 bytes per weight row and chunk; a partial last wave
    costs a full one (it runs latency-bound). Each split adds M x N float32 partials, written and read
    (mostly in L2: counted at half)."""
    tiles = -(-M // block_m) * -(-N // block_n)
    chunks = max(1, -(-K // CHUNK))
    best_cost, best = None, 1
    for s in range(1, min(chunks, MAX_SPLITS) + 1):
        cps = -(-chunks // s)
        if -(-chunks // cps) != s:  # the same chunk ranges as a smaller s
            continue
        waves = -(-(tiles * s) // capacity)
        cost = waves * cps * capacity * block_n * 64 + (4 * M * N * s if s > 1 else 0)
        if best_cost is None or cost < best_cost:
            best_cost, best = cost, s
    return best


def _sm_count(device: torch.device) -> int:
    idx = device.index if device.index is not None else torch.cuda.current_device()
    if idx not in _sms:
        _sms[idx] = torch.cuda.get_device_properties(idx).multi_processor_count
    return _sms[idx]


PARTIALS_KEPT_MAX = 1 << 24   # float32 values (64 MB): larger split runs allocate their partials per call
_partials: dict = {}          # (device index, stream) -> float32 buffer
_counters: dict = {}          # (device index, stream) -> int32 tile counters, all zero between kernels


def _split_scratch(device: torch.device, parts: int, tiles: int, st: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A split run's room for ``parts`` float32 partial sums and ``tiles`` zeroed int32 counters (the kernel leaves
    them zero), both kept per (device, stream): the kernels of one stream run in order (no programmatic dependent
    launch), and each reads its partials before it ends. While a CUDA graph is captured, fresh buffers (a memset
    node for the counters); partials past PARTIALS_KEPT_MAX are allocated per call."""
    if torch.cuda.is_current_stream_capturing():
        return (torch.empty(parts, dtype=torch.float32, device=device),
                torch.zeros(tiles, dtype=torch.int32, device=device))
    key = (device.index, st)
    c = _counters.get(key)
    if c is None or c.numel() < tiles:
        c = _counters[key] = torch.zeros(max(tiles, 1024), dtype=torch.int32, device=device)
    if parts > PARTIALS_KEPT_MAX:
        return torch.empty(parts, dtype=torch.float32, device=device), c
    p = _partials.get(key)
    if p is None or p.numel() < parts:
        p = _partials[key] = torch.empty(max(parts, 1 << 16), dtype=torch.float32, device=device)
    return p, c


def _aligned(t: torch.Tensor) -> torch.Tensor:
    return t if t.data_ptr() % 16 == 0 else t.clone()  # the kernel's 16-byte vector loads


def _general_launch(at, A, B, N, K, absmax, absmax_8bit, code2, off, tab, blocksize, bias):
    """The general path's launch of a GEMM through its one-call launcher ``at`` (:func:`gemm_mma_at`,
    :func:`gemm_lut_at`), on A's device, after copying an input that is not 16-byte aligned."""
    M, dev = A.shape[0], A.device
    A, B = _aligned(A), _aligned(B)
    out = torch.empty((M, N), dtype=A.dtype, device=dev)
    with on(dev):
        at(A, M, N, K, B, (ptr(absmax), ptr(absmax_8bit), ptr(code2), ptr(off), ptr(tab), blocksize), ptr(bias), out,
           dev.index)
    return out


def _gemm_mma(*args):
    """The general path's tensor-core GEMM (rule 2)."""
    return _general_launch(gemm_mma_at, *args)


_mma_plans: dict = {}   # (M, N, K, device index) -> (splits, tiles): the one-call path's split plan


def forget_plans() -> None:
    """Drop the remembered tiles and split plans (after a lookup or tuning knob changes them)."""
    _tiles.clear()
    _mma_plans.clear()
    _lut_plans.clear()


def gemm_mma_at(A, M, N, K, B, state_args, bias_ptr, out, device_index):
    """kbit_gemm_4bit_mma with the state as raw pointers (workbench.matmul's one-call path, which has checked them
    and that A and B are 16-byte aligned); arguments as :func:`gemv_4bit_at`. The split plan is remembered per
    shape and device; a split run's float32 partials are kept per stream (:func:`_split_scratch`)."""
    a2, a8, c2, off, tab, bs = state_args
    plan = _mma_plans.get((M, N, K, device_index))
    if plan is None:
        bm, bn, occ = mma_tile(M, A.device)
        plan = (plan_splits(M, N, K, bm, bn, occ * _sm_count(A.device)), -(-M // bm) * -(-N // bn))
        _mma_plans[M, N, K, device_index] = plan
    splits, tiles = plan
    st = raw_stream(device_index)
    part = ctr = None   # alive until the launch is queued (the allocator reuses freed memory in stream order)
    if splits > 1:
        part, ctr = _split_scratch(A.device, splits * M * N, tiles, st)
    check(_kernels().kbit_gemm_4bit_mma(A.data_ptr(), DTYPE_CODE[A.dtype], M, N, K, B.data_ptr(), a2, a8, c2, off, tab,
                                        bs, bias_ptr, out.data_ptr(), ptr(part), ptr(ctr), splits, LOOKUP, st),
          "kbit_gemm_4bit_mma")


# --- the unscaled-lookup GEMM -------------------------------------------------------------------------------------

LUT_CHUNK = 64        # k per chunk (matmul_lut.cuh kChunk); splits are whole 4-chunk groups where the kernel groups
_lut_plans: dict = {}  # (M, N, K, dtype, device index) -> splits


def lut_splits(M: int, N: int, K: int, dtype: torch.dtype, device: torch.device) -> int:
    """K ranges per m16 row tile: as many as keep every resident warp busy with one task, at least one (H200: the
    best of 1..24 splits measured on all five shapes at M = 1..64, reports/matmul-h200/lut_gemm)."""
    occ = _c.c_int()
    with on(device):
        check(lib().kbit_gemm_4bit_lut_ctas(M, N, K, DTYPE_CODE[dtype], _c.byref(occ)), "kbit_gemm_4bit_lut_ctas")
    warps = max(1, occ.value) * _sm_count(device) * 8  # the default forms: 8 warps a CTA
    tiles = -(-N // 16)
    groups = max(1, K // (4 * LUT_CHUNK))
    return max(1, min(warps // tiles, groups, MAX_SPLITS))


def _gemm_lut(*args):
    """The general path's unscaled-lookup GEMM."""
    return _general_launch(gemm_lut_at, *args)


def gemm_lut_at(A, M, N, K, B, state_args, bias_ptr, out, device_index):
    """kbit_gemm_4bit_lut with the state as raw pointers (arguments as :func:`gemm_mma_at`; the caller has checked
    :func:`takes_lut` and 16-byte alignment), on B's tiled copy where there is one (gemm_layout.tiled_copy). The
    split plan is remembered per shape and device."""
    a2, a8, c2, off, tab, bs = state_args
    splits = _lut_plans.get((M, N, K, A.dtype, device_index))
    if splits is None:
        splits = _lut_plans[M, N, K, A.dtype, device_index] = lut_splits(M, N, K, A.dtype, A.device)
    st = raw_stream(device_index)
    part = ctr = None   # alive until the launch is queued (the allocator reuses freed memory in stream order)
    if splits > 1:
        part, ctr = _split_scratch(A.device, splits * M * N, -(-N // 16), st)
    tiled = gemm_layout.tiled_copy(B, N, K)
    codes = B if tiled is None else tiled
    check(_kernels().kbit_gemm_4bit_lut(A.data_ptr(), DTYPE_CODE[A.dtype], M, N, K, codes.data_ptr(), a2, a8, c2, off,
                                        tab, bs, bias_ptr, out.data_ptr(), ptr(part), ptr(ctr), splits,
                                        0 if tiled is None else 1, st),
          "kbit_gemm_4bit_lut")


def _dequant_cublas(A, B, N, K, absmax, absmax_8bit, code2, off, tab, blocksize, bias):
    """The general path's rows above the fused kernels: :func:`dequant_mm_at` on A's device (code2, off, tab:
    float32 on the device, as gemm_4bit makes them)."""
    M, dev = A.shape[0], A.device
    absmax = f32(absmax.reshape(-1), dev)
    a8 = None if absmax_8bit is None else absmax_8bit.contiguous()
    with on(dev):
        return dequant_mm_at(A.contiguous(), M, N, K, B.contiguous(),
                             (ptr(absmax), ptr(a8), ptr(code2), ptr(off), ptr(tab), blocksize), bias, dev.index)


def _dense_tail(A, W, bias):
    """A @ W.T (+ bias) for the dequantized W in A's dtype, float32 accumulation and one rounding."""
    if A.dtype == torch.float32:  # TF32 is off for matmul by default
        y = A @ W.t()
    elif bias is None:
        return _mm_one_rounding(A, W.t())
    else:
        y = _mm_f32_out(A, W.t())
    if bias is not None:
        y = y + bias.float()
    return y.to(A.dtype)


def _mm_one_rounding(A, Wt):
    """A @ Wt in A's dtype with float32 accumulation throughout: cuBLAS rounds once, at the output, when its
    split-K reduction is not allowed to run in 16 bits (torch's flag, off for this call)."""
    flags = torch.backends.cuda.matmul
    name = ("allow_bf16_reduced_precision_reduction" if A.dtype == torch.bfloat16
            else "allow_fp16_reduced_precision_reduction")
    old = getattr(flags, name)
    setattr(flags, name, False)
    try:
        return torch.mm(A, Wt)
    finally:
        setattr(flags, name, old)


def _mm_f32_out(A, Wt):
    """A @ Wt with 16-bit operands and a float32 result (cuBLAS, float32 accumulation and split-K reduction):
    the spec's single rounding happens after the bias."""
    try:
        return torch.mm(A, Wt, out_dtype=torch.float32)
    except (TypeError, RuntimeError, NotImplementedError):  # older torch: float32 operands, exact widening
        return A.float() @ Wt.float()


def gemv_4bit(A, B, shapeB, absmax, table, blocksize):
    return gemm_4bit(A, B, shapeB, absmax, table, blocksize)


register_kernel("workbench::gemv_4bit", "cuda")(gemv_4bit)
register_kernel("workbench::gemm_4bit", "cuda")(gemm_4bit)
