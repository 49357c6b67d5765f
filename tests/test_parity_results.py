"""Issue 21: the GPU parity files committed under reports/ and the harness's CPU rows share one schema
(workbench/parity_results.py), so the report lines CPU and GPU rows up."""
from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from workbench import parity, parity_results as PR, results

ROOT = Path(__file__).resolve().parent.parent
CURRENT_GPU_FILES = {"gpu-h100/parity.parquet", "gpu-h200/parity.parquet", "int8-gpu/parity_bnb.parquet",
                     "int8-gpu/h200/parity_bnb.parquet", "optim-gpu/parity.parquet", "optim-gpu/h200/parity.parquet"}
GPUS = {"NVIDIA H100 80GB HBM3", "NVIDIA H200"}


def _harness_rows() -> pd.DataFrame:
    """A few rows as workbench.parity.run_parity writes them (one comparison each)."""
    base = {"family": "quant", "case": "quantize_4bit", "device": "cpu", "seed": 1, "op": "quantize_4bit",
            "blocksize": 64, "n": 200, "dtype": "float32", "level": "exact", "detail": ""}
    return pd.DataFrame([
        {**base, "backend": "numba_cpu", "codebook": "nf4", "ok": True, "mismatches": 0, "max_diff": 0.0},
        {**base, "backend": "numba_cpu", "codebook": "fp4", "ok": False, "mismatches": 3, "max_diff": 0.5},
        {**base, "backend": "bnb", "codebook": "nf4", "ok": True, "mismatches": 0, "max_diff": 0.0},
        {**base, "family": "int8", "case": "int8_vectorwise_quant", "op": "int8_vectorwise_quant", "backend": "numba_cpu",
         "ok": True, "n": None, "blocksize": None, "shape": "3x7", "threshold": 6.0},
        {**base, "backend": "cython_cpu", "op": "quantize_4bit", "ok": False, "level": "n/a",
         "detail": "the case compared nothing"},
    ])


def test_committed_gpu_parity_files_load_into_the_harness_schema():
    u = PR.committed(ROOT / "reports")
    assert tuple(u.columns) == PR.COLUMNS
    assert set(u["source"]) == CURRENT_GPU_FILES            # every current file, nothing from history/
    assert set(u["device"]) == GPUS
    assert set(u["family"]) == {"quant", "int8", "optim"}
    assert set(u["op"]) <= set(parity.choices()["ops"])      # the harness's op names, so rows line up with CPU
    assert set(u["dtype"]) <= {"float32", "float16", "bfloat16"}
    assert ((u["compared"] == 1) & (u["passed"] <= u["compared"]) & (u["passed"] >= 0)).all()
    assert u["run_git"].str.len().gt(0).all() and u["n"].gt(0).all()
    # the same columns, in the same order and dtypes, as this machine's harness rows
    cpu = PR.from_harness(_harness_rows())
    assert list(cpu.columns) == list(u.columns)
    assert (cpu.dtypes == u.dtypes).all(), pd.concat([cpu.dtypes, u.dtypes], axis=1)
    # what the files say, read back: our CUDA kernels equal the spec everywhere on both GPUs ...
    ours = u[u["backend"].isin(["cuda", "numba_cuda"]) & (u["level"] == "exact")]
    assert len(ours) > 300 and (ours["passed"] == 1).all()
    h200 = u[(u["device"] == "NVIDIA H200") & (u["op"] == "quantize_4bit") & (u["backend"] == "cuda")]
    assert h200["compared"].sum() == h200["passed"].sum() == 52
    # ... the documented all-zero-block difference of our bitsandbytes mode (FP4) is a failure on each GPU ...
    bad = PR.failures(u)
    assert len(bad) == 2 and set(bad["device"]) == GPUS
    assert set(bad["variant"]) == {"fp4"} and (bad["mismatches"] == 640).all() and bad["detail"].str.contains("zero").all()
    # ... and bitsandbytes' own FP4 rounding against the spec is a finding, not a failure
    spec = u[(u["backend"] == "bnb") & (u["versus"] == "reference") & (u["variant"] == "fp4")]
    assert len(spec) and (spec["passed"] == 0).all() and (spec["level"] == PR.INFORMATIONAL).all()


def test_a_saved_harness_file_loads_through_the_same_loader():
    cpu = PR.load_files(ROOT / "reports/cpu-default/results/parity.parquet")
    assert tuple(cpu.columns) == PR.COLUMNS and len(cpu) > 100
    assert cpu["device"].str.startswith("CPU (").all() and (cpu["versus"] == "reference").all()
    assert cpu["source"].iloc[0] == "cpu-default/results/parity.parquet"


def test_harness_rows_keep_their_verdicts():
    u = PR.from_harness(_harness_rows())
    assert list(u["passed"]) == [1, 0, 1, 1, 0] and list(u["compared"]) == [1, 1, 1, 1, 0]
    assert u["device"].str.startswith("CPU (").all() and (u["versus"] == "reference").all()
    assert list(u["variant"]) == ["nf4", "fp4", "nf4", "threshold 6", ""]
    assert u.loc[3, "n"] == 21                                  # int8 rows: rows x cols
    with_gpu = _harness_rows().assign(gpu_name="NVIDIA H200")   # --gpus rows name their GPU
    assert (PR.from_harness(with_gpu)["device"] == "NVIDIA H200").all()


def test_a_mismatch_in_a_gpu_file_is_a_failure_and_unmeasured_pairs_are_left_out():
    row = {"dtype": "float16", "blocksize": 64, "code": "nf4", "n": 1000, "case": "random",
           "cuda_vs_ref_codes": 3, "cuda_vs_ref_absmax": 0, "cuda_vs_ref_dequant": 0,
           "numba_cuda_vs_ref_codes": -1, "numba_cuda_vs_ref_absmax": 0, "numba_cuda_vs_ref_dequant": 0,
           "bnb_vs_spec_codes": float("nan"), "run_device": "GPU X", "run_git": "abc", "run_time": "t"}
    u = PR.convert(pd.DataFrame([row]), "x/parity.parquet")
    got = {(r.op, r.backend, r.versus): (r.passed, r.mismatches) for r in u.itertuples()}
    assert got == {("quantize_4bit", "cuda", "reference"): (0, 3), ("dequantize_4bit", "cuda", "reference"): (1, 0),
                   ("dequantize_4bit", "numba_cuda", "reference"): (1, 0)}   # -1 = not run; NaN = no bnb
    assert len(PR.failures(u)) == 1
    optim = {"op": "adam32bit", "optimizer": "adam", "bits": 32, "backend": "cuda", "n": 10, "step": 1, "max_unorm": 0.0,
             "p_mismatch": 0, "p_maxdiff_over_lr": 0.0, "state1_mismatch": 2, "state1_maxdiff": 1e-9,
             "run_device": "GPU X"}
    o = PR.convert(pd.DataFrame([optim]), "optim")
    assert o.loc[0, "op"] == "optimizer_update_32bit" and o.loc[0, "passed"] == 0 and o.loc[0, "level"] == "exact"
    assert "state1" in o.loc[0, "detail"]
    with pytest.raises(PR.UnknownParityFile):
        PR.convert(pd.DataFrame({"a": [1]}), "notes.csv")


def test_the_optimizer_files_max_diff_is_in_parameter_units():
    from studies.bench import bench_optim_gpu
    assert PR.OPTIM_FILE_LR == bench_optim_gpu.HP["lr"]
    raw = pd.read_parquet(ROOT / "reports/optim-gpu/h200/parity.parquet")
    u = PR.convert(raw, "optim-gpu/h200/parity.parquet")
    assert len(u) == len(raw) and u["max_diff"].notna().all()
    assert u["max_diff"].tolist() == pytest.approx((raw["p_maxdiff_over_lr"] * bench_optim_gpu.HP["lr"]).tolist())


def test_side_by_side_lines_devices_up_and_marks_informational_rows():
    cpu = PR.from_harness(_harness_rows())
    gpu = PR.committed(ROOT / "reports")
    t = PR.side_by_side(pd.concat([cpu, gpu], ignore_index=True))
    assert set(t.columns) == GPUS | set(cpu["device"])
    row = t.loc[("quant", "quantize_4bit", "bnb", "reference")]   # bnb on the CPU and on both GPUs, one row
    assert row[cpu["device"].iloc[0]] == "2/2" or row[cpu["device"].iloc[0]] == "1/1"
    assert all(row[g].endswith("(i)") for g in GPUS)
    assert t.loc[("quant", "quantize_4bit", "numba_cpu", "reference"), cpu["device"].iloc[0]] == "1/2"
    long = PR.by_device(pd.concat([cpu, gpu], ignore_index=True), per_dtype=False)
    assert {"device", "op", "backend", "versus", "compared", "passed", "max_diff", "n_min", "n_max"} <= set(long.columns)
    assert not long.duplicated(["family", "op", "backend", "versus", "device"]).any()
    assert pd.isna(long.loc[(long["op"] == "int8_vectorwise_quant") & (long["backend"] == "cuda"),
                            "mismatches"].iloc[0])   # not counted in the file: not claimed to be 0


def test_a_parity_file_of_no_known_kind_is_refused_or_listed(tmp_path):
    results.save(pd.DataFrame({"op": ["x"], "vs": ["y"], "run_device": ["GPU Z"]}), tmp_path / "new-gpu" / "parity.parquet")
    results.save(pd.read_parquet(ROOT / "reports/int8-gpu/h200/parity_bnb.parquet"),
                 tmp_path / "int8-gpu" / "parity_bnb.parquet")
    with pytest.raises(PR.UnknownParityFile, match="new-gpu/parity.parquet"):
        PR.committed(tmp_path)
    unknown: list = []
    u = PR.committed(tmp_path, unknown)
    assert set(u["source"]) == {"int8-gpu/parity_bnb.parquet"} and len(u) == 20
    assert len(unknown) == 1 and "new-gpu/parity.parquet" in unknown[0]
