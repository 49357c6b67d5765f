"""Registry of studies: name -> module with ``run(quick=False, executor=None) -> (DataFrame, {name: Figure})``.

Optional module attributes used by the report: ``TITLE`` (str), ``DESCRIPTION`` (markdown),
``summarize(df) -> list[(title, DataFrame)]`` (tables shown in the report; default: the head
of the frame) and ``notes(df) -> list[str]``. Studies whose module cannot be imported
(written by another team, or needing an optional dependency) are listed as unavailable
with the reason, never an error for the others.
"""
from __future__ import annotations

import importlib
from types import ModuleType

# In report order. Modules absent today (optim, outliers) join as soon as they exist.
STUDIES: dict[str, str] = {
    "error": "studies.error_study",
    "codebook_lab": "studies.codebook_lab",
    "bnb_table": "studies.bnb_table",
    "parity": "workbench.parity",
    "speed": "studies.speed",
    "optim": "studies.optim_study",
    "outliers": "studies.outliers_study",
}
ALIASES = {"error_study": "error", "codebook-lab": "codebook_lab", "bnb-table": "bnb_table", "bnb": "bnb_table",
           "optim_study": "optim", "outliers_study": "outliers"}


def register(name: str, module: str) -> None:
    """Add a study (module path) under ``name``; replaces an existing entry."""
    STUDIES[name] = module


def canonical(name: str) -> str:
    n = name.strip()
    n = ALIASES.get(n, n)
    if n not in STUDIES:
        raise KeyError(f"study: unknown name {name!r}; known: {', '.join(STUDIES)}")
    return n


def load(name: str) -> ModuleType:
    """The study's module; raises ImportError (with the reason) when it is not importable."""
    mod_name = STUDIES[canonical(name)]
    try:
        mod = importlib.import_module(mod_name)
    except ModuleNotFoundError as e:
        if e.name and mod_name.startswith(e.name):
            raise ImportError(f"study {name!r}: module {mod_name} does not exist (yet)") from e
        raise ImportError(f"study {name!r}: {mod_name} needs {e.name!r}, which is not installed") from e
    if not callable(getattr(mod, "run", None)):
        raise ImportError(f"study {name!r}: {mod_name} has no run(quick, executor) function")
    return mod


def available() -> dict[str, str | None]:
    """name -> None when importable, else the reason it is not."""
    out: dict[str, str | None] = {}
    for n in STUDIES:
        try:
            load(n)
            out[n] = None
        except Exception as e:  # noqa: BLE001  (another team's module may fail in any way)
            out[n] = f"{type(e).__name__}: {e}"
    return out
