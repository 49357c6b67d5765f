"""Codebooks -> what the kernels take: the one place where a codebook's kernel tables are built and cached.

The ops receive a codebook as three tensors (table, bounds, bucket_codes);
:func:`codebook_from_tensors` maps them to one cached :class:`~workbench.codebooks.Codebook` per
distinct content (the key is the arrays' bytes, a few hundred bytes, hashed in about a microsecond),
built and validated once, so the tables cached on it are built once per codebook. Every backend gets
its tables from the functions below, each cached per (codebook, device) in ``Codebook._kernel_tables``
(see :func:`_build`):

=================  ============================  =========================================================
table (function)   kernels (backend)             holds; built by
=================  ============================  =========================================================
cpu_search_plan    numba_cpu, cython_cpu         SearchPlan: mode (linear count / 16-bit-key table / binary
                   quantizers; CPU 8-bit         search), padded bounds, codes, 65536-entry key tables, the
                   optimizers                    4-bit cell plans (Cython AVX2, AVX-512); _build_cpu_search_plan
cpu_ord_lut        numba_cpu, cython_cpu 8-bit   uint32[65536] integer-ordered search table, None for <= 16
                   quantizers                    buckets or too dense; numba_kernels/cpu/quant.py:ord_lut
cuda_quant_arrays  cuda quantizers               contiguous host bounds / bucket_codes; the C library builds
                   (cuda_src/quant.cu)           and keeps its device tables from them (build_fine)
numba_cuda_fine    numba_cuda quantize_fine      fine table (8-byte entries) + its scalars per device, None
                                                 when too dense; numba_kernels/cell_plan.py:fine_plan
numba_cuda_tree    numba_cuda quantize           Eytzinger tree (bounds, codes) per device and depth;
                   (fallback)                    numba_kernels/cuda/quant.py:eytzinger
optim_cell_plan    cuda, numba_cuda 8-bit        cell plan (m, S, cell, bounds, codes) per device;
                   optimizers                    numba_kernels/cell_plan.py:cell_plan (the qmap tensor
                                                 itself is added per qmap by workbench/optim/_gpu_plan.py)
bnb_table_256      bnb quantize_blockwise        the sorted 256-entry table tensor; Codebook.tensors
kbit_search_table  k-bit quantizers: cuda,       the k-bit codebook's one-load search table (per codebook
                   numba_cpu, cython_cpu         tensor and device, not Codebook); cell_plan.py:kbit_plan
=================  ============================  =========================================================

Not here: ``Codebook.tensors`` (the three arrays as tensors per device) stays a method of the
codebook, because torch.compile traces that lookup; dequantizers take the state's table tensor.
Simulator (numba_cuda under NUMBA_ENABLE_CUDASIM): the device is "cpu" and the Numba tables are
NumPy arrays.
"""
from __future__ import annotations

import weakref
from dataclasses import dataclass

import numpy as np
import torch

from .codebooks import Codebook, from_values

_MAX_ENTRIES = 512
_by_content: dict[bytes, Codebook] = {}
# The public ops pass the same cached tensors (Codebook.tensors) on every call: an identity hit skips
# the byte key. Weak references and version counters keep a recycled id or an in-place edit from hitting.
_by_identity: dict[tuple[int, int, int], tuple] = {}


def _host(t: torch.Tensor) -> np.ndarray:
    t = t.detach()
    if t.device.type != "cpu":
        t = t.cpu()
    return t.contiguous().numpy()


def codebook_from_tensors(table: torch.Tensor, bounds: torch.Tensor, bucket_codes: torch.Tensor) -> Codebook:
    """The Codebook with these arrays (validated on first sight, then cached by content)."""
    ids = (id(table), id(bounds), id(bucket_codes))
    hit = _by_identity.get(ids)
    if hit is not None and hit[0]() is table and hit[1]() is bounds and hit[2]() is bucket_codes and hit[3] == (
            table._version, bounds._version, bucket_codes._version):
        return hit[4]
    cb = _codebook_by_content(table, bounds, bucket_codes)
    if len(_by_identity) >= _MAX_ENTRIES:
        _by_identity.clear()
    try:
        _by_identity[ids] = (weakref.ref(table), weakref.ref(bounds), weakref.ref(bucket_codes),
                             (table._version, bounds._version, bucket_codes._version), cb)
    except TypeError:  # tensors that take no weak reference (fake/functional wrappers): content only
        pass
    return cb


def _codebook_by_content(table: torch.Tensor, bounds: torch.Tensor, bucket_codes: torch.Tensor) -> Codebook:
    tab = _host(table).astype(np.float32, copy=False)
    bnd = _host(bounds).astype(np.float32, copy=False)
    codes = _host(bucket_codes).astype(np.uint8, copy=False)
    key = b"|".join((tab.tobytes(), bnd.tobytes(), codes.tobytes()))
    cb = _by_content.get(key)
    if cb is None:
        if len(_by_content) >= _MAX_ENTRIES:
            _by_content.clear()
        cb = _by_content[key] = Codebook("codebook", tab.copy(), bnd.copy(), codes.copy())
    return cb


def codebook_of_table(table: torch.Tensor) -> Codebook:
    """The Codebook of a sorted table (bitsandbytes' ``code`` argument); unsorted tables are refused."""
    tab = _host(table).astype(np.float32, copy=False)
    key = b"table|" + tab.tobytes()
    cb = _by_content.get(key)
    if cb is None:
        if len(_by_content) >= _MAX_ENTRIES:
            _by_content.clear()
        cb = _by_content[key] = from_values(tab.copy(), "custom")
    return cb


# --- Codebook -> kernel tables ------------------------------------------------------------------
#
# Every table below is cached on the codebook in one dict, ``Codebook._kernel_tables`` (a plain
# attribute set in ``Codebook.__post_init__``, like ``_tensor_cache``), under the key
# ``(table name, device or None, *extra)``. The hit path is one dict lookup: the caches are read on
# every public call. A codebook's arrays never change (a frozen dataclass, validated once), so an entry
# never goes stale; it lives as long as its codebook.


_MISSING = object()   # a table may be None (no fine table, no ord LUT): that answer is cached too


def _build(cb: Codebook, key: tuple, build, *args):
    """The miss path of every table below: build it once and keep it under ``key``. Each accessor
    does the hit itself (one dict lookup, no further call: they run on every public call)."""
    table = cb._kernel_tables[key] = build(cb, *args)
    return table


# CPU (numba_cpu, cython_cpu: numba_kernels/cpu/quant.py, workbench/_native/quant_cpu.pyx; and the CPU
# optimizers' 8-bit qmaps). The search modes are the kernels' (numba_kernels/cpu/quant.py).
LINEAR, KEYLUT, BSEARCH = 0, 1, 2


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
    cell_base: np.ndarray      # int32[8]: bounds below cell c (the Cython AVX2 4-bit path; see _cell_plan)
    cell_bounds: np.ndarray    # float32[CELL_SLOTS * 8]: slot j's bound of cell c at [8 j + c], +inf padded
    cell_slots: int            # compares per value (max bounds inside a cell); -1: too many, count all 15
    cells32: tuple             # the same plan over 32 cells (base int32[32], bounds float32[CELL_SLOTS * 32],
                               # slots): the Cython AVX-512 path, one two-register lookup per table


# The 4-bit cell plan: a scaled value s in [-1, 1] falls in cell c = min(floor(h s) + h, 2 h - 1), h = cells / 2
# (exact in float32: h s is a power-of-two scaling). Its code is the count of bounds below s = cell_base[c] plus
# one compare per bound inside the cell's range. Eight cells fit one AVX2 register, so each table is one vpermps
# away; 32 cells fit two AVX-512 registers (one vpermt2ps), and put at most one bound in a cell for most codes.
CELLS, CELLS_512, CELL_SLOTS = 8, 32, 4


def _cell_plan(bnd15: np.ndarray, cells: int = CELLS):
    """(cell_base, cell_bounds, cell_slots) for the 15 padded bounds. Cell c holds the float32 values
    [(c - h) / h, prev((c - h + 1) / h)] (the last cell up to 1.0; h = cells / 2): a bound below the cell is
    below every value in it (counted in cell_base), a bound at or above the cell's largest value is below none,
    and one in between is compared. Exact for any codebook; cell_slots = -1 where a cell holds more than
    CELL_SLOTS bounds."""
    h = cells // 2
    base = np.zeros(cells, np.int32)
    slots = np.full((CELL_SLOTS, cells), np.inf, np.float32)
    most = 0
    for c in range(cells):
        lo = np.float32((c - h) / h)
        top = np.float32(1.0) if c == cells - 1 else np.nextafter(np.float32((c - h + 1) / h), np.float32(-np.inf))
        base[c] = int(np.count_nonzero(bnd15 < lo))
        inside = np.sort(bnd15[(bnd15 >= lo) & (bnd15 < top)])
        most = max(most, len(inside))
        if len(inside) <= CELL_SLOTS:
            slots[: len(inside), c] = inside
    return base, slots.reshape(-1), (most if most <= CELL_SLOTS else -1)


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


def _build_cpu_search_plan(cb: Codebook) -> SearchPlan:
    bounds = np.ascontiguousarray(cb.bounds, np.float32)
    codes = np.ascontiguousarray(cb.bucket_codes, np.uint8)
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
    cell_base, cell_bounds, cell_slots = _cell_plan(bnd15)
    return SearchPlan(mode, bnd15, codes, bool(np.array_equal(codes, np.arange(m))), zero_code,
                      kb, klo, khi, bounds_pad, np.ascontiguousarray(cb.values, np.float32),
                      cell_base, cell_bounds, cell_slots, _cell_plan(bnd15, CELLS_512))


def cpu_search_plan(cb: Codebook) -> SearchPlan:
    """The compiled CPU kernels' search plan (host arrays)."""
    t = cb._kernel_tables.get(("cpu_search_plan", None), _MISSING)
    return t if t is not _MISSING else _build(cb, ("cpu_search_plan", None), _build_cpu_search_plan)


def _build_cpu_ord_lut(cb: Codebook):
    if len(cb.bucket_codes) <= 16:
        return None
    from numba_kernels.cpu.quant import ord_lut   # plain NumPy, in the kernels' module
    return ord_lut(cb.bounds, cb.bucket_codes)


def cpu_ord_lut(cb: Codebook):
    """The integer-ordered 8-bit search table (numba_kernels.cpu.quant.ord_lut), shared by the Numba
    and Cython backends; None for <= 16 buckets (they use the branch-free linear count) or codebooks
    too dense for it."""
    t = cb._kernel_tables.get(("cpu_ord_lut", None), _MISSING)
    return t if t is not _MISSING else _build(cb, ("cpu_ord_lut", None), _build_cpu_ord_lut)


# CUDA production kernels (cuda_src/quant.cu): the library builds its fine / compact / cell tables
# from these host arrays itself, once per codebook and device (build_fine in cuda_src/quant.cu).
def _build_cuda_quant_arrays(cb: Codebook):
    bounds, codes = np.ascontiguousarray(cb.bounds, np.float32), np.ascontiguousarray(cb.bucket_codes, np.uint8)
    return bounds, codes, (bounds.ctypes.data, len(bounds), codes.ctypes.data, len(codes))


def cuda_quant_arrays(cb: Codebook) -> tuple[np.ndarray, np.ndarray, tuple[int, int, int, int]]:
    """(bounds float32, bucket_codes uint8, (their addresses and lengths)): contiguous host arrays for the CUDA
    library's quantizers, kept alive by the codebook's table cache; the addresses spare a call their lookup."""
    t = cb._kernel_tables.get(("cuda_quant_arrays", None), _MISSING)
    return t if t is not _MISSING else _build(cb, ("cuda_quant_arrays", None), _build_cuda_quant_arrays)


# Numba CUDA (numba_kernels/cuda/quant.py). Under the simulator (device type "cpu") the tables are
# NumPy arrays, which the simulated kernels read directly; on a GPU they are torch tensors.
def _on(x: np.ndarray, device: torch.device):
    return x if device.type == "cpu" else torch.from_numpy(x).to(device)


def _build_numba_cuda_fine(cb: Codebook, device: torch.device):
    from numba_kernels.cell_plan import fine_plan
    plan = fine_plan(cb.bounds, cb.bucket_codes)
    if plan is None:
        return None
    e, m, kp, kn, half = plan
    e64 = np.ascontiguousarray(e).view(np.uint64).ravel()
    # simulator: unsigned NumPy words; GPU: an int64 tensor
    arr = e64 if device.type == "cpu" else torch.from_numpy(e64.view(np.int64)).to(device)
    sh = 23 - m
    return arr, len(e64), sh, kp >= 0, max(kp, 0) << sh, max(kn, 0) << sh, -kp, half - kn


def numba_cuda_fine(cb: Codebook, device: torch.device):
    """The quantize_fine kernel's table on ``device`` and its scalars (table, entries, shift, clamped,
    low_p, low_n, off_p, off_n); None when the codebook's bounds are too dense for a table of FINE_MAX
    entries (the tree kernel runs then)."""
    t = cb._kernel_tables.get(("numba_cuda_fine", device), _MISSING)
    return t if t is not _MISSING else _build(cb, ("numba_cuda_fine", device), _build_numba_cuda_fine, device)


def _build_numba_cuda_tree(cb: Codebook, device: torch.device, levels: int):
    from numba_kernels.cuda.quant import eytzinger
    tf, tc = eytzinger(cb.bounds, cb.bucket_codes, levels)
    return _on(tf, device), _on(tc, device)


def numba_cuda_tree(cb: Codebook, device: torch.device, levels: int):
    """(bounds, codes) of the codebook's ``levels``-level Eytzinger tree on ``device``: the Numba
    quantizers' fallback."""
    key = ("numba_cuda_tree", device, levels)
    t = cb._kernel_tables.get(key, _MISSING)
    return t if t is not _MISSING else _build(cb, key, _build_numba_cuda_tree, device, levels)


# GPU 8-bit optimizers (cuda, numba_cuda; assembled per qmap tensor by workbench/optim/_gpu_plan.py).
@dataclass(frozen=True)
class OptimCellPlan:
    m: int
    S: int
    cell: torch.Tensor       # u8[384 << m]
    bounds: torch.Tensor     # f32[264]
    codes: torch.Tensor      # u8[257]
    codes_i32: torch.Tensor  # i32[257] (numba kernels)
    identity: bool           # codes 0..255 and every bound < 1 (the kernels' fast path)


def _build_optim_cell_plan(cb: Codebook, device: torch.device) -> OptimCellPlan:
    from numba_kernels.cell_plan import cell_plan
    m, S, cell, bnd, codes = cell_plan(cb.bounds, cb.bucket_codes, 8, tries=(1, 2, 3), index_dtype=np.uint8)
    return OptimCellPlan(m, S, torch.from_numpy(cell).to(device), torch.from_numpy(bnd).to(device),
                         torch.from_numpy(codes).to(device), torch.from_numpy(codes.astype(np.int32)).to(device),
                         bool(len(cb.bucket_codes) == 256 and np.array_equal(cb.bucket_codes, np.arange(256))
                              and float(np.max(cb.bounds)) < 1.0))


def optim_cell_plan(cb: Codebook, device: torch.device) -> OptimCellPlan:
    """The 8-bit optimizer kernels' cell plan of a qmap's codebook on ``device``."""
    t = cb._kernel_tables.get(("optim_cell_plan", device), _MISSING)
    return t if t is not _MISSING else _build(cb, ("optim_cell_plan", device), _build_optim_cell_plan, device)


# bitsandbytes (its 8-bit blockwise quantizer takes the sorted 256-entry table itself).
def _build_bnb_table_256(cb: Codebook, device) -> torch.Tensor:
    if cb.size != 256 or not np.array_equal(cb.bucket_codes, np.arange(256)):
        raise ValueError(f"codebook: bitsandbytes' 8-bit kernels need a sorted 256-entry table, not {cb.name!r}")
    return cb.tensors(device)[0]


def bnb_table_256(cb: Codebook, device) -> torch.Tensor:
    """The table bitsandbytes' quantize_blockwise takes (ValueError for a codebook it cannot run)."""
    t = cb._kernel_tables.get(("bnb_table_256", device), _MISSING)
    return t if t is not _MISSING else _build(cb, ("bnb_table_256", device), _build_bnb_table_256, device)


# k-bit codebooks (cuda_src/kbit.cu; the CPU kernels through backends/_cpu_kbit.py) arrive as one float32 tensor
# per (codebook, device), cached by the public API (workbench/kbit.py:_codebook_on), so their table is cached per
# tensor object and device: weak reference and version counter, as for the identity hits above. A miss copies the
# codebook to the host once.
_kbit_tables: dict[tuple, tuple] = {}
KBIT_NO_TABLE = (None, 0, 0, 0, 0, 0.0)


def kbit_search_table(codebook: torch.Tensor, device: torch.device):
    """The compiled k-bit quantizers' search table for this codebook tensor, on ``device``: (entries int64 tensor,
    size, sh, kbase, half, safe) from numba_kernels/cell_plan.py:kbit_plan, or KBIT_NO_TABLE when the codebook is
    too dense for one (the kernels then search exactly for every element)."""
    return _kbit_cached(codebook, device, "plan", _build_kbit_search_table)


def _kbit_cached(codebook: torch.Tensor, device: torch.device, kind: str, build):
    key = (id(codebook), device, kind)
    hit = _kbit_tables.get(key)
    if hit is not None and hit[0]() is codebook and hit[1] == codebook._version:
        return hit[2]
    table = build(_host(codebook).reshape(-1), device)
    if len(_kbit_tables) >= 256:
        _kbit_tables.clear()
    _kbit_tables[key] = (weakref.ref(codebook), codebook._version, table)
    return table


def _build_kbit_search_table(values: np.ndarray, device: torch.device):
    from numba_kernels.cell_plan import kbit_plan
    p = kbit_plan(values)
    if p is None:
        return KBIT_NO_TABLE
    e, sh, kbase, half, safe = p
    t = torch.from_numpy(np.ascontiguousarray(e).view(np.int64).reshape(-1)).to(device)
    return t, len(e), sh, kbase, half, float(safe)


def kbit_lane_search_table(codebook: torch.Tensor, device: torch.device):
    """The Numba lane quantizer's table for this codebook tensor (numba_kernels/cuda/kbit_lane.py), on ``device``:
    (entries int64 tensor: the copies of cell_plan.kbit_lane_copies, their count, rep, sh, kbase, top); a count
    of 0 (one zero entry) where the codebook has none (every group then takes the exact search)."""
    return _kbit_cached(codebook, device, "lane", _build_kbit_lane_table)


def _build_kbit_lane_table(values: np.ndarray, device: torch.device):
    from numba_kernels.cell_plan import kbit_lane_copies, kbit_lane_table, kbit_plan
    lane = kbit_lane_table(kbit_plan(values))
    copies = kbit_lane_copies(lane) if lane is not None else None
    if copies is None:
        return torch.zeros(1, dtype=torch.int64, device=device), 0, 1, 0, 0, 0
    words, rep = copies
    t = torch.from_numpy(words.view(np.int64)).to(device)
    _, sh, kbase, top = lane
    return t, t.numel(), rep, sh, kbase, top
