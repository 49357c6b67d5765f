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
# # Error study: codebooks x blocksizes x data
#
# Quantize -> dequantize through the public API (backend `auto`) and measure mean absolute error,
# MSE, SQNR, max error and bits per parameter (with and without double quantization).
# The full sweep is `workbench study error` or `workbench report`; this notebook runs a slice
# of it and shows how to drill into the tidy frame.

# %%
# Setup shared by the notebooks (studies/notebook_setup.py): KBIT_NOTEBOOK_QUICK=1 (set by the tests)
# keeps every cell to a few seconds.
import workbench as wb
from studies.notebook_setup import setup

QUICK = setup()

# %% [markdown]
# Your own codes join the sweep exactly as with `workbench report --codebook SPEC`: set
# `KBIT_CODEBOOKS="my.json;linspace(-1,1,12)"` (specs separated by `;`: a file saved by
# `workbench codebook ... --save my.json`, a registered name or an expression) or put Codebook objects in `mine`.

# %%
import os

from studies import error_study
from studies.codebook_lab import build

mine = [build(s.strip()) for s in os.environ.get("KBIT_CODEBOOKS", "linspace(-1,1,12)").split(";") if s.strip()]
methods = ("nf4", "fp4", "af4", "e2m1", "nvfp4", "mxfp4", "int4-asym", "lloyd-max4") if QUICK else error_study.METHODS
df, figs = error_study.run(quick=QUICK, executor=None, methods=methods, codebooks=mine,
                           sources=("normal", "laplace") if QUICK else error_study.SOURCES)
df.head()

# %%
for title, table in error_study.summarize(df):
    print(title)
    display(table)  # noqa: F821  (IPython)

# %%
figs["error_sqnr_by_blocksize"]

# %% [markdown]
# ## Drill down: NF4 vs the NVFP4-style code, by blocksize, on Laplace data

# %%
ok = df[df["skipped"].isna()]
sub = ok[(ok["source"] == "laplace") & ok["method"].isin(["nf4", "nvfp4", "e2m1"])]
sub.pivot_table(index="blocksize", columns="method", values=["mae", "bits"]).round(4)

# %%
# One cell, one comparison: any codebook through the same kernels.
x = error_study.make_data("student-t", 1 << 14, seed=1)
for name in ("nf4", "student-t5"):
    y, bits = error_study.quant_dequant(x, wb.codebooks.get(name), 64)
    print(f"{name:12s} bits/param {bits:.3f}  " + "  ".join(f"{k} {v:.4g}" for k, v in error_study.metrics(x, y).items()))
