"""Studies: data, codebook variants, bit accounting, the bnb table, the codebook lab, speed merging, the study registry."""
import json
import sys
import types

import numpy as np
import pandas as pd
import pytest
import torch

import workbench as wb
from studies import bnb_table, codebook_lab, error_study, speed
from workbench import results, study_api
from workbench.backends import status


# ------------------------------------------------------------------ error study

@pytest.mark.parametrize("source", ["normal", "laplace", "student-t", "uniform"])
def test_make_data_is_seeded_and_shaped(source):
    a = error_study.make_data(source, 1001, seed=3)
    assert a.dtype == torch.float32 and a.shape == (1001,)
    assert torch.equal(a, error_study.make_data(source, 1001, seed=3))
    assert not torch.equal(a, error_study.make_data(source, 1001, seed=4))
    if source == "uniform":
        assert a.abs().max() <= 1


def test_unknown_source_is_an_error():
    with pytest.raises(ValueError, match="data source"):
        error_study.make_data("cauchy", 10, 0)


def test_mxfp4_is_exact_on_representable_blocks_and_rounds_scales_to_powers_of_two(rng):
    grid = error_study._e2m1_grid()
    idx = torch.randint(0, len(grid), (4, 32), generator=rng)
    idx[:, 0] = 0  # -6 in every block: amax = 6 * scale
    scales = torch.tensor([0.25, 1.0, 4.0, 2.0 ** -10])
    x = (grid[idx] * scales[:, None]).reshape(-1)
    y, bits = error_study.scaled_fp4(x, 32, "e8m0")
    assert torch.equal(y, x) and bits == 4 + 8 / 32
    # other data: every output is an E2M1 level times the block's power-of-two scale
    x2 = x * 1.3
    y2, _ = error_study.scaled_fp4(x2, 32, "e8m0")
    amax = x2.view(4, 32).abs().amax(1)
    s = torch.exp2(torch.floor(torch.log2(amax)) - 2)
    q = y2.view(4, 32) / s[:, None]
    assert torch.isin(q, grid).all()
    assert (q.abs() <= 6).all()


def test_nvfp4_scale_is_fp8_rounded(rng):
    x = torch.randn(16 * 64, generator=rng)
    y, bits = error_study.scaled_fp4(x, 16, "e4m3")
    assert bits == pytest.approx(4 + 8 / 16 + 32 / x.numel())
    xb, yb = x.view(-1, 16), y.view(-1, 16)
    tscale = float(xb.abs().max()) / (6 * 448)
    s = (xb.abs().amax(1) / 6 / tscale).to(torch.float8_e4m3fn).float() * tscale
    grid = error_study._e2m1_grid()
    q = yb / s[:, None]
    assert torch.allclose(q, grid[torch.argmin((q[..., None] - grid).abs(), -1)], atol=1e-5)
    assert float((y - x).abs().mean()) < 0.12  # about NF4's error at blocksize 16


def test_bits_per_parameter_from_stored_sizes():
    x = error_study.make_data("normal", 1 << 14, 0)
    _, bits = error_study.quant_dequant(x, wb.codebooks.get("nf4"), 64)
    _, bits_dq = error_study.quant_dequant(x, wb.codebooks.get("nf4"), 64, double_quant=True)
    assert bits == pytest.approx(4 + 32 / 64)
    nb = (1 << 14) // 64
    assert bits_dq == pytest.approx(4 + (8 * nb + 32 * -(-nb // 256) + 32) / (1 << 14))
    _, bits8 = error_study.quant_dequant(x, wb.codebooks.get("dynamic"), 256)
    assert bits8 == pytest.approx(8 + 32 / 256)


def test_metrics():
    x = torch.tensor([1.0, -2.0, 3.0, 0.5])
    y = x + torch.tensor([0.1, -0.1, 0.0, 0.2])
    m = error_study.metrics(x, y)
    assert m["mae"] == pytest.approx(0.1)
    assert m["max_err"] == pytest.approx(0.2)
    assert m["sqnr_db"] == pytest.approx(10 * np.log10((1 + 4 + 9 + 0.25) / (0.01 + 0.01 + 0.04)))


def test_error_study_quick_rows_and_ordering():
    df, figs = error_study.run(quick=True, sources=("normal", "laplace"),
                               methods=("nf4", "fp4", "dynamic-8bit", "nvfp4", "lloyd-max4"), n=1 << 13)
    ok = df[df["skipped"].isna()]
    nf4 = ok[(ok.method == "nf4") & (ok.source == "normal")].set_index("blocksize")
    fp4 = ok[(ok.method == "fp4") & (ok.source == "normal")].set_index("blocksize")
    d8 = ok[(ok.method == "dynamic-8bit") & (ok.source == "normal")].set_index("blocksize")
    assert list(nf4.index) == list(error_study.QUICK_BLOCKSIZES)
    assert (nf4["mse"] < fp4["mse"]).all() and (d8["mse"] < nf4["mse"]).all()
    assert nf4["mae"].is_monotonic_increasing  # larger blocks, larger error
    small = ok[(ok.kind == "kernel") & (ok.blocksize <= 512)]
    assert (small["bits_dq"] < small["bits"]).all()  # double quantization pays for small blocks
    # ... and not for 2 blocks of 4096: offset + second-level absmax cost more than 24 bits per block save
    big = ok[(ok.kind == "kernel") & (ok.blocksize == 4096)]
    assert (big["bits_dq"] > big["bits"]).all()
    assert 16 in set(ok[ok.method == "nvfp4"]["blocksize"])
    assert set(figs) >= {"error_sqnr_by_blocksize"}
    tables = error_study.summarize(df)
    assert tables and all(isinstance(t, pd.DataFrame) for _, t in tables)


def test_minilm_source_skips_with_a_note_or_uses_the_weights(monkeypatch):
    monkeypatch.setattr(error_study, "_MINILM_CACHE", {})
    fake = types.ModuleType("workbench.models")
    g = torch.Generator().manual_seed(0)
    fake.load_minilm_weights = lambda: {"embeddings.word_embeddings.weight": torch.zeros(100, 8),
                                        "encoder.layer.0.attention.self.query.weight": torch.randn(384, 384, generator=g),
                                        "encoder.layer.0.attention.self.query.bias": torch.randn(384, generator=g)}
    monkeypatch.setitem(sys.modules, "workbench.models", fake)
    rows = error_study.evaluate("minilm", "nf4", 8192, (64,))
    assert "skipped" not in rows[0] and rows[0]["n"] == 8192 and rows[0]["mae"] > 0

    def broken():
        raise FileNotFoundError("weights not installed")
    fake.load_minilm_weights = broken
    monkeypatch.setattr(error_study, "_MINILM_CACHE", {})
    rows = error_study.evaluate("minilm", "nf4", 8192, (64,))
    assert "weights not installed" in rows[0]["skipped"]
    df = pd.DataFrame(rows)
    assert any("minilm" in n for n in error_study.notes(df))


# ------------------------------------------------------------------ bnb table

def test_bnb_table_published_values_and_rule():
    pub = bnb_table.published_frame()
    assert len(pub) == 2 * 2 * 7 and set(pub.blocksize) == {64, 128, 256, 512, 1024, 2048, 4096}
    assert bnb_table.PUBLISHED[("nf4", "err")][64] == 0.072792
    df, figs = bnb_table.run(quick=True, seeds=[0, 1], blocksizes=(32, 64))
    c = bnb_table.comparison(df)
    row = c[(c.quant_type == "nf4") & (c.metric == "err") & (c.blocksize == 64)].iloc[0]
    assert row["match"] == "yes" and abs(row["diff"]) < 1e-3
    assert (c[c.blocksize == 32]["match"] == "n/a (unpublished)").all()
    if status("bnb")[0]:  # same inputs through bitsandbytes itself: identical numbers
        assert np.array_equal(c["ours_mean"].to_numpy(), c["bnb_this_run"].to_numpy())
    assert "bnb_table" in figs and bnb_table.notes(df)


# ------------------------------------------------------------------ codebook lab

def test_codebook_lab_specs(tmp_path):
    assert codebook_lab.build("nf4") is wb.codebooks.get("nf4")
    cb = codebook_lab.build("linspace(-1, 1, 16)")
    assert cb.size == 16 and np.allclose(cb.values, np.linspace(-1, 1, 16))
    cb = codebook_lab.build([-2, 0, 1])  # normalized by the largest magnitude, padded to 16
    assert cb.size == 16 and np.allclose(np.unique(cb.values), [-1, 0, 0.5]) and cb.meta["normalized_by"] == 2
    (tmp_path / "c.json").write_text(json.dumps({"values": [-1, -0.25, 0.25, 1]}))
    np.save(tmp_path / "c.npy", np.array([-1.0, 0.0, 1.0]))
    (tmp_path / "c.txt").write_text("-1, -0.5\n0 0.5 1\n")
    assert codebook_lab.build(str(tmp_path / "c.json")).values[:4].tolist() == [-1, -0.25, 0.25, 1]
    assert len(np.unique(codebook_lab.build(str(tmp_path / "c.npy")).values)) == 3
    assert len(np.unique(codebook_lab.build(str(tmp_path / "c.txt")).values)) == 5
    big = codebook_lab.build("linspace(-1, 1, 200)")
    assert big.size == 256
    for bad in ("nope", "__import__('os')", str(tmp_path / "missing.json"), "linspace(-1,1,300)", "[1]"):
        with pytest.raises(codebook_lab.SpecError):
            codebook_lab.build(bad)


def test_codebook_lab_compare_in_one_call():
    df, fig = codebook_lab.compare(["kmeans", "quantile"], data="normal", blocksizes=(64, 1024), n=1 << 14)
    assert set(df["codebook"]) == {"kmeans@normal-bs64", "quantile@normal-bs64", "nf4", "fp4"}
    assert np.allclose(df[df.codebook == "nf4"]["mse_vs_nf4"], 1.0)
    km = df[(df.codebook == "kmeans@normal-bs64") & (df.blocksize == 64)]["mse"].item()
    fp = df[(df.codebook == "fp4") & (df.blocksize == 64)]["mse"].item()
    assert km < fp
    assert fig.axes
    # user data as an array, one list-of-numbers spec
    data = np.random.default_rng(0).laplace(size=1 << 13)
    df2, _ = codebook_lab.compare([-1, -0.4, 0, 0.4, 1], data=data, blocksizes=(64,))
    assert set(df2["data"]) == {"user"} and len(df2) == 3


# ------------------------------------------------------------------ speed

def _fake_bench(device: str, scale: float) -> pd.DataFrame:
    rows = []
    for op in ("quantize_4bit", "dequantize_4bit"):
        for backend in ("cuda", "numba_cuda"):
            rows.append({"op": op, "backend": backend, "n": 1 << 24, "median_ms": 0.1 / scale, "gbps": 1000 * scale,
                         "pct_copy": 50 * scale, "dtype": "float16", "blocksize": 64})
    meta = {"run_device": device, "run_driver": "580", "run_cuda": "13.0", "run_torch": "2.11", "run_git": "abc",
            "run_time": "t"}
    return results.frame(rows, meta)


def test_speed_merges_devices(tmp_path):
    results.save(_fake_bench("NVIDIA H100 80GB HBM3", 1.0), tmp_path / "gpu-h100" / "quant.parquet")
    results.save(_fake_bench("NVIDIA H200", 1.3), tmp_path / "gpu-h200" / "quant.parquet")
    _fake_bench("CPU (2 cores)", 0.01).to_csv(tmp_path / "bench-cpu.csv", index=False)  # csv only, as an extra file
    (tmp_path / "unrelated").mkdir()
    _fake_bench("ignored", 9).to_parquet(tmp_path / "unrelated" / "x.parquet")
    results.save(_fake_bench("NVIDIA H200", 0.2), tmp_path / "gpu-h200" / "history" / "old.parquet")  # left out
    df, figs = speed.run(root=tmp_path, extra=[tmp_path / "bench-cpu.csv"])
    assert set(df["run_device"]) == {"NVIDIA H100 80GB HBM3", "NVIDIA H200", "CPU (2 cores)"}
    t = speed.table(df, "gbps")
    assert list(t.columns) == sorted(t.columns) and t.shape == (4, 3)
    assert t.loc[("quantize_4bit", "cuda", "float16", "64", str(1 << 24)), "NVIDIA H200"] == pytest.approx(1300)
    small = _fake_bench("NVIDIA H200", 0.1).assign(n=1 << 16)  # a size sweep: the headline is the largest n
    t2 = speed.table(pd.concat([df, small]), "gbps", largest_only=True)
    assert t2.loc[("quantize_4bit", "cuda", "float16", "64"), "NVIDIA H200"] == pytest.approx(1300)
    assert [title for title, _ in speed.summarize(df)][1].startswith("% of")
    assert "speed" in figs
    empty, _ = speed.run(root=tmp_path / "none")
    assert empty.empty and "no benchmark result files" in speed.notes(empty)[0]


def _fake_matmul_bench(scale: float, kernel: bool) -> pd.DataFrame:
    rows = []
    for impl, ms in (("ours", 1.0), ("bnb", 3.0), ("cublas_bf16" if kernel else "dense_bf16", 2.0),
                     ("ours_module", 1.1)):
        for M in (1, 16):
            rows.append(dict(impl=impl, N=4096, K=4096, M=M, dtype="bfloat16", public_ms=ms * scale * M + 0.5,
                             kernel_ms=ms * scale * M if kernel else None, pct_copy=50.0 / M))
    return pd.DataFrame(rows)


def test_speed_gains_the_inference_rows(tmp_path):
    """Each matmul-<device>/ folder's current bench (top-level; history/ and sub-folders left out): ours against
    bitsandbytes and the dense matmul per device, shape and M, kernel time where every row has one; a CSV without
    run metadata takes the device and revision from the folder's device.txt."""
    cpu = _fake_matmul_bench(1.0, kernel=False)
    results.save(results.frame(cpu.to_dict("records"), {"run_device": "CPU (2 cores)", "run_git": "c0ffee"}),
                 tmp_path / "matmul-cpu" / "bench.parquet")
    gpu = tmp_path / "matmul-h200"
    (gpu / "history").mkdir(parents=True)
    _fake_matmul_bench(0.01, kernel=True).to_csv(gpu / "bench.csv", index=False)
    (gpu / "device.txt").write_text("NVIDIA H200, 580.159.04\ntorch 2.11\ngit f30bd8d\n")
    _fake_matmul_bench(9.0, kernel=True).to_csv(gpu / "history" / "bench.csv", index=False)   # left out
    (tmp_path / "matmul-h100" / "some_ab").mkdir(parents=True)                                # no current bench
    _fake_matmul_bench(5.0, kernel=True).to_csv(tmp_path / "matmul-h100" / "some_ab" / "bench.csv", index=False)
    df, figs = speed.run(root=tmp_path)
    assert {"inference_cpu_2_cores", "inference_nvidia_h200"} <= set(figs)
    title, t = speed.summarize(df)[0]
    assert title.startswith("Inference") and set(t.index.get_level_values(0)) == {"CPU (2 cores)", "NVIDIA H200"}
    g = t.loc[("NVIDIA H200", "4096x4096", 16)]
    assert g["time"] == "kernel" and g["ours ms"] == pytest.approx(0.16)
    assert g["x bitsandbytes"] == pytest.approx(3.0) and g["x dense bf16"] == pytest.approx(2.0)
    c = t.loc[("CPU (2 cores)", "4096x4096", 1)]
    assert c["time"] == "public call" and c["x dense bf16"] == pytest.approx(2.5 / 1.5, rel=1e-3)
    assert any("NVIDIA H200 from matmul-h200/bench.csv (git f30bd8d)" in n for n in speed.notes(df))


# ------------------------------------------------------------------ registry

def test_registry():
    assert study_api.canonical("error_study") == "error"
    with pytest.raises(KeyError, match="unknown"):
        study_api.canonical("nope")
    av = study_api.available()
    assert av["error"] is None and av["bnb_table"] is None
    for name in ("optim", "outliers"):  # other teams' studies: importable or a reason
        assert av[name] is None or "does not exist" in av[name] or av[name]
    assert study_api.canonical("bnb") == "bnb_table" and study_api.canonical("codebook-lab") == "codebook_lab"


def test_studies_are_entry_points_and_the_library_imports_none():
    """The catalogue is pyproject.toml's entry-point table (workbench/study_api.py); the library imports no study."""
    import subprocess
    tomllib = pytest.importorskip("tomllib")
    from pathlib import Path
    root = Path(__file__).resolve().parent.parent
    table = tomllib.loads((root / "pyproject.toml").read_text())["project"]["entry-points"][study_api.GROUP]
    assert study_api.discover().items() >= table.items()
    offenders = [f"{p.relative_to(root)}:{i}" for p in sorted((root / "workbench").rglob("*.py"))
                 for i, line in enumerate(p.read_text().splitlines(), 1)
                 if line.lstrip().startswith(("import studies", "from studies"))]
    assert not offenders, offenders
    code = ("import sys, workbench, workbench.cli, workbench.report, workbench.study_api; "
            "workbench.cli.build_parser(); print(sorted(m for m in sys.modules if m.split('.')[0] == 'studies'))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=root, check=True).stdout
    assert out.strip() == "[]"


def test_speed_normalizes_cpu_style_rows():
    """A benchmark that reports only elements/s ('quantize_4bit nf4' op names, RAM copy bandwidth) gets
    GB/s by the effective-bytes rule -- the same rule the GPU benchmark's measured GB/s follow."""
    rows = pd.DataFrame([
        {"op": "quantize_4bit nf4", "backend": "cython_cpu", "n": 1 << 24, "melem_per_s": 1000.0, "dtype": "float32",
         "blocksize": 64, "copy_gbps_ram": 40.0, "run_device": "CPU"},
        {"op": "dequantize_blockwise", "backend": "cuda", "n": 1 << 28, "melem_per_s": 500.0, "dtype": "bfloat16",
         "blocksize": 256, "gbps": 1.5, "pct_copy": 1.0, "run_device": "GPU"},
    ])
    d = speed.normalize(rows)
    cpu = d.iloc[0]
    assert cpu["op"] == "quantize_4bit" and cpu["quant_type"] == "nf4"
    assert cpu["gbps"] == pytest.approx(1000e6 * (4 + 0.5 + 4 / 64) / 1e9) and cpu["gbps_source"] == "derived"
    assert cpu["pct_copy"] == pytest.approx(100 * cpu["gbps"] / 40.0)
    gpu = d.iloc[1]
    assert gpu["gbps"] == 1.5 and gpu["gbps_source"] == "measured" and gpu["pct_copy"] == 1.0
    assert speed.effective_bytes_per_element("dequantize_blockwise", "bfloat16", 256) == pytest.approx(2 + 1 + 4 / 256)
    assert speed.effective_bytes_per_element("int8_matmul", "float16", 64) is None
