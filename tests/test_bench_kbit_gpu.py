"""studies/bench/bench_kbit_gpu.py on CPU, tiny: every (K, layout, op, backend) row plus the 4-bit NF4 reference
rows, the columns the GPU run reports, and the table and figure files."""
import json

import pandas as pd

from studies.bench import bench_kbit_gpu


def test_cpu_bench_kbit_tiny(tmp_path, monkeypatch):
    monkeypatch.setenv("KBIT_PROGRESS", "0")
    # the Cython and reference backends: no JIT compiles (the Numba kernels have tests of their own)
    assert bench_kbit_gpu.main(["--device", "cpu", "--n-log2", "12", "--ks", "2", "3", "--reps", "2",
                                "--backends", "auto", "cython_cpu", "reference", "--out", str(tmp_path)]) == 0
    df = pd.read_csv(tmp_path / "kbit_speed.csv")
    assert {"op", "backend", "resolved_backend", "k", "layout", "n", "public_ms", "median_ms", "kernel_ms",
            "kernel_method", "bytes", "gbps", "kernel_gbps", "pct_copy", "kernel_pct_copy", "public_over_kernel",
            "host_us_4096", "copy_gbps", "target_pct", "met_target", "pct_of_cuda_kernel", "run_device",
            "run_git"} <= set(df.columns)
    live = [b for b in ("auto", "cython_cpu", "reference")
            if b not in json.loads((tmp_path / "meta.json").read_text())["backends_skipped"]]
    kb = df[df.op.isin(["quantize_kbit", "dequantize_kbit"]) & df.skipped.isna()]
    assert len(kb) == 2 * 2 * 2 * len(live)          # K x layout x op x backend
    assert set(kb.k) == {2, 3} and set(kb.layout) == {"bitplane", "dense"} and set(kb.backend) == set(live)
    assert (kb.public_ms > 0).all() and (kb.kernel_ms > 0).all() and (kb.kernel_method == "cpu_time_fn").all()
    assert (kb.n == 4096).all() and (kb.host_us_4096 > 0).all()
    q = kb[kb.op == "quantize_kbit"]
    assert ((q.bytes - 2 * 4096) > 0).all()          # reads the bf16 input, writes words + scales
    ref = df[df.op.isin(["quantize_4bit", "dequantize_4bit"])]
    assert len(ref) == 2 and (ref.kernel_ms > 0).all()
    md = (tmp_path / "kbit_speed.md").read_text()
    assert "| K | layout | op | backend | public ms | kernel ms |" in md and "quantize_4bit" in md
    assert (tmp_path / "kbit_speed.png").stat().st_size > 0
    meta = json.loads((tmp_path / "meta.json").read_text())
    assert meta["copy_gbps"] > 0 and meta["n_log2"] == 12


def test_cpu_bench_kbit_dequantize_only(tmp_path, monkeypatch):
    """--ops dequantize_kbit: only dequantize rows, its input quantized by auto (no quantize row for any backend)."""
    monkeypatch.setenv("KBIT_PROGRESS", "0")
    assert bench_kbit_gpu.main(["--device", "cpu", "--n-log2", "10", "--ks", "3", "--reps", "1", "--ops",
                                "dequantize_kbit", "--backends", "reference", "--out", str(tmp_path)]) == 0
    df = pd.read_csv(tmp_path / "kbit_speed.csv")
    kb = df[df.op.isin(["quantize_kbit", "dequantize_kbit"]) & df.skipped.isna()]
    assert set(kb.op) == {"dequantize_kbit"} and len(kb) == 2 and (kb.kernel_ms > 0).all()
