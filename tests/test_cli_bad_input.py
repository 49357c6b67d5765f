"""Issue 17 (command line, report, parity harness, result files): bad input is a one-line error naming the
argument (exit status 2), never a traceback, a hang, a vacuous pass or lost files; issue 21 (3-bit codes)."""
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch

from workbench import cli, parity, report, results, study_api
from workbench.backends import list_backends

ROOT = Path(__file__).resolve().parent.parent
OPTIM_BACKENDS = [b.name for b in list_backends() if b.available and b.name != "reference" and "cpu" in b.devices
                  and "optimizer_update_32bit" in b.ops]


def run(capsys, *argv):
    rc = cli.main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def one_line_error(rc, err, *needles):
    assert rc == 2, err
    lines = [ln for ln in err.splitlines() if ln.strip() and "it/s" not in ln]
    assert len(lines) == 1 and "Traceback" not in err, err
    for n in needles:
        assert n in lines[0], (n, lines[0])
    return lines[0]


@pytest.fixture
def plain_study(tmp_path, monkeypatch):
    """Two tiny studies ('plain', 2 rows and a figure; 'other', 3 rows) and, when asked, one that is interrupted."""
    mods = tmp_path / "mods"
    mods.mkdir()
    (mods / "kbit_t17_plain.py").write_text(
        "import pandas as pd\nimport matplotlib.pyplot as plt\nTITLE = 'Plain'\n"
        "def run(quick=False):\n    fig = plt.figure()\n    return pd.DataFrame({'a': [1, 2]}), {'plain_fig': fig}\n")
    (mods / "kbit_t17_other.py").write_text(
        "import pandas as pd\ndef run(quick=False):\n    return pd.DataFrame({'a': [3, 4, 5]}), {}\n")
    (mods / "kbit_t17_interrupt.py").write_text(
        "def run(quick=False):\n    raise KeyboardInterrupt\n")
    monkeypatch.syspath_prepend(str(mods))
    monkeypatch.setattr(study_api, "STUDIES", dict(study_api.STUDIES))
    study_api.register("t17plain", "kbit_t17_plain")
    study_api.register("t17other", "kbit_t17_other")
    study_api.register("t17interrupt", "kbit_t17_interrupt")
    return tmp_path


def _report(root, name="r", studies=("t17plain", "t17other"), **kw):
    return report.build_report(name, studies=list(studies), executor="serial", out_root=root, progress=False, **kw)


# ------------------------------------------------------------------ 4: report --name is a folder name, not a path

@pytest.mark.parametrize("name", ["../../x", "../x", "/tmp/x", "a/b", "", ".", "..", ".hidden", "a\\b", "x" * 200])
def test_report_name_must_be_one_plain_folder(name, capsys, tmp_path):
    rc, _, err = run(capsys, "report", "--name", name, "--out", str(tmp_path / "reports"), "--studies", "error",
                     "--serial", "--no-progress")
    one_line_error(rc, err, "--name")
    assert not (tmp_path / "reports").exists() and list(tmp_path.iterdir()) == []


def test_build_report_never_touches_files_outside_its_folder(plain_study):
    victim = plain_study / "victim"
    victim.mkdir()
    for f in ("photo.png", "data.csv", "data.parquet"):
        (victim / f).write_text("user data")
    (victim / "results").mkdir()
    (victim / "results" / "mine.csv").write_text("user data")
    reports = plain_study / "reports"
    for name in ("../victim", str(victim), "", "."):
        with pytest.raises(report.ReportNameError):
            _report(reports, name)
    # a folder under reports/ that is not a report (someone's files) is not replaced either
    with pytest.raises(report.ReportNameError, match="not a workbench report"):
        _report(plain_study, "victim")
    assert sorted(p.name for p in victim.rglob("*")) == ["data.csv", "data.parquet", "mine.csv", "photo.png", "results"]
    assert all(p.read_text() == "user data" for p in victim.rglob("*") if p.is_file())


# ------------------------------------------------------------------ 10: atomic report folders, PARTIAL, merge

def test_interrupted_report_leaves_the_previous_one_intact(plain_study):
    reports = plain_study / "reports"
    md, _ = _report(reports)
    before = {p.relative_to(reports / "r"): p.read_bytes() for p in (reports / "r").rglob("*") if p.is_file()}
    assert "plain_fig.png" in {p.name for p in before}
    with pytest.raises(KeyboardInterrupt):
        _report(reports, studies=("t17other", "t17interrupt"))
    after = {p.relative_to(reports / "r"): p.read_bytes() for p in (reports / "r").rglob("*") if p.is_file()}
    assert after == before
    assert [p.name for p in reports.iterdir()] == ["r"]  # no half-written sibling left behind
    meta = json.loads((reports / "r" / "metadata.json").read_text())
    assert meta["complete"] is True and not (reports / "r" / results.PARTIAL_MARKER).exists()


def test_a_rerun_replaces_the_whole_folder(plain_study):
    reports = plain_study / "reports"
    _report(reports)
    (reports / "r" / "stale.png").write_bytes(b"old")
    _report(reports, studies=("t17other",))
    names = {p.name for p in (reports / "r").rglob("*")}
    assert "stale.png" not in names and "plain_fig.png" not in names and "t17plain.parquet" not in names
    assert "plain_fig.png" not in (reports / "r" / "report.md").read_text()


def test_merge_refuses_a_partial_report_and_the_next_run_removes_it(plain_study, capsys):
    reports = plain_study / "reports"
    _report(reports)
    # a run killed with SIGKILL: its temporary folder, marked PARTIAL, from a process that is gone
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True).stdout.strip()
    killed = reports / f".r.tmp-{dead}-0000abcd"
    (killed / "results").mkdir(parents=True)
    (killed / results.PARTIAL_MARKER).write_text("unfinished\n")
    results.save(pd.DataFrame({"a": [9]}), killed / "results" / "t17plain.parquet")
    with pytest.raises(results.IncompleteResults, match="unfinished"):
        results.load(killed)
    rc, _, err = run(capsys, "report", "--merge", str(killed), "--name", "m", "--out", str(reports),
                     "--studies", "t17other", "--serial", "--no-progress")
    one_line_error(rc, err, "--merge", "unfinished")
    assert not (reports / "m").exists()
    # a folder with per-study results but no metadata.json: an interrupted run of an older version
    old = plain_study / "old-style"
    (old / "results").mkdir(parents=True)
    results.save(pd.DataFrame({"a": [1]}), old / "results.parquet")
    with pytest.raises(results.IncompleteResults):
        results.load(old)
    # merging the whole reports/ root skips hidden (in-progress) folders; the next run removes the dead one
    assert len(results.load(reports)) == 5
    _report(reports)
    assert not killed.exists()


def test_merging_a_complete_report_counts_each_row_once(plain_study, capsys):
    reports = plain_study / "reports"
    _report(reports)
    combined = pd.read_parquet(reports / "r" / "results.parquet")
    assert len(combined) == 5
    assert len(results.load(reports / "r")) == 5
    assert len(results.load(reports / "r" / "results")) == 5   # the per-study files on their own
    rc, out, _ = run(capsys, "report", "--merge", str(reports / "r"), "--name", "m", "--out", str(reports),
                     "--studies", "t17other", "--serial", "--no-progress")
    assert rc == 0, out
    text = (reports / "m" / "report.md").read_text()
    inventory = text.split("Devices and runs in the merged files", 1)[1].split("##", 1)[0]
    assert "|      5 |" in inventory or "| 5 |" in inventory.replace("  ", " "), inventory


# ------------------------------------------------------------------ 11: result files are written atomically

def test_a_failed_write_leaves_the_previous_result_file(tmp_path, monkeypatch):
    path = tmp_path / "res.parquet"
    results.save(pd.DataFrame({"x": [1, 2, 3]}), path)
    real = pd.DataFrame.to_parquet

    def dies_mid_write(self, target, *a, **kw):
        Path(target).write_bytes(b"PAR1 truncated")   # what a kill mid-write leaves
        raise KeyboardInterrupt

    monkeypatch.setattr(pd.DataFrame, "to_parquet", dies_mid_write)
    with pytest.raises(KeyboardInterrupt):
        results.save(pd.DataFrame({"x": [7]}), path)
    monkeypatch.setattr(pd.DataFrame, "to_parquet", real)
    assert pd.read_parquet(path)["x"].tolist() == [1, 2, 3]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["res.csv", "res.parquet"]


def test_writes_go_through_a_temporary_file_and_os_replace(tmp_path, monkeypatch):
    seen = []
    real = os.replace

    def spy(src, dst):
        seen.append((Path(src), Path(dst)))
        assert Path(src).parent == Path(dst).parent and Path(src).name.startswith(".")
        assert not Path(src).name.endswith((".parquet", ".csv"))  # never matched by a concurrent load's glob
        return real(src, dst)

    monkeypatch.setattr(os, "replace", spy)
    results.save(pd.DataFrame({"x": [1]}), tmp_path / "a.parquet")
    results.write_text_atomic(tmp_path / "b.md", "hello")
    assert {d.name for _, d in seen} == {"a.parquet", "a.csv", "b.md"}


# ------------------------------------------------------------------ 14: parity never passes vacuously

@pytest.mark.parametrize("argv, needles", [
    (["--backends", "bnbx"], ["--backends", "unknown 'bnbx'", "numba_cpu"]),
    (["--backends", "reference"], ["--backends", "spec"]),
    (["--backends", ","], ["--backends", "at least one"]),
    (["--ops", "quantize_4bitt"], ["--ops", "unknown 'quantize_4bitt'", "quantize_4bit"]),
    (["--family", "optimm"], ["--family", "unknown 'optimm'", "optim"]),
    (["--family", "quant,nope"], ["--family", "unknown 'nope'"]),
    (["--sizes", "0"], ["--sizes", "from 1"]),
    (["--sizes", "-5"], ["--sizes"]),
    (["--sizes", ""], ["--sizes"]),
    (["--sizes", "1e9"], ["--sizes"]),
    (["--sizes", str(1 << 40)], ["--sizes", "from 1 to"]),
    (["--blocksizes", "0"], ["--blocksizes"]),
    (["--seed", "x"], ["--seed"]),
])
def test_parity_refuses_bad_selections(argv, needles, capsys):
    rc, out, err = run(capsys, "parity", "--no-progress", *argv)
    one_line_error(rc, err, *needles)
    assert "parity on" not in out


def test_parity_with_nothing_to_compare_fails(capsys):
    # cuda backends are known names but not available on a CPU-only run; quant ops are not int8 ops
    backend = "cuda" if not torch.cuda.is_available() else "bnb"
    rc, out, err = run(capsys, "parity", "--backends", backend, "--ops", "int8_double_quant", "--no-progress")
    one_line_error(rc, err, "nothing was compared")
    rc, out, err = run(capsys, "parity", "--family", "quant", "--ops", "optimizer_update_32bit", "--no-progress")
    one_line_error(rc, err, "nothing was compared")


def test_a_case_that_compares_nothing_is_not_a_pass(monkeypatch):
    monkeypatch.setattr(parity, "_CASES", dict(parity._CASES))

    def silent(backend, device, gen, quick):
        return iter(())

    parity.register_case("zz-empty", "silent", silent, ops=("quantize_4bit",), overwrite=True)
    df = parity.run_parity("cpu", backends=["numba_cpu"], families=["zz-empty"])
    assert len(df) == 1 and not df["ok"].any() and parity.compared(df).empty
    assert parity.matrix(df).iloc[0, 0] == "FAIL: compared nothing"
    assert parity.summary_line(df).startswith("FAIL: passed 0, failed 0, total 0")


def test_matrix_and_summary_are_unambiguous():
    rows = [{"backend": "b", "op": "op1", "ok": False, "level": "exact", "max_diff": 1.0}] * 96
    rows += [{"backend": "b", "op": "op2", "ok": True, "level": "exact", "max_diff": 0.0}] * 3
    rows += [{"backend": "b", "op": "op2", "ok": False, "level": "exact", "max_diff": 0.5}]
    df = pd.DataFrame(rows)
    m = parity.matrix(df)
    assert m.loc["b", "op1"].startswith("FAIL: 96/96 failed (0 passed")
    assert m.loc["b", "op2"].startswith("FAIL: 1/4 failed (3 passed")
    assert parity.summary_line(df) == "FAIL: passed 3, failed 97, total 100 comparisons"
    ok = pd.DataFrame([{"backend": "b", "op": "op1", "ok": True, "level": "exact"}] * 4)
    assert parity.matrix(ok).loc["b", "op1"] == "exact: 4/4 passed"
    assert parity.summary_line(ok) == "PASS: passed 4, failed 0, total 4 comparisons"


def _perturbed_reference(monkeypatch, broken_backend):
    """Every backend's optimizer op is the reference's; ``broken_backend``'s nudges the last parameter each step."""
    real_get_op = parity.get_op

    def get_op(backend, op, device):
        ref = real_get_op("reference", op, device)
        if backend != broken_backend:
            return ref

        def broken(name, g, p, *a, **kw):
            ref(name, g, p, *a, **kw)
            p.view(-1)[-1] += p.view(-1)[-1].abs() * 0.01 + 1e-3   # always moves it up
        return broken

    monkeypatch.setattr(parity, "get_op", get_op)


@pytest.mark.skipif(not OPTIM_BACKENDS, reason="needs a CPU backend with optimizer ops")
def test_parity_family_optim_compares_every_optimizer_and_catches_one_wrong_element(monkeypatch):
    good, *_ = OPTIM_BACKENDS
    _perturbed_reference(monkeypatch, "nobody")
    df = parity.run_parity("cpu", backends=[good], families=["optim"], quick=True, seed=3)
    from workbench.optim.functional import NAMES
    assert set(df["op"]) == {"optimizer_update_32bit", "optimizer_update_8bit_blockwise"}
    assert set(df["optimizer"]) == set(NAMES) and df["ok"].all() and len(parity.compared(df)) == len(df) > 0
    _perturbed_reference(monkeypatch, good)
    df = parity.run_parity("cpu", backends=[good], families=["optim"], quick=True, seed=3)
    assert not df["ok"].any() and (df["mismatches"] >= 1).all()
    assert parity.matrix(df).loc[good, "optimizer_update_32bit"].startswith("FAIL: ")


@pytest.mark.skipif(not OPTIM_BACKENDS, reason="needs a CPU backend with optimizer ops")
def test_cli_parity_family_optim_on_a_real_backend(capsys):
    # cython_cpu where built: its kernels are compiled ahead, Numba's would be compiled here (2 of CI's 24 minutes)
    backend = "cython_cpu" if "cython_cpu" in OPTIM_BACKENDS else OPTIM_BACKENDS[0]
    rc, out, err = run(capsys, "parity", "--family", "optim", "--backends", backend, "--quick",
                       "--sizes", "300", "--no-progress")
    assert rc == 0, out + err
    assert "optimizer_update_8bit_blockwise" in out and "exact: 16/16 passed" in out
    assert "PASS: passed 32, failed 0, total 32 comparisons" in out


# ------------------------------------------------------------------ 15: integer lists are parsed, not evaluated

def test_sizes_are_not_evaluated():
    t0 = time.time()
    p = subprocess.run([sys.executable, "-m", "workbench", "parity", "--sizes", "9**9**9", "--no-progress"],
                       cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert p.returncode == 2 and "--sizes" in p.stderr and "Traceback" not in p.stderr
    assert time.time() - t0 < 300
    for text in ("9**9**9", "2**12", "__import__('os')", "1;2", "0x10", "1.5", " ", ",,"):
        with pytest.raises(cli.CLIError, match="--sizes"):
            cli._ints(text, "--sizes")
    assert cli._ints("1, 1001,4_099", "--sizes") == [1, 1001, 4099]


def test_codebook_expressions_that_cannot_finish_are_refused_before_evaluation(capsys):
    p = subprocess.run([sys.executable, "-m", "workbench", "codebook", "9**9**9", "--no-eval"], cwd=ROOT,
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 2 and "SPEC" in p.stderr and "Traceback" not in p.stderr
    for spec in ("linspace(-1,1,10**10)", "arange(0, 1e12)", "linspace(-1,1,16)**(9**9)"):
        rc, _, err = run(capsys, "codebook", spec, "--no-eval")
        one_line_error(rc, err, "SPEC")
    rc, out, _ = run(capsys, "codebook", "linspace(-1,1,2**4)**3", "--no-eval")
    assert rc == 0 and "distinct levels: 16" in out


# ------------------------------------------------------------------ 16: codebook, --save, --scheduler, --workers

def test_codebook_bad_specs_are_one_line_errors(capsys, tmp_path):
    rc, _, err = run(capsys, "codebook", str(tmp_path), "--no-eval")
    one_line_error(rc, err, "SPEC", "is a directory")
    rc, _, err = run(capsys, "codebook", "[1j, 2]", "--no-eval")
    one_line_error(rc, err, "SPEC", "real numbers")
    for i, obj in enumerate(({"values": {"a": 1}}, [[0.1, 0.2], [0.3]], {"values": "abc"}, {"nothing": 1}, [0.5],
                             ["a", "b"], {"values": [None, 1]})):
        f = tmp_path / f"c{i}.json"
        f.write_text(json.dumps(obj))
        rc, _, err = run(capsys, "codebook", str(f), "--no-eval")
        one_line_error(rc, err)
    (tmp_path / "broken.json").write_text("[0.1, 0.2")
    rc, _, err = run(capsys, "codebook", str(tmp_path / "broken.json"), "--no-eval")
    one_line_error(rc, err, "SPEC")


def test_codebook_save_into_a_missing_directory(capsys, tmp_path):
    rc, _, err = run(capsys, "codebook", "nf4", "--no-eval", "--save", str(tmp_path / "nope" / "c.json"))
    one_line_error(rc, err, "--save", "does not exist")
    rc, _, err = run(capsys, "codebook", "nf4", "--no-eval", "--save", str(tmp_path))
    one_line_error(rc, err, "--save", "directory")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("argv, needle", [
    (["codebook", "nf4", "--bits", "0"], "--bits"),
    (["codebook", "lloyd-max", "--bits", "9"], "--bits"),
    (["codebook", "nf4", "--n", "0"], "--n"),
    (["codebook", "nf4", "--n", str(1 << 40)], "--n"),
    (["codebook", "nf4", "--blocksize", "48"], "--blocksize"),
    (["codebook", "nf4", "--blocksizes", "9**9**9"], "--blocksizes"),
    (["report", "--workers", "0"], "--workers"),
    (["report", "--workers", "-2"], "--workers"),
    (["study", "error", "--workers", "0"], "--workers"),
    (["report", "--nope"], "unrecognized arguments"),
    (["report", "--studies", ","], "--studies"),
    (["codebook", "nf4", "--compare", "nf4,bogus"], "--compare"),
    (["codebook", "lloyd-max", "--fit-data", "bogus", "--no-eval"], "--fit-data"),
    (["study", "bnb_table", "--out", __file__], "--out"),
])
def test_bad_values_name_the_argument(argv, needle, capsys):
    rc, out, err = run(capsys, *argv)
    one_line_error(rc, err, needle)
    assert out == ""  # refused before any work


@pytest.mark.parametrize("address", ["tcp://127.0.0.1:9", "not an address"])
def test_unreachable_scheduler_fails_fast_and_writes_nothing(address, capsys, tmp_path, monkeypatch):
    pytest.importorskip("dask.distributed")
    monkeypatch.setenv("KBIT_SCHEDULER_TIMEOUT", "2")
    t0 = time.time()
    rc, _, err = run(capsys, "report", "--scheduler", address, "--name", "s", "--out", str(tmp_path / "reports"),
                     "--studies", "error", "--quick", "--no-progress")
    assert time.time() - t0 < 30
    one_line_error(rc, err, "--scheduler")
    assert not (tmp_path / "reports" / "s").exists()
    assert not (tmp_path / "reports").exists() or list((tmp_path / "reports").iterdir()) == []


# ------------------------------------------------------------------ issue 21: a 3-bit fitted code

def test_codebook_lloyd_max_3_bits_prints_the_code_and_its_error(capsys):
    rc, out, err = run(capsys, "codebook", "lloyd-max", "--bits", "3", "--n", "4096", "--compare", "nf4")
    assert rc == 0, err
    assert "bits=3" in out and "distinct levels: 8" in out
    assert "| normal  | lloyd-max" in out and "| laplace | lloyd-max" in out
