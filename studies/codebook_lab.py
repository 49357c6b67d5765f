"""Codebook lab: prototype a new 4-bit code and compare it to NF4 / FP4 in one call.

```python
from studies.codebook_lab import compare
df, fig = compare("lloyd-max", data="normal", blocksizes=(64, 256, 1024))   # k-means on block-normalized data
df, fig = compare([-1, -.6, -.35, -.15, 0, .15, .35, .6, 1])                # user values (padded to 16)
df, fig = compare("linspace(-1, 1, 16)")                                    # an expression
```

A spec is a :class:`~workbench.codebooks.Codebook`, a registered codebook name, one of
``"lloyd-max"`` / ``"kmeans"`` / ``"quantile"`` (fitted on ``data`` normalized by blocks of
``fit_blocksize``), a sequence of values, a file (``.json`` list or ``{"values": [...]}``,
``.npy``, ``.txt``/``.csv`` of numbers) or a NumPy expression such as ``linspace(-1,1,16)``.
Values must be strictly increasing (unsorted or duplicate lists are refused, as by the API's
``from_values``); values outside [-1, 1] are divided by their largest magnitude; fewer than 16 values are padded
by repeating the largest (never emitted), so any code up to 16 levels runs through the 4-bit
kernels (17..256 levels: the 8-bit blockwise kernels).
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from workbench import codebooks as cbs

TITLE = "Codebook lab: fitted 4-bit codes vs NF4 / FP4"
DESCRIPTION = __doc__.split("\n\n", 1)[1].split("```", 2)[-1].strip()

FIT_METHODS = {"lloyd-max": "lloyd_max", "lloyd_max": "lloyd_max", "kmeans": "lloyd_max", "k-means": "lloyd_max",
               "quantile": "quantile"}
_EXPR_NAMES = {k: getattr(np, k) for k in (
    "linspace", "arange", "array", "concatenate", "sqrt", "exp", "log", "log2", "tanh", "sinh", "sign", "abs",
    "cumsum", "sort", "unique", "flip", "pi", "e", "round", "power")}


class SpecError(ValueError):
    pass


def _expr_namespace() -> dict:
    ns = dict(_EXPR_NAMES)
    from scipy import stats
    ns.update(norm=stats.norm, t=stats.t, laplace=stats.laplace, np=np)
    return ns


def values_from_text(text: str) -> np.ndarray:
    """Values from a file path or a NumPy expression (``linspace(-1,1,16)``, ``[-1, 0, .5, 1]``)."""
    p = Path(text)
    if p.suffix.lower() in (".json", ".npy", ".txt", ".csv") or p.exists():
        if not p.exists():
            raise SpecError(f"codebook file {text!r} does not exist")
        suf = p.suffix.lower()
        if suf == ".npy":
            return np.load(p).astype(np.float64).ravel()
        if suf == ".json":
            obj = json.loads(p.read_text())
            if isinstance(obj, dict):
                obj = obj.get("values", obj.get("table"))
            if obj is None:
                raise SpecError(f"{text}: expected a JSON list or an object with 'values'")
            return np.asarray(obj, np.float64).ravel()
        raw = p.read_text().replace(",", " ").split()
        try:
            return np.asarray([float(v) for v in raw], np.float64)
        except ValueError as e:
            raise SpecError(f"{text}: not a list of numbers ({e})") from None
    try:
        val = eval(text, {"__builtins__": {}}, _expr_namespace())  # a local research tool: numpy names only
    except Exception as e:  # noqa: BLE001
        raise SpecError(f"codebook {text!r} is not a registered name ({', '.join(cbs.names())}), a file or a valid "
                        f"NumPy expression ({type(e).__name__}: {e})") from None
    return np.asarray(val, np.float64).ravel()


def codebook_from_values(values, name: str = "custom") -> cbs.Codebook:
    """Strictly increasing finite values (2..256; the API's rule: unsorted or duplicate lists are refused, not
    silently sorted) -> a Codebook whose table is padded to 16 or 256 entries."""
    v = np.asarray(values, np.float64).ravel()
    if v.size and np.all(np.isfinite(v)):
        d = np.diff(v)
        if np.any(d == 0):
            i = int(np.argmax(d == 0))
            raise SpecError(f"codebook {name!r}: duplicate value {float(v[i])!r} at positions {i} and {i + 1}; "
                            "expected strictly increasing values")
        if np.any(d < 0):
            i = int(np.argmax(d < 0))
            raise SpecError(f"codebook {name!r}: values must be sorted ascending; position {i + 1} ({float(v[i + 1])!r}) "
                            f"< position {i} ({float(v[i])!r})")
    if v.size < 2:
        raise SpecError(f"codebook {name!r}: need at least 2 distinct values, got {v.size}")
    if v.size > 256:
        raise SpecError(f"codebook {name!r}: at most 256 values, got {v.size}")
    if not np.all(np.isfinite(v)):
        raise SpecError(f"codebook {name!r}: values must be finite")
    scale = float(np.abs(v).max())
    meta = {}
    if scale > 1.0:
        v = v / scale
        meta["normalized_by"] = scale
    v32 = np.unique(v.astype(np.float32))
    size = 16 if v32.size <= 16 else 256
    table = np.concatenate([v32, np.full(size - v32.size, v32[-1], np.float32)])
    cb = cbs.from_values(v32, name, pad_to_pow2=True, meta=meta)
    return cbs.Codebook(name, table, cb.bounds, cb.bucket_codes, meta)


def _data_array(data, n: int, seed: int) -> torch.Tensor:
    from studies.error_study import make_data
    if data is None:
        data = "normal"
    if isinstance(data, str):
        return make_data(data, n, seed)
    return torch.as_tensor(np.asarray(data, np.float32).ravel()).float()


def build(spec, data=None, *, fit_blocksize: int = 64, n: int = 1 << 18, seed: int = 0, name: str | None = None,
          bits: int = 4) -> cbs.Codebook:
    """A Codebook from any spec (see the module doc)."""
    if isinstance(spec, cbs.Codebook):
        return spec
    if isinstance(spec, str):
        key = spec.strip().lower()
        if key in FIT_METHODS:
            x = _data_array(data, n, seed + 7919).numpy()  # fit on a calibration sample, not the test data
            fn = getattr(cbs, FIT_METHODS[key])
            label = data if isinstance(data, str) else ("normal" if data is None else "data")
            return fn(x, bits=bits, blocksize=fit_blocksize, name=name or f"{key}@{label}-bs{fit_blocksize}")
        if key in cbs.names():
            return cbs.get(key)
        p = Path(spec.strip())
        if p.suffix.lower() == ".json" and p.is_file():
            obj = json.loads(p.read_text())
            if isinstance(obj, dict) and "bucket_codes" in obj:   # Codebook.to_dict() (workbench codebook --save)
                cb = cbs.from_dict(obj)
                return cbs.Codebook(name, cb.table, cb.bounds, cb.bucket_codes, cb.meta) if name else cb
        is_file = p.suffix.lower() in (".json", ".npy", ".txt", ".csv") and p.is_file()
        return codebook_from_values(values_from_text(spec), name or (p.stem if is_file else spec.strip()))
    return codebook_from_values(spec, name or "custom")


def evaluate(cb: cbs.Codebook, x: torch.Tensor, blocksizes, double_quant: bool = False) -> list[dict]:
    from studies.error_study import metrics, quant_dequant
    rows = []
    for bs in blocksizes:
        y, bits = quant_dequant(x, cb, int(bs), double_quant=double_quant)
        rows.append({"codebook": cb.name, "blocksize": int(bs), "bits": bits, **metrics(x, y)})
    return rows


def compare(new, data=None, blocksizes=(64, 128, 256, 512, 1024, 4096), *, baselines=("nf4", "fp4"), n: int = 1 << 18,
            seed: int = 0, fit_blocksize: int = 64, double_quant: bool = False):
    """Error of ``new`` (one spec or a list of specs) vs the baselines on ``data`` -> (DataFrame, Figure)."""
    if isinstance(new, (list, tuple)) and new and not all(isinstance(v, (int, float, np.number)) for v in new):
        specs = list(new)  # several specs
    else:
        specs = [new]      # one spec (a list of numbers is one code)
    from studies.error_study import kernel_sized   # any code of 2..256 levels runs through the 4- or 8-bit kernels
    cands = [kernel_sized(build(s, data, fit_blocksize=fit_blocksize, n=n, seed=seed)) for s in specs]
    cands += [cbs.get(b) for b in baselines]
    x = _data_array(data, n, seed)
    rows = []
    for cb in cands:
        for r in evaluate(cb, x, blocksizes, double_quant):
            r["role"] = "baseline" if cb.name in baselines else "new"
            r["data"] = data if isinstance(data, str) else ("normal" if data is None else "user")
            rows.append(r)
    df = pd.DataFrame(rows)
    ref = df[df["codebook"] == baselines[0]].set_index("blocksize")["mse"] if baselines else None
    if ref is not None:
        df[f"mse_vs_{baselines[0]}"] = df["mse"].to_numpy() / ref.reindex(df["blocksize"]).to_numpy()
    return df, figure(df, cands)


def figure(df: pd.DataFrame, cands):
    import matplotlib.pyplot as plt
    fig, (a0, a1) = plt.subplots(1, 2, figsize=(10, 3.8), gridspec_kw={"width_ratios": [1.3, 1]})
    markers = ["o", "s", "^", "v", "D", "P", "X", "*", "<", ">"]
    for i, (name, g) in enumerate(df.groupby("codebook", sort=False)):
        g = g.sort_values("blocksize")
        base = g["role"].iloc[0] == "baseline"
        a0.plot(g["blocksize"], g["sqnr_db"], marker=markers[i % len(markers)], ms=4, label=name,
                ls="--" if base else "-", lw=1.2 if base else 1.8)
    a0.set_xscale("log", base=2)
    a0.set_xlabel("blocksize")
    a0.set_ylabel("SQNR (dB)")
    a0.grid(alpha=0.3)
    a0.legend(fontsize=7)
    for i, cb in enumerate(cands):
        v = np.unique(cb.values)
        a1.plot(v, np.full(v.size, i), "|", ms=12, mew=2, color=a0.get_lines()[i].get_color()
                if i < len(a0.get_lines()) else None)
    a1.set_yticks(range(len(cands)), [cb.name for cb in cands], fontsize=7)
    a1.set_xlabel("level (block-normalized)")
    a1.set_xlim(-1.05, 1.05)
    a1.grid(alpha=0.3, axis="x")
    fig.tight_layout()
    return fig


def run(quick: bool = False, executor=None, codebooks=()):
    """The report's default: Lloyd-Max and quantile codes fitted on N(0,1) and Laplace data at blocksize 64
    vs NF4/FP4, each evaluated on the data it was fitted to (a new sample). ``codebooks``: the user's codes
    (Codebook objects, registered names or any spec of :func:`build`), compared beside the fitted ones."""
    n = 1 << 15 if quick else 1 << 20
    bss = (64, 512, 4096) if quick else (32, 64, 128, 256, 512, 1024, 2048, 4096)
    from studies.error_study import kernel_sized
    user = [kernel_sized(build(c)) for c in codebooks or ()]
    frames, figs = [], {}
    for src in ("normal", "laplace"):
        df, fig = compare(["lloyd-max", "quantile", *user], data=src, blocksizes=bss, n=n)
        frames.append(df)
        figs[f"codebook_lab_{src}"] = fig
    return pd.concat(frames, ignore_index=True), figs


def summarize(df: pd.DataFrame) -> list[tuple[str, pd.DataFrame]]:
    out = []
    for src, g in df.groupby("data", sort=False):
        t = g.pivot_table(index="codebook", columns="blocksize", values="sqnr_db", sort=False)
        out.append((f"SQNR (dB) on {src} data (rows: codebook, columns: blocksize)", t.round(2)))
        if "mse_vs_nf4" in g:
            t = g.pivot_table(index="codebook", columns="blocksize", values="mse_vs_nf4", sort=False)
            out.append((f"MSE relative to NF4 on {src} data (< 1 is better)", t.round(3)))
    return out


def notes(df: pd.DataFrame) -> list[str]:
    """Per data source, the code with the lowest MSE at the smallest blocksize, relative to NF4."""
    out = []
    if df.empty or "mse" not in df:
        return out
    for src, g in df.groupby("data", sort=False):
        bs = int(g["blocksize"].min())
        h = g[g["blocksize"] == bs].sort_values("mse")
        best = h.iloc[0]
        rel = f" = {best['mse_vs_nf4']:.3f} x NF4's MSE" if "mse_vs_nf4" in h and pd.notna(best.get("mse_vs_nf4")) else ""
        out.append(f"{src} data, blocksize {bs}: lowest error {best['codebook']} ({best['sqnr_db']:.2f} dB SQNR{rel})")
    return out


if __name__ == "__main__":  # pragma: no cover
    d, _ = compare(os.environ.get("KBIT_CODE", "lloyd-max"))
    print(d.to_string())
