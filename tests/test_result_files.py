"""workbench.results.result_files: the one lister of result files (report --merge, the speed study, the parity
loader): parquet, a CSV only where it is a result file without a parquet twin, history/ and hidden folders out."""
from __future__ import annotations

import pandas as pd
import pytest

from workbench import results


def _rows(device="GPU X"):
    return results.frame([{"op": "quantize_4bit", "median_ms": 1.0}], {"run_device": device, "run_git": "abc"})


def test_csv_fallback_and_history(tmp_path):
    d = tmp_path / "gpu-x"
    results.save(_rows(), d / "bench.parquet")                     # parquet + CSV twin: the parquet only
    _rows().to_csv(d / "speed.csv", index=False)                   # a result CSV without a parquet twin
    pd.DataFrame({"a": [1]}).to_csv(d / "notes.csv", index=False)  # a table, no run metadata: never a result
    pd.DataFrame({"a": [1], "run_device": ["x"]})[["a", "run_device"]].to_csv(d / "last_col.csv", index=False)
    results.save(_rows("old"), d / "history" / "bench_abc.parquet")
    results.save(_rows(), d / ".hidden" / "x.parquet")
    rel = lambda fs: sorted(str(f.relative_to(d)) for f in fs)    # noqa: E731
    assert rel(results.result_files(d)) == ["bench.parquet", "history/bench_abc.parquet"]
    assert rel(results.result_files(d, csv_fallback=True, skip_history=True)) == \
        ["bench.parquet", "last_col.csv", "speed.csv"]
    assert set(results.load(d)["run_device"]) == {"GPU X", "old"}
    assert results.read(d / "speed.csv")["median_ms"].tolist() == [1.0]


def test_an_unfinished_report_folder_is_refused(tmp_path):
    d = tmp_path / "r"
    results.save(_rows(), d / "bench.parquet")
    (d / results.PARTIAL_MARKER).write_text("running")
    with pytest.raises(results.IncompleteResults):
        results.result_files(d, csv_fallback=True, skip_history=True)


def test_the_speed_study_lists_files_through_results():
    """One function serves both: the speed study keeps no copy of its own."""
    from studies import speed
    assert not hasattr(speed, "result_files")
