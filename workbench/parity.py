"""Parity harness: every op on every available backend against the reference, on fresh inputs.

A *case* is a function ``fn(backend, device, gen, quick) -> iterable of row dicts`` registered
under a family and a name with the ops it exercises::

    from workbench.parity import register_case
    register_case("int8", "int8_vectorwise_quant", my_case, ops=("int8_vectorwise_quant",))

Each row it yields describes one comparison and carries at least ``op`` and ``ok`` (bool);
optional keys: ``level`` (the declared parity level, default ``"exact"``), ``max_diff``,
``mismatches``, ``detail`` and any parameters (``dtype``, ``blocksize``, ``n``, ``codebook``, ...).
The harness adds ``family``, ``case``, ``backend`` and ``device``, runs each case for every
backend that is available on the device and implements all of the case's ops (the reference
itself is the spec and is not compared with itself), and turns a case's exception into a failed
row instead of stopping the run.

Other op families add cases from their own modules: :data:`CASE_MODULES` lists modules that are
imported when present (a missing one is fine); a listed module either calls
:func:`register_case` at import time or defines ``register_parity_cases(register_case)``.
"""
from __future__ import annotations

import importlib
import inspect
import secrets
from dataclasses import dataclass
from typing import Callable, Iterable

import numpy as np
import pandas as pd
import torch

from . import codebooks as cbs
from .backends import get_op, list_backends

__all__ = ["register_case", "cases", "run_parity", "matrix", "format_matrix", "CASE_MODULES", "bit_equal",
           "choices", "check_selection", "compared", "summary_line", "SelectionError"]

# modules that may contribute cases; each is optional
CASE_MODULES = [
    "workbench.int8_parity", "workbench.int8",
    "workbench.optim.parity", "workbench.optim",
]
SPEC_BACKEND = "reference"


@dataclass(frozen=True)
class Case:
    family: str
    name: str
    fn: Callable
    ops: tuple
    devices: tuple


_CASES: dict[tuple[str, str], Case] = {}
_MODULE_STATUS: dict[str, str] = {}


def register_case(family: str, name: str, fn: Callable, *, ops: Iterable[str] | None = None,
                  devices: Iterable[str] = ("cpu", "cuda"), overwrite: bool = False) -> Callable:
    """Register ``fn`` as parity case ``family/name`` exercising ``ops`` (default: ``(name,)``)."""
    key = (family, name)
    if key in _CASES and not overwrite and _CASES[key].fn is not fn:
        raise ValueError(f"parity case {family}/{name} is already registered (pass overwrite=True)")
    _CASES[key] = Case(family, name, fn, tuple(ops or (name,)), tuple(devices))
    return fn


def load_case_modules() -> dict[str, str]:
    """Import every module in CASE_MODULES that exists; returns module -> 'loaded' / why not."""
    for mod in CASE_MODULES:
        if mod in _MODULE_STATUS:
            continue
        try:
            m = importlib.import_module(mod)
        except ModuleNotFoundError as e:
            _MODULE_STATUS[mod] = f"absent ({e.name})"
            continue
        except Exception as e:  # noqa: BLE001  (another family's bug must not stop this harness)
            _MODULE_STATUS[mod] = f"import failed: {type(e).__name__}: {e}"
            continue
        hook = getattr(m, "register_parity_cases", None)
        try:
            if callable(hook):
                hook(register_case)
            _MODULE_STATUS[mod] = "loaded" if callable(hook) else "imported (no register_parity_cases)"
        except Exception as e:  # noqa: BLE001
            _MODULE_STATUS[mod] = f"register_parity_cases failed: {type(e).__name__}: {e}"
    return dict(_MODULE_STATUS)


def cases(family: str | None = None) -> list[Case]:
    load_case_modules()
    return [c for c in _CASES.values() if family is None or c.family == family]


# ------------------------------------------------------------------ comparison helpers

def bit_equal(a: torch.Tensor, b: torch.Tensor, *, signed_zero: bool = True) -> tuple[bool, int, float]:
    """(identical bits, number of differing elements, max |a - b| as float64). NaNs with the same bits
    are equal; ``signed_zero=False`` treats +0 and -0 as equal."""
    if a.shape != b.shape or a.dtype != b.dtype:
        return False, -1, float("nan")
    a, b = a.detach().cpu().reshape(-1), b.detach().cpu().reshape(-1)
    if a.is_floating_point():
        iv = {2: torch.int16, 4: torch.int32, 8: torch.int64}[a.element_size()]
        diff = a.view(iv) != b.view(iv)
        if not signed_zero:
            diff &= ~((a == 0) & (b == 0))
    else:
        diff = a != b
    n = int(diff.sum())
    md = float((a[diff].double() - b[diff].double()).abs().max()) if n else 0.0  # over differing elements only
    return n == 0, n, md


# ------------------------------------------------------------------ the quant family

DTYPES = (torch.float32, torch.float16, torch.bfloat16)
ALL_BLOCKSIZES = (32, 64, 128, 256, 512, 1024, 2048, 4096)
# what each non-reference backend accepts (others: every codebook)
BACKEND_CODEBOOKS = {"bnb": {4: ("nf4", "fp4"), 8: ("dynamic",)}}
# declared levels other than exact: (backend, op, device) -> (level, tolerance on the code's value)
#   bnb's CPU 8-bit quantizer rounds through a 65536-entry LUT: its level may be farther from the scaled
#   value than the nearest level, by at most one LUT cell (2/65535) in normalized units;
#   bnb's CPU dequantize_4bit returns +0.0 where table[code] is FP4's -0.0: equal values, other sign bit.
LUT_CELL = 2.0 / 65535
LEVELS = {("bnb", "quantize_blockwise", "cpu"): ("LUT cell", LUT_CELL),
          ("bnb", "dequantize_4bit", "cpu"): ("exact (+0 == -0)", 0)}


def _random_codebook(bits: int, gen: torch.Generator) -> cbs.Codebook:
    m = 2 ** bits
    while True:
        v = torch.sort(torch.rand(m - 2, generator=gen) * 2 - 1).values
        v = torch.cat([torch.tensor([-1.0]), v, torch.tensor([1.0])])
        if torch.unique(v).numel() == m:
            return cbs.from_values(v.numpy(), f"random{bits}")


def _codebooks(bits: int, backend: str, gen: torch.Generator) -> list[cbs.Codebook]:
    allowed = BACKEND_CODEBOOKS.get(backend, {}).get(bits)
    names = ("nf4", "fp4") if bits == 4 else ("dynamic", "linear8")
    out = [cbs.get(n) for n in names if allowed is None or n in allowed]
    if allowed is None:
        out.append(_random_codebook(bits, gen))
    return out


def _shapes(quick: bool, gen: torch.Generator, sizes=None, blocksizes=None) -> list[tuple[int, int]]:
    """(blocksize, n) pairs: odd lengths, tails, exact multiples, a single element (or the given sizes)."""
    if sizes:
        return [(int(bs), int(n)) for bs in (blocksizes or (64, 4096) if quick else blocksizes or ALL_BLOCKSIZES)
                for n in sizes]
    bss = tuple(blocksizes) if blocksizes else ALL_BLOCKSIZES
    if quick and not blocksizes:
        pick = torch.randperm(len(bss), generator=gen)[:2].tolist()
        bss = tuple(sorted({64, 4096} | {bss[i] for i in pick}))
    out = []
    for bs in bss:
        tail = int(torch.randint(1, bs, (1,), generator=gen)) | 1
        out.append((bs, 2 * bs + tail))
        if not quick:
            out.append((bs, 3 * bs))
    out.append((int(bss[0]), 1))
    return out


def _input(n: int, dtype: torch.dtype, gen: torch.Generator, device: str) -> torch.Tensor:
    scale = float(torch.empty(1).uniform_(-3, 3, generator=gen).exp())
    x = torch.randn(n, generator=gen) * scale
    if n >= 96:
        x[:32] = 0.0   # an all-zero run (absmax 0 in small blocks)
        x[40] = -x[41:96].abs().max() * 1.0  # a negative block maximum
    return x.to(dtype).to(device)


def _quant_case(op: str):
    bits = 4 if op.endswith("4bit") else 8

    def compare_codebook(cb, device, gen, quick, ref_fn, fn, level, step, sizes, blocksizes):
        for bs, n in _shapes(quick, gen, sizes, blocksizes):
            for dtype in DTYPES:
                row = {"op": op, "codebook": cb.name, "blocksize": bs, "n": n, "dtype": str(dtype).split(".")[-1],
                       "level": level, "detail": ""}
                if op.startswith("quantize"):
                    A = _input(n, dtype, gen, device)
                    A0 = A.clone()
                    q_ref, am_ref = ref_fn(A, cb, bs)
                    q, am = fn(A, cb, bs)
                    ok_a, mis_a, _ = bit_equal(am.float(), am_ref.float())
                    if step and q.shape == q_ref.shape:
                        # how much farther the chosen level is from the scaled value than the nearest one
                        from .backends.reference.quant import block_scale
                        sc = block_scale(A, bs)[0].double()
                        t = cb.tensors(device)[0].double()
                        d = (t[q.long()] - sc).abs() - (t[q_ref.long()] - sc).abs()
                        # an all-zero block (absmax 0) dequantizes to 0 whatever its codes: bnb's native
                        # kernel computes 0 * (1/0) there and picks another code; counted, not failed
                        zero_blk = (am_ref.float() == 0).repeat_interleave(bs)[:n].to(d.device)
                        zdiff = int(((q != q_ref) & zero_blk).sum())
                        d = torch.where(zero_blk, torch.zeros_like(d), d)
                        ok_q = bool(n == 0 or float(d.max()) <= step * (1 + 1e-6))
                        mis_q, md = int((q != q_ref).sum()), float(d.max()) if n else 0.0
                        if zdiff:
                            row["detail"] = f"{zdiff} codes differ inside all-zero blocks (both dequantize to 0)"
                    else:
                        ok_q, mis_q, md = bit_equal(q, q_ref)
                    intact, _, _ = bit_equal(A, A0)
                    row.update(ok=ok_q and ok_a and intact, mismatches=mis_q + mis_a, max_diff=md)
                    if not intact:
                        row["detail"] = "input was modified"
                else:
                    nb = -(-n // bs)
                    absmax = (torch.rand(nb, generator=gen) * 10 + 1e-3).to(device)
                    table = cb.tensors(device)[0]
                    if bits == 4:
                        codes = torch.randint(0, 256, ((n + 1) // 2,), generator=gen, dtype=torch.uint8).to(device)
                        out_ref = ref_fn(codes, absmax, table, bs, n, dtype)
                        out = fn(codes, absmax, table, bs, n, dtype)
                    else:
                        codes = torch.randint(0, cb.size, (n,), generator=gen, dtype=torch.uint8).to(device)
                        out_ref = ref_fn(codes, absmax, table, bs, dtype)
                        out = fn(codes, absmax, table, bs, dtype)
                    ok, mis, md = bit_equal(out.reshape(-1), out_ref.reshape(-1), signed_zero=level == "exact")
                    row.update(ok=ok, mismatches=mis, max_diff=md, detail="")
                yield row

    def case(backend: str, device: str, gen: torch.Generator, quick: bool, sizes=None, blocksizes=None):
        ref_fn = get_op(SPEC_BACKEND, op, device)
        fn = get_op(backend, op, device)
        level, step = LEVELS.get((backend, op, device), ("exact", 0))
        for cb in _codebooks(bits, backend, gen):
            try:
                yield from compare_codebook(cb, device, gen, quick, ref_fn, fn, level, step, sizes, blocksizes)
            except Exception as e:  # noqa: BLE001  (one codebook's crash is one failed row)
                yield {"op": op, "codebook": cb.name, "ok": False, "level": "error",
                       "detail": f"{type(e).__name__}: {e}"[:300]}

    case.__name__ = f"case_{op}"
    return case


for _op in ("quantize_blockwise", "dequantize_blockwise", "quantize_4bit", "dequantize_4bit"):
    register_case("quant", _op, _quant_case(_op), ops=(_op,))


# ------------------------------------------------------------------ the optim family

OPTIM_OPS = ("optimizer_update_32bit", "optimizer_update_8bit_blockwise")
# (beta1, beta2, beta3, lr) per optimizer: the values the optimizer tests use
OPTIM_HP = {"adam": (0.9, 0.995, 0.0, 1e-3), "lamb": (0.9, 0.995, 0.0, 1e-3), "ademamix": (0.9, 0.995, 0.999, 1e-3),
            "momentum": (0.9, 0.0, 0.0, 1e-3), "lars": (0.9, 0.0, 0.0, 1e-3), "lion": (0.9, 0.99, 0.0, 1e-4),
            "rmsprop": (0.95, 0.0, 0.0, 1e-3), "adagrad": (0.0, 0.0, 0.0, 1e-2)}


def _optim_state(name: str, n: int, bits: int, device: str) -> dict:
    from .optim import functional as F
    two = name in F.TWO_STATE
    shp = (2, n) if name == "ademamix" else (n,)
    if bits == 32:
        return {"state1": torch.zeros(shp, device=device),
                "state2": torch.zeros(n, device=device) if two else None}
    nb = -(-n // F.BLOCKSIZE)
    return {"state1": torch.zeros(shp, dtype=torch.uint8, device=device),
            "state2": torch.zeros(n, dtype=torch.uint8, device=device) if two else None,
            "absmax1": torch.zeros((2, nb) if name == "ademamix" else (nb,), device=device),
            "absmax2": torch.zeros(nb, device=device) if two else None}


def _optim_step(fn, name: str, bits: int, g, p, st: dict, t: int, *, gnorm_scale: float, skip_zeros: bool) -> None:
    from .optim import functional as F
    b1, b2, b3, lr = OPTIM_HP[name]
    if bits == 32:
        mu = 1.0 if name == "lamb" else 0.02 if name == "lars" else 0.0   # the LAMB/LARS trust ratio
        pn = float(torch.norm(p.float())) if mu > 0 else 0.0
        unorm = torch.zeros(1, device=p.device) if mu > 0 else None
        fn(name, g, p, st["state1"], st["state2"], unorm, mu, pn, b1, b2, b3, 0.5, 1e-8, 0.01, t, lr,
           gnorm_scale, skip_zeros)
    else:
        two = st["state2"] is not None
        fn(name, g, p, st["state1"], st["state2"], b1, b2, b3, 0.5, 1e-8, t, lr, F.qmap(True, p.device),
           F.qmap(False, p.device) if two else None, st["absmax1"], st["absmax2"], 0.01, gnorm_scale, skip_zeros)


def _optim_case(op: str):
    bits = 32 if op == "optimizer_update_32bit" else 8

    def case(backend: str, device: str, gen: torch.Generator, quick: bool, sizes=None):
        """Each optimizer, a few steps from zero state on the same parameters and gradients (some zero, with
        skip_zeros on one step; gnorm_scale on odd steps; weight decay; the LAMB/LARS trust ratio at 32 bits)
        through the backend and the reference: parameters, states (codes and absmax at 8 bits) bit for bit."""
        from .optim import functional as F
        ref_fn = get_op(SPEC_BACKEND, op, device)
        fn = get_op(backend, op, device)
        ns = [int(v) for v in sizes] if sizes else ([2 * F.BLOCKSIZE + 37] if quick else [1, 3 * F.BLOCKSIZE + 101])
        dtypes = (torch.float32, torch.bfloat16) if quick else DTYPES
        steps = 3 if quick else 5
        if backend == "numba_cuda" and device == "cpu":  # the CUDA simulator: a Python thread per GPU thread
            ns, dtypes, steps = [min(ns[0], 300)], (torch.float32,), 2
        for name in F.NAMES:
            for dtype in dtypes:
                for n in ns:
                    row = {"op": op, "optimizer": name, "dtype": str(dtype).split(".")[-1], "n": n, "steps": steps,
                           "level": "exact", "detail": ""}
                    try:
                        p_ref = (torch.randn(n, generator=gen) * 0.5).to(dtype).to(device)
                        p = p_ref.clone()
                        st_ref, st = _optim_state(name, n, bits, device), _optim_state(name, n, bits, device)
                        for t in range(1, steps + 1):
                            g = torch.randn(n, generator=gen).to(dtype).to(device)
                            if t == 2:
                                g[::5] = 0
                            kw = {"gnorm_scale": 0.75 if t % 2 else 1.0, "skip_zeros": t == 2}
                            _optim_step(ref_fn, name, bits, g.clone(), p_ref, st_ref, t, **kw)
                            _optim_step(fn, name, bits, g.clone(), p, st, t, **kw)
                        ok, mis, md = bit_equal(p, p_ref)
                        bad_state = []
                        for k, v in st_ref.items():
                            if v is None:
                                continue
                            ok_k, mis_k, _ = bit_equal(st[k], v)
                            if not ok_k:
                                bad_state.append(k)
                                mis += max(mis_k, 0)
                            ok = ok and ok_k
                        row.update(ok=ok, mismatches=mis, max_diff=md,
                                   detail=f"differs: {', '.join(bad_state)}" if bad_state else "")
                    except Exception as e:  # noqa: BLE001  (one optimizer's crash is one failed row)
                        row.update(ok=False, level="error", detail=f"{type(e).__name__}: {e}"[:300])
                    yield row

    case.__name__ = f"case_{op}"
    return case


for _op in OPTIM_OPS:
    register_case("optim", _op, _optim_case(_op), ops=(_op,))


# ------------------------------------------------------------------ the harness

def _backends_for(device: str, names: Iterable[str] | None) -> list:
    out = []
    for info in list_backends():
        if names is not None and info.name not in names:
            continue
        if info.name == SPEC_BACKEND or not info.available or device not in info.devices:
            continue
        out.append(info)
    return out


class SelectionError(ValueError):
    """An unknown backend, op or family name given to :func:`run_parity` (``arg``: which parameter)."""

    def __init__(self, arg: str, message: str):
        super().__init__(f"{arg}: {message}")
        self.arg, self.detail = arg, message


def choices() -> dict[str, list[str]]:
    """The names :func:`run_parity` accepts: ``backends`` (every known backend but the reference, available here
    or not), ``ops`` (those some case exercises) and ``families``."""
    cs = cases()
    return {"backends": sorted(b.name for b in list_backends() if b.name != SPEC_BACKEND),
            "ops": sorted({op for c in cs for op in c.ops}),
            "families": sorted({c.family for c in cs})}


def check_selection(backends=None, families=None, ops=None) -> None:
    """Raise :class:`SelectionError` naming the parameter when a name is unknown or a selection is empty."""
    ch = choices()
    for arg, given in (("backends", backends), ("families", families), ("ops", ops)):
        if given is None:
            continue
        given = list(given)
        if not given:
            raise SelectionError(arg, f"expected at least one name from: {', '.join(ch[arg])}")
        bad = [g for g in given if g not in ch[arg]]
        if SPEC_BACKEND in bad and arg == "backends":
            raise SelectionError(arg, f"{SPEC_BACKEND!r} is the spec every backend is compared with, not a "
                                      f"backend under test; expected names from: {', '.join(ch[arg])}")
        if bad:
            raise SelectionError(arg, f"unknown {', '.join(map(repr, bad))}; expected names from: "
                                      f"{', '.join(ch[arg])}")


def compared(df: pd.DataFrame) -> pd.DataFrame:
    """The rows that are comparisons (not the marker rows of cases that compared nothing)."""
    return df[df["level"].astype(str) != "n/a"] if not df.empty else df


def summary_line(df: pd.DataFrame) -> str:
    """'passed P, failed F, total T comparisons' (cases that compared nothing are counted apart)."""
    c = compared(df)
    total = len(c)
    passed = int(c["ok"].astype(bool).sum()) if total else 0
    empty = len(df) - total
    extra = f"; {empty} case(s) compared nothing" if empty else ""
    verdict = "PASS" if total and passed == total and not empty else "FAIL"
    return f"{verdict}: passed {passed}, failed {total - passed}, total {total} comparisons{extra}"


def run_parity(device: str = "cpu", *, backends: Iterable[str] | None = None, families: Iterable[str] | None = None,
               ops: Iterable[str] | None = None, quick: bool = False, seed: int | None = None,
               sizes: Iterable[int] | None = None, blocksizes: Iterable[int] | None = None,
               progress: bool = False, shard: tuple[int, int] | None = None) -> pd.DataFrame:
    """Run every registered case on every available backend of ``device`` -> tidy DataFrame
    (one row per comparison). ``seed`` None draws a fresh one (recorded in the ``seed`` column).
    ``sizes`` / ``blocksizes`` are passed to cases whose function accepts them.
    ``shard=(k, n)``: only the k-th of n contiguous slices of the (case, backend) jobs, each with the seed it has in
    the whole run, so the n shards' rows concatenated in k order are the whole run's rows (workbench.gpu_sweep)."""
    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device: 'cuda' requested but torch sees no CUDA GPU")
    seed = secrets.randbelow(2 ** 31) if seed is None else int(seed)
    import logging
    logging.getLogger("torch._dynamo").setLevel(logging.ERROR)  # bitsandbytes' compiled kernels recompile per dtype
    backends = [backends] if isinstance(backends, str) else backends
    families = [families] if isinstance(families, str) else families
    ops = [ops] if isinstance(ops, str) else ops
    check_selection(backends, families, ops)
    if sizes is not None and any(int(v) < 1 for v in sizes):
        raise ValueError(f"sizes: expected positive element counts, got {list(sizes)}")
    fams = set(families) if families is not None else None
    want_ops = set(ops) if ops is not None else None
    infos = _backends_for(device, backends)
    jobs = [(c, info) for c in cases() if (fams is None or c.family in fams) and device in c.devices
            and (want_ops is None or want_ops & set(c.ops))
            for info in infos if set(c.ops) <= set(info.ops)]
    todo = range(len(jobs))
    if shard is not None:
        k, n = int(shard[0]), int(shard[1])
        if not (n >= 1 and 0 <= k < n):
            raise ValueError(f"shard: expected (k, n) with 0 <= k < n, got {shard!r}")
        todo = range(k * len(jobs) // n, (k + 1) * len(jobs) // n)
    bar = None
    if progress:
        from tqdm.auto import tqdm
        bar = tqdm(total=len(todo), desc=f"parity ({device})", leave=False)
    rows = []
    for i in todo:
        c, info = jobs[i]
        gen = torch.Generator().manual_seed(seed + i)
        base = {"family": c.family, "case": c.name, "backend": info.name, "device": device, "seed": seed}
        kw = {}
        params = inspect.signature(c.fn).parameters
        if sizes is not None and "sizes" in params:
            kw["sizes"] = [int(v) for v in sizes]
        if blocksizes is not None and "blocksizes" in params:
            kw["blocksizes"] = [int(v) for v in blocksizes]
        got = 0
        try:
            for r in c.fn(info.name, device, gen, quick, **kw):
                rows.append({**base, "level": "exact", "detail": "", **r})
                got += 1
            if not got:  # not a pass: a case that compares nothing must not read as one
                rows.append({**base, "op": c.ops[0], "ok": False, "level": "n/a", "detail": "the case compared nothing"})
        except Exception as e:  # noqa: BLE001  (a crash is a failed cell, not a stopped harness)
            rows.append({**base, "op": c.ops[0], "ok": False, "level": "error",
                         "detail": f"{type(e).__name__}: {e}"[:300]})
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    df = pd.DataFrame(rows)
    if df.empty:
        df = pd.DataFrame(columns=["family", "case", "backend", "device", "seed", "op", "ok", "level", "detail"])
    return df


def matrix(df: pd.DataFrame) -> pd.DataFrame:
    """backend x op: 'exact: 36/36 passed', 'FAIL: 3/36 failed (33 passed)', 'FAIL: compared nothing', or ''
    where the backend lacks the op."""
    if df.empty:
        return pd.DataFrame()

    def cell(g: pd.DataFrame) -> str:
        c = compared(g)
        n, ok = len(c), int(c["ok"].astype(bool).sum())
        if n == 0:
            return "FAIL: compared nothing"
        levels = sorted(set(c["level"].astype(str)))
        if ok == n:
            return f"{'/'.join(levels)}: {ok}/{n} passed"
        extra = ""
        bad = c[~c["ok"].astype(bool)]
        if "max_diff" in bad and bad["max_diff"].notna().any():
            extra = f", max diff {bad['max_diff'].max():.3g}"
        return f"FAIL: {n - ok}/{n} failed ({ok} passed{extra})"

    cells = df.groupby(["backend", "op"], sort=False).apply(cell, include_groups=False)
    return cells.unstack("op").fillna("")


def format_matrix(df: pd.DataFrame) -> str:
    m = matrix(df)
    if m.empty:
        return "(no backend besides the reference is available for these ops)"
    from tabulate import tabulate
    return tabulate(m, headers=["backend"] + list(m.columns), tablefmt="github")


def failures(df: pd.DataFrame) -> pd.DataFrame:
    return df[~df["ok"].astype(bool)] if not df.empty else df


# ------------------------------------------------------------------ as a report study

TITLE = "Kernel parity: every backend vs the reference (this CPU run + the committed GPU runs)"
DESCRIPTION = """Every quantization op of every backend available on this machine, against the reference
backend (the executable spec), on fresh random inputs: fp32/fp16/bf16, every blocksize 32..4096,
odd lengths with tails, exact multiples, a single element, an all-zero run and a negative block
maximum; NF4, FP4 and a random 16-entry code for 4-bit; the dynamic map, linear-8bit and a random
256-entry code for 8-bit (bitsandbytes only takes NF4/FP4 and the dynamic map); the LLM.int8() ops
and the 8-bit and 32-bit optimizer updates (every optimizer, a few steps) where their modules are present.
Cells read `level: passed/compared` or `FAIL: failed/compared (passed)`. Levels: `exact` = codes, packed bytes, absmax and dequantized values
identical bit for bit; `LUT cell` = bitsandbytes' native CPU 8-bit quantizer, whose level may be
farther from the scaled value than the nearest one by at most one cell of its 65536-entry lookup
table (2/65535), and whose codes inside an all-zero block (absmax 0, 0 * 1/0 there) are arbitrary
but dequantize to 0 (counted in `detail`); `exact (+0 == -0)` = bitsandbytes' CPU dequantize_4bit, identical except that it
returns +0.0 where FP4's table holds -0.0. The same harness: `workbench parity`.

The GPU rows come from the parity files committed under `reports/` by the GPU benchmarks (`gpu-h100/`, `gpu-h200/`,
`int8-gpu/`, `optim-gpu/`; `history/` left out), converted into the harness's schema by `workbench/parity_results.py`:
one row per device x op x backend pair (`backend` vs `versus`) with compared/passed counts, so the CPU run and the
GPUs line up. `(i)` marks informational comparisons: bitsandbytes' CUDA kernels against the spec, or against our
kernel without its bnb mode, and the GPU's 32-bit LAMB/LARS trust ratio (a norm summed in another order than on the
CPU reference) -- differences recorded as findings, not held to a declared level."""


def run(quick: bool = False, executor=None):
    if getattr(executor, "gpus", None):   # --gpus: parity on CUDA, split over one dask worker per GPU
        from .gpu_sweep import parity_on_gpus
        return parity_on_gpus(executor, quick=quick), {}
    return run_parity("cpu", quick=quick), {}


def _all_devices(df: pd.DataFrame, unknown: list | None = None) -> pd.DataFrame:
    """This run's rows and the committed GPU files' rows in one schema (workbench/parity_results.py); files of no
    known kind are left out, their reasons appended to ``unknown``."""
    from . import parity_results
    return parity_results.combined(df, unknown=[] if unknown is None else unknown)


def summarize(df: pd.DataFrame) -> list:
    from . import parity_results as PR
    out = [("backend x op, this run (level: passed/compared, or FAIL: failed/compared)", matrix(df))]
    u = _all_devices(df)
    if not u.empty:
        out.append(("Every device side by side: passed/compared per op x backend pair (this run and the committed "
                    "GPU files; (i): informational)", PR.side_by_side(u)))
        long = PR.by_device(u, per_dtype=False).set_index(["family", "op", "backend", "versus", "device"])
        long.attrs["max_rows"] = len(long)   # the whole table: a device's row must not fall off the end
        out.append(("One schema, one row per op x backend pair x device", long))
    bad = failures(df)
    if len(bad):
        cols = [c for c in ("backend", "op", "codebook", "optimizer", "dtype", "blocksize", "n", "mismatches", "max_diff",
                          "detail")
                if c in bad]
        out.append(("Failing comparisons of this run (first 30)", bad[cols].head(30)))
    gpu_bad = PR.failures(u[u["source"] != "this run"]) if not u.empty else u
    if len(gpu_bad):
        cols = ["device", "op", "backend", "versus", "dtype", "variant", "blocksize", "n", "mismatches", "detail",
                "source"]
        out.append(("Committed GPU comparisons that missed their declared level", gpu_bad[cols].head(30)))
    return out


def notes(df: pd.DataFrame) -> list:
    if df.empty:
        return ["no backend besides the reference is available here"]
    loaded = [m for m, s in load_case_modules().items() if s == "loaded"]
    skipped = [f"{b.name} ({b.reason})" for b in list_backends()
               if b.name != SPEC_BACKEND and not b.available and (not b.devices or "cpu" in b.devices)]
    extra = [f"CPU backends not available in this run: {'; '.join(skipped)}"] if skipped else []
    seed = int(df["seed"].iloc[0])
    return ([f"{summary_line(df)}; input seed {seed} "
             f"(`workbench parity --seed {seed}` replays them)"] + extra + _gpu_notes(df) +
            [f"families: {', '.join(sorted(set(df['family'])))}; extra case modules loaded: {', '.join(loaded) or 'none'}"])


def _gpu_notes(df: pd.DataFrame) -> list:
    from . import parity_results as PR
    unknown: list = []
    u = _all_devices(df, unknown)
    gpu = u[u["source"] != "this run"] if not u.empty else u
    out = [f"parity file left out: {why}" for why in unknown]
    if gpu.empty:
        return out + ["no committed GPU parity files found under reports/"]
    for dev, g in gpu.groupby("device"):
        held = g[g["level"] != PR.INFORMATIONAL]
        bad = PR.failures(g)
        out.append(f"{dev} (committed files, git {', '.join(sorted(set(g['run_git'].astype(str))))}): passed "
                   f"{int(held['passed'].sum())} of {int(held['compared'].sum())} comparisons held to a declared level"
                   + (f"; {int(bad['compared'].sum() - bad['passed'].sum())} missed it ("
                      + ", ".join(sorted({f"{r.backend} {r.op} {r.variant} vs {r.versus}" for r in bad.itertuples()}))
                      + "; see the table below)" if len(bad) else "")
                   + f"; {int((g['level'] == PR.INFORMATIONAL).sum())} informational")
    return out
