"""Command line: ``workbench <command>`` (also ``python -m workbench``).

  report     run the default studies on this machine's CPU and write reports/<name>/ (the main job;
             <name> is one plain folder name, the folder is replaced only when the run completes)
  study      run one study and print its tables
  parity     every quantization op on every available backend vs the reference, as a matrix
  bench      run the benchmark script (studies/bench/bench_cpu.py or studies/bench/bench_gpu.py)
  codebook   build, inspect and evaluate a codebook (file, expression or registered name)
  backends   list the backends, their devices and ops, and why one is unavailable
"""
from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


class CLIError(Exception):
    """A user error: printed as one line, exit status 2."""


class _UsageError(Exception):
    """An argparse error, printed as one line like a CLIError (no usage block)."""


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # noqa: D102  (argparse would print the usage and exit)
        raise _UsageError(message)


MAX_ELEMENTS = 1 << 28   # element counts on the command line: 1 GiB of float32, more is a typo
_INT_RE = re.compile(r"[0-9][0-9_]{0,18}")


def _ints(text: str, what: str, *, lo: int = 1, hi: int = MAX_ELEMENTS) -> list[int]:
    """Comma-separated integers in [lo, hi], parsed (never evaluated: '9**9**9' is an error, not a hang)."""
    items = [v.strip() for v in str(text).split(",")]
    if not items or any(not _INT_RE.fullmatch(v) for v in items):
        raise CLIError(f"{what}: expected integers separated by commas (e.g. 64,4096), got {text!r}")
    vals = [int(v) for v in items]
    if any(not lo <= v <= hi for v in vals):
        raise CLIError(f"{what}: expected integers from {lo} to {hi}, got {text!r}")
    return vals


def _bounded_int(what: str, lo: int, hi: int):
    """An argparse type: one integer in [lo, hi], or a one-line error naming the argument."""
    def parse(text: str) -> int:
        t = text.strip()
        if not re.fullmatch(r"[+-]?[0-9]{1,19}", t) or not lo <= int(t) <= hi:
            raise argparse.ArgumentTypeError(f"expected an integer from {lo} to {hi}, got {text!r}")
        return int(t)
    parse.__name__ = what.lstrip("-")
    return parse


def _report_name(text: str) -> str:
    from .report import ReportNameError, check_name
    try:
        return check_name(text)
    except ReportNameError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _names(text: str | None) -> list[str] | None:
    """'a,b' -> ['a', 'b'] (None stays None; '' -> [] so that an empty selection is refused, not ignored)."""
    if text is None:
        return None
    return [v.strip() for v in text.split(",") if v.strip()]


def _table(df, **kw) -> str:
    from tabulate import tabulate
    return tabulate(df, headers="keys", tablefmt="github", **kw)


def _executor_spec(args):
    if getattr(args, "scheduler", None):
        return args.scheduler
    if getattr(args, "serial", False):
        return "serial"
    if getattr(args, "workers", None) is not None:   # 0 and negatives are refused by the parser
        from .sweep import local_pool
        return "serial" if args.workers == 1 else local_pool(args.workers)
    return None


def _gpu_executor(args, store):
    """``--gpus``: a :class:`workbench.gpu_sweep.GpuExecutor` (one dask worker per GPU, joining ``--scheduler``
    when given) as a context manager; without ``--gpus`` a context yielding None."""
    import contextlib
    if not getattr(args, "gpus", None):
        return contextlib.nullcontext()
    if getattr(args, "workers", None) is not None or getattr(args, "serial", False):
        raise CLIError("--gpus: runs one dask worker per GPU; leave out --workers / --serial")
    from .gpu_sweep import gpu_executor
    return gpu_executor(args.gpus, getattr(args, "scheduler", None), store=store)


def _gpus_arg(text: str):
    from .gpu_sweep import parse_gpus
    try:
        return parse_gpus(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _progress(args) -> None:
    if getattr(args, "no_progress", False):
        os.environ["KBIT_PROGRESS"] = "0"


def _user_codebooks(args) -> list:
    """``--codebook-module`` plug-ins and the ``kbit_workbench.codebooks`` entry points loaded, then every
    ``--codebook NAME|FILE|EXPR`` built (by the codebook lab's spec parser): a list of Codebook objects."""
    from . import codebooks as cbs
    mods = list(getattr(args, "codebook_module", None) or ())
    status = cbs.load_plugins(mods)
    for m in mods:
        if status.get(str(m)) != "loaded":
            raise CLIError(f"--codebook-module: {m!r}: {status.get(str(m))}")
    specs = list(getattr(args, "codebook", None) or ())
    if not specs:
        return []
    from . import study_api
    try:
        lab = study_api.load("codebook_lab")
    except (ImportError, KeyError) as e:
        raise CLIError(f"--codebook: {str(e).strip(chr(39) + chr(34))}") from None
    out = []
    for spec in specs:
        try:
            out.append(lab.build(spec))
        except (ValueError, TypeError, OSError, KeyError) as e:   # SpecError and CodebookError are ValueErrors
            raise CLIError(f"--codebook {spec!r}: {str(e).strip(chr(39) + chr(34))}") from None
    names = [cb.name for cb in out]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise CLIError(f"--codebook: two codes named {dup[0]!r}")
    return out


# ------------------------------------------------------------------ commands

def cmd_report(args) -> int:
    from . import study_api
    from .report import DEFAULT_STUDIES, build_report, summary_frame
    _progress(args)
    names = _names(args.studies) if args.studies is not None else list(DEFAULT_STUDIES)
    if not names:
        raise CLIError("--studies: expected comma-separated study names, got an empty list")
    try:
        names = [study_api.canonical(n) for n in names]
    except KeyError as e:
        raise CLIError(str(e).strip("'\"")) from None
    from . import results
    for d in args.merge or ():
        if not Path(d).exists():
            raise CLIError(f"--merge: {d!r} does not exist")
        try:
            results.result_files(d)
        except results.IncompleteResults as e:
            raise CLIError(f"--merge: {e}") from None
    user = _user_codebooks(args)
    with _gpu_executor(args, Path(args.out) / f"{args.name}-gpus") as gex:
        md, done = build_report(args.name, studies=names, quick=args.quick, executor=gex or _executor_spec(args),
                                merge=args.merge or (), out_root=args.out, progress=not args.no_progress,
                                codebooks=user, options={"command": "workbench " + " ".join(sys.argv[1:])})
    print(_table(summary_frame(done)))
    print(f"\nreport: {md}\n        {md.with_suffix('.html')}")
    return 1 if any(r.status == "failed" for r in done) else 0


def _model_specs(args) -> list[str]:
    """``--spec``: QuantSpec texts for the model study, each checked here (a bad one is one CLI error line)."""
    from . import study_api
    from .quant_spec import QuantSpec
    from .validation import QuantInputError
    if study_api.canonical(args.name) != "model":
        raise CLIError(f"--spec: only the model study takes quantization specs, not {args.name!r}")
    for t in args.spec:
        try:
            QuantSpec.parse(t)
        except QuantInputError as e:
            raise CLIError(f"--spec {t!r}: {e}") from None
    return list(args.spec)


def cmd_study(args) -> int:
    from .report import run_study, save_figures
    from .sweep import executor
    _progress(args)
    if args.out and Path(args.out).exists() and not Path(args.out).is_dir():
        raise CLIError(f"--out: {args.out!r} is a file; expected a directory")
    user = _user_codebooks(args)
    extra = {}
    if user:
        import inspect

        from . import study_api
        try:
            mod = study_api.load(args.name)
        except (ImportError, KeyError) as e:
            raise CLIError(str(e).strip("'\"")) from None
        if "codebooks" not in inspect.signature(mod.run).parameters:
            raise CLIError(f"--codebook: study {args.name!r} takes no codebooks (error and codebook_lab do)")
        extra["codebooks"] = user
    if getattr(args, "weights", None) or getattr(args, "layers", None):
        from . import study_api
        if not args.weights:
            raise CLIError("--layers: filters --weights; give --weights PATH too")
        if study_api.canonical(args.name) != "error":
            raise CLIError(f"--weights: only the error study takes weights, not {args.name!r}")
        if not Path(args.weights).exists():
            raise CLIError(f"--weights: {args.weights!r} does not exist")
        extra.update(weights=args.weights, layers=args.layers)
    if getattr(args, "spec", None):
        extra["specs"] = _model_specs(args)
    store = Path(args.out) if args.out else ROOT / "reports" / "local" / f"gpus-{args.name}"
    with _gpu_executor(args, store) as gex, executor(gex or _executor_spec(args)) as ex:
        res = run_study(args.name, quick=args.quick, executor=ex, extra=extra)
    if gex is not None and res.status == "failed" and res.error.startswith("GpuSweepError: "):
        raise CLIError("--gpus: " + res.error.splitlines()[0].removeprefix("GpuSweepError: "))
    if res.status not in ("ok", "partial"):
        print(f"study {res.name}: {res.status}: {res.error}", file=sys.stderr)
        return 2 if res.status == "unavailable" else 1
    if res.status == "partial":
        print(f"study {res.name}: partial: {res.error}", file=sys.stderr)
    print(f"# {res.title} ({res.seconds:.1f} s, {len(res.df)} rows)")
    for note in res.notes:
        print(f"* {note}")
    for title, t in res.tables:
        print(f"\n## {title}\n{_table(t)}")
    if args.out:
        from . import results
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        save_figures(res, out)
        p = results.save(res.df, out / f"{res.name}.parquet", results.run_metadata("cuda" if args.gpus else "cpu"))
        print(f"\nresults: {p}; figures: {', '.join(res.figures.values()) or '-'}")
    return 0


def cmd_parity(args) -> int:
    from . import parity
    sizes = _ints(args.sizes, "--sizes") if args.sizes is not None else None
    bss = _ints(args.blocksizes, "--blocksizes", hi=1 << 16) if args.blocksizes is not None else None
    if bss:
        from .validation import check_blocksize
        for b in bss:
            try:
                check_blocksize(b)
            except ValueError as e:
                raise CLIError(f"--blocksizes: {e}") from None
    backends, ops = _names(args.backends), _names(args.ops)
    families = [f for v in args.family for f in _names(v)] if args.family is not None else None
    try:
        parity.check_selection(backends, families, ops)
    except parity.SelectionError as e:
        raise CLIError(f"--{'family' if e.arg == 'families' else e.arg}: {e.detail}") from None
    df = parity.run_parity(args.device, backends=backends, families=families, ops=ops, quick=args.quick,
                           seed=args.seed, sizes=sizes, blocksizes=bss, progress=not args.no_progress)
    if parity.compared(df).empty:
        from .backends import list_backends
        avail = {b.name: b for b in list_backends()}
        why = [f"{n} is not available on {args.device} ({avail[n].reason or 'no such device'})"
               for n in (backends or ()) if n in avail and (not avail[n].available or args.device not in avail[n].devices)]
        if not why and len(df):
            why = [f"the selected cases compared nothing ({', '.join(sorted(set(df['case'].astype(str))))})"]
        raise CLIError("nothing was compared: " + ("; ".join(why) if why else
                       "no available backend on this device implements the selected ops/families"))
    print(f"parity on {args.device}, seed {int(df['seed'].iloc[0]) if len(df) else args.seed}: "
          "backend x op vs the reference (cells: 'level: passed/compared' or 'FAIL: failed/compared')")
    print(parity.format_matrix(df))
    bad = parity.failures(df)
    if len(bad):
        cols = [c for c in ("backend", "op", "codebook", "optimizer", "dtype", "blocksize", "n", "mismatches", "max_diff",
                          "detail")
                if c in bad]
        print(f"\n{len(bad)} failing comparisons (first 20):")
        print(_table(bad[cols].head(20), showindex=False))
    mods = {k: v for k, v in parity.load_case_modules().items() if v == "loaded"}
    if mods:
        print(f"\ncase modules loaded: {', '.join(mods)}")
    print(f"\n{parity.summary_line(df)}")
    if args.out:
        from . import results
        p = results.save(df, args.out, results.run_metadata(args.device))
        print(f"results: {p}")
    return 1 if len(bad) else 0


def cmd_bench(args, rest: list[str]) -> int:
    import torch
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    script = ROOT / "studies" / "bench" / f"bench_{'gpu' if device == 'cuda' else 'cpu'}.py"
    if not script.exists():
        raise CLIError(f"bench: {script.relative_to(ROOT)} does not exist yet (the {device} benchmark is written "
                       "with the kernel work)")
    cmd = [sys.executable, str(script), *rest]
    print("running:", " ".join(cmd), flush=True)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return subprocess.call(cmd, cwd=ROOT, env=env)


def _check_expression(spec: str) -> None:
    """Refuse a SPEC expression that could not finish or would fill memory before it is evaluated: nested or
    large powers ('9**9**9') and numbers above a million ('linspace(-1,1,10**10)' is refused by the first rule,
    'arange(0,1e12)' by the second). A codebook has at most 256 values."""
    import ast
    import math
    try:
        tree = ast.parse(spec.strip(), mode="eval")
    except SyntaxError:
        return  # the lab reports it as not a valid expression
    for node in ast.walk(tree):
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Pow):
            def num(v):
                try:
                    return float(ast.literal_eval(v))
                except (ValueError, TypeError, SyntaxError, OverflowError, MemoryError):
                    return None
            base, exp = num(node.left), num(node.right)
            if exp is None or abs(exp) > 64:
                small = False   # 9**9**9: the exponent must be a number of at most 64
            elif base is None:
                small = True    # an array or an expression to a small power: linspace(-1,1,16)**3
            else:
                small = exp <= 0 or abs(base) <= 1 or exp * math.log10(abs(base)) <= 6
            if not small:
                raise CLIError(f"SPEC: {spec!r}: powers are limited to a constant exponent of at most 64 and, for "
                               "two numbers, a result of at most 1e6 (a codebook has at most 256 values)")
        if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)) and not isinstance(node.value, bool) \
                and abs(node.value) > 1e6:
            raise CLIError(f"SPEC: {spec!r}: numbers above 1e6 are refused (a codebook has at most 256 values)")


def _kernel_sized(cb):
    """``cb`` with its table padded (repeating the last entry, never emitted) to what a kernel takes: 16 entries
    (the 4-bit ops) up to 16 levels, else 256 (the 8-bit ops); the buckets, and so the rounding, are unchanged."""
    import numpy as np

    from . import codebooks as cbs
    size = 16 if cb.size <= 16 else 256
    if cb.size == size:
        return cb
    table = np.concatenate([cb.table, np.full(size - cb.size, cb.table[-1], np.float32)])
    return cbs.Codebook(cb.name, table, cb.bounds, cb.bucket_codes, dict(cb.meta))


def cmd_codebook(args) -> int:
    import numpy as np
    import pandas as pd

    from . import codebooks as cbs
    from . import study_api
    try:
        lab = study_api.load("codebook_lab")  # the codebook lab study: spec parsing, fitting, comparison
    except (ImportError, KeyError) as e:
        raise CLIError(str(e).strip("'\"")) from None
    _user_codebooks(args)   # plug-ins: the kbit_workbench.codebooks entry points and --codebook-module files
    from .validation import check_blocksize
    try:
        check_blocksize(args.blocksize)
    except ValueError as e:
        raise CLIError(f"--blocksize: {e}") from None
    bss = _ints(args.blocksizes, "--blocksizes", hi=1 << 16) if args.blocksizes is not None else [args.blocksize]
    for b in bss:
        try:
            check_blocksize(b)
        except ValueError as e:
            raise CLIError(f"--blocksizes: {e}") from None
    sources = _eval_sources(args.data)
    if args.save:
        save = Path(args.save)
        if save.is_dir():
            raise CLIError(f"--save: {args.save!r} is a directory; expected a file name such as code.json")
        if not save.parent.is_dir():
            raise CLIError(f"--save: directory {str(save.parent)!r} does not exist")
    baselines = _names(args.compare) or []
    for b in baselines:
        if b not in cbs.names():
            raise CLIError(f"--compare: unknown codebook {b!r}; expected registered names from: {', '.join(cbs.names())}")
    if Path(args.spec).is_dir():
        raise CLIError(f"SPEC: {args.spec!r} is a directory; expected a registered name, a codebook file "
                       "(.json, .npy, .txt) or an expression such as 'linspace(-1,1,16)'")
    key = args.spec.strip().lower()
    if not (key in getattr(lab, "FIT_METHODS", {}) or key in cbs.names() or Path(args.spec).exists()
            or Path(args.spec).suffix.lower() in (".json", ".npy", ".txt", ".csv")):
        _check_expression(args.spec)   # the lab evaluates it
    try:
        cb = lab.build(args.spec, args.fit_data, fit_blocksize=args.blocksize, name=args.name, bits=args.bits)
    except (lab.SpecError, cbs.CodebookError) as e:
        raise CLIError(str(e)) from None
    except (ValueError, TypeError, OSError, KeyError) as e:  # a file or expression of the wrong shape or type
        if args.spec.strip().lower() in getattr(lab, "FIT_METHODS", {}):   # a fitted code: the data was wrong
            raise CLIError(f"--fit-data: {str(e).strip(chr(39) + chr(34))}") from None
        raise CLIError(f"SPEC: {args.spec!r} does not give a list of real numbers ({type(e).__name__}: "
                       f"{(str(e).splitlines() or ['-'])[0][:120]})") from None
    print(cbs.describe(cb))
    if cb.meta:
        print(f"meta: {cb.meta}")
    v = np.unique(cb.values)
    print(f"levels: {len(v)}  min gap: {np.diff(v).min():.6g}  max gap: {np.diff(v).max():.6g}")
    if args.save:
        import json

        from .results import write_text_atomic
        try:
            write_text_atomic(args.save, json.dumps(cb.to_dict(), indent=1))
        except OSError as e:
            raise CLIError(f"--save: cannot write {args.save!r} ({e.strerror or e})") from None
        print(f"saved: {args.save}")
    if args.no_eval:
        return 0
    ev = _kernel_sized(cb)   # a 3-bit code (8 entries) runs through the 4-bit kernels padded to 16
    if ev is not cb:
        print(f"note: {cb.size} entries are evaluated through the {ev.bits}-bit kernels (table padded to {ev.size} "
              f"entries, never emitted; stored as {ev.bits}-bit codes)")
    levels = {c.name: int(c.bucket_codes.size) for c in [cb, *(cbs.get(b) for b in baselines)]}
    print(f"{levels[cb.name]} levels = {np.log2(levels[cb.name]):.2f} bits of information per value; stored as "
          f"{ev.bits}-bit codes by the {ev.bits}-bit kernels (the 'stored_bits' column counts what is stored: codes "
          "plus float32 absmax per block)")
    frames = []
    for data in sources:
        try:
            df, fig = lab.compare(ev, data=data, blocksizes=bss, baselines=tuple(baselines), n=args.n)
        except Exception as e:  # noqa: BLE001  (a data source that cannot load: one line)
            if type(e).__name__ == "DataUnavailable":
                raise CLIError(f"--data {data}: {e}") from None
            raise
        import matplotlib.pyplot as plt
        plt.close(fig)
        frames.append(df)
    df = pd.concat(frames, ignore_index=True)
    df["levels"] = df["codebook"].map(levels)
    df["code_bits"] = np.log2(df["levels"].astype(float)).round(3)
    df = df.rename(columns={"bits": "stored_bits"})
    cols = [c for c in ("data", "codebook", "levels", "code_bits", "blocksize", "stored_bits", "mae", "mse", "sqnr_db",
                        "max_err", "mse_vs_nf4") if c in df]
    print(f"\nquantize -> dequantize error on {args.n} values ({', '.join(sources)}), backend auto:")
    print(_table(df[cols], showindex=False, floatfmt=".6g"))
    return 0


EVAL_SOURCES = ("normal", "laplace", "student-t", "uniform", "minilm")


def _eval_sources(text: str) -> list[str]:
    """``--data``: comma-separated data sources for the evaluation (the error study's sources)."""
    sources = _names(text) or []
    if not sources:
        raise CLIError(f"--data: expected comma-separated sources from {', '.join(EVAL_SOURCES)}, got {text!r}")
    for s in sources:
        if s not in EVAL_SOURCES:
            raise CLIError(f"--data: unknown source {s!r}; expected one of {', '.join(EVAL_SOURCES)}")
    return sources


def cmd_backends(args) -> int:
    from .backends import list_backends
    rows = [{"backend": b.name, "available": "yes" if b.available else "no", "devices": ",".join(b.devices) or "-",
             "ops": ", ".join(b.ops) if b.ops else "-", "reason": b.reason} for b in list_backends()]
    from tabulate import tabulate
    print(tabulate(rows, headers="keys", tablefmt="github", maxcolwidths=[None, None, None, 60, 50]))
    return 0


# ------------------------------------------------------------------ parser

_COMMANDS = ("report", "study", "parity", "bench", "codebook", "backends")

def _add_exec(p) -> None:
    g = p.add_argument_group("execution")
    g.add_argument("--scheduler", metavar="ADDRESS", help="run sweeps on a dask.distributed scheduler "
                   "(e.g. tcp://127.0.0.1:8786) instead of a local process pool")
    g.add_argument("--workers", type=_bounded_int("--workers", 1, 1024), metavar="N",
                   help="local process-pool size (default: the usable cores)")
    g.add_argument("--serial", action="store_true", help="run sweeps in this process (debugging)")
    g.add_argument("--gpus", type=_gpus_arg, metavar="all|N", help="one dask worker per GPU (dask-cuda "
                   "LocalCUDACluster, or the workers of --scheduler): the GPU studies (parity on CUDA, speed) split "
                   "into per-GPU tasks, rows tagged gpu_index / gpu_name (extra: kbit-workbench[gpus])")
    g.add_argument("--no-progress", action="store_true", help="no progress bars")


def _add_codebooks(p) -> None:
    g = p.add_argument_group("your codebooks")
    g.add_argument("--codebook", action="append", metavar="NAME|FILE|EXPR",
                   help="add a code to the error study and the codebook lab (repeatable): a registered name, a "
                        "file (.json list, {'values': [...]} or Codebook.to_dict(), .npy, .txt) or an expression "
                        "such as 'linspace(-1,1,16)'")
    g.add_argument("--codebook-module", action="append", metavar="PATH|MODULE",
                   help="import a Python file or module that registers codebooks (workbench.codebooks.register) "
                        "before --codebook names are looked up (repeatable); installed packages can use the "
                        "entry-point group kbit_workbench.codebooks instead")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="workbench", description=__doc__.split("\n\n")[0],
                                epilog=__doc__.split("\n\n", 1)[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", metavar="command")

    r = sub.add_parser("report", help="run the default studies on CPU and write reports/<name>/",
                       description="Run studies (default: all available) and write reports/<name>/report.md, "
                                   "report.html, PNG figures and results.parquet; prints a summary table.")
    r.add_argument("--name", default="cpu-default", type=_report_name,
                   help="report folder name, one plain folder under --out (default: %(default)s)")
    r.add_argument("--quick", action="store_true", help="small sizes and few seeds (about a minute)")
    r.add_argument("--studies", metavar="A,B", help="comma-separated study names (default: all); see `workbench study -h`")
    r.add_argument("--merge", nargs="+", metavar="DIR", help="result files/directories from other machines "
                   "(e.g. reports/gpu-h100 reports/gpu-h200) to fold into the cross-device view")
    r.add_argument("--out", default=str(ROOT / "reports" / "local"),
                   help="reports root (default: %(default)s, untracked; regenerate a committed reference report on "
                        "purpose with --out reports --name cpu-default)")
    _add_exec(r)
    _add_codebooks(r)
    r.set_defaults(func=cmd_report)

    from .study_api import STUDIES
    s = sub.add_parser("study", help="run one study and print its tables",
                       description=f"Run one study. Known: {', '.join(STUDIES)}.")
    s.add_argument("name", help="study name")
    s.add_argument("--quick", action="store_true")
    s.add_argument("--out", metavar="DIR", help="also save results + figures to DIR")
    s.add_argument("--weights", metavar="PATH", help="error study: run on these weights (a .safetensors file or a "
                   "checkpoint directory, sharded or not; memory-mapped)")
    s.add_argument("--layers", metavar="REGEX", help="with --weights: only tensors whose name matches (re.search)")
    s.add_argument("--spec", action="append", metavar="SPEC", help="model study: evaluate this quantization spec "
                   "on every Linear, next to NF4 (repeatable; CODE@GROUP[+dq][/FORMAT][/rotR], e.g. "
                   "nf3@64/e4m4/rot64, int4-minmax@32, nf4@row/fp16; see workbench/quant_spec.py)")
    _add_exec(s)
    _add_codebooks(s)
    s.set_defaults(func=cmd_study)

    q = sub.add_parser("parity", help="backend x op parity matrix vs the reference",
                       description="Run every quantization op on every available backend on fresh random inputs "
                                   "(fp32/fp16/bf16, blocksizes 32..4096, odd sizes) and compare with the reference "
                                   "at the declared level. Exit status 1 when a comparison fails.")
    q.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    q.add_argument("--sizes", metavar="N,N", help="element counts to test (default: odd sizes and tails per blocksize)")
    q.add_argument("--blocksizes", metavar="B,B", help="blocksizes (default: all of 32..4096)")
    q.add_argument("--backends", metavar="A,B", help="only these backends")
    q.add_argument("--ops", metavar="OP,OP", help="only these ops")
    q.add_argument("--family", action="append", metavar="F", help="only this op family (repeatable or "
                   "comma-separated): quant, int8, optim")
    q.add_argument("--quick", action="store_true", help="fewer blocksizes")
    q.add_argument("--seed", type=_bounded_int("--seed", 0, 2 ** 31 - 1), help="input seed (default: fresh)")
    q.add_argument("--out", metavar="FILE", help="save the tidy rows (parquet + csv)")
    q.add_argument("--no-progress", action="store_true")
    q.set_defaults(func=cmd_parity)

    b = sub.add_parser("bench", help="run studies/bench/bench_cpu.py or studies/bench/bench_gpu.py",
                       description="Run the benchmark script for the device; arguments after the options are "
                                   "passed through to the script.")
    b.add_argument("--device", choices=("cpu", "cuda"), help="default: cuda when available")
    b.set_defaults(func=cmd_bench)

    c = sub.add_parser("codebook", help="build, inspect and evaluate a codebook",
                       description="SPEC: a registered name (nf4, fp4, af4, e2m1, dynamic, ...), a file (.json list or "
                                   "{'values': [...]}, .npy, .txt), a NumPy expression such as 'linspace(-1,1,16)', or "
                                   "'lloyd-max' / 'kmeans' / 'quantile' (fitted on --fit-data at --blocksize). Prints the "
                                   "table, bounds and the error on --data (default N(0,1) and Laplace).",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    c.add_argument("spec")
    c.add_argument("--blocksize", type=_bounded_int("--blocksize", 1, 1 << 16), default=64,
                   help="blocksize for evaluation and fitting")
    c.add_argument("--blocksizes", metavar="B,B", help="evaluate at several blocksizes")
    c.add_argument("--bits", type=_bounded_int("--bits", 1, 8), default=4, help="bits of a fitted code (1..8)")
    c.add_argument("--fit-data", default="normal", help="data source for fitted codes: normal, laplace, student-t, "
                   "uniform, minilm")
    c.add_argument("--data", default="normal,laplace", help="data sources for the evaluation, comma-separated: "
                   "normal, laplace, student-t, uniform, minilm (the packaged all-MiniLM-L6-v2 weights)")
    c.add_argument("--n", type=_bounded_int("--n", 1, MAX_ELEMENTS), default=1 << 18,
                   help="values per evaluation sample")
    c.add_argument("--compare", default="nf4,fp4", help="baseline codebooks, comma-separated ('' for none)")
    c.add_argument("--name", help="name of the new codebook")
    c.add_argument("--save", metavar="FILE.json", help="write the codebook (table, bounds, bucket codes)")
    c.add_argument("--no-eval", action="store_true", help="only print the table")
    c.add_argument("--codebook-module", action="append", metavar="PATH|MODULE",
                   help="import a Python file or module that registers codebooks first (repeatable); SPEC may then "
                        "name them")
    c.set_defaults(func=cmd_codebook)

    k = sub.add_parser("backends", help="list backends and their ops")
    k.set_defaults(func=cmd_backends)
    return p


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    os.environ.setdefault("NUMBA_NUM_THREADS", str(min(os.cpu_count() or 1, 8)))
    os.environ.setdefault("MPLBACKEND", "Agg")  # figures go to files; studies never pick a backend themselves
    if str(ROOT) not in sys.path and (ROOT / "studies").is_dir():
        sys.path.insert(0, str(ROOT))  # the studies package lives next to workbench/
    parser = build_parser()
    try:
        args, rest = parser.parse_known_args(argv)
    except _UsageError as e:
        cmd = next((a for a in argv if not a.startswith("-")), "")
        print(f"workbench{' ' + cmd if cmd in _COMMANDS else ''}: error: {e}", file=sys.stderr)
        return 2
    if args.command is None:
        parser.print_help()
        return 2
    if rest and args.command != "bench":
        print(f"workbench {args.command}: error: unrecognized arguments: {' '.join(rest)}", file=sys.stderr)
        return 2
    try:
        return args.func(args, rest) if args.command == "bench" else args.func(args)
    except CLIError as e:
        print(f"workbench {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except _UsageError as e:
        print(f"workbench {args.command}: error: {e}", file=sys.stderr)
        return 2
    except Exception as e:  # noqa: BLE001  (known input errors: one line, not a traceback)
        from .backends import BackendUnavailable
        from .codebooks import CodebookError
        from .validation import QuantInputError
        if isinstance(e, (QuantInputError, CodebookError, BackendUnavailable, KeyError, ValueError)):
            print(f"workbench {args.command}: error: {str(e).strip(chr(39) + chr(34))}", file=sys.stderr)
            return 2
        from .results import IncompleteResults
        from .gpu_sweep import GpuSweepError
        if isinstance(e, GpuSweepError):
            print(f"workbench {args.command}: error: --gpus: {e}", file=sys.stderr)
            return 2
        from .sweep import SchedulerError
        if isinstance(e, SchedulerError):
            print(f"workbench {args.command}: error: --scheduler: {e}", file=sys.stderr)
            return 2
        if isinstance(e, IncompleteResults):
            print(f"workbench {args.command}: error: --merge: {e}", file=sys.stderr)
            return 2
        if isinstance(e, RuntimeError) and str(e).startswith("device:"):
            print(f"workbench {args.command}: error: {e}", file=sys.stderr)
            return 2
        raise


if __name__ == "__main__":
    sys.exit(main())
