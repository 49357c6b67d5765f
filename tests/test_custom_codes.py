"""Issue 21: custom codes are first-class -- by value in every sweep task, kept by every summary, named on the
command line (--codebook / --codebook-module / the kbit_workbench.codebooks entry points), skipped rows reported."""
from __future__ import annotations

import json
import pickle
from concurrent.futures import Executor, Future

import numpy as np
import pandas as pd
import pytest

from studies import codebook_lab, error_study
from workbench import cli
from workbench import codebooks as cbs
from workbench.report import run_study

SMALL = dict(sources=("normal",), methods=("nf4",), blocksizes=(64,), n=4096)


class RegistrylessWorker(Executor):
    """A worker that never saw the parent's registrations (a spawned process, a dask worker): each task is
    pickled, the custom names are unregistered while it runs, then restored."""

    def __init__(self, hide):
        self.hide = hide

    def submit(self, fn, /, *args, **kwargs):
        fn, args, kwargs = pickle.loads(pickle.dumps((fn, args, kwargs)))
        saved = {k: cbs._REGISTRY.pop(k) for k in self.hide if k in cbs._REGISTRY}
        cached = {k: cbs._CACHE.pop(k) for k in self.hide if k in cbs._CACHE}
        f: Future = Future()
        try:
            f.set_result(fn(*args, **kwargs))
        except BaseException as e:  # noqa: BLE001
            f.set_exception(e)
        finally:
            cbs._REGISTRY.update(saved)
            cbs._CACHE.update(cached)
        return f


@pytest.fixture
def my_code():
    cb = cbs.from_values([-1, -0.55, -0.2, 0, 0.2, 0.55, 1], "tst-my7", pad_to_pow2=True)
    cbs.register("tst-my7", cb, overwrite=True)
    yield cb
    cbs._REGISTRY.pop("tst-my7", None)
    cbs._CACHE.pop("tst-my7", None)


def test_codebook_travels_by_value_and_pickles_without_its_tensor_cache(my_code):
    my_code.tensors("cpu")
    assert my_code._tensor_cache
    back = pickle.loads(pickle.dumps(my_code))
    assert back._tensor_cache == {}   # the cached tensors stay behind; the copy starts empty
    assert back.name == my_code.name and np.array_equal(back.table, my_code.table)
    assert np.array_equal(cbs.from_dict(json.loads(json.dumps(my_code.to_dict()))).bounds, my_code.bounds)
    fp4 = cbs.from_dict(cbs.get("fp4").to_dict())          # an unsorted table keeps its buckets
    assert np.array_equal(fp4.bucket_codes, cbs.get("fp4").bucket_codes)


def test_error_study_custom_code_on_a_worker_without_the_registry(my_code):
    df, figs = error_study.run(executor=RegistrylessWorker(["tst-my7"]), codebooks=["tst-my7"], **SMALL)
    assert df["skipped"].isna().all(), df[df["skipped"].notna()]
    mine = df[df["method"] == "tst-my7"]
    assert len(mine) == 1 and mine["mae"].iloc[0] > 0 and mine["levels"].iloc[0] == 7
    # every summary table keeps the custom method (it was reindexed away before)
    for title, t in error_study.summarize(df):
        assert "tst-my7" in t.index, title
    # and the figure shows it
    ax = figs["error_sqnr_by_blocksize"].axes[0]
    assert "tst-my7" in [ln.get_label() for ln in ax.get_lines()]


def test_skipped_rows_make_the_study_partial_and_say_which_and_why(monkeypatch, my_code):
    real = error_study.make_data

    def flaky(source, n, seed):
        if source == "laplace":
            raise error_study.DataUnavailable("laplace sampler offline")
        return real(source, n, seed)
    monkeypatch.setattr(error_study, "make_data", flaky)
    res = run_study("error", quick=True, extra=dict(SMALL, sources=("normal", "laplace"), codebooks=[my_code]))
    assert res.status == "partial", res.error
    assert "laplace sampler offline" in res.error and "2 of" in res.error
    title, t = res.tables[-1]
    assert title.startswith("Skipped rows") and set(t["source"]) == {"laplace"}
    assert set(t["method"]) == {"nf4", "tst-my7"}
    assert any("laplace sampler offline" in n for n in res.notes)


def test_codebook_lab_run_takes_user_codes(monkeypatch, my_code):
    calls = []
    real = codebook_lab.compare

    def small(new, data=None, blocksizes=(), **kw):
        calls.append([getattr(c, "name", c) for c in new])
        return real(new, data=data, blocksizes=(64,), n=4096)
    monkeypatch.setattr(codebook_lab, "compare", small)
    df, _ = codebook_lab.run(quick=True, codebooks=["tst-my7"])
    assert all("tst-my7" in c for c in calls)
    assert "tst-my7" in set(df["codebook"])
    assert all("tst-my7" in t.index for _, t in codebook_lab.summarize(df))


def test_cli_codebook_options(tmp_path, capsys, monkeypatch):
    mod = tmp_path / "mycodes.py"
    mod.write_text("from workbench import codebooks as cbs\n"
                   "cbs.register('tst-plug5', cbs.from_values([-1, -.4, 0, .4, 1], 'tst-plug5', pad_to_pow2=True),"
                   " overwrite=True)\n")
    (tmp_path / "mine.json").write_text("[-1, -0.5, 0, 0.5, 1]")
    p = cli.build_parser()
    for cmd in (["report"], ["study", "error"], ["study", "codebook_lab"]):
        args = p.parse_args([*cmd, "--codebook", "tst-plug5", "--codebook", str(tmp_path / "mine.json"),
                             "--codebook", "linspace(-1,1,12)", "--codebook-module", str(mod)])
        got = cli._user_codebooks(args)
        assert [c.name for c in got] == ["tst-plug5", "mine", "linspace(-1,1,12)"]
    # a study that takes no codebooks, an unknown name, a broken module: one-line errors, exit 2
    assert cli.main(["study", "bnb_table", "--codebook", "nf4"]) == 2
    assert cli.main(["study", "error", "--codebook", "no-such-code-xyz"]) == 2
    assert cli.main(["study", "error", "--codebook-module", str(tmp_path / "missing.py")]) == 2
    assert cli.main(["study", "error", "--codebook", "[0.5, -1, 1]"]) == 2     # unsorted: refused like the API
    err = capsys.readouterr().err
    assert "takes no codebooks" in err and "no-such-code-xyz" in err and "sorted" in err
    cbs._REGISTRY.pop("tst-plug5", None)
    cbs._CACHE.pop("tst-plug5", None)


def test_entry_point_plugins_register_codes(monkeypatch):
    from importlib import metadata

    class EP:
        name, value = "tst-ep4", "x:y"

        def load(self):
            return lambda: cbs.from_values([-1, 0, 1], "whatever", pad_to_pow2=True)
    real = metadata.entry_points
    monkeypatch.setattr(metadata, "entry_points",
                        lambda **kw: [EP()] if kw.get("group") == cbs.PLUGIN_GROUP else real(**kw))
    monkeypatch.setattr(cbs, "_PLUGINS_LOADED", {})
    status = cbs.load_plugins()
    assert list(status.values()) == ["loaded"] and "tst-ep4" in cbs.names()
    cbs._REGISTRY.pop("tst-ep4", None)
    cbs._CACHE.pop("tst-ep4", None)


# ------------------------------------------------------------------ workbench codebook (issue 21 item 6)

@pytest.mark.parametrize("spec,levels,info_bits,stored", [("linspace(-1,1,2)", 2, "1.00", 4),
                                                          ("[-1,-0.5,0,0.5,1]", 5, "2.32", 4),
                                                          ("linspace(-1,1,256)", 256, "8.00", 8)])
def test_codebook_command_evaluates_any_size_and_labels_bits(capsys, spec, levels, info_bits, stored):
    assert cli.main(["codebook", spec, "--n", "2048", "--compare", "nf4", "--data", "normal"]) == 0
    out = capsys.readouterr().out
    assert f"{levels} levels = {info_bits} bits of information per value; stored as {stored}-bit codes" in out
    header = next(ln for ln in out.splitlines() if ln.startswith("| data"))
    assert all(c in header for c in ("levels", "code_bits", "stored_bits"))


def test_codebook_command_evaluates_on_minilm(capsys):
    try:
        error_study.make_data("minilm", 64, 0)
    except error_study.DataUnavailable as e:
        pytest.skip(f"MiniLM weights not installed: {e}")
    assert cli.main(["codebook", "nf4", "--n", "2048", "--compare", "", "--data", "minilm"]) == 0
    out = capsys.readouterr().out
    assert "| minilm" in out
    assert cli.main(["codebook", "nf4", "--data", "bogus"]) == 2
    assert "--data: unknown source 'bogus'" in capsys.readouterr().err


@pytest.mark.parametrize("spec,why", [("[0.5,-1,1]", "sorted ascending"), ("[-1,0,0,1]", "duplicate value 0.0")])
def test_codebook_command_refuses_unsorted_or_duplicate_values_like_the_api(capsys, spec, why):
    with pytest.raises(cbs.CodebookError):
        cbs.from_values(json.loads(spec))
    assert cli.main(["codebook", spec, "--no-eval"]) == 2
    assert why in capsys.readouterr().err


def test_custom_code_on_a_real_dask_worker_process(my_code):
    """A dask worker process never imports the parent's registrations: the code must arrive by value."""
    distributed = pytest.importorskip("dask.distributed")
    from workbench.sweep import executor
    with distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address=None) as cl:
        with executor(cl.scheduler_address) as ex:
            df, _ = error_study.run(executor=ex, codebooks=[my_code], **SMALL)
    assert df["skipped"].isna().all(), df[df["skipped"].notna()]
    assert set(df["method"]) == {"nf4", "tst-my7"}


def test_error_figures_are_legible_distinct_styles_and_a_legend_per_panel(my_code):
    df, figs = error_study.run(executor=None, codebooks=[my_code], **dict(SMALL, sources=("normal", "laplace"),
                                                                        methods=("nf4", "fp4", "af4")))
    fig = figs["error_sqnr_by_blocksize"]
    for ax in fig.axes:
        assert ax.get_legend() is not None, ax.get_title()
        lines = ax.get_lines()
        assert len({(ln.get_marker(), ln.get_linestyle(), ln.get_color()) for ln in lines}) == len(lines)
        assert len({ln.get_marker() for ln in lines}) == len(lines)


def test_codebook_command_sees_plugin_codes(tmp_path, capsys):
    mod = tmp_path / "codes6.py"
    mod.write_text("from workbench import codebooks as cbs\n"
                   "cbs.register('tst-six', cbs.from_values([-1, -.5, -.1, .1, .5, 1], 'tst-six', pad_to_pow2=True),"
                   " overwrite=True)\n")
    try:
        assert cli.main(["codebook", "tst-six", "--codebook-module", str(mod), "--no-eval"]) == 0
        assert "Codebook('tst-six'" in capsys.readouterr().out
    finally:
        cbs._REGISTRY.pop("tst-six", None)
        cbs._CACHE.pop("tst-six", None)


def test_key_findings_name_the_best_code_and_the_users(my_code):
    df, _ = error_study.run(executor=None, codebooks=[my_code], **dict(SMALL, methods=("nf4", "fp4")))
    head = error_study.notes(df)[0]
    assert head.startswith("best 4-bit code at blocksize 64 on normal data: nf4") and "tst-my7" in head
    lab, _ = codebook_lab.compare(my_code, data="normal", blocksizes=(64,), n=4096)
    assert codebook_lab.notes(lab)[0].startswith("normal data, blocksize 64: lowest error nf4")
