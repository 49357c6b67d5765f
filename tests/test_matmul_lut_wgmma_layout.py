"""The wgmma form of the unscaled-lookup GEMM (cuda_src/matmul_lut_wgmma.cuh) moves the activations through shared
memory in its own layout; this checks that layout on CPU, where no GPU can. The kernel's staging (store_chunk_x:
piece i of a chunk, its four words at core column 4 (q % 2) + h) is written out here, the tensor core's read of a
K-major operand without swizzle is the PTX ISA's canonical layout ((8, m), (T, 2k)) : ((T, SBO), (1, LBO)) with the
kernel's descriptors (start 2j NT 128 bytes, LBO NT 128, SBO 128), and the weight side is the k permutation of
matmul_lut.cuh's decode (chunk element 16t + 4j + 2h + l is logical k 16j + 8h + 2t + l of k-step j). Their
composition must give W . X^T exactly (small integers, so every sum is exact)."""
from __future__ import annotations

import numpy as np
import pytest


def _stage(X: np.ndarray, NT: int) -> np.ndarray:
    """store_chunk_x: one chunk's activations (8 NT tokens x 64 elements) as the 2-byte cells of the stage."""
    cells = np.full(NT * 8 * 64, np.nan)
    for i in range(NT * 64):
        m, q = 8 * (i >> 6) + (i & 7), 2 * ((i >> 3) & 3) + ((i >> 5) & 1)
        t, qlo, nc = (i >> 3) & 3, (i >> 5) & 1, i >> 6
        base = nc * 128 + (i & 7) * 16 + 4 * t
        for h in range(4):   # word h: elements 8q + 2h, 8q + 2h + 1
            off = base + (4 * qlo + h) * NT * 128
            assert off % 4 == 0 and np.isnan(cells[off // 2: off // 2 + 2]).all(), "two pieces on one cell"
            cells[off // 2: off // 2 + 2] = X[m, 8 * q + 2 * h: 8 * q + 2 * h + 2]
    assert not np.isnan(cells).any(), "a cell of the stage was never written"
    return cells


def _b_operand(cells: np.ndarray, NT: int, j: int, lbo: int | None = None, sbo: int | None = None) -> np.ndarray:
    """What wgmma reads as B[k, n] (k16 x n8NT) for k-step j: K-major, no swizzle, the kernel's descriptor (or the
    offsets given)."""
    start, lbo, sbo = 2 * j * NT * 128, NT * 128 if lbo is None else lbo, 128 if sbo is None else sbo
    B = np.empty((16, 8 * NT))
    for n in range(8 * NT):
        for k in range(16):
            byte = start + (n % 8) * 16 + (n // 8) * sbo + (k % 8) * 2 + (k // 8) * lbo
            B[k, n] = cells[byte // 2] if byte // 2 < len(cells) else np.nan   # past the stage: not these data
    return B


def _a_operand(W: np.ndarray, j: int) -> np.ndarray:
    """The decoded weight of k-step j (rows x k16) in logical k order: matmul_lut.cuh's permutation."""
    A = np.empty((W.shape[0], 16))
    for kk in range(16):
        t, h, l = (kk % 8) // 2, kk // 8, kk % 2
        A[:, kk] = W[:, 16 * t + 4 * j + 2 * h + l]
    return A


@pytest.mark.parametrize("NT", (1, 2, 4, 8))
def test_staged_activations_meet_the_decoded_weight(NT):
    rng = np.random.default_rng(NT)
    W = rng.integers(-8, 8, size=(64, 64)).astype(np.float64)        # 64 weight rows (one m64), one chunk
    X = rng.integers(-8, 8, size=(8 * NT, 64)).astype(np.float64)    # 8 NT tokens
    cells = _stage(X, NT)
    D = sum(_a_operand(W, j) @ _b_operand(cells, NT, j) for j in range(4))
    np.testing.assert_array_equal(D, W @ X.T)


def test_a_wrong_stride_is_caught():
    """The check has teeth: the descriptor's two offsets swapped break the product."""
    NT = 4
    rng = np.random.default_rng(0)
    W = rng.integers(-8, 8, size=(64, 64)).astype(np.float64)
    X = rng.integers(-8, 8, size=(8 * NT, 64)).astype(np.float64)
    cells = _stage(X, NT)
    D = sum(_a_operand(W, j) @ _b_operand(cells, NT, j, lbo=128, sbo=NT * 128) for j in range(4))
    assert not np.array_equal(D, W @ X.T)
