"""The report job: studies -> results.parquet + report.md/html + PNGs; merging other machines' files."""
import re
import json

import pandas as pd
import pytest

from workbench import study_api
from workbench import report, results


def _gpu_files(root):
    for dev, gb in (("NVIDIA H100 80GB HBM3", 2800.0), ("NVIDIA H200", 3900.0)):
        rows = [{"op": "dequantize_4bit", "backend": "cuda", "n": 1 << 26, "median_ms": 0.05, "gbps": gb,
                 "pct_copy": 88.0, "dtype": "bfloat16", "blocksize": 64}]
        meta = {"run_device": dev, "run_driver": "580.1", "run_cuda": "13.0", "run_torch": "2.11", "run_git": "x",
                "run_time": "2026-11-22T00:00:00+00:00"}
        results.save(results.frame(rows, meta), root / dev.split()[1].lower() / "bench.parquet")
    return root


STUDIES_HERE = ["error", "codebook_lab", "bnb_table", "parity", "speed", "zz_absent"]


@pytest.fixture(scope="module")
def quick_report(tmp_path_factory):
    """One quick run of the default studies (the `workbench report --quick` job), with GPU files merged."""
    out = tmp_path_factory.mktemp("reports")
    gpu = _gpu_files(tmp_path_factory.mktemp("gpu"))
    # other teams' studies (optim, outliers) have their own tests; here: ours plus one unavailable entry
    study_api.STUDIES.setdefault("zz_absent", "studies.zz_absent_study")
    md, done = report.build_report("t", studies=STUDIES_HERE, quick=True, executor="serial", merge=[gpu],
                                   out_root=out, progress=False)
    study_api.STUDIES.pop("zz_absent", None)
    return out / "t", md, done


def test_quick_report_writes_everything(quick_report):
    out, md, done = quick_report
    names = [r.name for r in done]
    assert names == STUDIES_HERE
    assert set(report.DEFAULT_STUDIES) >= set(STUDIES_HERE) - {"zz_absent"} | {"optim", "outliers"}
    st = {r.name: r.status for r in done}
    assert st["error"] == st["bnb_table"] == st["codebook_lab"] == st["speed"] == st["parity"] == "ok"
    assert st["zz_absent"] == "unavailable"
    for f in ("report.md", "report.html", "results.parquet", "results.csv", "metadata.json",
              "results/error.parquet", "results/bnb_table.parquet"):
        assert (out / f).is_file(), f
    pngs = sorted(p.name for p in out.glob("*.png"))
    assert "bnb_table.png" in pngs and "error_sqnr_by_blocksize.png" in pngs
    for p in out.glob("*.png"):
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_results_carry_study_and_run_metadata(quick_report):
    out, _, _ = quick_report
    df = pd.read_parquet(out / "results.parquet")
    assert {"error", "bnb_table", "codebook_lab"} <= set(df["study"])
    for c in ("run_device", "run_git", "run_torch", "run_time", "run_bitsandbytes"):
        assert c in df and df[c].notna().all()
    per = results.load(out / "results")
    assert len(per) == len(df)
    meta = json.loads((out / "metadata.json").read_text())
    assert meta["options"]["quick"] is True and meta["studies"]["error"]["status"] == "ok"


def test_markdown_and_html_content(quick_report):
    out, md, _ = quick_report
    text = md.read_text()
    assert text.startswith("# kbit-workbench report: t")
    for needle in ("## Summary", "## Run metadata", "published", "![bnb_table](bnb_table.png)",
                   "Merged result files: cross-device view", "NVIDIA H100 80GB HBM3", "NVIDIA H200"):
        assert needle in text, needle
    assert "| nan" not in text
    html = (out / "report.html").read_text()
    assert html.startswith("<!doctype html>") and html.rstrip().endswith("</html>")
    assert "<table" in html and "NVIDIA H200" in html
    assert re.search(r"<img src='data:image/png;base64,[^']+' alt='bnb_table'>", html)   # inlined (issue 21)
    # the merged GPU rows sit side by side by device
    assert "2800" in text and "3900" in text


def test_a_failing_study_does_not_stop_the_others(tmp_path, monkeypatch):
    (tmp_path / "kbit_broken_study.py").write_text("def run(quick=False):\n    raise RuntimeError('study blew up')\n")
    (tmp_path / "kbit_plain_study.py").write_text(
        "import pandas as pd\nTITLE = 'Plain'\ndef run(quick=False):\n    return pd.DataFrame({'a': [1, 2], 'b': ['x', None]})\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(study_api, "STUDIES", dict(study_api.STUDIES))
    study_api.register("broken", "kbit_broken_study")
    study_api.register("plain", "kbit_plain_study")
    study_api.register("absent", "kbit_no_such_study_module")
    md, done = report.build_report("f", studies=["broken", "plain", "absent"], executor="serial", out_root=tmp_path,
                                   progress=False)
    st = {r.name: r.status for r in done}
    assert st["broken"] == "failed" and st["plain"] == "ok" and st["absent"] == "unavailable"
    assert "study blew up" in md.read_text()
    df = pd.read_parquet(tmp_path / "f" / "results.parquet")
    assert set(df["study"]) == {"plain"} and len(df) == 2


def test_render_handles_mixed_columns_for_parquet(tmp_path):
    df = pd.DataFrame({"x": [1, "a", None], "y": [1.0, float("nan"), 2.0]})
    p = report._save_frame(df, tmp_path / "m.parquet", {"run_device": "cpu"})
    back = pd.read_parquet(p)
    assert back["x"].tolist()[:2] == ["1", "a"] and back["run_device"].eq("cpu").all()
    assert "nan" not in report._md_table(df)


def test_a_study_failing_at_import_is_reported(tmp_path, monkeypatch):
    (tmp_path / "kbit_import_bomb.py").write_text("raise RuntimeError('no GPU at import')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(study_api, "STUDIES", dict(study_api.STUDIES))
    study_api.register("bomb", "kbit_import_bomb")
    r = report.run_study("bomb")
    assert r.status == "failed" and "no GPU at import" in r.error


def test_bench_row_kernel_share_of_copy():
    """A row with a device_time kernel_ms gets the same bytes over the GPU time as % of copy."""
    from workbench import bench
    t = bench.Timing(2.0, 1.9, 5)
    r = bench.row("op", "cuda", 10, t, nbytes=4_000_000, copy_gbps=4.0, kernel_ms=1.0, host_ms=0.5)
    assert r["pct_copy"] == pytest.approx(50.0) and r["kernel_pct_copy"] == pytest.approx(100.0)
    assert "kernel_pct_copy" not in bench.row("op", "cuda", 10, t, nbytes=4_000_000, copy_gbps=4.0, kernel_ms=None)
