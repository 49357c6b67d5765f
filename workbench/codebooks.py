"""Codebooks: the value tables that quantization rounds to.

A :class:`Codebook` is data, not code. Kernels receive three arrays and never
special-case a named code:

``table``         float32[2**bits]  code -> value (bitsandbytes' ``code``/``quant_map``)
``bounds``        float32[m-1]      sorted decision thresholds between adjacent buckets
``bucket_codes``  uint8[m]          the code emitted for each bucket

Quantizing a normalized value ``s`` is ``bucket_codes[#{j : bounds[j] < s}]``,
which is exactly ``torch.bucketize(s, bounds, right=False)`` as used by
bitsandbytes 0.50.2's default backend. For a strictly increasing table the
buckets are the table entries themselves, ``bucket_codes`` is the identity and
the bounds are float32 midpoints ``(v[i] + v[i+1]) / 2``. Tables that are not
sorted (bitsandbytes' FP4 is in bit-pattern order, with +0 and -0) keep the
same three-array form, so every kernel handles them unchanged.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch

__all__ = [
    "Codebook", "CodebookError", "UnknownCodebookError", "register", "get", "names", "describe",
    "dynamic", "nf4", "fp4", "linear", "quantile", "from_values", "normal_map",
    "af4", "e2m1", "int4_asym", "student_t", "lloyd_max", "from_dict", "load_plugins", "PLUGIN_GROUP",
]


class CodebookError(ValueError):
    """A codebook's values are not usable (unsorted, duplicate, non-finite, wrong size)."""


class UnknownCodebookError(CodebookError, KeyError):
    """No codebook is registered under that name (a KeyError too, for dict-style callers)."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


@dataclass(frozen=True, eq=False)
class Codebook:
    name: str
    table: np.ndarray          # float32[2**bits], code -> value
    bounds: np.ndarray         # float32[m-1], strictly increasing
    bucket_codes: np.ndarray   # uint8[m]
    meta: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        """Every codebook passes through here (builders, registry, hand-built ones, the studies):
        reject anything a kernel could read out of bounds or that backends would round differently.
        Cheap (a few O(256) NumPy checks), so cached built-ins cost nothing noticeable."""
        _validate_codebook(self)
        # a plain attribute (not a __dict__.setdefault in tensors()): torch.compile traces the lookup
        object.__setattr__(self, "_tensor_cache", {})
        # the kernel tables built from this codebook, all kept by workbench/codebook_tables.py
        object.__setattr__(self, "_kernel_tables", {})

    @property
    def bits(self) -> int:
        return int(round(math.log2(len(self.table))))

    @property
    def size(self) -> int:
        return len(self.table)

    @property
    def values(self) -> np.ndarray:
        """Distinct representable values in ascending order (one per bucket)."""
        return self.table[self.bucket_codes]

    def tensors(self, device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(table, bounds, bucket_codes) as torch tensors on ``device`` (cached per device)."""
        cache = self._tensor_cache
        hit = cache.get(device)  # keyed by the argument as given too: str(torch.device(...)) costs a µs per call
        if hit is not None:
            return hit
        key = str(torch.device(device))
        if key not in cache:
            cache[key] = (
                torch.from_numpy(self.table.copy()).to(device),
                torch.from_numpy(self.bounds.copy()).to(device),
                torch.from_numpy(self.bucket_codes.copy()).to(device),
            )
        cache[device] = cache[key]
        return cache[key]

    def quantize_normalized(self, s: np.ndarray) -> np.ndarray:
        """Codes for values already scaled into [-1, 1] (NumPy; the obvious spec)."""
        s = np.asarray(s, dtype=np.float32)
        return self.bucket_codes[np.searchsorted(self.bounds, s, side="left")]

    def __repr__(self) -> str:
        v = self.values
        return f"Codebook({self.name!r}, bits={self.bits}, buckets={len(v)}, range=[{v[0]:.4g}, {v[-1]:.4g}])"

    def to_dict(self) -> dict:
        """The codebook by value (JSON-able): what sweep tasks carry, so workers need no registry entry."""
        return {"name": self.name, "table": self.table.tolist(), "bounds": self.bounds.tolist(),
                "bucket_codes": self.bucket_codes.tolist(), "meta": dict(self.meta)}

    def __reduce__(self):  # pickled by value through from_dict (no cached tensors in the payload)
        return (from_dict, (self.to_dict(),))


def from_dict(d: dict) -> Codebook:
    """The inverse of :meth:`Codebook.to_dict` (validated like any codebook)."""
    if isinstance(d, Codebook):
        return d
    if not isinstance(d, dict) or "table" not in d:
        raise CodebookError(f"codebook dict: expected the keys of Codebook.to_dict() (name, table, bounds, "
                            f"bucket_codes), got {type(d).__name__}")
    if "bounds" not in d or "bucket_codes" not in d:   # a plain {"name", "table"}: sorted values or a bnb table
        return from_table(d["table"], str(d.get("name", "custom")), meta=d.get("meta"))
    return Codebook(str(d.get("name", "custom")), np.asarray(d["table"], np.float32),
                    np.asarray(d["bounds"], np.float32), np.asarray(d["bucket_codes"], np.uint8),
                    dict(d.get("meta") or {}))


def _field_array(cb: "Codebook", field_name: str, dtype: np.dtype, how: str) -> np.ndarray:
    a = getattr(cb, field_name)
    if not isinstance(a, np.ndarray):
        raise CodebookError(f"codebook {cb.name!r}: {field_name}: expected a 1-D numpy.ndarray of {np.dtype(dtype).name}, "
                            f"got {type(a).__name__} (use {how})")
    if a.dtype != dtype:
        raise CodebookError(f"codebook {cb.name!r}: {field_name}: expected dtype {np.dtype(dtype).name}, got {a.dtype} "
                            f"(use {how})")
    if a.ndim != 1:
        raise CodebookError(f"codebook {cb.name!r}: {field_name}: expected a 1-D array, got shape {a.shape}")
    if not a.flags.c_contiguous:  # a strided view: kernels and caches read the buffer directly
        a = np.ascontiguousarray(a)
        object.__setattr__(cb, field_name, a)
    return a


def _validate_codebook(cb: "Codebook") -> None:
    """The invariants of :class:`Codebook`; raises CodebookError naming the field and what was expected."""
    if not isinstance(cb.name, str):
        raise CodebookError(f"codebook name: expected a str, got {type(cb.name).__name__}")
    if not isinstance(cb.meta, dict):
        raise CodebookError(f"codebook {cb.name!r}: meta: expected a dict, got {type(cb.meta).__name__}")
    table = _field_array(cb, "table", np.float32, "np.asarray(table, np.float32)")
    bounds = _field_array(cb, "bounds", np.float32, "np.asarray(bounds, np.float32)")
    codes = _field_array(cb, "bucket_codes", np.uint8, "np.asarray(bucket_codes, np.uint8)")
    n = table.size
    if n < 2 or n > 256 or (n & (n - 1)) != 0:
        raise CodebookError(f"codebook {cb.name!r}: table: expected 2**k float32 values with 1 <= k <= 8, got {n}")
    if not np.isfinite(table).all():
        bad = int(np.flatnonzero(~np.isfinite(table))[0])
        raise CodebookError(f"codebook {cb.name!r}: table: values must be finite; table[{bad}] = {float(table[bad])!r}")
    m = codes.size
    if m < 1 or m > n:
        raise CodebookError(f"codebook {cb.name!r}: bucket_codes: expected 1..{n} buckets (at most one per table "
                            f"entry), got {m}")
    if codes.max() >= n:
        bad = int(np.flatnonzero(codes >= n)[0])
        raise CodebookError(f"codebook {cb.name!r}: bucket_codes: codes index the {n}-entry table, expected values "
                            f"in 0..{n - 1}; bucket_codes[{bad}] = {int(codes[bad])}")
    if bounds.size != m - 1:
        raise CodebookError(f"codebook {cb.name!r}: bounds: expected len(bucket_codes) - 1 = {m - 1} thresholds, "
                            f"got {bounds.size}")
    if bounds.size:
        if not np.isfinite(bounds).all():
            bad = int(np.flatnonzero(~np.isfinite(bounds))[0])
            raise CodebookError(f"codebook {cb.name!r}: bounds: values must be finite (no NaN/Inf); "
                                f"bounds[{bad}] = {float(bounds[bad])!r}")
        d = np.diff(bounds)
        if (d <= 0).any():
            i = int(np.flatnonzero(d <= 0)[0])
            raise CodebookError(f"codebook {cb.name!r}: bounds: expected strictly increasing thresholds; "
                                f"bounds[{i + 1}] = {float(bounds[i + 1])!r} <= bounds[{i}] = {float(bounds[i])!r}")


def _check_table_size(n: int, name: str) -> int:
    if n < 2 or n > 256 or (n & (n - 1)) != 0:
        raise CodebookError(f"codebook {name!r}: expected 2**k values with 1 <= k <= 8, got {n}")
    return int(round(math.log2(n)))


def _midpoints(v: np.ndarray) -> np.ndarray:
    # float32 arithmetic, the same rounding as torch's (code[:-1] + code[1:]) / 2
    v = v.astype(np.float32)
    return ((v[:-1] + v[1:]) / np.float32(2)).astype(np.float32)


def from_values(values, name: str = "custom", *, pad_to_pow2: bool = False, meta: dict | None = None) -> Codebook:
    """A codebook from strictly increasing finite values (the user-defined path).

    ``pad_to_pow2`` repeats the largest value until the length is a power of two,
    for codes with e.g. 15 levels; the duplicates are never emitted by quantization.
    """
    arr = np.asarray(values, dtype=np.float64).ravel()
    if arr.size == 0:
        raise CodebookError(f"codebook {name!r}: values are empty")
    if not np.all(np.isfinite(arr)):
        raise CodebookError(f"codebook {name!r}: values must be finite")
    v32 = arr.astype(np.float32)
    d = np.diff(v32)
    if np.any(d == 0):
        i = int(np.argmax(d == 0))
        raise CodebookError(f"codebook {name!r}: duplicate value {v32[i]!r} at positions {i} and {i + 1} (after float32 rounding)")
    if np.any(d < 0):
        i = int(np.argmax(d < 0))
        raise CodebookError(f"codebook {name!r}: values must be sorted ascending; position {i + 1} ({v32[i + 1]!r}) < position {i} ({v32[i]!r})")
    if np.max(np.abs(v32)) > 1.0:
        raise CodebookError(f"codebook {name!r}: values must lie in [-1, 1] (they scale absmax-normalized data); max |v| = {np.max(np.abs(v32))}")
    m = v32.size
    if pad_to_pow2:
        n = 1 << max(1, math.ceil(math.log2(m)))
        table = np.concatenate([v32, np.full(n - m, v32[-1], np.float32)])
    else:
        table = v32
    _check_table_size(table.size, name)
    return Codebook(name, table, _midpoints(v32), np.arange(m, dtype=np.uint8), dict(meta or {}))


def from_table(table, name: str, *, meta: dict | None = None) -> Codebook:
    """A codebook from a table in code order, possibly unsorted (bitsandbytes' FP4).

    Buckets follow a stable argsort of the table and float32 midpoints, the rule
    bitsandbytes 0.50.2 uses on CPU (``_get_4bit_quantize_bounds``). Tied values
    (+0 and -0) become two buckets split at their midpoint 0.
    """
    t = np.asarray(table, dtype=np.float32).ravel()
    _check_table_size(t.size, name)
    if not np.all(np.isfinite(t)):
        raise CodebookError(f"codebook {name!r}: values must be finite")
    order = np.argsort(t, kind="stable")
    return Codebook(name, t, _midpoints(t[order]), order.astype(np.uint8), dict(meta or {}))


# ---------------------------------------------------------------- builders

def dynamic(signed: bool = True, max_exponent_bits: int = 7, total_bits: int = 8) -> Codebook:
    """bitsandbytes' dynamic tree quantization map (create_dynamic_map), value for value."""
    data: list[float] = []
    non_sign_bits = total_bits - 1
    additional_items = 2 ** (non_sign_bits - max_exponent_bits) - 1
    i = 0
    for i in range(max_exponent_bits):
        items = int(2 ** (i + non_sign_bits - max_exponent_bits) + 1 if signed
                    else 2 ** (i + non_sign_bits - max_exponent_bits + 1) + 1)
        b = torch.linspace(0.1, 1, items, dtype=torch.float32)
        means = (b[:-1] + b[1:]) / 2.0
        scale = 10 ** (-(max_exponent_bits - 1) + i)
        data += (scale * means).tolist()
        if signed:
            data += (-scale * means).tolist()
    if additional_items > 0:
        b = torch.linspace(0.1, 1, additional_items + 1, dtype=torch.float32)
        means = (b[:-1] + b[1:]) / 2.0
        scale = 10 ** (-(max_exponent_bits - 1) + i)
        data += (scale * means).tolist()
        if signed:
            data += (-scale * means).tolist()
    data += [0.0, 1.0]
    if len(data) != 2 ** total_bits:
        raise CodebookError(f"dynamic map: {len(data)} values for total_bits={total_bits}")
    data.sort()
    name = "dynamic-signed" if signed else "dynamic-unsigned"
    return from_values(np.asarray(data, np.float32), name,
                       meta={"signed": signed, "max_exponent_bits": max_exponent_bits, "bnb": "create_dynamic_map"})


_NF4 = [-1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453, -0.28444138169288635,
        -0.18477343022823334, -0.09105003625154495, 0.0, 0.07958029955625534, 0.16093020141124725,
        0.24611230194568634, 0.33791524171829224, 0.44070982933044434, 0.5626170039176941,
        0.7229568362236023, 1.0]
# FP4 (1 sign, 2 exponent, 1 mantissa bit) in bit-pattern order, as bitsandbytes stores it.
_FP4_RAW = [0, 0.0625, 8.0, 12.0, 4.0, 6.0, 2.0, 3.0, -0.0, -0.0625, -8.0, -12.0, -4.0, -6.0, -2.0, -3.0]


def nf4() -> Codebook:
    """NormalFloat4 (QLoRA), bitsandbytes' hard-coded table."""
    return from_values(_NF4, "nf4", meta={"bnb": "get_4bit_type('nf4')"})


def fp4() -> Codebook:
    """bitsandbytes' FP4 (E2M1, bias 2) in bit-pattern order, normalized by 12."""
    t = torch.tensor(_FP4_RAW, dtype=torch.float32)
    t = t / t.abs().max()
    return from_table(t.numpy(), "fp4", meta={"bnb": "get_4bit_type('fp4')"})


def linear(bits: int = 8, signed: bool = True) -> Codebook:
    """Evenly spaced levels on [-1, 1] (signed, 2**bits - 1 levels incl. 0, padded) or [0, 1]."""
    if signed:
        v = np.linspace(-1.0, 1.0, 2 ** bits - 1)
        return from_values(v, f"linear{bits}", pad_to_pow2=True, meta={"signed": True})
    return from_values(np.linspace(0.0, 1.0, 2 ** bits), f"linear{bits}-unsigned", meta={"signed": False})


def int4_asym() -> Codebook:
    """Asymmetric INT4: the 16 integers -8..7 scaled by 1/8 (two's-complement range)."""
    return from_values(np.arange(-8, 8) / 8.0, "int4-asym")


def e2m1() -> Codebook:
    """OCP E2M1 (the element type of MXFP4 and NVFP4): +-{0, .5, 1, 1.5, 2, 3, 4, 6} / 6.

    The two zeros collapse to one level, so 15 distinct values padded to 16.
    """
    pos = np.array([0.5, 1, 1.5, 2, 3, 4, 6]) / 6.0
    return from_values(np.concatenate([-pos[::-1], [0.0], pos]), "e2m1", pad_to_pow2=True,
                       meta={"format": "OCP MX E2M1; MXFP4 uses E8M0 scales, NVFP4 FP8 scales"})


def af4() -> Codebook:
    """AbnormalFloat4 for blocksize 64 (Yoshida 2023), as listed in bitsandbytes."""
    v = [-1.0, -0.69441008, -0.51243739, -0.3736951, -0.25607552, -0.14982478, -0.04934812, 0.0,
         0.04273164, 0.12934483, 0.21961274, 0.31675666, 0.42563882, 0.55496234, 0.72424863, 1.0]
    return from_values(v, "af4", meta={"blocksize": 64})


def normal_map(offset: float = 0.9677083, use_extra_value: bool = True) -> Codebook:
    """NF4's construction (create_normal_map) for any offset; needs scipy."""
    from scipy.stats import norm
    if use_extra_value:
        v1 = norm.ppf(torch.linspace(offset, 0.5, 9)[:-1]).tolist()
        v3 = (-norm.ppf(torch.linspace(offset, 0.5, 8)[:-1])).tolist()
    else:
        v1 = norm.ppf(torch.linspace(offset, 0.5, 8)[:-1]).tolist()
        v3 = (-norm.ppf(torch.linspace(offset, 0.5, 8)[:-1])).tolist()
    v = torch.tensor(sorted(v1 + [0.0] + v3), dtype=torch.float32)
    v = v / v.max()
    return from_values(v.numpy(), f"normal-map({offset:g})", pad_to_pow2=True, meta={"offset": offset})


def student_t(df: float = 5.0, bits: int = 4) -> Codebook:
    """NF4's recipe with Student-t quantiles: suits heavier-tailed weights."""
    from scipy.stats import t as tdist
    n = 2 ** bits
    half = n // 2
    p = np.linspace(0.9677083, 0.5, half + 1)[:-1]
    pos = tdist.ppf(p, df)
    neg = -tdist.ppf(np.linspace(0.9677083, 0.5, half)[:-1], df)
    v = np.sort(np.concatenate([pos, [0.0], neg]))
    v = v / np.abs(v).max()
    return from_values(v, f"student-t{df:g}", meta={"df": df})


def _block_normalized(data, blocksize: int) -> np.ndarray:
    x = np.asarray(data, dtype=np.float64).ravel()
    n = (x.size // blocksize) * blocksize
    if n == 0:
        raise CodebookError(f"data: need at least blocksize={blocksize} values, got {x.size}")
    blocks = x[:n].reshape(-1, blocksize)
    am = np.abs(blocks).max(axis=1, keepdims=True)
    am[am == 0] = 1.0
    return (blocks / am).ravel()


def quantile(data, bits: int = 4, blocksize: int | None = 64, name: str | None = None) -> Codebook:
    """Equal-mass levels from data: -1 and +1 (every block's maximum is represented exactly, the
    absmax scaling guarantees them) plus the midpoints of 2**bits - 2 equal-mass bins of the
    block-normalized data in between."""
    s = _block_normalized(data, blocksize) if blocksize else np.asarray(data, np.float64).ravel()
    n = 2 ** bits
    inner = s[(s > -1.0) & (s < 1.0)]
    qs = np.quantile(inner if inner.size else s, np.linspace(0, 1, n - 1))
    v = np.concatenate([[-1.0], (qs[:-1] + qs[1:]) / 2, [1.0]])
    v = np.unique(v.astype(np.float32))
    return from_values(v, name or f"quantile{bits}", pad_to_pow2=True, meta={"blocksize": blocksize})


def lloyd_max(data, bits: int = 4, blocksize: int | None = 64, iters: int = 50, name: str | None = None,
              seed: int = 0) -> Codebook:
    """Lloyd-Max (1-D k-means) levels for block-normalized data; keeps -1 and +1 fixed
    so the block maximum stays exact. Initialized from quantiles; deterministic."""
    s = _block_normalized(data, blocksize) if blocksize else np.asarray(data, np.float64).ravel()
    rng = np.random.default_rng(seed)
    if s.size > 2_000_000:
        s = rng.choice(s, 2_000_000, replace=False)
    s = np.sort(s)
    n = 2 ** bits
    v = np.quantile(s, (np.arange(n) + 0.5) / n)
    v[0], v[-1] = -1.0, 1.0
    for _ in range(iters):
        edges = (v[:-1] + v[1:]) / 2
        idx = np.searchsorted(edges, s)
        sums = np.bincount(idx, weights=s, minlength=n)
        cnt = np.bincount(idx, minlength=n)
        new = np.where(cnt > 0, sums / np.maximum(cnt, 1), v)
        new[0], new[-1] = -1.0, 1.0
        new = np.sort(new)
        if np.allclose(new, v, atol=1e-9):
            break
        v = new
    v = np.unique(v.astype(np.float32))
    return from_values(v, name or f"lloyd-max{bits}", pad_to_pow2=True, meta={"blocksize": blocksize, "iters": iters})


# ---------------------------------------------------------------- registry

_REGISTRY: dict[str, Callable[[], Codebook]] = {}
_CACHE: dict[str, Codebook] = {}
generation = 0  # bumped by register(): callers caching name -> Codebook compare it


def register(name: str, builder: Callable[[], Codebook] | Codebook, *, overwrite: bool = False) -> None:
    """Register a codebook (or a zero-argument builder) under ``name``."""
    key = name.lower()
    if key in _REGISTRY and not overwrite:
        raise CodebookError(f"codebook name {name!r} is already registered (pass overwrite=True)")
    global generation
    _REGISTRY[key] = (lambda cb=builder: cb) if isinstance(builder, Codebook) else builder
    _CACHE.pop(key, None)
    generation += 1


def get(name_or_codebook) -> Codebook:
    """Look up a registered codebook by name; a Codebook passes through."""
    if isinstance(name_or_codebook, Codebook):
        return name_or_codebook
    if not isinstance(name_or_codebook, str):
        raise TypeError(f"codebook: expected a Codebook or a registered name, got {type(name_or_codebook).__name__}")
    key = name_or_codebook.lower()
    if key not in _REGISTRY:
        raise UnknownCodebookError(f"codebook: unknown name {name_or_codebook!r}; registered: {', '.join(names())}")
    if key not in _CACHE:
        _CACHE[key] = _REGISTRY[key]()
    return _CACHE[key]


def names() -> list[str]:
    return sorted(_REGISTRY)


# ---------------------------------------------------------------- plug-ins

PLUGIN_GROUP = "kbit_workbench.codebooks"
_PLUGINS_LOADED: dict[str, str] = {}


def load_plugins(modules=()) -> dict[str, str]:
    """Make codebooks defined in Python visible to the CLI and the studies; returns {source: status}.

    Two plug-in points, both calling :func:`register` at import time or returning codebooks:

    * the entry-point group ``kbit_workbench.codebooks`` of any installed distribution::

          [project.entry-points."kbit_workbench.codebooks"]
          mycodes = "mypkg.codes"              # a module that calls workbench.codebooks.register(...)
          my4 = "mypkg.codes:build_my4"        # a zero-argument callable returning a Codebook: registered as 'my4'

    * ``modules``: module names or ``.py`` paths (the CLI's ``--codebook-module PATH``), imported once.

    A callable may also return a dict ``{name: Codebook}``. A plug-in that fails is reported, never fatal for
    the others (the status is ``"loaded"`` or the error)."""
    from importlib import metadata
    todo: list[tuple[str, object]] = [(f"entry point {ep.name} = {ep.value}", ep)
                                      for ep in metadata.entry_points(group=PLUGIN_GROUP)]
    todo += [(str(m), m) for m in modules]
    out = {}
    for label, item in todo:
        if label in _PLUGINS_LOADED and _PLUGINS_LOADED[label] == "loaded":
            out[label] = "loaded"
            continue
        try:
            if isinstance(item, str):
                obj, reg_name = _import_module(item), None
            else:
                obj, reg_name = item.load(), item.name
            if callable(obj) and not isinstance(obj, type(math)):
                made = obj()
                made = {reg_name or getattr(made, "name", "custom"): made} if isinstance(made, Codebook) else made
                for n, cb in dict(made or {}).items():
                    register(n, cb if isinstance(cb, Codebook) else from_dict(cb), overwrite=True)
            out[label] = "loaded"
        except Exception as e:  # noqa: BLE001  (another package's code may fail in any way)
            out[label] = f"{type(e).__name__}: {e}"
        _PLUGINS_LOADED[label] = out[label]
    return out


def _import_module(spec: str):
    import importlib
    import importlib.util
    import sys
    from pathlib import Path
    p = Path(spec)
    if p.suffix == ".py":
        if not p.is_file():
            raise FileNotFoundError(f"codebook module {spec!r} does not exist")
        mod_name = f"_kbit_codebooks_{p.stem}_{abs(hash(str(p.resolve()))) % 10**8}"
        if mod_name in sys.modules:
            return sys.modules[mod_name]
        sp = importlib.util.spec_from_file_location(mod_name, p)
        mod = importlib.util.module_from_spec(sp)
        sys.modules[mod_name] = mod
        sp.loader.exec_module(mod)
        return mod
    return importlib.import_module(spec)


def describe(cb: Codebook) -> str:
    v = cb.values
    lines = [repr(cb), "code  value"]
    for code, val in enumerate(cb.table):
        lines.append(f"{code:4d}  {val: .8f}")
    lines.append(f"bounds: {np.array2string(cb.bounds, precision=6, max_line_width=120)}")
    lines.append(f"distinct levels: {len(np.unique(v))}")
    return "\n".join(lines)


for _n, _b in {
    "dynamic": dynamic, "dynamic-signed": dynamic, "dynamic-unsigned": lambda: dynamic(signed=False),
    "nf4": nf4, "fp4": fp4, "af4": af4, "e2m1": e2m1, "mxfp4": e2m1, "nvfp4": e2m1,
    "int4-asym": int4_asym, "linear8": lambda: linear(8), "linear4": lambda: linear(4),
    "student-t5": lambda: student_t(5.0),
}.items():
    register(_n, _b)


# ---------------------------------------------------------------- k-bit codebooks (issue 19: any K = 2..8)
# The kbit family (workbench.kbit) takes a sorted float32 tensor of exactly 2**k values; these build
# them. Not registered by name: the registry's parity/fine-table tests cover 4- and 8-bit codes.

def create_normal_float_codebook(k: int) -> torch.Tensor:
    """bitsandbytes' k-bit normal-float codebook, bit for bit: the N(0,1) quantiles at the bin
    midpoints (i + 0.5) / 2**k (float32 probabilities from torch.linspace, scipy's norm.ppf in float64,
    rounded to float32), divided in float32 by their largest magnitude. This follows bitsandbytes'
    code (functional.create_normal_float_codebook and its tests); its design note speaks of bin means
    (the expected value of N(0,1) within each bin), which the code does not compute."""
    from scipy.stats import norm
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= 8:
        raise CodebookError(f"k: expected an int in 1..8, got {k!r}")
    n = 1 << k
    p = torch.linspace(0.5 / n, 1.0 - 0.5 / n, n)
    v = torch.tensor(norm.ppf(p.numpy()), dtype=torch.float32)
    return v / v.abs().max()


def _kbit_check(k) -> int:
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= 8:
        raise CodebookError(f"k: expected an int in 1..8, got {k!r}")
    return k


def _kbit_pad(v: np.ndarray, k: int) -> torch.Tensor:
    """Sorted float32 values padded to 2**k by repeating the largest (never emitted: the lower index
    wins a tie)."""
    v = np.unique(np.asarray(v, np.float64).astype(np.float32))
    n = 1 << k
    if v.size > n:
        raise CodebookError(f"codebook: {v.size} distinct values do not fit {k} bits")
    return torch.from_numpy(np.concatenate([v, np.full(n - v.size, v[-1], np.float32)]))


def kbit_uniform(k: int) -> torch.Tensor:
    """2**k evenly spaced levels on [-1, 1] (float32 linspace; no exact zero for any k)."""
    _kbit_check(k)
    return torch.linspace(-1.0, 1.0, 1 << k, dtype=torch.float32)


def kbit_quantile(data, k: int, blocksize: int | None = 32) -> torch.Tensor:
    """Equal-mass levels of the block-normalized data for any k (``quantile`` with bits=k)."""
    return _kbit_pad(quantile(data, bits=_kbit_check(k), blocksize=blocksize).values, k)


def kbit_lloyd_max(data, k: int, blocksize: int | None = 32, iters: int = 50, seed: int = 0) -> torch.Tensor:
    """Lloyd-Max (1-D k-means, -1 and +1 kept) levels of the block-normalized data for any k."""
    return _kbit_pad(lloyd_max(data, bits=_kbit_check(k), blocksize=blocksize, iters=iters, seed=seed).values, k)


def kbit_e2m1_mx() -> torch.Tensor:
    """The E2M1 values themselves, +-{0, .5, 1, 1.5, 2, 3, 4, 6} (16 sorted entries, -0 before +0; the
    kbit ops do not require [-1, 1]): with scale_format='e8m0', blocksize 32, the kbit ops are OCP
    MXFP4 -- the stored byte is the MX scale X = 2**(floor(log2 absmax) - 2) (emax of 6 = 2), the codes
    are E2M1 bit patterns' values, dequantization is value * X. Ties go to the lower entry, where the
    MX spec rounds half to even."""
    pos = [0.5, 1, 1.5, 2, 3, 4, 6]
    return torch.tensor([-x for x in pos[::-1]] + [-0.0, 0.0] + pos, dtype=torch.float32)


def kbit_e2m1_nv() -> torch.Tensor:
    """E2M1 / 6 (16 sorted entries): with scale_format='e4m3', blocksize 16, NVFP4's values."""
    pos = [0.5, 1, 1.5, 2, 3, 4, 6]
    return torch.tensor([-x / 6 for x in pos[::-1]] + [-0.0, 0.0] + [x / 6 for x in pos], dtype=torch.float32)


KBIT_BUILDERS = {"normal_float": create_normal_float_codebook, "uniform": kbit_uniform,
                 "quantile": kbit_quantile, "lloyd_max": kbit_lloyd_max}
