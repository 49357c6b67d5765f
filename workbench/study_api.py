"""Studies as plugins: the contract a study keeps, and the registry that the CLI and the report load it through.

A study is a module with ``run(quick=False, executor=None) -> (DataFrame, {name: Figure})``. Optional module
attributes used by the report: ``TITLE`` (str), ``DESCRIPTION`` (markdown), ``summarize(df) -> list[(title,
DataFrame)]`` (tables shown in the report; default: the head of the frame) and ``notes(df) -> list[str]``.

The library imports no study. Studies declare themselves as entry points of the group ``kbit_workbench.studies``
(``name = "package.module"``), this project's in ``pyproject.toml``::

    [project.entry-points."kbit_workbench.studies"]
    error = "studies.error_study"

so any installed distribution can add one, and :func:`load` imports a study's module only when it is run. When
the package runs from a source checkout, the checkout's ``pyproject.toml`` is read too (it wins over the
installed metadata of this project), so a new entry works before the package is reinstalled. :func:`register`
adds one at run time (tests, notebooks). A study whose module cannot be imported (not written yet, or needing
an optional dependency) is listed as unavailable with the reason, never an error for the others.
"""
from __future__ import annotations

import importlib
from importlib import metadata
from pathlib import Path
from types import ModuleType

GROUP = "kbit_workbench.studies"
DIST = "kbit-workbench"
BUILTIN = {"parity": "workbench.parity"}  # the library's own study: there even without the studies package
_PYPROJECT = Path(__file__).resolve().parent.parent / "pyproject.toml"


def _checkout_entries(path: Path = _PYPROJECT) -> dict[str, str] | None:
    """The group's table in the source checkout's pyproject.toml; None when not running from a checkout."""
    try:
        import tomllib
    except ImportError:  # Python 3.10: the installed metadata alone
        return None
    try:
        project = tomllib.loads(path.read_text()).get("project", {})
    except (OSError, ValueError):
        return None
    if project.get("name") != DIST:
        return None
    return dict(project.get("entry-points", {}).get(GROUP, {}))


def discover() -> dict[str, str]:
    """name -> module path: the checkout's pyproject (if any), then every installed distribution's entry points."""
    found = _checkout_entries()
    out = dict(found or {})
    for ep in metadata.entry_points(group=GROUP):
        dist = getattr(getattr(ep, "dist", None), "name", None)
        if found is not None and dist and dist.replace("_", "-").lower() == DIST:
            continue  # this project's installed metadata may be older than the checkout
        out.setdefault(ep.name, ep.value.split(":")[0])
    for name, mod in BUILTIN.items():
        out.setdefault(name, mod)
    return out


STUDIES: dict[str, str] = discover()


def register(name: str, module: str) -> None:
    """Add a study (module path) under ``name``; replaces an existing entry."""
    STUDIES[name] = module


def names() -> list[str]:
    return list(STUDIES)


def canonical(name: str) -> str:
    """The registered name for ``name``: itself, its module's last component (``error_study``), '-' for '_',
    or a unique prefix (``bnb`` for ``bnb_table``)."""
    n = name.strip()
    if n in STUDIES:
        return n
    m = n.replace("-", "_")
    if m in STUDIES:
        return m
    by_module = [k for k, mod in STUDIES.items() if mod.rsplit(".", 1)[-1] == m]
    prefix = [k for k in STUDIES if k.startswith(m)] if m else []
    for hits in (by_module, prefix):
        if len(hits) == 1:
            return hits[0]
    raise KeyError(f"study: unknown name {name!r}; known: {', '.join(STUDIES)}")


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
