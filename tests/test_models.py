"""all-MiniLM-L6-v2 loaded offline (workbench.models): weights, tokenizer, forward, shipped sentences."""
from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch

from workbench import models as M

needs_pkg = pytest.mark.skipif(importlib.util.find_spec(M.PACKAGE) is None,
                               reason=f"{M.PACKAGE} not installed ({M.INSTALL_HINT})")


@pytest.fixture(scope="module")
def model():
    return M.load_minilm()


@needs_pkg
def test_weights_names_shapes_and_fresh_copies():
    w = M.load_minilm_weights()
    assert isinstance(w, dict) and len(w) == 104
    assert w["embeddings.word_embeddings.weight"].shape == (30522, 384)
    assert w["encoder.layer.5.intermediate.dense.weight"].shape == (1536, 384)
    assert w["encoder.layer.0.output.dense.weight"].shape == (384, 1536)
    mats = [k for k, v in w.items() if v.ndim == 2 and "embedding" not in k]
    assert len(mats) == 6 * 6 + 1  # q, k, v, attn-out, ffn-in, ffn-out per layer + pooler
    assert all(v.dtype == torch.float32 for k, v in w.items() if k != "embeddings.position_ids")
    assert all(torch.isfinite(v).all() for v in w.values() if v.is_floating_point())
    w["encoder.layer.0.output.dense.weight"].zero_()  # callers get their own copies
    assert M.load_minilm_weights()["encoder.layer.0.output.dense.weight"].abs().sum() > 0


@needs_pkg
def test_safetensors_reader_matches_the_library():
    st = pytest.importorskip("safetensors.torch")
    path = M.minilm_dir() / "model.safetensors"
    ours, theirs = M.read_safetensors(path), st.load_file(str(path))
    assert ours.keys() == theirs.keys()
    for k in theirs:
        assert ours[k].dtype == theirs[k].dtype and torch.equal(ours[k], theirs[k]), k


@needs_pkg
def test_tokenizer_wordpiece_rules():
    tok = M.WordPieceTokenizer()
    assert tok.encode("hello world") == [101, 7592, 2088, 102]  # BERT uncased ids
    assert tok.tokenize("Hello, WORLD!") == ["hello", ",", "world", "!"]
    assert tok.tokenize("naïve café") == ["naive", "cafe"]            # lowercase + accents stripped
    assert tok.tokenize("unaffable")[0] == "una" and all(p.startswith("##") for p in tok.tokenize("unaffable")[1:])
    assert tok.tokenize("x" * 101) == ["[UNK]"]                        # over-long word
    assert tok.tokenize("\u2603") == ["[UNK]"]                         # no piece matches
    assert tok.tokenize("a\u0000b\tc") == ["ab", "c"]                  # control chars dropped
    ids, mask = tok.batch(["a short one", "a somewhat longer sentence than that"])
    assert ids.shape == mask.shape and ids.shape[0] == 2
    assert mask[0].sum() == 5 and (ids[0, 5:] == tok.pad_id).all()
    long_ids = tok.encode("word " * 1000)
    assert len(long_ids) == tok.max_length and long_ids[-1] == tok.sep_id


@needs_pkg
def test_reference_similarities_from_sentence_transformers_docs(model):
    # The sentence-transformers README quickstart prints this matrix for all-MiniLM-L6-v2 (4 decimals).
    e = model.encode(["The weather is lovely today.", "It's so sunny outside!", "He drove to the stadium."])
    assert e.shape == (3, 384)
    expected = np.array([[1.0, 0.6660, 0.1046], [0.6660, 1.0, 0.1411], [0.1046, 0.1411, 1.0]])
    np.testing.assert_allclose(M.cosine_matrix(e), expected, atol=1e-3)


@needs_pkg
def test_paraphrases_beat_unrelated_sentences(model):
    pairs = [("A man is eating food.", "A man is eating a piece of bread."),
             ("A cheetah is running behind its prey.", "A cheetah chases prey across a field."),
             ("The train was late this morning.", "My train arrived behind schedule today."),
             ("She is playing the violin.", "A woman plays a string instrument.")]
    e = model.encode([s for p in pairs for s in p])
    c = M.cosine_matrix(e)
    for i in range(len(pairs)):
        a, b = 2 * i, 2 * i + 1
        others = [c[a, j] for j in range(len(e)) if j not in (a, b)]
        assert c[a, b] > max(others) + 0.1, (pairs[i], c[a, b], max(others))
    assert np.allclose(np.linalg.norm(e.numpy(), axis=1), 1, atol=1e-5)


@needs_pkg
def test_padding_does_not_change_embeddings(model):
    s = ["Short.", "A much longer sentence that forces padding on the other one in the batch."]
    together = model.encode(s)
    alone = torch.cat([model.encode([x]) for x in s])
    torch.testing.assert_close(together, alone, atol=2e-6, rtol=0)


@needs_pkg
def test_linear_layers_visible_to_hooks(model):
    lin = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)]
    assert len(lin) == 36 and "encoder.layer.3.intermediate.dense" in lin
    seen = {}

    def record(name):
        def hook(mod, inp, out):  # returns None: the output is left alone
            seen[name] = inp[0].shape
        return hook

    hooks = [m.register_forward_hook(record(n)) for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)]
    try:
        model.encode(["hooks see every projection"])
    finally:
        for h in hooks:
            h.remove()
    assert set(seen) == set(lin)
    assert seen["encoder.layer.0.output.dense"][-1] == 1536


def test_shipped_sentences():
    s = M.load_sentences()
    assert len(s) >= 300
    assert len(set(s)) == len(s)
    assert all(x.isascii() and 3 <= len(x.split()) <= 40 for x in s)
    assert M.load_sentences(10) == s[:10]


def test_missing_package_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(M, "PACKAGE", "no_such_package_kbit")
    with pytest.raises(FileNotFoundError, match="pip install"):
        M.minilm_dir()
