"""Reports: run studies, store their tidy results, render Markdown + HTML with PNG figures.

``build_report(name)`` writes ``reports/<name>/``:

* ``report.md`` and ``report.html`` (the same sections; the HTML is one self-contained file: figures inlined as
  data URIs, a table of contents, key findings at the top, wide tables scroll),
* ``<figure>.png`` for every figure a study returns,
* ``results.parquet`` (+ ``results.csv``): every study's rows with a ``study`` column and the
  run metadata (``run_*`` columns, :mod:`workbench.results`), and ``results/<study>.parquet`` per study,
* ``metadata.json``: the run metadata, the command options, each study's status and time.

``<name>`` is one plain folder name (:func:`check_name`): never a path. The report is written into a hidden
temporary sibling marked ``PARTIAL`` and swapped in at the end, so a folder under ``reports/`` is always one
complete run (``metadata.json`` has ``"complete": true``); an existing folder that is not a report is never
replaced.

``merge`` folds result files written elsewhere (GPU machines) into the report: they are loaded
with :func:`workbench.results.load`, shown grouped by ``run_device`` (the cross-GPU view) and
handed to the speed study. :func:`render` re-renders a report from saved results without
running anything.
"""
from __future__ import annotations

import html
import inspect
import json
import os
import re
import secrets
import shutil
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from . import results

REPORTS = Path(__file__).resolve().parent.parent / "reports"
LOCAL_REPORTS = REPORTS / "local"   # the default output: untracked (.gitignore), so a run never dirties the tree
DEFAULT_STUDIES = ("error", "codebook_lab", "bnb_table", "parity", "speed", "optim", "outliers", "model", "kbit_frontier")


@dataclass
class StudyResult:
    name: str
    title: str = ""
    description: str = ""
    df: pd.DataFrame = field(default_factory=pd.DataFrame)
    figures: dict = field(default_factory=dict)       # name -> relative PNG path (after saving)
    tables: list = field(default_factory=list)        # [(title, DataFrame)]
    notes: list = field(default_factory=list)
    status: str = "ok"                                # ok | partial (rows skipped) | unavailable | failed
    error: str = ""
    seconds: float = 0.0


# ------------------------------------------------------------------ running

def _call_run(mod, quick: bool, executor, extra: dict):
    params = inspect.signature(mod.run).parameters
    kw = {"quick": quick} if "quick" in params else {}
    if "executor" in params:
        kw["executor"] = executor
    for k, v in extra.items():
        if k in params:
            kw[k] = v
    out = mod.run(**kw)
    if isinstance(out, pd.DataFrame):
        return out, {}
    df, figs = out
    return df, dict(figs or {})


def run_study(name: str, *, quick: bool = False, executor=None, extra: dict | None = None) -> StudyResult:
    """Run one study; never raises: an unimportable or failing study becomes a status."""
    from . import study_api
    t0 = time.perf_counter()
    try:
        name = study_api.canonical(name)
        mod = study_api.load(name)
    except (ImportError, KeyError) as e:
        return StudyResult(name, title=name, status="unavailable", error=str(e).strip("'\""))
    except Exception as e:  # noqa: BLE001  (another team's module failing at import time)
        return StudyResult(name, title=name, status="failed",
                           error=f"import: {type(e).__name__}: {e}\n{traceback.format_exc(limit=6)}",
                           seconds=time.perf_counter() - t0)
    res = StudyResult(name, title=getattr(mod, "TITLE", name), description=getattr(mod, "DESCRIPTION", "") or "")
    try:
        df, figs = _call_run(mod, quick, executor, extra or {})
        res.df, res.figures = df, figs
        if hasattr(mod, "summarize"):
            res.tables = list(mod.summarize(df))
        elif not df.empty:
            res.tables = [("First rows", df.head(20))]
        if hasattr(mod, "notes"):
            res.notes = list(mod.notes(df))
        skipped = skipped_rows(df)
        if len(skipped):
            res.status = "partial"
            res.error = (f"{len(skipped)} of {len(df)} rows skipped: "
                         + "; ".join(f"{r} ({k} rows)" for r, k in skipped["skipped"].value_counts().items()))
            res.tables.append(("Skipped rows: which and why", skipped))
    except Exception as e:  # noqa: BLE001
        res.status, res.error = "failed", f"{type(e).__name__}: {e}\n{traceback.format_exc(limit=6)}"
    res.seconds = time.perf_counter() - t0
    return res


def skipped_rows(df: pd.DataFrame) -> pd.DataFrame:
    """The rows a study could not compute (a non-empty ``skipped`` column: the reason), key columns first."""
    if df is None or df.empty or "skipped" not in df:
        return pd.DataFrame()
    sk = df[df["skipped"].notna() & (df["skipped"].astype(str) != "")]
    keys = [c for c in ("source", "data", "method", "codebook", "blocksize") if c in sk and sk[c].notna().any()]
    return sk[keys + ["skipped"]].reset_index(drop=True)


# ------------------------------------------------------------------ storing

def _parquet_safe(df: pd.DataFrame) -> pd.DataFrame:
    """Columns of mixed Python types (from concatenating studies) become strings."""
    df = df.copy()
    for c in df.columns:
        if df[c].dtype == object:
            kinds = {type(v) for v in df[c].dropna()}
            if len(kinds) > 1 or (kinds and not kinds <= {str}):
                df[c] = df[c].map(lambda v: v if v is None or (isinstance(v, float) and pd.isna(v)) else str(v))
    return df


def _save_frame(df: pd.DataFrame, path: Path, meta: dict) -> Path:
    try:
        return results.save(df, path, meta)
    except Exception:  # noqa: BLE001  (pyarrow refuses mixed object columns)
        return results.save(_parquet_safe(df), path, meta)


def save_figures(res: StudyResult, out: Path) -> None:
    import matplotlib.pyplot as plt  # the backend is the caller's (the CLI sets MPLBACKEND=Agg)
    saved = {}
    for fname, fig in res.figures.items():
        if isinstance(fig, (str, Path)):
            saved[fname] = str(fig)
            continue
        safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", fname)
        fig.savefig(out / f"{safe}.png", dpi=110, bbox_inches="tight")
        plt.close(fig)
        saved[fname] = f"{safe}.png"
    res.figures = saved


# ------------------------------------------------------------------ rendering

MAX_ROWS = 60   # per table; a study may ask for a whole table with ``df.attrs["max_rows"]``


def _row_limit(df: pd.DataFrame, max_rows: int) -> int:
    return max(max_rows, int(df.attrs.get("max_rows", 0)))


def _more_rows(df: pd.DataFrame, max_rows: int) -> str:
    return f"({len(df) - max_rows} more rows in the result files)" if len(df) > max_rows else ""


def _md_table(df: pd.DataFrame, max_rows: int = MAX_ROWS) -> str:
    if df is None or df.empty:
        return "_(empty)_"
    max_rows = _row_limit(df, max_rows)
    multi = isinstance(df.index, pd.MultiIndex)
    d = _flat_index(df.head(max_rows))
    d = d.astype(object).where(d.notna(), None)
    s = d.to_markdown(floatfmt="g", missingval="", index=not multi)
    if _more_rows(df, max_rows):
        s += f"\n\n_{_more_rows(df, max_rows)}_"
    return s


def _flat_index(df: pd.DataFrame) -> pd.DataFrame:
    d = df.copy()
    if isinstance(d.columns, pd.MultiIndex):
        d.columns = [" ".join(map(str, c)) for c in d.columns]
    if isinstance(d.index, pd.MultiIndex):
        d = d.reset_index()
    return d


def _inline_html(text: str) -> str:
    t = html.escape(text.replace("``", "`"))
    t = re.sub(r"`([^`]+)`", r"<code>\1</code>", t)
    t = re.sub(r"\*\*([^*]+)\*\*", r"<b>\1</b>", t)
    return t


def _md_to_html(md: str) -> str:
    """Just enough Markdown for the studies' descriptions: paragraphs, lists, code spans and fences."""
    out, para, in_code, code, in_list = [], [], False, [], False

    def flush():
        nonlocal para
        if para:
            out.append("<p>" + _inline_html(" ".join(para)) + "</p>")
            para = []

    for line in md.splitlines():
        if line.strip().startswith("```"):
            if in_code:
                out.append("<pre>" + html.escape("\n".join(code)) + "</pre>")
                code, in_code = [], False
            else:
                flush()
                in_code = True
            continue
        if in_code:
            code.append(line)
            continue
        s = line.strip()
        if s.startswith(("* ", "- ")):
            flush()
            if not in_list:
                out.append("<ul>")
                in_list = True
            out.append("<li>" + _inline_html(s[2:]) + "</li>")
            continue
        if in_list and s and line.startswith("  "):
            out[-1] = out[-1][:-5] + " " + _inline_html(s) + "</li>"
            continue
        if in_list:
            out.append("</ul>")
            in_list = False
        if not s:
            flush()
        else:
            para.append(s)
    flush()
    if in_list:
        out.append("</ul>")
    return "\n".join(out)


def _html_table(df: pd.DataFrame, max_rows: int = MAX_ROWS) -> str:
    if df is None or df.empty:
        return "<p><i>(empty)</i></p>"
    max_rows = _row_limit(df, max_rows)
    more = _more_rows(df, max_rows)
    return ("<div class='scroll'>" + _table_html(df, max_rows) + "</div>"
            + (f"<p class='muted'>{more}</p>" if more else ""))


def _data_uri(path: Path) -> str:
    """A PNG as a data: URI (the HTML report carries its figures)."""
    import base64
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def _anchor(name: str) -> str:
    return "s-" + re.sub(r"[^A-Za-z0-9_-]+", "-", name)


def key_findings(studies: list[StudyResult]) -> list[str]:
    """One line per study for the top of the report: its status, then its first note (the study's own
    headline; studies put their key result first), or why it did not run."""
    out = []
    for r in studies:
        label = r.title or r.name
        if r.status in ("ok", "partial") and r.notes:
            line = f"**{label}**: {r.notes[0]}"
        elif r.status in ("ok", "partial"):
            line = f"**{label}**: {len(r.df)} rows, {len(r.figures)} figures"
        else:
            first = r.error.strip().splitlines()[0] if r.error.strip() else r.status
            line = f"**{label}**: {r.status} ({first[:160]})"
        if r.status == "partial":
            line += f" -- partial: {r.error[:200]}"
        out.append(line)
    return out


def _table_html(df: pd.DataFrame, max_rows: int) -> str:
    return _flat_index(df.head(max_rows)).to_html(index=not isinstance(df.index, pd.MultiIndex), border=0, classes="t", float_format=lambda v: f"{v:.6g}", na_rep="")


CSS = """body{font-family:system-ui,sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;color:#222}
table.t{border-collapse:collapse;font-size:12px;margin:.5em 0 1.2em}table.t td,table.t th{border:1px solid #ccc;
padding:2px 6px;text-align:right}table.t th{background:#f3f3f3}img{max-width:100%;border:1px solid #eee}
code,pre{background:#f6f6f6}pre{padding:.6em;overflow:auto}.bad{color:#b00}.muted{color:#777}
div.scroll{overflow-x:auto;max-width:100%}nav.toc{background:#fafafa;border:1px solid #eee;padding:.4em 1em}
nav.toc li{margin:.1em 0}.findings li{margin:.25em 0}"""


def render(name: str, studies: list[StudyResult], meta: dict, *, out: Path, options: dict,
           merged: pd.DataFrame | None = None) -> tuple[Path, Path]:
    """Write report.md and report.html for already-run studies (figures already saved)."""
    title = f"kbit-workbench report: {name}"
    md = [f"# {title}", "",
          f"Generated {meta.get('run_time', '')} on {meta.get('run_device', '')} ({meta.get('run_host', '')}), "
          f"git `{meta.get('run_git', '')}`, mode: {'quick' if options.get('quick') else 'full'}.", ""]
    hd = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
          f"<style>{CSS}</style></head><body><h1>{html.escape(title)}</h1>", "<p>" + _inline_html(md[2]) + "</p>"]

    summ = summary_frame(studies)
    merged_tables = cross_device_tables(merged) if merged is not None and not merged.empty else []
    toc = [("summary", "Summary and key findings")] + [(_anchor(r.name), r.title or r.name) for r in studies]
    if merged_tables:
        toc.append(("merged", "Merged result files: cross-device view"))
    toc.append(("metadata", "Run metadata"))
    md += ["Contents: " + " | ".join(t for _, t in toc), ""]
    hd += ["<nav class='toc'><b>Contents</b><ol>" + "".join(f"<li><a href='#{a}'>{html.escape(t)}</a></li>"
                                                           for a, t in toc) + "</ol></nav>"]
    findings = key_findings(studies)
    md += ["## Summary and key findings", ""] + [f"* {f}" for f in findings] + ["", _md_table(summ), ""]
    hd += ["<h2 id='summary'>Summary and key findings</h2>", "<ul class='findings'>"
           + "".join(f"<li>{_inline_html(f)}</li>" for f in findings) + "</ul>",
           "<p>Each study below starts with what it measures and how; its notes give the headline numbers, "
           "its tables the detail, its figures the trend. Status <i>partial</i> means some rows could not be "
           "computed: the study's section lists them with the reason.</p>", _html_table(summ)]

    for r in studies:
        md += [f"## {r.title or r.name}", "", f"_study `{r.name}`: {r.status}, {r.seconds:.1f} s, {len(r.df)} rows_", ""]
        hd += [f"<h2 id='{_anchor(r.name)}'>{html.escape(r.title or r.name)}</h2>",
               f"<p class='muted'>study <code>{r.name}</code>: {r.status}, {r.seconds:.1f} s, {len(r.df)} rows</p>"]
        if r.status == "partial":
            md += [f"> **partial**: {r.error}", ""]
            hd += [f"<p class='bad'><b>partial</b>: {html.escape(r.error)}</p>"]
        elif r.status != "ok":
            first = r.error.strip().splitlines()[0] if r.error.strip() else r.status
            md += [f"> {first}", ""]
            hd += [f"<p class='bad'>{html.escape(first)}</p>"]
            if r.status == "failed":
                md += ["```", r.error.strip(), "```", ""]
                hd += ["<pre>" + html.escape(r.error.strip()) + "</pre>"]
            continue
        if r.description:
            md += [r.description.strip(), ""]
            hd += [_md_to_html(r.description)]
        for note in r.notes:
            md += [f"* {note}"]
            hd += [f"<p>&bull; {_inline_html(note)}</p>"]
        if r.notes:
            md += [""]
        for ttitle, t in r.tables:
            md += [f"### {ttitle}", "", _md_table(t), ""]
            hd += [f"<h3>{html.escape(ttitle)}</h3>", _html_table(t)]
        for fname, rel in r.figures.items():
            md += [f"![{fname}]({rel})", ""]
            png = out / rel
            src = _data_uri(png) if png.is_file() else rel
            hd += [f"<figure><img src='{html.escape(src)}' alt='{html.escape(fname)}'>"
                   f"<figcaption class='muted'>{html.escape(fname)}</figcaption></figure>"]

    if merged_tables:
        md += ["## Merged result files: cross-device view", ""]
        hd += ["<h2 id='merged'>Merged result files: cross-device view</h2>",
               "<p>Result files written on other machines (GPU runs under <code>reports/</code>), grouped by "
               "device so the same op lines up across devices.</p>"]
        for ttitle, t in merged_tables:
            md += [f"### {ttitle}", "", _md_table(t), ""]
            hd += [f"<h3>{html.escape(ttitle)}</h3>", _html_table(t)]

    mt = pd.DataFrame(sorted(meta.items()), columns=["key", "value"]).set_index("key")
    opts = pd.DataFrame(sorted((k, str(v)) for k, v in options.items()), columns=["option", "value"]).set_index("option")
    md += ["## Run metadata", "", _md_table(mt, 100), "", "### Options", "", _md_table(opts), "",
           "Result files: `results.parquet` (all studies, `study` column) and `results/<study>.parquet`; "
           "CSV twins for diffs.", ""]
    hd += ["<h2 id='metadata'>Run metadata</h2>", "<p>Where and how this report was made: machine, versions, git "
           "revision and the command's options.</p>", _html_table(mt, 100), "<h3>Options</h3>", _html_table(opts),
           "<p>Result files: <code>results.parquet</code> (all studies, <code>study</code> column) and "
           "<code>results/&lt;study&gt;.parquet</code>; CSV twins for diffs.</p>", "</body></html>"]
    md_path, html_path = out / "report.md", out / "report.html"
    results.write_text_atomic(md_path, "\n".join(md) + "\n")
    results.write_text_atomic(html_path, "\n".join(hd) + "\n")
    return md_path, html_path


def summary_frame(studies: list[StudyResult]) -> pd.DataFrame:
    rows = []
    for r in studies:
        note = r.notes[0] if r.notes else (r.error.strip().splitlines()[0] if r.error.strip() else "")
        rows.append({"study": r.name, "status": r.status, "rows": len(r.df), "figures": len(r.figures),
                     "seconds": round(r.seconds, 1), "note": note[:110]})
    return pd.DataFrame(rows).set_index("study") if rows else pd.DataFrame()


def cross_device_tables(merged: pd.DataFrame) -> list[tuple[str, pd.DataFrame]]:
    """Merged files grouped by run_device: a count per device, then GB/s / % of copy side by side."""
    d = merged.copy()
    if "run_device" not in d:
        d["run_device"] = "unknown"
    out = []
    info_cols = [c for c in ("run_device", "run_driver", "run_cuda", "run_torch", "run_git", "run_time") if c in d]
    inv = d.groupby(info_cols, dropna=False).size().rename("rows").reset_index()
    out.append(("Devices and runs in the merged files", inv))
    try:
        from . import study_api
        speed = study_api.load("speed")
        if hasattr(speed, "normalize"):   # one op / dtype naming on every device, so rows line up
            d = speed.normalize(d)
        out += [(f"{t} (merged files)", x) for t, x in speed.summarize(d)]
    except Exception:  # noqa: BLE001
        pass
    return out


# ------------------------------------------------------------------ the job

_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")


class ReportNameError(ValueError):
    """A report name that is not a single plain folder name."""


def check_name(name) -> str:
    """``name`` if it is one plain folder name (``cpu-default``, ``h100_run2``); else :class:`ReportNameError`.
    A report replaces ``<reports root>/<name>`` wholesale, so a name must never reach outside that root
    (``..``, ``/abs``, ``a/b``) nor be the root itself (``''``, ``.``)."""
    if not isinstance(name, str) or not name:
        raise ReportNameError("expected a folder name such as 'cpu-default', got an empty name")
    if not _NAME_RE.fullmatch(name) or name in (".", ".."):
        raise ReportNameError(f"expected one plain folder name (letters, digits, '.', '-', '_'; starting with a "
                              f"letter or digit; at most 100 characters), got {name!r}")
    return name


def _is_replaceable(out: Path) -> bool:
    """An existing folder a report may replace: a previous report (metadata.json, report.md or a PARTIAL
    marker) or an empty folder. Anything else belongs to someone else and is never deleted."""
    if out.is_symlink():
        return False
    if not out.exists():
        return True
    if not out.is_dir():
        return False
    if any((out / f).exists() for f in ("metadata.json", "report.md", results.PARTIAL_MARKER)):
        return True
    return not any(out.iterdir())


def _remove_stale_temps(root: Path, name: str) -> None:
    """Temporary folders of earlier runs of this report whose process is gone (killed runs; a replaced report
    left behind by a crash between the two renames of :func:`_swap_in`)."""
    for d in [*root.glob(f".{name}.tmp-*"), *root.glob(f".{name}.old-*")]:
        try:
            pid = int(d.name.rsplit("-", 2)[-2])
            os.kill(pid, 0)
            continue  # still running
        except ProcessLookupError:
            pass
        except (ValueError, IndexError, PermissionError, OSError):
            continue
        shutil.rmtree(d, ignore_errors=True)


def _swap_in(tmp: Path, out: Path) -> None:
    """Replace ``out`` by the finished ``tmp`` (a sibling): two renames, the old report removed afterwards.
    A reader sees the old complete report or the new one; only between the renames (microseconds) no folder."""
    if out.exists():
        old = out.with_name(f".{out.name}.old-{os.getpid()}-{secrets.token_hex(4)}")
        os.rename(out, old)
        try:
            os.rename(tmp, out)
        except BaseException:
            os.rename(old, out)
            raise
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.rename(tmp, out)


def build_report(name: str = "cpu-default", *, studies=None, quick: bool = False, executor=None,
                 merge=(), out_root: Path | str = LOCAL_REPORTS, progress: bool = True, options: dict | None = None,
                 codebooks=()):
    """Run the studies and write reports/<name>/. Returns (report.md path, list of StudyResult).

    The report is written into a hidden temporary sibling (``.<name>.tmp-<pid>-<random>``) that holds a
    ``PARTIAL`` marker until the end, then replaces ``<out_root>/<name>`` in one swap: an interrupted run
    leaves the previous report untouched (and its own temporary folder, marked PARTIAL, which
    :func:`workbench.results.load` and ``--merge`` refuse and the next run removes).

    ``codebooks``: the user's codes (Codebook objects), handed to every study whose ``run`` takes a
    ``codebooks`` argument (the error study and the codebook lab)."""
    from tqdm.auto import tqdm

    from .sweep import executor as make_executor
    check_name(name)
    root = Path(out_root)
    out = root / name
    if not _is_replaceable(out):
        raise ReportNameError(f"{out} exists and is not a workbench report (no metadata.json or report.md); "
                              "refusing to replace it: choose another name or --out")
    meta = results.run_metadata("cpu")
    names = list(studies) if studies else list(DEFAULT_STUDIES)
    merged = results.load(*merge) if merge else None   # refuses unfinished runs before anything is written
    extra = {"extra": list(merge)} if merge else {}
    if codebooks:
        extra["codebooks"] = list(codebooks)
    done: list[StudyResult] = []
    with make_executor(executor) as ex:   # an unreachable scheduler fails here, before any folder exists
        root.mkdir(parents=True, exist_ok=True)
        _remove_stale_temps(root, name)
        tmp = root / f".{name}.tmp-{os.getpid()}-{secrets.token_hex(4)}"
        (tmp / "results").mkdir(parents=True)
        (tmp / results.PARTIAL_MARKER).write_text(
            f"an unfinished `workbench report` run (pid {os.getpid()}, started {meta.get('run_time', '')})\n")
        try:
            bar = tqdm(names, desc="studies", disable=not progress)
            for n in bar:
                bar.set_postfix_str(n)
                res = run_study(n, quick=quick, executor=ex, extra=extra)
                if res.status in ("ok", "partial"):
                    save_figures(res, tmp)
                    if not res.df.empty:
                        _save_frame(res.df, tmp / "results" / f"{res.name}.parquet", meta)
                done.append(res)
            frames = [r.df.assign(study=r.name) for r in done if r.status in ("ok", "partial") and not r.df.empty]
            if frames:
                _save_frame(pd.concat(frames, ignore_index=True), tmp / "results.parquet", meta)
            opts = {"name": name, "quick": quick, "studies": ",".join(names),
                    "merge": " ".join(map(str, merge)) or "-",
                    "executor": str(executor or "local process pool"),
                    "codebooks": ",".join(getattr(c, "name", str(c)) for c in codebooks) or "-", **(options or {})}
            render(name, done, meta, out=tmp, options=opts, merged=merged)
            results.write_text_atomic(tmp / "metadata.json", json.dumps(
                {"meta": meta, "options": opts, "complete": True,
                 "studies": {r.name: {"status": r.status, "seconds": round(r.seconds, 2), "rows": len(r.df),
                                      "error": r.error.strip().splitlines()[0] if r.error.strip() else ""}
                             for r in done}},
                indent=1, sort_keys=True, default=str))
            (tmp / results.PARTIAL_MARKER).unlink()
            _swap_in(tmp, out)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)  # a kill -9 leaves it, marked PARTIAL
            raise
    return out / "report.md", done
