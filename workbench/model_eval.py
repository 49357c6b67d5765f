"""Model-level evaluation of a quantization spec: what a codebook, bit width or blocksize does to a model.

On all-MiniLM-L6-v2 (``workbench.models``) every ``nn.Linear`` weight is replaced by its dequantization
(a *dequantized-weight swap*: quantize with the public kernels, ``quantize_4bit`` for 16-entry codes and
``quantize_blockwise`` for any other table of 2**k entries, then dequantize), and the sentence embeddings of
the shipped sentences are compared with the float model's:

* ``cos_mean`` / ``cos_p01`` / ``cos_min``: cosine similarity of each sentence's embedding to its float
  embedding (mean, the 1st percentile = the worst 1 %, the minimum);
* ``top10_overlap``: mean fraction of each sentence's 10 nearest neighbours (cosine, itself excluded) that
  the quantized model keeps; ``spearman``: Spearman correlation of the upper triangle of the pairwise
  similarity matrix with the float model's (scipy);
* ``act_threshold``: activations quantized too, every Linear through ``workbench.int8.int8_linear`` (LLM.int8():
  int8 rows of the input, columns with an |x| >= threshold kept in float; threshold 0 = plain int8 W8A8). The
  (already fake-quantized) weight is then stored row-wise int8, as bitsandbytes' Linear8bitLt stores it.

Bits per parameter are stated honestly: ``code_bits`` = log2 of the table size (a 2**k-entry code run through
the 8-bit kernel still carries k bits of information per weight; it would pack into k bits), plus the
block scales: float32 absmax (32 / blocksize) or, with double quantization, 8-bit absmax + its float32
second-level absmax per 256 blocks + a float32 offset. Biases, LayerNorms and embeddings stay float
(they are not counted: ``bits_per_param`` is over the quantized Linear weights).

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
from dataclasses import asdict, dataclass, field
from typing import Iterable

import numpy as np
import torch
from torch import nn

__all__ = ["QuantSpec", "resolve_codebook", "kbit_codebook", "fake_quantize", "linear_names", "embedding_metrics",
           "MiniLMEvaluator", "layer_sensitivity", "greedy_allocate", "mixed_precision_curve", "gptq_quantize"]


# ------------------------------------------------------------------ codebooks and specs

def kbit_codebook(bits: int):
    """bitsandbytes' k-bit normal-float code (``create_normal_float_codebook``): 2**bits sorted entries."""
    from . import codebooks as cbs
    return cbs.from_values(cbs.create_normal_float_codebook(int(bits)).numpy(), name=f"nf{int(bits)}-kbit",
                           meta={"levels": 1 << int(bits)})


def resolve_codebook(cb):
    """A Codebook from a registered name, ``'nf2'``/``'nf3'``..``'nf8'``-style k-bit normal-float names
    (``'nfk:3'`` too), a Codebook, or a sorted tensor/array of 2**k values in [-1, 1]."""
    from . import codebooks as cbs
    if isinstance(cb, cbs.Codebook):
        return cb
    if isinstance(cb, str):
        m = re.fullmatch(r"nf(?:k:)?([2-8])(?:-kbit)?", cb)
        if m and not (cb in cbs.names()):
            return kbit_codebook(int(m.group(1)))
        return cbs.get(cb)
    v = np.asarray(cb.detach().cpu().numpy() if isinstance(cb, torch.Tensor) else cb, np.float64).ravel()
    k = int(round(math.log2(v.size))) if v.size else 0
    if v.size < 2 or (1 << k) != v.size:
        raise ValueError(f"codebook: expected 2**k values, got {v.size}")
    return cbs.from_values(np.unique(v.astype(np.float32)), name=f"custom{k}", pad_to_pow2=True)


def levels(cb) -> int:
    return int(cb.bucket_codes.size)


def code_bits(cb) -> int:
    return max(1, math.ceil(math.log2(max(2, levels(cb)))))


@dataclass(frozen=True)
class QuantSpec:
    """How to quantize: a codebook (registered name, ``nfK`` for bitsandbytes' k-bit NF, a Codebook or 2**k
    values), blocksize, double quantization of the absmax; optionally activations (LLM.int8() threshold)."""
    codebook: object = "nf4"
    blocksize: int = 64
    double_quant: bool = False
    act_threshold: float | None = None   # None: float activations; 0.0: int8 W8A8; > 0: LLM.int8() decomposition
    method: str = "rtn"                  # "rtn" (round to nearest) or "gptq" (Hessian-aware, calibration sentences)

    @property
    def cb(self):
        return resolve_codebook(self.codebook)

    @property
    def name(self) -> str:
        c = self.codebook if isinstance(self.codebook, str) else self.cb.name
        s = f"{c}@{self.blocksize}" + ("+dq" if self.double_quant else "")
        if self.method != "rtn":
            s += f"/{self.method}"
        if self.act_threshold is not None:
            s += f"/a8t{self.act_threshold:g}"
        return s

    def columns(self) -> dict:
        cb = self.cb
        return {"spec": self.name, "codebook": cb.name, "levels": levels(cb), "code_bits": code_bits(cb),
                "blocksize": int(self.blocksize), "double_quant": bool(self.double_quant),
                "act_threshold": (np.nan if self.act_threshold is None else float(self.act_threshold)),
                "method": self.method,
                # the code by value, so a stored row says exactly what ran (fitted codes have no registry name)
                "codebook_values": " ".join(f"{v:.8g}" for v in cb.values)}


def scale_bits(n: int, blocksize: int, double_quant: bool) -> float:
    """Bits of block scales for ``n`` weights."""
    nb = math.ceil(n / blocksize)
    if not double_quant:
        return 32.0 * nb
    return 8.0 * nb + 32.0 * math.ceil(nb / 256) + 32.0


def fake_quantize(W: torch.Tensor, spec: QuantSpec, cb=None) -> tuple[torch.Tensor, float]:
    """Quantize -> dequantize ``W`` with the public kernels -> (float32 like W, bits per parameter)."""
    import workbench as wb
    cb = cb if cb is not None else spec.cb
    x = W.detach().float().contiguous()
    if cb.size == 16 and levels(cb) <= 16 and cb.bits == 4:
        packed, qs = wb.quantize_4bit(x, blocksize=spec.blocksize, compress_statistics=spec.double_quant, codebook=cb)
        y = wb.dequantize_4bit(packed, qs)
    else:
        codes, qs = wb.quantize_blockwise(x, codebook=cb, blocksize=spec.blocksize, nested=spec.double_quant)
        y = wb.dequantize_blockwise(codes, qs)
    n = x.numel()
    bits = code_bits(cb) + scale_bits(n, spec.blocksize, spec.double_quant) / n
    return y.float().reshape(W.shape), bits


def linear_names(model: nn.Module, pattern: str | None = None) -> list[str]:
    """Names of the model's nn.Linear modules (``pattern``: a regex searched in the name)."""
    rx = re.compile(pattern) if pattern else None
    return [n for n, m in model.named_modules() if isinstance(m, nn.Linear) and (rx is None or rx.search(n))]


class Int8ActLinear(nn.Module):
    """``int8_linear(x, W, bias, threshold)``: LLM.int8() activations on a (possibly fake-quantized) weight."""

    def __init__(self, lin: nn.Linear, threshold: float):
        super().__init__()
        from .int8 import quantize_weight
        self.in_features, self.out_features = lin.in_features, lin.out_features
        self.w8 = quantize_weight(lin.weight.detach().float())
        self.bias = None if lin.bias is None else lin.bias.detach()
        self.threshold = float(threshold)

    def forward(self, x):
        from .int8 import int8_linear
        shp = x.shape
        y = int8_linear(x.reshape(-1, shp[-1]).contiguous(), self.w8, bias=self.bias, threshold=self.threshold)
        return y.reshape(*shp[:-1], self.out_features)


def _get_parent(model: nn.Module, name: str):
    parts = name.split(".")
    parent = model
    for p in parts[:-1]:
        parent = getattr(parent, p)
    return parent, parts[-1]


@contextlib.contextmanager
def swapped(model: nn.Module, weights: dict[str, torch.Tensor], act_threshold: float | None = None,
            act_layers: Iterable[str] | None = None):
    """Within the block, the Linear ``name``'s weight is ``weights[name]`` (and, with ``act_threshold``, the
    Linears in ``act_layers`` (default: all) run through LLM.int8()); restored on exit."""
    mods = dict(model.named_modules())
    saved = {}
    replaced = {}
    try:
        for n, w in weights.items():
            lin = mods[n]
            saved[n] = lin.weight.data
            lin.weight.data = w.to(lin.weight.dtype)
        if act_threshold is not None:
            for n in (act_layers if act_layers is not None else linear_names(model)):
                parent, attr = _get_parent(model, n)
                replaced[n] = getattr(parent, attr)
                setattr(parent, attr, Int8ActLinear(replaced[n], act_threshold))
        yield model
    finally:
        for n, lin in replaced.items():
            parent, attr = _get_parent(model, n)
            setattr(parent, attr, lin)
        for n, w in saved.items():
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
        key = (name, spec.cb.name, tuple(spec.cb.table.tolist()), spec.blocksize, spec.double_quant, spec.method)
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
    def evaluate(self, spec: QuantSpec | dict | None, layers: Iterable[str] | None = None) -> dict:
        """Metrics with ``spec`` on ``layers`` (default: all Linears). ``spec`` may be a dict
        ``{layer: QuantSpec}`` (per-layer specs; others float) or None (float weights; with activation
        quantization, pass ``QuantSpec(act_threshold=t)`` and ``layers=[]``)."""
        if isinstance(spec, dict):
            per = dict(spec)
        else:
            layers = self.names if layers is None else list(layers)
            per = {n: spec for n in layers} if spec is not None else {}
        weights, qbits, qparams = {}, 0.0, 0
        for n, s in per.items():
            w, bits = self.quantized_weight(n, s)
            weights[n] = w
            qbits += bits * self.params[n]
            qparams += self.params[n]
        act = None
        if not isinstance(spec, dict) and spec is not None:
            act = spec.act_threshold
        start = 0 if (act is not None or not per) else min(self.block_of(n) for n in per)
        with swapped(self.model, weights, act_threshold=act):
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
    return Q.float(), code_bits(cb) + scale_bits(n, bs, spec.double_quant) / n


def spec_dict(spec: QuantSpec) -> dict:
    d = asdict(spec)
    if not isinstance(spec.codebook, str):
        d["codebook"] = spec.cb.to_dict()
    return d
