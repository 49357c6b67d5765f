"""The GPU timing helpers of workbench.bench on a real GPU (their numbers are never asserted, only
that they measure something): back-to-back timing and the per-kernel breakdown."""
import pytest
import torch

from workbench import bench

pytestmark = pytest.mark.gpu


@pytest.fixture(autouse=True)
def _gpu():
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")


def test_back_to_back_and_breakdown_see_the_work():
    x = torch.randn(1 << 22, device="cuda")
    ms = bench.back_to_back_ms(lambda: x.mul_(1.0), reps=5)
    assert ms > 0 and ms == ms
    parts = bench.kernel_breakdown(lambda: (x.mul_(1.0), torch.zeros(1 << 20, device="cuda")), reps=3)
    assert parts and all(v > 0 for v in parts.values())
    assert len(parts) >= 2  # the multiply and the fill are separate kernels
