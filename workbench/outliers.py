"""Outlier analysis for LLM.int8(): where large activation features live and what they cost.

* :func:`capture_linear_inputs` hooks every ``nn.Linear`` of any torch model and records its
  inputs (as ``tokens x features`` float32 matrices);
* :func:`channel_stats` per feature channel: max |x|, mean |x|, std, excess kurtosis;
* :func:`outlier_summary` per layer and threshold: outlier dimensions (count and share), share
  of outlier values, and the token positions they occur in;
* :func:`matmul_error_sweep` error of the int8 matmul with and without the mixed decomposition
  against a float64 reference, with the share of columns kept in 16-bit;
* :func:`planted_outliers` synthetic activations with known outlier features.
"""
from __future__ import annotations

from collections import OrderedDict
from contextlib import contextmanager

import numpy as np
import pandas as pd
import torch
from torch import nn

from . import int8 as I


@contextmanager
def capture_linear_inputs(model: nn.Module, names: list[str] | None = None, max_rows: int | None = None):
    """Record the input of each ``nn.Linear`` (or only ``names``) during forward passes.

    Yields an ordered dict name -> list of float32 CPU matrices (one per call), features last.
    Hooks are removed on exit, also when the body raises."""
    store: "OrderedDict[str, list[torch.Tensor]]" = OrderedDict()
    handles = []
    for name, mod in model.named_modules():
        if isinstance(mod, nn.Linear) and (names is None or name in names):
            store[name] = []

            def hook(m, args, name=name):
                x = args[0].detach().reshape(-1, args[0].shape[-1]).float().cpu()
                store[name].append(x[:max_rows] if max_rows else x)

            handles.append(mod.register_forward_pre_hook(hook))
    if not handles:
        raise ValueError("model: no nn.Linear modules matched" + (f" names={names}" if names else ""))
    try:
        yield store
    finally:
        for h in handles:
            h.remove()


def stacked(store) -> "OrderedDict[str, torch.Tensor]":
    return OrderedDict((k, torch.cat(v)) for k, v in store.items() if v)


def channel_stats(X: torch.Tensor) -> pd.DataFrame:
    """Per feature channel (column) of a tokens x features matrix."""
    from scipy.stats import kurtosis
    x = X.double().numpy()
    return pd.DataFrame({"channel": np.arange(x.shape[1]), "max_abs": np.abs(x).max(0), "mean_abs": np.abs(x).mean(0),
                         "std": x.std(0), "kurtosis": kurtosis(x, axis=0, fisher=True, bias=True)})


def outlier_summary(acts: dict[str, torch.Tensor], thresholds=(6.0,), tokens_per_row: torch.Tensor | None = None
                    ) -> pd.DataFrame:
    """One row per (layer, threshold): outlier dimensions, their share, share of outlier values,
    the rows (token positions) they occur in and the layer's largest |x| and channel kurtosis."""
    rows = []
    for name, X in acts.items():
        cs = channel_stats(X)
        absx = X.abs()
        for t in thresholds:
            mask = absx >= t
            dims = torch.argwhere(mask.any(0)).view(-1)
            pos = torch.argwhere(mask.any(1)).view(-1)
            rows.append({"layer": name, "threshold": float(t), "features": X.shape[1], "tokens": X.shape[0],
                         "outlier_dims": int(dims.numel()), "outlier_dim_share": dims.numel() / X.shape[1],
                         "outlier_value_share": float(mask.float().mean()),
                         "outlier_token_share": pos.numel() / X.shape[0],
                         "top_dims": ",".join(str(int(d)) for d in cs.nlargest(5, "max_abs").channel),
                         "max_abs": float(cs.max_abs.max()), "max_kurtosis": float(cs["kurtosis"].max())})
    return pd.DataFrame(rows)


def matmul_error_sweep(X: torch.Tensor, W: torch.Tensor, thresholds=tuple(range(1, 11)), *, dtype=torch.float16,
                       backend: str = "auto") -> pd.DataFrame:
    """Error of ``X @ W.T`` through LLM.int8() vs float64, for each threshold (0 = no decomposition).

    Columns: threshold, share of 16-bit columns, relative Frobenius error, mean abs error."""
    ref = X.double() @ W.double().t()
    norm = ref.norm()
    Xd, w = X.to(dtype), I.quantize_weight(W.to(dtype), backend=backend)
    rows = []
    for t in (0.0, *map(float, thresholds)):
        out = I.int8_linear(Xd, w, threshold=t, backend=backend).double()
        cols = I.outlier_columns(Xd, t, backend=backend).numel() if t > 0 else 0
        rows.append({"threshold": t, "fp16_col_share": cols / X.shape[1],
                     "rel_error": float((out - ref).norm() / norm), "mean_abs_error": float((out - ref).abs().mean())})
    return pd.DataFrame(rows)


def planted_outliers(tokens: int = 512, features: int = 768, n_outlier_dims: int = 6, magnitude: float = 20.0,
                     seed: int = 0) -> tuple[torch.Tensor, np.ndarray]:
    """Normal activations with ``n_outlier_dims`` feature channels scaled to ~``magnitude`` in a
    quarter of the tokens (the systematic pattern LLM.int8() describes). Returns (X, dims)."""
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(tokens, features, generator=g)
    dims = torch.randperm(features, generator=g)[:n_outlier_dims].sort().values
    hot = torch.rand(tokens, generator=g) < 0.25
    X[hot[:, None] & torch.zeros(features, dtype=torch.bool).index_fill(0, dims, True)[None, :]] *= magnitude / 3
    return X, dims.numpy()
