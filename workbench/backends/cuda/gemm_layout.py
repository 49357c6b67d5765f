"""The unscaled-lookup GEMM's tiled weight layout, and the copy of a packed weight in it that the cuda backend keeps.

Layout ``[ceil(N/16) tiles][K/64 chunks][32 lanes][16 bytes]``: lane 4g + t of the warp that owns tile T holds
bytes 8t .. 8t + 7 of 64-element chunk c of rows 16 T + g and 16 T + g + 8 (zero bytes past N), the bytes the
kernel's mma fragments need (cuda_src/matmul_lut.cuh). A warp reads 512 contiguous bytes per chunk where
bitsandbytes' row layout gives it 16 pieces of 32 bytes.

Why a second copy: on an H200 the kernel's weight loads alone stream 235 M weights at 95 % of copy in the tiled
layout and at 45 % in the row layout, and the whole kernel is 1.07-1.3x faster at M = 1..16
(reports/matmul-h200/lut_gemm). The row layout stays the weight's format (state dicts, bitsandbytes conversion, every
other kernel); the tiled copy is made once, on the GPU, the first time the GEMM runs on the weight.

The copy costs one more packed weight in memory (a quarter of the bf16 weight's bytes). It is kept while the weight's
storage is alive (whatever view or detached alias of it the call was given), and remade when the weight's data
changes in place (its version counter). A write torch does not count -- through ``.data``, numpy, DLPack or another
library's kernel -- leaves the copy stale: announce it with ``torch.autograd.graph.increment_version(B)``.
``KBIT_TILED_WEIGHTS=0`` in the environment, or ``ENABLED = False``, turns it off: the kernel then reads the row
layout, and one-row calls stay on the GEMV. ``KBIT_TILED_WEIGHTS_MAX_GB`` (``MAX_BYTES``) caps the memory all copies
may take; a weight past the cap, or one whose copy does not fit in GPU memory, is read in the row layout (same bits).
"""
from __future__ import annotations

import os
import weakref

import torch

ENABLED = os.environ.get("KBIT_TILED_WEIGHTS", "1") != "0"
_CAP_GB = os.environ.get("KBIT_TILED_WEIGHTS_MAX_GB")
MAX_BYTES = int(float(_CAP_GB) * 2**30) if _CAP_GB else None   # None: no cap
CHUNK = 64   # elements of a row per chunk (matmul_lut.cuh kChunk)

_copies: dict = {}   # (address, N, K, device index) -> (version, tiled copy, or None: none made for this version)


def kept_bytes() -> int:
    """Bytes of GPU (or CPU) memory the kept copies take."""
    return sum(t.numel() for _, t in _copies.values() if t is not None)


def tile_codes(B: torch.Tensor, N: int, K: int) -> torch.Tensor:
    """bitsandbytes' packed rows of an (N, K) weight (K % 64 == 0) -> the tiled layout, flat uint8."""
    if K % CHUNK:
        raise ValueError(f"K: the tiled layout needs a multiple of {CHUNK}, got {K}")
    T, C = -(-N // 16), K // CHUNK
    b = B.reshape(-1).view(torch.uint8)[: N * K // 2].view(N, C, 4, 8)   # row, chunk, t, byte
    if T * 16 != N:
        b = torch.cat([b, b.new_zeros(T * 16 - N, C, 4, 8)])
    # (tile, row half r, g, chunk, t, byte) -> (tile, chunk, g, t, r, byte): lane 4g + t, rows g and g + 8
    return b.view(T, 2, 8, C, 4, 8).permute(0, 3, 2, 4, 1, 5).contiguous().view(-1)


def tiled_copy(B: torch.Tensor, N: int, K: int) -> torch.Tensor | None:
    """The tiled copy of packed weight ``B`` (made now if there is none for its current data), or None: turned off,
    a CUDA graph is being captured and no copy exists yet (an allocation made there would belong to the graph), or
    no room for it (MAX_BYTES, or out of GPU memory), which is remembered for this version of the data."""
    if not ENABLED:
        return None
    key = (B.data_ptr(), N, K, B.device.index)
    hit = _copies.get(key)
    if hit is not None and hit[0] == B._version:
        return hit[1]
    if torch.cuda.is_available() and torch.cuda.is_current_stream_capturing():
        return None
    size = -(-N // 16) * 16 * K // 2
    tiled = None
    replaced = 0 if hit is None or hit[1] is None else hit[1].numel()
    if MAX_BYTES is None or kept_bytes() - replaced + size <= MAX_BYTES:
        try:
            tiled = tile_codes(B, N, K)
        except torch.cuda.OutOfMemoryError:   # the copy is optional: the kernel reads the rows instead
            tiled = None
    if tiled is not None and tiled.is_cuda:   # once per weight: no stream may read it before it is written
        torch.cuda.current_stream(tiled.device).synchronize()
    fresh = hit is None
    _copies[key] = (B._version, tiled)
    if fresh:   # dropped with the weight's storage (its address may be reused); one storage object per storage
        weakref.finalize(B.untyped_storage(), _copies.pop, key, None)
    return tiled


def forget() -> None:
    """Drop every kept copy (their memory goes back to the allocator)."""
    _copies.clear()
