"""Causal LMs: perplexity and next-token KL divergence vs the float model, for a local Hugging Face checkpoint.

``evaluate_checkpoint(path, text, specs)`` loads a checkpoint directory (``config.json`` + safetensors, sharded or
not) with ``transformers`` (the optional extra ``llm``: ``pip install kbit-workbench[llm]``) with
``local_files_only=True`` -- nothing is downloaded -- in float32 on the CPU (or ``device=``), cuts the text's
tokens into non-overlapping windows of ``seq_len`` and, for each :class:`~workbench.model_eval.QuantSpec`, quantizes
every ``nn.Linear`` but ``lm_head`` (``skip=``) as the MiniLM evaluation does (``model_eval.plan_layers``: 4-bit codes
as ``workbench.nn.Linear4bit`` modules, other specs as dequantized weights, activations through Linear8bitLt),
then measures

* ``ppl``: exp of the mean next-token negative log-likelihood (float model: ``ppl_float``);
* ``kl``: mean over positions of KL(p_float || p_quant) of the next-token distributions (nats), and ``kl_p99``;
* ``top1_agree``: how often the argmax next token is unchanged.

The tokenizer is the checkpoint's own (``AutoTokenizer``) when the directory has one; otherwise (a bare test
checkpoint) the text's UTF-8 bytes modulo the vocabulary size, stated in the ``tokenizer`` column.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from .model_eval import QuantSpec, fake_quantize, linear_names, plan_layers, swapped


def _require_transformers():
    try:
        import transformers  # noqa: F401
    except ImportError as e:
        raise ImportError("causal-LM evaluation needs transformers: pip install 'kbit-workbench[llm]'") from e
    return transformers


def load_causal_lm(path, device: str = "cpu"):
    """(model, tokenizer or None) from a local checkpoint directory; nothing downloaded."""
    tf = _require_transformers()
    path = Path(path)
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"{path}: not a checkpoint directory (no config.json)")
    try:
        model = tf.AutoModelForCausalLM.from_pretrained(str(path), local_files_only=True, dtype=torch.float32)
    except TypeError:  # transformers < 4.56 spells it torch_dtype
        model = tf.AutoModelForCausalLM.from_pretrained(str(path), local_files_only=True, torch_dtype=torch.float32)
    model.to(device).eval()
    tok = None
    if any((path / f).exists() for f in ("tokenizer.json", "tokenizer.model", "tokenizer_config.json", "vocab.json")):
        try:
            tok = tf.AutoTokenizer.from_pretrained(str(path), local_files_only=True)
        except Exception:  # noqa: BLE001  (a broken tokenizer falls back to bytes, stated in the rows)
            tok = None
    return model, tok


def tokenize(text: str, tok, vocab_size: int) -> tuple[torch.Tensor, str]:
    if tok is not None:
        return torch.tensor(tok(text, add_special_tokens=False)["input_ids"], dtype=torch.int64), type(tok).__name__
    ids = np.frombuffer(text.encode("utf-8"), dtype=np.uint8).astype(np.int64) % vocab_size
    return torch.from_numpy(ids.copy()), "utf8-bytes"


@torch.no_grad()
def _logprobs(model, windows) -> list[torch.Tensor]:
    return [torch.log_softmax(model(input_ids=w[None]).logits[0].float(), -1) for w in windows]


@torch.no_grad()
def evaluate_checkpoint(path, text: str | Path, specs, *, seq_len: int = 256, max_windows: int = 8,
                        skip=("lm_head",), layers: str | None = None, device: str = "cpu",
                        progress: bool = True) -> list[dict]:
    """One row per spec (plus the float row, ``spec='float'``); see the module doc."""
    from tqdm.auto import tqdm
    if isinstance(text, Path) or (isinstance(text, str) and len(text) < 4096 and Path(text).is_file()):
        text = Path(text).read_text(encoding="utf-8")
    model, tok = load_causal_lm(path, device)
    vocab = int(model.config.vocab_size)
    ids, tok_name = tokenize(text, tok, vocab)
    n_win = min(max_windows, max(1, (ids.numel() - 1) // seq_len))
    if ids.numel() < 2:
        raise ValueError("text: fewer than 2 tokens")
    windows = [ids[i * seq_len:(i + 1) * seq_len + 1].to(device) for i in range(n_win)]
    windows = [w for w in windows if w.numel() >= 2]
    ref = _logprobs(model, [w[:-1] for w in windows])
    targets = [w[1:] for w in windows]

    def nll(lps):
        tot = sum(float(-lp.gather(1, t[:, None]).sum()) for lp, t in zip(lps, targets))
        return tot / sum(t.numel() for t in targets)

    ppl_float = math.exp(nll(ref))
    names = [n for n in linear_names(model, layers) if not any(n == s or n.endswith("." + s) for s in skip)]
    mods = dict(model.named_modules())
    base = {"checkpoint": str(path), "model_type": getattr(model.config, "model_type", "?"), "tokenizer": tok_name,
            "n_tokens": sum(t.numel() for t in targets), "seq_len": seq_len, "ppl_float": ppl_float,
            "n_layers": len(names), "q_params": sum(mods[n].weight.numel() for n in names)}
    rows = [dict(base, spec="float", ppl=ppl_float, kl=0.0, kl_p99=0.0, top1_agree=1.0, bits_per_param=32.0)]
    for spec in tqdm(list(specs), desc="causal LM specs", leave=False, disable=not progress):
        def weight_fn(n, s):
            w, b = fake_quantize(mods[n].weight.data, s)
            return w.to(mods[n].weight.device), b
        numels = {n: mods[n].weight.numel() for n in names}
        weights, modules, per_layer = plan_layers({n: spec for n in names}, numels, weight_fn, spec.act_threshold)
        bits = sum(per_layer[n] * numels[n] for n in names)
        with swapped(model, weights, act_threshold=spec.act_threshold, act_layers=names, modules=modules):
            lps = _logprobs(model, [w[:-1] for w in windows])
        kls = torch.cat([(r.exp() * (r - q)).sum(-1) for r, q in zip(ref, lps)])
        agree = torch.cat([(r.argmax(-1) == q.argmax(-1)).float() for r, q in zip(ref, lps)])
        rows.append(dict(base, **spec.columns(), ppl=math.exp(nll(lps)), kl=float(kls.mean()),
                         kl_p99=float(torch.quantile(kls.double(), 0.99)), top1_agree=float(agree.mean()),
                         bits_per_param=bits / max(1, base["q_params"])))
    return rows


def main(argv=None) -> int:
    """``python -m workbench.llm_eval CHECKPOINT_DIR TEXT_FILE [--spec nf4@64 ...]``: the table on stdout."""
    import argparse

    import pandas as pd
    p = argparse.ArgumentParser(prog="python -m workbench.llm_eval", description=main.__doc__)
    p.add_argument("checkpoint")
    p.add_argument("text")
    p.add_argument("--spec", action="append", metavar="SPEC",
                   help="repeatable, QuantSpec text: CODE@GROUP[+dq][/FORMAT][/rotR], e.g. "
                   "nf3@64/e4m4/rot64, int4-minmax@32 (default: nf4@64 fp4@64 af4@64 nf3@64)")
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--max-windows", type=int, default=8)
    a = p.parse_args(argv)
    specs = [QuantSpec.parse(s) for s in a.spec or ["nf4@64", "fp4@64", "af4@64", "nf3@64"]]
    rows = evaluate_checkpoint(a.checkpoint, Path(a.text), specs, seq_len=a.seq_len, max_windows=a.max_windows)
    cols = ["spec", "bits_per_param", "ppl", "kl", "kl_p99", "top1_agree", "n_tokens", "tokenizer"]
    print(pd.DataFrame(rows)[cols].to_string(index=False))
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
