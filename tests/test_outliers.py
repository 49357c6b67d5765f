import numpy as np
import pytest
import torch
from torch import nn

from workbench import outliers as O


def test_planted_outliers_are_found_and_decomposition_helps():
    X, dims = O.planted_outliers(tokens=256, features=128, n_outlier_dims=4, magnitude=30, seed=3)
    summ = O.outlier_summary({"x": X}, (6.0,))
    assert summ.outlier_dims.iloc[0] >= 4
    found = set(torch.argwhere((X.abs() >= 6).any(0)).view(-1).tolist())
    assert set(dims.tolist()) <= found
    W = torch.randn(64, 128, generator=torch.Generator().manual_seed(0)) * 0.05
    sw = O.matmul_error_sweep(X, W, thresholds=(6.0,))
    no_dec, dec = sw.set_index("threshold").rel_error.loc[[0.0, 6.0]]
    assert dec < 0.7 * no_dec
    assert sw.fp16_col_share.iloc[-1] > 0


def test_capture_hooks_record_inputs_and_are_removed():
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
    x = torch.randn(3, 5, 8)
    with O.capture_linear_inputs(model) as store:
        model(x)
    assert list(store) == ["0", "2"]
    assert store["0"][0].shape == (15, 8) and torch.equal(store["0"][0], x.reshape(-1, 8))
    assert all(len(m._forward_pre_hooks) == 0 for m in model.modules())
    with pytest.raises(ValueError, match="no nn.Linear"):
        with O.capture_linear_inputs(nn.ReLU()):
            pass


def test_channel_stats_kurtosis():
    X = torch.randn(4000, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    X[::100, 2] = 50
    cs = O.channel_stats(X)
    assert abs(cs["kurtosis"][0]) < 0.5 and cs["kurtosis"][2] > 10
    assert np.isclose(cs.max_abs[2], 50)
