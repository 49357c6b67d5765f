"""Error study: codebooks x blocksizes x data -> quantization error and storage cost.

Every kernel-backed codebook runs through the public API (``workbench.quantize_4bit`` /
``quantize_blockwise`` with ``codebook=``, backend ``auto``), quantize -> dequantize, and is
measured against the float64 input: mean absolute error, MSE, SQNR (dB), max error, mean
relative error, and bits per parameter from the stored sizes (payload + float32 absmax;
with double quantization: payload + 8-bit absmax + its float32 second-level absmax + offset;
the shared code tables are not counted).

Two scale formats that the absmax kernels cannot express are study-level variants:
``mxfp4`` (E2M1 elements with a power-of-two E8M0 block scale, OCP MX: 2^(floor(log2 amax) - 2))
and ``nvfp4`` (E2M1 elements with the block scale amax/6 rounded to FP8 E4M3 after a per-tensor
float32 scale amax_tensor / (6 * 448)). They also run at their native blocksizes (32 / 16).

Your own codes join every sweep: ``run(codebooks=[...])`` (``workbench study error --codebook NAME|FILE|EXPR``,
``workbench report --codebook ...``) adds each as a method named after the code. Tasks carry the codebook by
value (``Codebook.to_dict()``), so process-pool and dask workers need no registry entry.

Data-fitted codes (Lloyd-Max, quantile) are fitted on a separate calibration sample of the same
source (another seed; for real weights, the weights themselves) at blocksize 64, then applied at
every blocksize.
"""
from __future__ import annotations

import math
import os

import numpy as np
import pandas as pd
import torch

TITLE = "Quantization error by codebook, blocksize and data"
DESCRIPTION = __doc__.split("\n\n", 1)[1]

BLOCKSIZES = (32, 64, 128, 256, 512, 1024, 2048, 4096)
QUICK_BLOCKSIZES = (64, 512, 4096)
SOURCES = ("normal", "laplace", "student-t", "uniform", "minilm")
METHODS = ("dynamic-8bit", "linear-8bit", "nf4", "fp4", "af4", "e2m1", "mxfp4", "nvfp4", "int4-asym",
           "lloyd-max4", "quantile4", "student-t5")
N_FULL = 1 << 20          # 1024 x 1024, as bitsandbytes' own error tests
N_QUICK = 1 << 15
STUDENT_T_DF = 4.0
FIT_BLOCKSIZE = 64


class DataUnavailable(RuntimeError):
    pass


# ------------------------------------------------------------------ data

_MINILM_CACHE: dict[str, np.ndarray] = {}


def _minilm_vector() -> np.ndarray:
    """All 2-D weight matrices of all-MiniLM-L6-v2 except the embeddings, flattened row-major."""
    if "w" in _MINILM_CACHE:
        return _MINILM_CACHE["w"]
    try:
        from workbench.models import load_minilm_weights
    except Exception as e:  # noqa: BLE001
        raise DataUnavailable(f"workbench.models.load_minilm_weights is not importable ({type(e).__name__}: {e})") from e
    try:
        w = load_minilm_weights()
    except Exception as e:  # noqa: BLE001
        raise DataUnavailable(f"load_minilm_weights() failed ({type(e).__name__}: {e})") from e
    if isinstance(w, (list, tuple)) and w and all(isinstance(e, (list, tuple)) and len(e) == 2 for e in w):
        w = dict(w)  # [(name, tensor), ...]
    elif isinstance(w, (list, tuple)):
        w = {f"t{i}": t for i, t in enumerate(w)}
    if isinstance(w, dict):
        items = sorted(w.items())
        mats = [np.asarray(torch.as_tensor(v).float().numpy(), np.float32).ravel() for k, v in items
                if getattr(v, "ndim", 0) == 2 and "embedding" not in k.lower()]
        if not mats:  # no names to filter by: keep every 2-D tensor
            mats = [np.asarray(torch.as_tensor(v).float().numpy(), np.float32).ravel() for _, v in items
                    if getattr(v, "ndim", 0) == 2]
    else:
        mats = [np.asarray(torch.as_tensor(w).float().numpy(), np.float32).ravel()]
    if not mats:
        raise DataUnavailable("load_minilm_weights() returned no 2-D weights")
    v = np.concatenate(mats)
    _MINILM_CACHE["w"] = v
    return v


def make_data(source: str, n: int, seed: int) -> torch.Tensor:
    """``n`` float32 values of ``source`` (real weights: ``n`` values in 4096-element chunks spread
    evenly over the model, so rows and blocks stay intact)."""
    g = np.random.default_rng(seed)
    if source == "normal":
        x = g.standard_normal(n)
    elif source == "laplace":
        x = g.laplace(size=n)
    elif source == "student-t":
        x = g.standard_t(STUDENT_T_DF, size=n)
    elif source == "uniform":
        x = g.uniform(-1.0, 1.0, size=n)
    elif source.startswith("file:"):  # the user's weights (--weights PATH [--layers REGEX]), memory-mapped
        from workbench.weights import parse_source, weight_vector
        path, pattern = parse_source(source)
        x = weight_vector(path, pattern, n)
    elif source == "minilm":
        w = _minilm_vector()
        if w.size <= n:
            x = w
        else:
            chunk = min(4096, n)
            k = n // chunk
            starts = np.linspace(0, w.size - chunk, k).astype(np.int64) // chunk * chunk
            rng_off = g.integers(0, chunk) if seed else 0  # other seeds: other windows
            starts = np.minimum(starts + rng_off, w.size - chunk)
            x = np.concatenate([w[s:s + chunk] for s in starts] + [w[:n - k * chunk]])
    else:
        raise ValueError(f"data source: unknown {source!r}; expected one of {SOURCES}")
    return torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))


# ------------------------------------------------------------------ methods

def codebook_for(method: str, source: str, n: int):
    """The Codebook for a kernel-backed method (None for the study-level scale variants)."""
    from workbench import codebooks as cbs
    if method == "dynamic-8bit":
        return cbs.get("dynamic")
    if method == "linear-8bit":
        return cbs.get("linear8")
    if method in ("mxfp4", "nvfp4"):
        return None
    if method in ("lloyd-max4", "quantile4"):
        calib = make_data(source, min(n, 1 << 18), seed=10_007).numpy()
        builder = cbs.lloyd_max if method == "lloyd-max4" else cbs.quantile
        return builder(calib, bits=4, blocksize=FIT_BLOCKSIZE, name=f"{method}@{source}")
    return cbs.get(method)


def _e2m1_grid() -> torch.Tensor:
    return torch.tensor([-6, -4, -3, -2, -1.5, -1, -0.5, 0, 0.5, 1, 1.5, 2, 3, 4, 6], dtype=torch.float32)


def scaled_fp4(x: torch.Tensor, blocksize: int, scale: str) -> tuple[torch.Tensor, float]:
    """E2M1 with an ``'e8m0'`` (MXFP4) or ``'e4m3'`` (NVFP4) block scale -> (dequantized, bits/param)."""
    grid = _e2m1_grid()
    mids = (grid[:-1] + grid[1:]) / 2
    n = x.numel()
    pad = (-n) % blocksize
    xb = torch.nn.functional.pad(x.float(), (0, pad)).view(-1, blocksize)
    amax = xb.abs().amax(dim=1)
    if scale == "e8m0":
        e = torch.floor(torch.log2(amax.clamp(min=2.0 ** -126))) - 2
        s = torch.exp2(e.clamp(-127, 127))
        extra_bits = 8 / blocksize
    elif scale == "e4m3":
        tscale = float(amax.max()) / (6 * 448) or 1.0
        s = (amax / 6 / tscale).to(torch.float8_e4m3fn).float() * tscale
        extra_bits = 8 / blocksize + 32 / n
    else:
        raise ValueError(f"scale: expected 'e8m0' or 'e4m3', got {scale!r}")
    s = torch.where(s > 0, s, torch.ones_like(s))
    q = (xb / s[:, None]).clamp(-6, 6)
    y = grid[torch.bucketize(q, mids)] * s[:, None]
    return y.reshape(-1)[:n], 4 + extra_bits


def _stored_bits(payload: torch.Tensor, qs) -> int:
    bits = payload.numel() * payload.element_size() * 8
    bits += qs.absmax.numel() * qs.absmax.element_size() * 8
    if getattr(qs, "nested", False):
        bits += 32  # offset
        bits += qs.state2.absmax.numel() * qs.state2.absmax.element_size() * 8
    return bits


def quant_dequant(x: torch.Tensor, cb, blocksize: int, double_quant: bool = False) -> tuple[torch.Tensor, float]:
    """Round trip through the public API -> (dequantized float32, bits per parameter)."""
    import workbench as wb
    if cb.bits == 8:
        codes, qs = wb.quantize_blockwise(x, codebook=cb, blocksize=blocksize, nested=double_quant)
        y = wb.dequantize_blockwise(codes, qs)
        return y.float(), _stored_bits(codes, qs) / x.numel()
    packed, qs = wb.quantize_4bit(x, codebook=cb, blocksize=blocksize, compress_statistics=double_quant)
    y = wb.dequantize_4bit(packed, qs)
    return y.float(), _stored_bits(packed, qs) / x.numel()


def metrics(x: torch.Tensor, y: torch.Tensor) -> dict:
    xd, yd = x.double(), y.double()
    err = (yd - xd).abs()
    mse = float((err * err).mean())
    sig = float((xd * xd).mean())
    return {"mae": float(err.mean()), "mse": mse, "sqnr_db": 10 * math.log10(sig / mse) if mse > 0 else math.inf,
            "max_err": float(err.max()), "rel_err": float((err / (xd.abs() + 1e-8)).mean())}


def kernel_sized(cb):
    """``cb`` with its table padded (repeating the last entry, never emitted) to what a kernel takes: 16 entries
    (the 4-bit ops) up to 16 levels, else 256 (the 8-bit ops); the buckets, and so the rounding, are unchanged."""
    from workbench import codebooks as cbs
    size = 16 if cb.size <= 16 else 256
    if cb.size == size:
        return cb
    table = np.concatenate([cb.table, np.full(size - cb.size, cb.table[-1], np.float32)])
    return cbs.Codebook(cb.name, table, cb.bounds, cb.bucket_codes, {**cb.meta, "levels": int(cb.bucket_codes.size)})


def evaluate(source: str, method: str, n: int, blocksizes, seed: int = 0, codebook: dict | None = None) -> list[dict]:
    """All rows for one (data source, method): one per blocksize. A sweep task (picklable args); a user code
    comes by value as ``codebook`` (``Codebook.to_dict()``), never looked up by name on the worker."""
    try:
        x = make_data(source, n, seed)
    except DataUnavailable as e:
        return [{"source": source, "method": method, "skipped": str(e)}]
    try:
        if codebook is not None:
            from workbench import codebooks as cbs
            cb = cbs.from_dict(codebook)
        else:
            cb = codebook_for(method, source, n)
        levels = int(cb.bucket_codes.size) if cb is not None else 16
        cb = kernel_sized(cb) if cb is not None else None
    except Exception as e:  # noqa: BLE001  (a fitted code can fail on degenerate data)
        return [{"source": source, "method": method, "skipped": f"codebook: {e}"}]
    rows = []
    bss = list(blocksizes)
    if cb is None:
        native = 32 if method == "mxfp4" else 16
        bss = sorted(set(bss) | {native})
    from workbench.backends import resolve_name
    for bs in bss:
        r = {"source": source, "method": method, "blocksize": bs, "n": x.numel(), "seed": seed}
        if cb is None:
            y, bits = scaled_fp4(x, bs, "e8m0" if method == "mxfp4" else "e4m3")
            r.update(metrics(x, y), bits=bits, bits_dq=bits, kind="study-variant", backend="torch",
                     codebook=method, code_bits=4)
            r.update({"mae_dq": r["mae"], "sqnr_db_dq": r["sqnr_db"]})
        else:
            y, bits = quant_dequant(x, cb, bs)
            r.update(metrics(x, y), bits=bits, kind="kernel" if codebook is None else "user", codebook=cb.name,
                     code_bits=cb.bits, levels=levels,
                     backend=resolve_name("auto", "quantize_4bit" if cb.bits == 4 else "quantize_blockwise", "cpu"))
            ydq, bits_dq = quant_dequant(x, cb, bs, double_quant=True)
            mdq = metrics(x, ydq)
            r.update(bits_dq=bits_dq, mae_dq=mdq["mae"], sqnr_db_dq=mdq["sqnr_db"])
        rows.append(r)
    return rows


# ------------------------------------------------------------------ study

def _user_codebooks(codebooks) -> list:
    """Codebook objects (or registered names / to_dict() dicts) -> validated Codebooks with unique names."""
    from workbench import codebooks as cbs
    out, seen = [], set()
    for c in codebooks or ():
        cb = cbs.from_dict(c) if isinstance(c, dict) else cbs.get(c)
        if cb.name in METHODS and cb.name in cbs.names() and cb is cbs.get(cb.name):
            continue  # a built-in method, already in the sweep
        if cb.name in seen or cb.name in METHODS:
            raise ValueError(f"codebooks: two codes named {cb.name!r}; give them distinct names")
        seen.add(cb.name)
        out.append(cb)
    return out


def run(quick: bool = False, executor=None, *, sources=SOURCES, methods=METHODS, blocksizes=None, n=None,
        seed: int = 0, codebooks=(), weights=None, layers=None):
    """The sweep; ``codebooks``: extra codes (Codebook objects or registered names), each a method of its own;
    ``weights``: a safetensors file or checkpoint directory (``layers``: a regex on tensor names) -- the sweep
    then runs on those weights (source ``file:PATH[::REGEX]``) instead of ``sources``."""
    from workbench.sweep import run_tasks
    if weights:
        from workbench.weights import source_name, tensor_index
        tensor_index(weights, layers)  # fail early: missing path or no matching tensor
        sources = (source_name(weights, layers),)
    n = n or (N_QUICK if quick else N_FULL)
    blocksizes = tuple(blocksizes or (QUICK_BLOCKSIZES if quick else BLOCKSIZES))
    tasks = [dict(source=s, method=m, n=n, blocksizes=blocksizes, seed=seed) for s in sources for m in methods]
    tasks += [dict(source=s, method=cb.name, n=n, blocksizes=blocksizes, seed=seed, codebook=cb.to_dict())
              for s in sources for cb in _user_codebooks(codebooks)]
    parts = run_tasks(evaluate, tasks, executor, desc="error study")
    df = pd.DataFrame([r for p in parts for r in p])
    if "skipped" not in df:
        df["skipped"] = None
    for c in ("blocksize", "n", "seed", "code_bits"):
        if c in df:
            df[c] = df[c].astype("Int64")
    return df, figures(df)


def _ok(df: pd.DataFrame) -> pd.DataFrame:
    return df[df["skipped"].isna()] if "skipped" in df else df


def figures(df: pd.DataFrame) -> dict:
    import matplotlib.pyplot as plt
    ok = _ok(df)
    figs = {}
    if ok.empty:
        return figs
    sources = [s for s in SOURCES if s in set(ok["source"])] + sorted(s for s in set(ok["source"]) if s not in SOURCES)
    fig, axes = plt.subplots(1, len(sources), figsize=(4.2 * len(sources), 3.8), squeeze=False, sharey=False)
    styles = method_styles(method_order(ok))
    for ax, src in zip(axes[0], sources):
        sub = ok[(ok["source"] == src) & (ok["code_bits"] == 4)]
        for m, g in sub.groupby("method", sort=False):
            g = g.sort_values("blocksize")
            ax.plot(g["blocksize"], g["sqnr_db"], label=m, **styles[m])
        ax.set_xscale("log", base=2)
        ax.set_title(src)
        ax.set_xlabel("blocksize")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6, ncol=2, loc="best")   # every panel names its lines
    axes[0][0].set_ylabel("SQNR (dB), 4-bit codes")
    fig.tight_layout()
    figs["error_sqnr_by_blocksize"] = fig

    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    src = "normal" if "normal" in sources else sources[0]
    sub = ok[(ok["source"] == src) & (ok["code_bits"] == 4)]
    for m, g in sub.groupby("method", sort=False):
        g = g.sort_values("bits_dq")
        ax.plot(g["bits_dq"], g["mae_dq"], label=m, **styles[m])
    ax.set_xlabel("bits per parameter with double quantization (4-bit codes; left: blocksize 4096)")
    ax.set_ylabel(f"mean abs error, {src} data")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    figs[f"error_vs_bits_{src}"] = fig
    return figs


def method_styles(methods) -> dict:
    """A distinct (colour, marker, line style) per method, so look-alike colours are told apart by shape and
    dash; the user's codes (not in METHODS) are drawn thicker, in solid black-edged lines."""
    import matplotlib.pyplot as plt
    markers = ["o", "s", "^", "v", "D", "P", "X", "*", "<", ">", "h", "p"]
    dashes = ["-", "--", "-.", ":"]
    cmap = plt.get_cmap("tab10")
    out = {}
    for i, m in enumerate(methods):
        user = m not in METHODS
        out[m] = dict(color=cmap(i % 10), marker=markers[i % len(markers)], ls="-" if user else dashes[(i // 10 + i) % 4],
                      ms=6 if user else 4, lw=2.2 if user else 1.2, mec="k" if user else None)
    return out


def method_order(df: pd.DataFrame) -> list[str]:
    """Every method present: the built-in ones in METHODS order, then the user's codes as they came."""
    present = list(dict.fromkeys(df["method"]))
    return [m for m in METHODS if m in present] + [m for m in present if m not in METHODS]


def summarize(df: pd.DataFrame) -> list[tuple[str, pd.DataFrame]]:
    ok = _ok(df)
    out = []
    if ok.empty:
        return out
    order = method_order(ok)
    for src in ("normal", "minilm") + tuple(sorted(s for s in set(ok["source"]) if s not in SOURCES)):
        sub = ok[ok["source"] == src]
        if sub.empty:
            continue
        t = sub.pivot_table(index="method", columns="blocksize", values="mae").reindex(order)
        out.append((f"Mean absolute error, {src} data (rows: method, columns: blocksize)", t.round(5)))
    bs = 64 if 64 in set(ok["blocksize"]) else int(ok["blocksize"].min())
    t = ok[ok["blocksize"] == bs].pivot_table(index="method", columns="source", values="sqnr_db").reindex(order)
    out.append((f"SQNR (dB) at blocksize {bs}, by data source", t.round(2)))
    t = ok[ok["source"] == ok["source"].iloc[0]].pivot_table(index="method", columns="blocksize",
                                                              values=["bits", "bits_dq"]).reindex(order)
    t.columns = [f"{a}@{b}" for a, b in t.columns]
    out.append(("Bits per parameter without / with double quantization (bits@bs, bits_dq@bs)", t.round(3)))
    return out


def _headline(ok: pd.DataFrame) -> str | None:
    """The key finding: the best 4-bit code by SQNR at blocksize 64 on normal data, NF4 beside it, and the
    user's codes (methods outside METHODS)."""
    if ok.empty or "code_bits" not in ok:
        return None
    src = "normal" if "normal" in set(ok["source"]) else ok["source"].iloc[0]
    bs = 64 if 64 in set(ok["blocksize"]) else int(ok["blocksize"].min())
    sub = ok[(ok["source"] == src) & (ok["blocksize"] == bs) & (ok["code_bits"] == 4)]
    if sub.empty:
        return None
    s = sub.groupby("method")["sqnr_db"].median().sort_values(ascending=False)
    txt = f"best 4-bit code at blocksize {bs} on {src} data: {s.index[0]} ({s.iloc[0]:.2f} dB SQNR)"
    if "nf4" in s and s.index[0] != "nf4":
        txt += f", NF4 {s['nf4']:.2f} dB"
    mine = [m for m in s.index if m not in METHODS]
    if mine:
        txt += "; your codes: " + ", ".join(f"{m} {s[m]:.2f} dB (rank {list(s.index).index(m) + 1} of {len(s)})"
                                           for m in mine)
    return txt


def notes(df: pd.DataFrame) -> list[str]:
    out = []
    if "skipped" in df:
        sk = df[df["skipped"].notna()]
        for reason, g in sk.groupby("skipped", sort=False):
            srcs, meths = sorted(set(g["source"])), list(dict.fromkeys(g["method"]))
            what = (f"data source `{srcs[0]}`" if len(srcs) == 1 and len(meths) > 1 else
                    f"{len(g)} rows (source {', '.join(srcs)}; method {', '.join(meths)})")
            out.append(f"skipped: {what}: {reason}")
    ok = _ok(df)
    head = _headline(ok)
    if head:
        out.insert(0, head)
    if not ok.empty:
        out.append(f"kernel backend (auto on CPU): {', '.join(sorted(set(ok['backend'])))}; "
                   f"n = {int(ok['n'].max())} values per source; seed {int(ok['seed'].iloc[0])}")
    return out


if __name__ == "__main__":  # pragma: no cover
    d, _ = run(quick=os.environ.get("KBIT_QUICK") == "1")
    print(d.to_string())
