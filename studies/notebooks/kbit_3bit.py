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
# # Prototyping a 3-bit code
#
# Eight levels and a scale per group: which levels, which scale format, which group, and does a Hadamard
# rotation or an affine (scale + zero point) group beat a codebook? Every candidate runs through
# `workbench.kbit.quantize_kbit` at its true storage cost (3 code bits + the group's scale and zero point).

# %%
# Setup shared by the notebooks (studies/notebook_setup.py): KBIT_NOTEBOOK_QUICK=1 (set by the tests)
# keeps every cell to a few seconds.
import numpy as np
import pandas as pd
import torch

from studies.notebook_setup import setup
from workbench import codebooks as cbs
from workbench import kbit as K

QUICK = setup()
n = 384 * (64 if QUICK else 1024)

# %%
# Data: normal, heavy-tailed (Student-t, 3 dof) and, when the packaged weights are installed, MiniLM rows.
from studies.kbit_frontier import make_data  # noqa: E402

data = {}
for i, src in enumerate(("normal", "student-t", "minilm")):
    try:
        data[src] = make_data(src, n, seed=i)
    except Exception as e:  # noqa: BLE001  (MiniLM weights missing)
        print(f"{src}: skipped ({type(e).__name__}: {e})")
calib = make_data("normal", n // 4, seed=99).reshape(-1).numpy()   # calibration sample for fitted codes
{k: tuple(v.shape) for k, v in data.items()}

# %%
# Candidate 3-bit codebooks: bitsandbytes' normal-float code, uniform, two fitted on block-normalized
# calibration data (Lloyd-Max, quantile) and one by hand (denser near zero, asymmetric like NF4).
codes = {
    "nf3": cbs.create_normal_float_codebook(3),
    "uniform3": cbs.kbit_uniform(3),
    "lloyd-max3": cbs.kbit_lloyd_max(calib, 3, blocksize=32, iters=30),
    "quantile3": cbs.kbit_quantile(calib, 3, blocksize=32),
    "hand3": torch.tensor([-1.0, -0.52, -0.22, 0.0, 0.2, 0.44, 0.7, 1.0]),
}
pd.DataFrame({name: c.numpy().round(4) for name, c in codes.items()})

# %%
# Each candidate at blocksize 32 with E4M4 scales (bitsandbytes' k-bit format: 3.25 bits per parameter), then the
# other ways to spend bits: affine int3 groups, a rotation, per-row scales.
def sqnr(x, **kw):
    p, st = K.quantize_kbit(x, 3, **kw)
    err = (K.dequantize_kbit(p, st, dtype=torch.float32) - x).double()
    return 10 * np.log10(float(x.double().pow(2).mean()) / float(err.pow(2).mean())), st


variants = {name: dict(codebook=c, blocksize=32, scale_format="e4m4") for name, c in codes.items()}
variants.update({
    "nf3 +rot128": dict(blocksize=32, scale_format="e4m4", rotate=128),
    "lloyd-max3 +rot128": dict(codebook=codes["lloyd-max3"], blocksize=32, scale_format="e4m4", rotate=128),
    "nf3 fp16 row": dict(blocksize="row", scale_format="fp16"),
    "affine minmax g32": dict(blocksize=32, affine="minmax"),
    "affine mse g64": dict(blocksize=64, affine="mse"),
})
rows = []
for vname, kw in variants.items():
    for src, x in data.items():
        db, st = sqnr(x, **kw)
        rows.append(dict(variant=vname, source=src, sqnr_db=db,
                         bits=K.bits_per_param(3, st.blocksize, st.scale_format, st.affine)))
df = pd.DataFrame(rows)
table = df.pivot_table(index=["variant", "bits"], columns="source", values="sqnr_db", sort=False).round(2)
table

# %%
# The figure: the levels of each code (left) and SQNR against bits per parameter per data source (right).
import matplotlib.pyplot as plt  # noqa: E402

fig, (ax0, ax1) = plt.subplots(1, 2, figsize=(12, 4.2))
for i, (name, c) in enumerate(codes.items()):
    ax0.plot(c.numpy(), np.full(8, i), "o-", label=name)
ax0.set_yticks(range(len(codes)), list(codes))
ax0.set_xlabel("level (in units of the group's absmax)")
ax0.set_title("3-bit codebooks")
ax0.grid(alpha=0.3)
for src, g in df.groupby("source", sort=False):
    ax1.scatter(g["bits"], g["sqnr_db"], label=src, s=25)
    best = g.loc[g["sqnr_db"].idxmax()]
    ax1.annotate(best["variant"], (best["bits"], best["sqnr_db"]), fontsize=7, xytext=(4, 4),
                 textcoords="offset points")
ax1.set_xlabel("bits per parameter")
ax1.set_ylabel("SQNR (dB)")
ax1.set_title("3-bit variants (the best per source named)")
ax1.legend()
ax1.grid(alpha=0.3)
fig.tight_layout()

# %%
# Keep the winner: register the fitted code under a name, quantize with it, and save its state as a state_dict
# (tensors only) that loads back.
best = df[df["source"] == "normal"].sort_values("sqnr_db").iloc[-1]["variant"]
print("best on normal data:", best)
cbs.register("my-lloyd3", cbs.from_values(codes["lloyd-max3"].tolist()), overwrite=True)
W = data.get("minilm", data["normal"])
packed, state = K.quantize_kbit(W, 3, "my-lloyd3", blocksize=32, rotate=128)
sd = state.as_dict(packed=True)
back = K.KbitState.from_dict(sd)
print(sorted(sd), torch.equal(K.dequantize_kbit(packed, back), K.dequantize_kbit(packed, state)))
