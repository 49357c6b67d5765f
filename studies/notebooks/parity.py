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
# # Kernel parity
#
# Every quantization op on every backend available here, against the reference (the executable
# spec), on fresh random inputs: fp32/fp16/bf16, blocksizes 32..4096, odd sizes and tails.
# Same harness as `workbench parity`. Cells read `level passed/compared`.

# %%
# Setup shared by the notebooks (studies/notebook_setup.py): KBIT_NOTEBOOK_QUICK=1 (set by the tests)
# keeps every cell to a few seconds.
import pandas as pd

import workbench as wb
from studies.notebook_setup import setup

QUICK = setup()

# %%
from workbench import parity
from workbench.backends import list_backends

pd.DataFrame([{"backend": b.name, "available": b.available, "ops": len(b.ops), "reason": b.reason}
              for b in list_backends()])

# %%
df = parity.run_parity("cpu", quick=QUICK, ops=("quantize_4bit", "dequantize_4bit") if QUICK else None)
print("seed", int(df["seed"].iloc[0]) if len(df) else None)
parity.matrix(df)

# %%
# Failures, if any, with the parameters that reproduce them (pass seed= to replay).
parity.failures(df).head(20)

# %%
# Adding a case for another op family: a function yielding rows with at least `op` and `ok`.
import torch  # noqa: E402


def my_case(backend, device, gen, quick):
    x = torch.randn(1001, generator=gen)
    q_ref, _ = wb.quantize_4bit(x, quant_type="nf4", backend="reference")
    q, _ = wb.quantize_4bit(x, quant_type="nf4", backend=backend)
    yield {"op": "quantize_4bit", "ok": bool(torch.equal(q, q_ref)), "n": 1001, "detail": "via public API"}


parity.register_case("demo", "nf4_public_api", my_case, ops=("quantize_4bit",), overwrite=True)
parity.matrix(parity.run_parity("cpu", families=["demo"]))
