"""The user's own weights: safetensors files or checkpoint directories, memory-mapped, with a layer-name filter.

``weight_vector(path, pattern, n)`` reads ``n`` values (in 4096-element chunks spread evenly over the matching
tensors, so blocks stay intact; everything when the tensors hold fewer) without loading the checkpoint: tensors are
opened with ``safetensors.safe_open`` (memory-mapped) and read one at a time. ``path`` is a ``.safetensors`` file,
or a directory (its ``model.safetensors.index.json`` shards, else every ``*.safetensors`` in it).
"""
from __future__ import annotations

import json
import re
from functools import lru_cache
from pathlib import Path

import numpy as np

CHUNK = 4096


def safetensors_files(path) -> list[Path]:
    p = Path(path)
    if p.is_file():
        return [p]
    if not p.is_dir():
        raise FileNotFoundError(f"weights: {str(p)!r} is neither a safetensors file nor a directory")
    idx = p / "model.safetensors.index.json"
    if idx.is_file():
        files = sorted(set(json.loads(idx.read_text())["weight_map"].values()))
        return [p / f for f in files]
    files = sorted(p.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"weights: no *.safetensors in {str(p)!r}")
    return files


def tensor_index(path, pattern: str | None = None, min_ndim: int = 2) -> list[tuple[Path, str, tuple]]:
    """(file, tensor name, shape) of the floating-point tensors with ``ndim >= min_ndim`` whose name matches
    ``pattern`` (a regex, searched), in file then name order; read from the headers only."""
    from safetensors import safe_open
    rx = re.compile(pattern) if pattern else None
    out = []
    for f in safetensors_files(path):
        with safe_open(str(f), framework="pt") as sf:
            for name in sorted(sf.keys()):
                sl = sf.get_slice(name)
                shape = tuple(sl.get_shape())
                dt = str(sl.get_dtype()).upper()
                if len(shape) < min_ndim or not dt.startswith(("F", "BF")):
                    continue
                if rx is not None and not rx.search(name):
                    continue
                out.append((f, name, shape))
    if not out:
        raise ValueError(f"weights: no floating-point tensors of >= {min_ndim} dims in {str(path)!r}"
                         + (f" matching {pattern!r}" if pattern else ""))
    return out


def iter_tensors(path, pattern: str | None = None, min_ndim: int = 2):
    """Yield (name, float32 torch tensor) one at a time (memory-mapped reads)."""
    from safetensors import safe_open
    for f, name, _ in tensor_index(path, pattern, min_ndim):
        with safe_open(str(f), framework="pt") as sf:
            yield name, sf.get_tensor(name).float()


@lru_cache(maxsize=4)
def _vector(path: str, pattern: str | None, n: int | None) -> np.ndarray:
    from safetensors import safe_open
    idx = tensor_index(path, pattern)
    sizes = np.array([int(np.prod(s)) for _, _, s in idx], np.int64)
    total = int(sizes.sum())
    if n is None or total <= n:
        return np.concatenate([t.numpy().ravel() for _, t in iter_tensors(path, pattern)]).astype(np.float32)
    k = max(1, n // CHUNK)
    starts = np.linspace(0, total - CHUNK, k).astype(np.int64)
    ends = np.cumsum(sizes)
    out = []
    for i, (f, name, _) in enumerate(idx):
        lo = ends[i] - sizes[i]
        mine = starts[(starts >= lo) & (starts < ends[i])]
        if mine.size == 0:
            continue
        with safe_open(str(f), framework="pt") as sf:
            flat = sf.get_tensor(name).float().reshape(-1).numpy()
        for s in mine:
            a = int(s - lo) // CHUNK * CHUNK  # chunk-aligned within the tensor
            out.append(flat[a:a + CHUNK])
    v = np.concatenate(out).astype(np.float32)
    return v[:n]


def weight_vector(path, pattern: str | None = None, n: int | None = None) -> np.ndarray:
    """``n`` float32 values of the matching tensors (all of them when ``n`` is None or larger than the total)."""
    return _vector(str(path), pattern or None, n)


def source_name(path, pattern: str | None = None) -> str:
    """The error study's data-source name for these weights: ``file:PATH`` or ``file:PATH::REGEX``."""
    return f"file:{path}" + (f"::{pattern}" if pattern else "")


def parse_source(source: str) -> tuple[str, str | None]:
    body = source[len("file:"):]
    path, _, pattern = body.partition("::")
    return path, (pattern or None)
