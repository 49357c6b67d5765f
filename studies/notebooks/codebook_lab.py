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
# # Codebook prototyping
#
# Build a new 4-bit code (Lloyd-Max / k-means on block-normalized data, quantile, or your own
# values) and compare it to NF4 and FP4 in one call: `compare(spec, data=..., blocksizes=...)`.

# %%
# Setup shared by the notebooks (studies/notebook_setup.py): KBIT_NOTEBOOK_QUICK=1 (set by the tests)
# keeps every cell to a few seconds.
import workbench as wb
from studies.notebook_setup import setup

QUICK = setup()

# %%
from studies.codebook_lab import build, compare

n = 1 << 15 if QUICK else 1 << 20
bss = (64, 256, 1024) if QUICK else (32, 64, 128, 256, 512, 1024, 2048, 4096)

# %%
# The one-cell comparison: a k-means code fitted on Laplace data at blocksize 64, a hand-made code
# and an expression, against NF4 / FP4, on Laplace data.
df, fig = compare(["kmeans", [-1, -.55, -.3, -.12, 0, .12, .3, .55, 1], "tanh(linspace(-2, 2, 16)) / tanh(2)"],
                  data="laplace", blocksizes=bss, n=n)
df.pivot_table(index="codebook", columns="blocksize", values="sqnr_db", sort=False).round(2)

# %%
fig

# %%
# Inspect the fitted code: table, decision bounds, and where it differs from NF4.
import numpy as np  # noqa: E402

cb = build("lloyd-max", "normal", fit_blocksize=64, n=n)
print(wb.codebooks.describe(cb))
print("max |level - NF4 level|:", float(np.abs(cb.values - wb.codebooks.get("nf4").values).max()))

# %%
# Keep it: register under a name and use it anywhere a codebook is accepted.
wb.codebooks.register("my-lloyd4", cb, overwrite=True)
packed, state = wb.quantize_4bit(__import__("torch").randn(4096), codebook="my-lloyd4", blocksize=64)
state.quant_type, packed.shape
