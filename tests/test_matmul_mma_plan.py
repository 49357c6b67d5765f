"""The split-K plan of the CUDA tensor-core GEMM (pure Python, no GPU): every plan covers K with equal chunk
ranges, fills the GPU when K allows, and does not split when one wave of tiles already fills it."""
import pytest

from workbench.backends.cuda.matmul import CHUNK, MAX_SPLITS, plan_splits

CAP = 4 * 132  # CTAs resident on an H200 for the small-M instance


@pytest.mark.parametrize("M,N,K", [(16, 28672, 8192), (16, 4096, 4096), (5, 8192, 28672), (64, 4096, 14336),
                                   (256, 28672, 8192), (9, 37, 96), (100, 16, 32)])
def test_plan_is_a_valid_split(M, N, K):
    s = plan_splits(M, N, K, 16, 128, CAP)
    chunks = -(-K // CHUNK)
    assert 1 <= s <= min(chunks, MAX_SPLITS)
    cps = -(-chunks // s)
    assert -(-chunks // cps) == s  # no empty split


def test_plan_fills_the_gpu_for_few_tiles_and_keeps_one_split_for_many():
    assert plan_splits(16, 4096, 4096, 16, 128, CAP) * 32 >= CAP // 2  # 32 tiles: split K
    assert plan_splits(16, 1 << 17, 4096, 16, 128, CAP) == 1           # 1024 tiles: already several waves
