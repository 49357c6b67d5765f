"""Model-level evaluation of a quantization spec: what a codebook, bit width or blocksize does to a model.

On all-MiniLM-L6-v2 (``workbench.models``) every ``nn.Linear`` is quantized as a :class:`QuantSpec`
(workbench/quant_spec.py: codebook or affine int-k, bits 2..8, group, scale format, double quantization,
rotation) says, through the public API: 4-bit codes with float32 absmax scales run as the deployable module
``workbench.nn.Linear4bit`` (``quantize_model``, its ``matmul_4bit`` forward); every other spec (other tables
through ``quantize_blockwise``, k-bit formats, affine groups and rotation through ``workbench.kbit``, GPTQ) has
no module, so the Linear's weight is swapped for its dequantization. The sentence embeddings of the shipped
sentences are compared with the float model's:

* ``cos_mean`` / ``cos_p01`` / ``cos_min``: cosine similarity of each sentence's embedding to its float
  embedding (mean, the 1st percentile = the worst 1 %, the minimum);
* ``top10_overlap``: mean fraction of each sentence's 10 nearest neighbours (cosine, itself excluded) that
  the quantized model keeps; ``spearman``: Spearman correlation of the upper triangle of the pairwise
  similarity matrix with the float model's (scipy);
* ``act_threshold``: activations quantized too, every Linear as ``workbench.nn.Linear8bitLt`` (LLM.int8():
  int8 rows of the input, columns with an |x| >= threshold kept in float; threshold 0 = plain int8 W8A8) on the
  (already quantized and dequantized) weight, stored row-wise int8 as bitsandbytes' Linear8bitLt stores it.

Bits per parameter are stated honestly (quant_spec's module doc): code bits plus block scales (float32 absmax,
bitsandbytes' double quantization, or the k-bit scale format as stored) plus affine zero points. Biases,
LayerNorms and embeddings stay float (they are not counted: ``bits_per_param`` is over the quantized Linear
weights).

Per-layer sensitivity quantizes one Linear at a time (the rest float) and ranks the layers by the metric loss
(``1 - cos_mean``); :func:`greedy_allocate` picks bits per layer under a bits-per-parameter budget from those
single-layer losses (assumed additive), and :func:`mixed_precision_curve` evaluates the allocations against
uniform bit widths at equal size. Causal LMs (perplexity and next-token KL vs the float model, any local
Hugging Face checkpoint) are in :mod:`workbench.llm_eval`.
"""
from __future__ import annotations

import contextlib
import math
import re
from typing import Iterable

import numpy as np
import torch
from torch import nn

# the spec and its routes live in workbench/quant_spec.py; re-exported here, where they were first defined
from .quant_spec import (QuantSpec, absmax_bits, code_bits, fake_quantize, kbit_codebook,  # noqa: F401
                         levels, resolve_codebook, scale_bits, spec_dict)

__all__ = ["QuantSpec", "resolve_codebook", "kbit_codebook", "fake_quantize", "linear_names", "embedding_metrics",
           "MiniLMEvaluator", "layer_sensitivity", "greedy_allocate", "mixed_precision_curve", "gptq_quantize"]


def linear_names(model: nn.Module, pattern: str | None = None) -> list[str]:
    """Names of the model's nn.Linear modules (``pattern``: a regex searched in the name)."""
    rx = re.compile(pattern) if pattern else None
    return [n for n, m in model.named_modules() if isinstance(m, nn.Linear) and (rx is None or rx.search(n))]


def _get_parent(model: nn.Module, name: str):
    parts = name.split(".")
    parent = model
    for p in parts[:-1]:
        parent = getattr(parent, p)
    return parent, parts[-1]


def _spec_key(spec: QuantSpec) -> tuple:
    """A hashable identity of what a spec does to a weight (Codebooks hold arrays: key them by content)."""
    cb = spec.cb
    return (spec.route, None if cb is None else (cb.name, tuple(cb.table.tolist())), spec.blocksize,
            spec.double_quant, spec.method, spec.k, spec.scale_format, spec.affine, spec.rotate, spec.rotate_seed)


def plan_layers(per: dict[str, QuantSpec], numels: dict[str, int], weight_fn, act_threshold=None,
                use_modules: bool = True) -> tuple[dict, dict, dict]:
    """Which layers become Linear4bit modules and which get a dequantized weight:
    ``(weights {name: tensor}, modules {name: spec}, bits {name: bits per parameter})``. A ``linear4bit``-route
    spec becomes a module unless activations are quantized too (no module holds 4-bit weights with int8
    activations: the dequantized weight then goes to Linear8bitLt) or ``use_modules`` is False.
    ``weight_fn(name, spec) -> (weight, bits)`` quantizes the others."""
    weights, modules, bits = {}, {}, {}
    for n, s in per.items():
        if use_modules and act_threshold is None and s.route == "linear4bit":
            modules[n], bits[n] = s, absmax_bits(s.cb, numels[n], s)
        else:
            weights[n], bits[n] = weight_fn(n, s)
    return weights, modules, bits


@contextlib.contextmanager
def swapped(model: nn.Module, weights: dict[str, torch.Tensor], act_threshold: float | None = None,
            act_layers: Iterable[str] | None = None, modules: dict[str, QuantSpec] | None = None):
    """Within the block: the Linear ``name``'s weight is ``weights[name]``; the Linears in ``modules`` are
    ``workbench.nn.Linear4bit`` (``quantize_model`` with each spec's arguments); with ``act_threshold``, the
    Linears in ``act_layers`` (default: all) are ``workbench.nn.Linear8bitLt`` (LLM.int8() activations, the
    weight as it is then, stored row-wise int8). The float modules and weights are restored on exit."""
    from .nn import Linear8bitLt, quantize_model
    mods = dict(model.named_modules())
    saved_w, saved_mod = {}, {}
    try:
        for n, w in weights.items():
            lin = mods[n]
            saved_w[n] = lin.weight.data
            lin.weight.data = w.to(lin.weight.dtype)
        groups: dict = {}
        for n, s in (modules or {}).items():
            groups.setdefault(_spec_key(s), (s, set()))[1].add(n)
            saved_mod[n] = mods[n]
        for s, names in groups.values():
            quantize_model(model, filter=lambda full, _m, names=names: full in names, **s.linear4bit_kwargs())
        if act_threshold is not None:
            for n in (act_layers if act_layers is not None else linear_names(model)):
                parent, attr = _get_parent(model, n)
                saved_mod.setdefault(n, getattr(parent, attr))
                setattr(parent, attr, Linear8bitLt.from_linear(getattr(parent, attr), threshold=act_threshold))
        yield model
    finally:
        for n, lin in saved_mod.items():
            parent, attr = _get_parent(model, n)
            setattr(parent, attr, lin)
        for n, w in saved_w.items():
            mods[n].weight.data = w


# ------------------------------------------------------------------ metrics

def embedding_metrics(ref: torch.Tensor, emb: torch.Tensor, k: int = 10) -> dict:
    """Agreement of embeddings ``emb`` [n, d] with the float model's ``ref`` [n, d]."""
    from scipy.stats import spearmanr
    r = torch.nn.functional.normalize(ref.double(), dim=1)
    e = torch.nn.functional.normalize(emb.double(), dim=1)
    cos = (r * e).sum(1).numpy()
    n = r.shape[0]
    Sr, Se = (r @ r.T).numpy(), (e @ e.T).numpy()
    k = min(k, n - 1)
    out = {"n_sentences": n, "cos_mean": float(cos.mean()), "cos_p01": float(np.quantile(cos, 0.01)),
           "cos_min": float(cos.min()), "one_minus_cos": float(1.0 - cos.mean())}
    if k >= 1:
        Ar, Ae = Sr.copy(), Se.copy()
        np.fill_diagonal(Ar, -np.inf)
        np.fill_diagonal(Ae, -np.inf)
        nr = np.argsort(-Ar, axis=1, kind="stable")[:, :k]
        ne = np.argsort(-Ae, axis=1, kind="stable")[:, :k]
        ov = [len(set(a) & set(b)) / k for a, b in zip(nr, ne)]
        out["top10_overlap"] = float(np.mean(ov))
        iu = np.triu_indices(n, 1)
        out["spearman"] = float(spearmanr(Sr[iu], Se[iu]).statistic)
    return out


# ------------------------------------------------------------------ the MiniLM evaluator

class MiniLMEvaluator:
    """The float MiniLM, tokenized sentences (length-sorted batches, tokenized once) and the float embeddings;
    ``evaluate(spec)`` quantizes, encodes and compares. Hidden states entering each encoder block are cached,
    so quantizing layers of block i only re-runs blocks i.. (the per-layer sensitivity sweep's speed-up)."""

    def __init__(self, n_sentences: int | None = None, batch_size: int = 64, model=None, sentences=None,
                 calib_sentences=None):
        from . import models
        self.model = model if model is not None else models.load_minilm()
        self.sentences = list(sentences) if sentences is not None else models.load_sentences(n_sentences)
        order = sorted(range(len(self.sentences)), key=lambda i: len(self.model.tokenizer.encode(self.sentences[i])))
        self.order = order
        self.batches = []
        for i in range(0, len(order), batch_size):
            idx = order[i:i + batch_size]
            ids, mask = self.model.tokenizer.batch([self.sentences[j] for j in idx])
            self.batches.append((idx, ids, mask))
        # GPTQ's calibration set: held-out sentences when given (else the evaluation sentences: in-sample)
        self.calib_batches = self.batches
        self.calibration = "in-sample"
        if calib_sentences:
            cs = list(calib_sentences)
            self.calib_batches = [(None, *self.model.tokenizer.batch(cs[i:i + batch_size]))
                                  for i in range(0, len(cs), batch_size)]
            self.calibration = f"held-out ({len(cs)} sentences)"
        self.names = linear_names(self.model)
        self.params = {n: dict(self.model.named_modules())[n].weight.numel() for n in self.names}
        self._wcache: dict = {}
        with torch.no_grad():
            self.block_inputs = self._block_inputs()
            self.ref = self._encode_from(0)

    # --- forward pieces
    def _bias(self, mask, dtype):
        return (1.0 - mask[:, None, None, :].to(dtype)) * torch.finfo(dtype).min

    def _block_inputs(self):
        """[block][batch] hidden states entering each encoder block (and the final output at index L)."""
        m = self.model
        L = len(m.encoder.layer)
        out = [[None] * len(self.batches) for _ in range(L + 1)]
        for b, (_, ids, mask) in enumerate(self.batches):
            x = m.embeddings(ids)
            bias = self._bias(mask, x.dtype)
            out[0][b] = x
            for i, lay in enumerate(m.encoder.layer):
                x = lay(x, bias)
                out[i + 1][b] = x
        return out

    @torch.no_grad()
    def _encode_from(self, block: int) -> torch.Tensor:
        m = self.model
        embs = torch.empty(len(self.sentences), m.config["hidden_size"])
        for b, (idx, ids, mask) in enumerate(self.batches):
            x = self.block_inputs[block][b] if block > 0 else m.embeddings(ids)
            bias = self._bias(mask, x.dtype)
            for lay in m.encoder.layer[block:]:
                x = lay(x, bias)
            w = mask[..., None].to(x.dtype)
            e = (x * w).sum(1) / w.sum(1).clamp_min(1e-9)
            embs[torch.as_tensor(idx)] = torch.nn.functional.normalize(e, p=2, dim=1)
        return embs

    def block_of(self, name: str) -> int:
        m = re.match(r"encoder\.layer\.(\d+)\.", name)
        return int(m.group(1)) if m else 0

    # --- quantization
    def quantized_weight(self, name: str, spec: QuantSpec) -> tuple[torch.Tensor, float]:
        """The dequantized weight (cached per layer and spec) and its bits per parameter."""
        key = (name, _spec_key(spec))
        if key not in self._wcache:
            lin = dict(self.model.named_modules())[name]
            if spec.method == "gptq":
                H = self.hessian(name)
                self._wcache[key] = gptq_quantize(lin.weight.data, H, spec)
            else:
                self._wcache[key] = fake_quantize(lin.weight.data, spec)
        return self._wcache[key]

    def hessian(self, name: str) -> torch.Tensor:
        """``X^T X`` of the Linear's float inputs over the calibration sentences (padding tokens excluded);
        every Linear's in one forward pass, on first use."""
        if not hasattr(self, "_hess"):
            mods = dict(self.model.named_modules())
            hs = {n: torch.zeros(mods[n].in_features, mods[n].in_features, dtype=torch.float64) for n in self.names}
            cur = {}

            def make(n):
                def hook(_m, inp, _out):
                    x = inp[0]
                    xs = x.reshape(-1, x.shape[-1])[cur["mask"].reshape(-1).bool()].double()
                    hs[n].add_(xs.T @ xs)
                return hook
            handles = [mods[n].register_forward_hook(make(n)) for n in self.names]
            try:
                with torch.no_grad():
                    for _, ids, mask in self.calib_batches:
                        cur["mask"] = mask
                        self.model(ids, mask)
            finally:
                for h in handles:
                    h.remove()
            self._hess = hs
        return self._hess[name]

    @torch.no_grad()
    def evaluate(self, spec: QuantSpec | dict | None, layers: Iterable[str] | None = None,
                 use_modules: bool = True) -> dict:
        """Metrics with ``spec`` on ``layers`` (default: all Linears). ``spec`` may be a dict
        ``{layer: QuantSpec}`` (per-layer specs; others float) or None (float weights; with activation
        quantization, pass ``QuantSpec(act_threshold=t)`` and ``layers=[]``). 4-bit codes with float32 absmax
        run as ``workbench.nn.Linear4bit`` modules (``use_modules=False``: as their dequantized weights)."""
        if isinstance(spec, dict):
            per = dict(spec)
        else:
            layers = self.names if layers is None else list(layers)
            per = {n: spec for n in layers} if spec is not None else {}
        act = None
        if not isinstance(spec, dict) and spec is not None:
            act = spec.act_threshold
        weights, modules, bits = plan_layers(per, self.params, self.quantized_weight, act, use_modules)
        qbits = sum(bits[n] * self.params[n] for n in per)
        qparams = sum(self.params[n] for n in per)
        start = 0 if (act is not None or not per) else min(self.block_of(n) for n in per)
        with swapped(self.model, weights, act_threshold=act, modules=modules):
            emb = self._encode_from(start)
        row = embedding_metrics(self.ref, emb)
        total = sum(self.params.values())
        row.update(n_layers=len(per), q_params=qparams,
                   bits_per_param=(qbits / qparams if qparams else 32.0),
                   # whole-Linear average: float layers count 32 bits
                   bits_per_param_all=(qbits + 32.0 * (total - qparams)) / total)
        return row


# ------------------------------------------------------------------ sensitivity and mixed precision

def layer_sensitivity(ev: MiniLMEvaluator, bits=(2, 3, 4), blocksize: int = 64, layers=None,
                      progress: bool = True) -> list[dict]:
    """One Linear quantized at a time with the k-bit normal-float code (2**k entries) for each k in ``bits``."""
    from tqdm.auto import tqdm
    layers = list(layers) if layers is not None else ev.names
    jobs = [(n, b) for b in bits for n in layers]
    rows = []
    for n, b in tqdm(jobs, desc="layer sensitivity", leave=False, disable=not progress):
        spec = QuantSpec(codebook=f"nf{b}", blocksize=blocksize)
        r = ev.evaluate(spec, layers=[n])
        r.update(spec.columns(), layer=n, bits=int(b), params=ev.params[n], loss=r["one_minus_cos"])
        rows.append(r)
    return rows


def greedy_allocate(loss: dict[str, dict[int, float]], params: dict[str, int], budget: float,
                    bits=(2, 3, 4)) -> dict[str, int]:
    """Bits per layer with ``sum(bits * params) <= budget * sum(params)`` (code bits), greedy on single-layer
    losses (assumed additive): start every layer at the lowest width, then repeatedly take the upgrade with
    the largest loss reduction per added bit until nothing fits."""
    bits = sorted(bits)
    total = sum(params.values())
    cap = budget * total
    alloc = {n: bits[0] for n in params}
    used = sum(bits[0] * p for p in params.values())
    if used > cap + 1e-9:
        raise ValueError(f"budget {budget} bits/param is below the smallest width {bits[0]}")
    while True:
        best, best_gain = None, 0.0
        for n, b in alloc.items():
            i = bits.index(b)
            for nb in bits[i + 1:]:  # any higher width (lets a layer jump 2 -> 4)
                extra = (nb - b) * params[n]
                if used + extra > cap + 1e-9:
                    continue
                gain = (loss[n][b] - loss[n][nb]) / extra
                if gain > best_gain:
                    best, best_gain = (n, nb, extra), gain
        if best is None:
            return alloc
        n, nb, extra = best
        alloc[n] = nb
        used += extra


def mixed_precision_curve(ev: MiniLMEvaluator, sens_rows: list[dict], budgets=(2.5, 3.0, 3.5), bits=(2, 3, 4),
                          blocksize: int = 64, progress: bool = True) -> list[dict]:
    """Uniform k-bit (every layer) vs greedy mixed precision at each budget; measured on the model."""
    from tqdm.auto import tqdm
    loss: dict[str, dict[int, float]] = {}
    for r in sens_rows:
        loss.setdefault(r["layer"], {})[int(r["bits"])] = float(r["loss"])
    names = [n for n in ev.names if n in loss and all(b in loss[n] for b in bits)]
    params = {n: ev.params[n] for n in names}
    rows = []
    jobs = [("uniform", b) for b in bits] + [("greedy", b) for b in budgets]
    for kind, b in tqdm(jobs, desc="mixed precision", leave=False, disable=not progress):
        if kind == "uniform":
            alloc = {n: int(b) for n in names}
        else:
            alloc = greedy_allocate(loss, params, b, bits)
        per = {n: QuantSpec(codebook=f"nf{k}", blocksize=blocksize) for n, k in alloc.items()}
        r = ev.evaluate(per)
        counts = {f"n_{k}bit": sum(1 for v in alloc.values() if v == k) for k in bits}
        r.update(allocation=kind, budget=float(b), blocksize=blocksize,
                 code_bits_avg=sum(alloc[n] * params[n] for n in names) / sum(params.values()),
                 alloc=",".join(f"{n}:{k}" for n, k in alloc.items()), **counts)
        rows.append(r)
    return rows


# ------------------------------------------------------------------ GPTQ-style calibration baseline

def _nearest(s: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    mids = (values[1:] + values[:-1]) / 2
    return values[torch.bucketize(s, mids)]


def gptq_quantize(W: torch.Tensor, H: torch.Tensor, spec: QuantSpec, damp: float = 0.01,
                  cb=None) -> tuple[torch.Tensor, float]:
    """GPTQ (Frantar et al. 2022) with any codebook: columns quantized in order, each column's rounding error
    spread over the not-yet-quantized columns through the inverse Hessian's Cholesky factor. Block scales
    (absmax of each ``blocksize`` run along the input dimension, as the blockwise kernels cut a row-major
    weight when ``in_features`` is a multiple of the blocksize) are fixed from the original weights before
    rounding, then every scaled value goes to the nearest codebook entry. Returns the dequantized weight and
    its bits per parameter (same storage as RTN)."""
    cb = cb if cb is not None else spec.cb
    W = W.detach().double().clone()
    out_f, in_f = W.shape
    bs = spec.blocksize
    if in_f % bs:
        raise ValueError(f"gptq: in_features {in_f} is not a multiple of the blocksize {bs}")
    values = torch.tensor(np.sort(cb.values if hasattr(cb, "values") else cb.table), dtype=torch.float64)
    values = torch.unique(values)
    absmax = W.view(out_f, in_f // bs, bs).abs().amax(-1).clamp_min(1e-38)  # [out, nblocks]
    if spec.double_quant:  # the scales the kernels would store: round-trip them through 8-bit
        import workbench as wb
        c, qs = wb.quantize_blockwise(absmax.float().reshape(-1), blocksize=256)
        absmax = wb.dequantize_blockwise(c, qs).double().reshape(absmax.shape).clamp_min(1e-38)
    H = H.double().clone()
    dead = torch.diag(H) == 0
    H[dead, dead] = 1
    W[:, dead] = 0
    H += damp * torch.mean(torch.diag(H)) * torch.eye(in_f, dtype=H.dtype)
    Hinv = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(H)), upper=True)
    Q = torch.zeros_like(W)
    B = 128  # lazy batch updates (GPTQ's block trick): the same result, fewer passes over W
    for i1 in range(0, in_f, B):
        i2 = min(i1 + B, in_f)
        W1, E1, Hi = W[:, i1:i2].clone(), torch.zeros(out_f, i2 - i1, dtype=W.dtype), Hinv[i1:i2, i1:i2]
        for i in range(i2 - i1):
            w = W1[:, i]
            sc = absmax[:, (i1 + i) // bs]
            q = _nearest((w / sc).clamp(-1, 1), values) * sc
            Q[:, i1 + i] = q
            err = (w - q) / Hi[i, i]
            W1[:, i:] -= err[:, None] * Hi[i, i:][None, :]
            E1[:, i] = err
        W[:, i2:] -= E1 @ Hinv[i1:i2, i2:]
    n = W.numel()
    return Q.float(), absmax_bits(cb, n, spec)


