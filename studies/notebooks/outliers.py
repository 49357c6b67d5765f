# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Outliers: what a few large values do to blockwise quantization
#
# Runs the outliers study (`studies/outliers_study.py`) when it is available, and in any case a
# self-contained experiment: a weight matrix with a few outlier columns (as in LLM activations
# and some weights), quantized with NF4 at several blocksizes -- the error of the *other* values
# in a block grows with the outlier's magnitude, since absmax scaling spends the range on it.

# %%
# Setup shared by the notebooks (studies/notebook_setup.py): KBIT_NOTEBOOK_QUICK=1 (set by the tests)
# keeps every cell to a few seconds.
import matplotlib.pyplot as plt
import pandas as pd

import workbench as wb
from studies.notebook_setup import setup

QUICK = setup()

# %%
from workbench import study_api

try:
    outliers = study_api.load("outliers")
except ImportError as e:
    outliers = None
    print("outliers study not available:", e)
if outliers is not None:
    odf, ofigs = outliers.run(quick=True)
    display(odf.head(20))  # noqa: F821

# %%
import torch  # noqa: E402

rows, cols = (256, 256) if QUICK else (1024, 1024)
g = torch.Generator().manual_seed(0)
base = torch.randn(rows, cols, generator=g)
outlier_cols = torch.randperm(cols, generator=g)[:4]
records = []
for magnitude in (1, 5, 20, 100):
    W = base.clone()
    W[:, outlier_cols] *= magnitude
    mask = torch.ones(cols, dtype=torch.bool)
    mask[outlier_cols] = False
    for bs in (32, 64, 256, 1024, 4096):
        q, st = wb.quantize_4bit(W, blocksize=bs, quant_type="nf4")
        err = (wb.dequantize_4bit(q, st) - W).abs()
        records.append({"outlier x": magnitude, "blocksize": bs,
                        "mae (normal values)": float(err[:, mask].mean()),
                        "mae (outliers)": float(err[:, ~mask].mean() / magnitude)})
res = pd.DataFrame(records)
res.pivot_table(index="blocksize", columns="outlier x", values="mae (normal values)").round(4)

# %%
fig, ax = plt.subplots(figsize=(6, 3.5))
for m, gdf in res.groupby("outlier x"):
    ax.plot(gdf["blocksize"], gdf["mae (normal values)"], marker="o", label=f"outliers x{m}")
ax.set_xscale("log", base=2)
ax.set_xlabel("blocksize")
ax.set_ylabel("NF4 mean abs error of the normal values")
ax.legend()
ax.grid(alpha=0.3)
