"""Host-side helpers shared by the GPU optimizer backends (cuda, numba_cuda).

* :func:`consts` -- the 17 float32 constants of an update (the order of ``KBIT_K_*`` in
  cuda_src/kbit_optim.h), each computed in double and rounded once, from
  :func:`workbench.optim.functional.scalars`; the LAMB/LARS trust ratio is folded into UPD_MUL.
* :func:`plan` -- a 256-entry qmap's rounding plan on its device (a :class:`Plan`), cached per qmap
  tensor object and version (weak keys: a freed qmap's address reused by another cannot hit); its
  search tables are the qmap codebook's ``optim_cell_plan`` (workbench/codebook_tables.py).
  The search is the "cell plan" of numba_kernels/cuda/quant.py: for s in [-1, 1] (the kernels clamp
  first), key = float bits >> (23 - m) names a cell; ``cell[key]`` = #{bounds' < min(cell)}; at most
  2**S - 1 bounds lie inside a cell, so an S-step branch-free search over the +inf padded bounds'
  finishes it, and ``codes[pos]`` is the code. bounds' folds the [-1, 1] clamp (< -1 -> -inf,
  >= 1 -> +inf). Dynamic signed map: m = 4, S = 2; unsigned: m = 4, S = 3 (4 or 5 shared loads per
  code instead of 9 for an 8-level tree).
"""
from __future__ import annotations

import weakref
from dataclasses import dataclass

import torch

from ..codebook_tables import optim_cell_plan
from ..wire import DTYPE_CODE
from . import functional as W
from . import state_check as S

ID = W.OPTIMIZER_ID   # the kernels' rule ids (KBIT_OPT_*), defined once in functional.py
NORM_OK = ("adam", "lamb", "momentum", "lars", "rmsprop")  # optimizers with a max_unorm trust ratio (32-bit)
DTYPE = DTYPE_CODE  # KBIT_F32, KBIT_F16, KBIT_BF16


def check_name(name: str) -> int:
    if name not in ID:
        raise ValueError(f"unknown optimizer {name!r}; expected one of {tuple(ID)}")
    return ID[name]


consts = W.kernel_constants  # float32[17], the order of KBIT_K_* in cuda_src/kbit_optim.h (W.KERNEL_SLOTS)


@dataclass
class Plan:
    table: torch.Tensor   # f32[256], the qmap itself
    cell: torch.Tensor    # u8[384 << m]
    bounds: torch.Tensor  # f32[264]
    codes: torch.Tensor   # u8[257]
    m: int
    S: int
    codes_i32: torch.Tensor  # i32[257] (numba kernels)
    # bucket codes are 0..255 (a sorted table): code = bucket, and every bound < 1, so the last bucket -- the
    # reference's code of a NaN scaled value -- is +1's: the kernels' fast path encodes NaN as +1, no branch
    identity: bool = False


_plans: dict = {}  # id(qmap) -> (weakref to qmap, version, Plan)


def plan(qmap: torch.Tensor) -> Plan:
    """The rounding plan of a 256-entry qmap, on its device (see module doc)."""
    if qmap.numel() != 256:
        raise ValueError(f"qmap: expected 256 values, got {qmap.numel()}")
    hit = _plans.get(id(qmap))
    if hit is not None and hit[0]() is qmap and hit[1] == qmap._version:
        return hit[2]
    cp = optim_cell_plan(W.codebook_of(qmap), qmap.device)
    pl = Plan(qmap.detach().reshape(-1).float().contiguous(), cp.cell, cp.bounds, cp.codes, cp.m, cp.S, cp.codes_i32,
              cp.identity)
    if len(_plans) > 512:
        for key in [k for k, v in _plans.items() if v[0]() is None]:
            del _plans[key]
    _plans[id(qmap)] = (weakref.ref(qmap), qmap._version, pl)
    return pl


def same_dtype(g: torch.Tensor, p: torch.Tensor) -> bool:
    return g.dtype == p.dtype and g.dtype in DTYPE


def check_update_32bit(who: str, optimizer_name, g, p, state1, state2, unorm_vec, step, *, cuda: bool = True) -> None:
    """The GPU adapters' guard before a 32-bit kernel: the state check (sizes, dtypes, devices, step) and
    contiguous tensors (on CUDA when ``cuda``)."""
    S.check_update_32bit(optimizer_name, g, p, state1, state2, unorm_vec, step)
    check_tensors(who, p, g, state1, state2, cuda=cuda)


def check_update_8bit(who: str, optimizer_name, g, p, state1, state2, step, qmap1, qmap2, absmax1, absmax2, *,
                      cuda: bool = True) -> None:
    """The GPU adapters' guard before an 8-bit kernel: the state check (codes, absmax per 256-block, qmaps
    float32[256], dtypes, devices, step) and contiguous tensors (on CUDA when ``cuda``)."""
    S.check_update_8bit(optimizer_name, g, p, state1, state2, step, qmap1, qmap2, absmax1, absmax2)
    check_tensors(who, p, g, state1, state2, absmax1, absmax2, cuda=cuda)


def check_tensors(who: str, p: torch.Tensor, g: torch.Tensor, *ts, cuda: bool = True) -> None:
    """Contiguous tensors (on CUDA when ``cuda``) and as many grad as param elements."""
    for t in (p, g, *ts):
        if t is not None and ((cuda and not t.is_cuda) or not t.is_contiguous()):
            raise ValueError(f"{who} optimizer kernels need contiguous {'CUDA ' if cuda else ''}tensors")
    if p.numel() != g.numel():
        raise ValueError(f"grad has {g.numel()} elements, param {p.numel()}")


def run_in_float32(update, name: str, g: torch.Tensor, p: torch.Tensor, *rest) -> None:
    """``update(name, g, p, *rest)`` on float32 copies of grad and param, p copied back (not fused):
    the route for grad/param dtypes a kernel does not take."""
    with torch.no_grad():  # p may be a leaf that requires grad
        p32 = p.float()
        update(name, g.float().contiguous(), p32, *rest)
        p.copy_(p32)

