"""Codebook arrays -> the cached Codebook object that carries each backend's kernel tables.

The ops receive a codebook as three tensors (table, bounds, bucket_codes). Kernel tables (the CPU
search plan, the CUDA fine table, the Numba cell plan, bitsandbytes' 256-entry table) are built
from a :class:`~workbench.codebooks.Codebook` and cached on it, so the same codebook must map to
the same object on every call. It does here: one Codebook per distinct content (the key is the
arrays' bytes, a few hundred bytes, hashed in about a microsecond), built and validated once.
"""
from __future__ import annotations

import weakref

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
