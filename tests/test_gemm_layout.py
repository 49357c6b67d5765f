"""The unscaled-lookup GEMM's tiled weight layout and the copy the cuda backend keeps of a weight in it
(workbench/backends/cuda/gemm_layout.py), on CPU tensors: the layout against its definition, the copy made once,
remade after an in-place change, dropped with the weight, and none when turned off."""
from __future__ import annotations

import gc

import pytest
import torch

from workbench.backends.cuda import gemm_layout as GL


def _by_definition(B, N, K):
    """Lane 4g + t of tile T holds bytes 8t .. 8t + 7 of chunk c of rows 16T + g, then of 16T + g + 8 (zeros past N)."""
    rows = B.view(N, K // 2)
    T, C = -(-N // 16), K // 64
    out = torch.zeros(T, C, 32, 16, dtype=torch.uint8)
    for tile in range(T):
        for c in range(C):
            for lane in range(32):
                g, t = divmod(lane, 4)
                for r in range(2):
                    n = 16 * tile + g + 8 * r
                    if n < N:
                        out[tile, c, lane, 8 * r:8 * r + 8] = rows[n, 32 * c + 8 * t:32 * c + 8 * t + 8]
    return out.view(-1)


@pytest.mark.parametrize("N,K", [(16, 64), (37, 128), (5, 192), (48, 256)])
def test_tile_codes_is_the_defined_layout(N, K):
    B = torch.randint(0, 256, (N * K // 2,), dtype=torch.uint8, generator=torch.Generator().manual_seed(N + K))
    got = GL.tile_codes(B, N, K)
    assert got.dtype == torch.uint8 and got.numel() == -(-N // 16) * 16 * K // 2
    assert torch.equal(got, _by_definition(B, N, K))
    assert torch.equal(GL.tile_codes(B.view(-1, 1), N, K), got)   # bitsandbytes' (n / 2, 1) shape


def test_tile_codes_rejects_k_not_a_multiple_of_64():
    with pytest.raises(ValueError, match="K: .*multiple of 64"):
        GL.tile_codes(torch.zeros(32 * 48, dtype=torch.uint8), 64, 48)


def test_tiled_copy_is_kept_remade_and_dropped(monkeypatch):
    monkeypatch.setattr(GL, "ENABLED", True)
    GL.forget()
    B = torch.randint(0, 256, (40 * 128 // 2,), dtype=torch.uint8)
    first = GL.tiled_copy(B, 40, 128)
    assert GL.tiled_copy(B, 40, 128) is first                        # made once
    assert GL.tiled_copy(B.view(-1, 1), 40, 128) is first            # a view of the same data: the same copy
    assert GL.tiled_copy(B.detach().reshape(-1), 40, 128) is first   # a detached alias (the general path's)
    B[0] ^= 0xFF                                                      # in place: the version counter moves
    second = GL.tiled_copy(B, 40, 128)
    assert second is not first and torch.equal(second, GL.tile_codes(B, 40, 128))
    assert len(GL._copies) == 1
    GL.tiled_copy(B.detach().reshape(-1), 40, 128)                   # a transient alias: the copy stays
    gc.collect()
    assert len(GL._copies) == 1
    view = B.view(-1, 1)
    del B, first, second
    gc.collect()
    assert len(GL._copies) == 1                                       # the view keeps the weight alive
    del view
    gc.collect()
    assert not GL._copies                                             # dropped with the weight


def test_a_write_torch_does_not_see_is_announced_by_increment_version(monkeypatch):
    """Writes through ``.data``, numpy or another library's kernel do not move the version counter, so the copy
    is stale until the write is announced (the documented contract: torch.autograd.graph.increment_version)."""
    monkeypatch.setattr(GL, "ENABLED", True)
    GL.forget()
    B = torch.randint(0, 256, (32 * 128 // 2,), dtype=torch.uint8, generator=torch.Generator().manual_seed(3))
    first = GL.tiled_copy(B, 32, 128)
    B.data.copy_(B ^ 0x5A)                                            # unseen by the version counter
    assert GL.tiled_copy(B, 32, 128) is first                        # the limit the contract names
    torch.autograd.graph.increment_version(B)
    assert torch.equal(GL.tiled_copy(B, 32, 128), GL.tile_codes(B, 32, 128))
    GL.forget()


def test_tiled_copy_off(monkeypatch):
    monkeypatch.setattr(GL, "ENABLED", False)
    GL.forget()
    assert GL.tiled_copy(torch.zeros(64 * 64 // 2, dtype=torch.uint8), 64, 64) is None and not GL._copies


def test_tiled_copy_within_its_memory_cap(monkeypatch):
    monkeypatch.setattr(GL, "ENABLED", True)
    GL.forget()
    B1 = torch.zeros(32 * 128 // 2, dtype=torch.uint8)    # 2048 bytes tiled
    B2 = torch.ones(32 * 128 // 2, dtype=torch.uint8)
    monkeypatch.setattr(GL, "MAX_BYTES", 3000)
    assert GL.tiled_copy(B1, 32, 128) is not None and GL.kept_bytes() == 2048
    assert GL.tiled_copy(B2, 32, 128) is None and GL.kept_bytes() == 2048   # past the cap: rows layout
    B1.add_(1)                                                              # a new version replaces its old copy
    assert GL.tiled_copy(B1, 32, 128) is not None and GL.kept_bytes() == 2048
    GL.forget()


def test_tiled_copy_out_of_memory_falls_back_once(monkeypatch):
    monkeypatch.setattr(GL, "ENABLED", True)
    monkeypatch.setattr(GL, "MAX_BYTES", None)
    GL.forget()
    calls = []

    def oom(*a):
        calls.append(1)
        raise torch.cuda.OutOfMemoryError("no room")

    monkeypatch.setattr(GL, "tile_codes", oom)
    B = torch.zeros(16 * 64 // 2, dtype=torch.uint8)
    assert GL.tiled_copy(B, 16, 64) is None and GL.tiled_copy(B, 16, 64) is None
    assert len(calls) == 1                                                  # remembered for this version
    B.add_(1)
    assert GL.tiled_copy(B, 16, 64) is None and len(calls) == 2
    GL.forget()
