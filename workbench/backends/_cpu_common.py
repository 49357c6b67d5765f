"""Shared plumbing for the compiled CPU backends: zero-copy torch <-> NumPy views and the
per-codebook search plan the kernels take (see numba_kernels/cpu/quant.py)."""
from __future__ import annotations

import mmap
from dataclasses import dataclass

import numpy as np
import torch

from ..wire import ELEMENT_KIND as KIND
LINEAR, KEYLUT, BSEARCH = 0, 1, 2


def kind_of(dtype: torch.dtype, what: str = "dtype") -> int:
    """The kernels' input/output kind of ``dtype``; TypeError for anything but fp32/bf16/fp16."""
    kind = KIND.get(dtype)
    if kind is None:
        raise TypeError(f"{what}: the compiled CPU kernels read and write float32, bfloat16 or float16, "
                        f"not {dtype}")
    return kind


def as_numpy(t: torch.Tensor) -> np.ndarray:
    """A zero-copy NumPy view of a CPU tensor, also of one that requires grad (an nn.Parameter):
    the kernels only read inputs and write fresh outputs, so no autograd history is lost."""
    return t.detach().numpy()


def as_numpy_bits(t: torch.Tensor) -> tuple[np.ndarray, int]:
    """A NumPy view of a contiguous CPU tensor; bf16/fp16 as their uint16 bit patterns."""
    kind = kind_of(t.dtype, "A")
    t = t.detach()
    if kind == 0:
        return t.numpy(), 0
    return t.view(torch.int16).numpy().view(np.uint16), kind


HUGE_MIN_BYTES = 4 << 20


def alloc(n: int, dtype: torch.dtype) -> torch.Tensor:
    """An uninitialized CPU tensor. Large ones are backed by transparent huge pages: on this
    class of VM a first touch of fresh 4 KiB pages costs more than the kernel's own work
    (64 MiB: ~45 ms of page faults vs ~13 ms with 2 MiB pages)."""
    nbytes = n * torch.empty(0, dtype=dtype).element_size()
    if nbytes < HUGE_MIN_BYTES or not hasattr(mmap, "MADV_HUGEPAGE"):
        return torch.empty(n, dtype=dtype)
    m = mmap.mmap(-1, nbytes, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    try:
        m.madvise(mmap.MADV_HUGEPAGE)
    except OSError:
        pass
    return torch.from_numpy(np.frombuffer(m, dtype=np.uint8)).view(dtype)  # the array keeps m alive


def empty_out(n: int, dtype: torch.dtype) -> tuple[torch.Tensor, np.ndarray, int]:
    kind_of(dtype, "dtype")  # before allocating: float64 / integer outputs are a TypeError, not a KeyError
    out = alloc(n, dtype)
    arr, kind = as_numpy_bits(out)
    return out, arr, kind


@dataclass(frozen=True)
class SearchPlan:
    mode: int
    bnd15: np.ndarray          # float32[15], bounds padded with +inf (LINEAR)
    bucket_codes: np.ndarray   # uint8[m]
    identity: bool             # bucket_codes == arange
    zero_code: int             # code of 0.0 (odd 4-bit tail padding; finite values under an Inf absmax)
    kbound: np.ndarray         # float32[65536] (KEYLUT)
    kcode_lo: np.ndarray       # uint8[65536]
    kcode_hi: np.ndarray       # uint8[65536]
    bounds_pad: np.ndarray     # float32[2**k - 1], +inf padded (BSEARCH, stochastic)
    values: np.ndarray         # float32[m], sorted bucket values (stochastic)


def _key_tables(bounds: np.ndarray, codes: np.ndarray):
    """Cells = the top 16 bits of a float32. Returns (tables, max bounds inside one cell)."""
    keys = np.arange(1 << 16, dtype=np.uint32)
    a = (keys << 16).view(np.float32)
    b = ((keys << 16) | np.uint32(0xFFFF)).view(np.float32)
    with np.errstate(invalid="ignore"):
        lo_v = np.nan_to_num(np.minimum(a, b), nan=0.0)
        hi_v = np.nan_to_num(np.maximum(a, b), nan=0.0)
    lo = np.searchsorted(bounds, lo_v, side="left")   # bounds strictly below the cell
    hi = np.searchsorted(bounds, hi_v, side="left")
    per_cell = int((hi - lo).max())
    bpad = np.append(bounds, np.float32(np.inf)).astype(np.float32)
    kbound = bpad[lo].astype(np.float32)
    kcode_lo = codes[lo].astype(np.uint8)
    kcode_hi = codes[np.minimum(lo + 1, len(codes) - 1)].astype(np.uint8)
    return (kbound, kcode_lo, kcode_hi), per_cell


def search_plan(codebook) -> SearchPlan:
    """Cached on the codebook: built once, reused by every call."""
    plan = codebook.__dict__.get("_cpu_plan")
    if plan is not None:
        return plan
    bounds = np.ascontiguousarray(codebook.bounds, np.float32)
    codes = np.ascontiguousarray(codebook.bucket_codes, np.uint8)
    m = len(codes)
    p = 1
    while p < m:
        p *= 2
    bounds_pad = np.full(max(p - 1, 1), np.inf, np.float32)
    bounds_pad[: m - 1] = bounds
    bnd15 = np.full(15, np.inf, np.float32)
    empty_u8, empty_f32 = np.zeros(1, np.uint8), np.zeros(1, np.float32)
    kb, klo, khi = empty_f32, empty_u8, empty_u8
    if m <= 16:
        mode = LINEAR
        bnd15[: m - 1] = bounds
    else:
        (kb, klo, khi), per_cell = _key_tables(bounds, codes)
        mode = KEYLUT if per_cell <= 1 else BSEARCH
    zero_code = int(codes[np.searchsorted(bounds, np.float32(0.0), side="left")])
    plan = SearchPlan(mode, bnd15, codes, bool(np.array_equal(codes, np.arange(m))), zero_code,
                      kb, klo, khi, bounds_pad, np.ascontiguousarray(codebook.values, np.float32))
    codebook.__dict__["_cpu_plan"] = plan
    return plan


def ord_lut(codebook):
    """The integer-ordered 8-bit search table (numba_kernels.cpu.quant.ord_lut, plain NumPy), shared
    by the Numba and Cython backends and cached on the codebook; None for <= 16 buckets (they use
    the branch-free linear count) or codebooks too dense for it."""
    if "_cpu_ord_lut" not in codebook.__dict__:
        from numba_kernels.cpu.quant import ord_lut as build
        codebook.__dict__["_cpu_ord_lut"] = (None if len(codebook.bucket_codes) <= 16
                                             else build(codebook.bounds, codebook.bucket_codes))
    return codebook.__dict__["_cpu_ord_lut"]


def nblocks(n: int, blocksize: int) -> int:
    return -(-n // blocksize)
