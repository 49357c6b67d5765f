"""studies/bench/plot_matmul.py draws time vs M per shape from a bench file (CPU or GPU naming) and stamps the
run's metadata into the figure and the PNG."""
import pandas as pd
from PIL import Image

from studies.bench import plot_matmul


def _bench(dense: str, with_kernel: bool) -> pd.DataFrame:
    rows = []
    for N, K in ((64, 128), (256, 128)):
        for M in (1, 4, 16):
            for impl, ms in (("ours", 1.0), ("ours_cython_cpu", 1.1), ("bnb", 5.0), (dense, 2.0)):
                rows.append(dict(op="matmul_4bit", impl=impl, N=N, K=K, M=M, public_ms=ms * M ** 0.5,
                                 kernel_ms=ms * 0.9 if with_kernel else None, bytes=N * K // 2, copy_gbps=10.0))
    df = pd.DataFrame(rows)
    df["run_device"], df["run_git"], df["run_torch"], df["load_start"], df["load_end"] = "X", "abc123", "2", 1.0, 2.0
    return df


def test_plot_cpu_and_gpu_names(tmp_path):
    for dense, kernel in (("dense_bf16", False), ("cublas_bf16", True)):
        path = tmp_path / f"{dense}.csv"
        _bench(dense, kernel).to_csv(path, index=False)
        assert plot_matmul.main([str(path), "--out", str(tmp_path / f"{dense}.png")]) == 0
        img = Image.open(tmp_path / f"{dense}.png")
        assert "git=abc123" in img.text["Comment"] and "device=X" in img.text["Comment"]
        assert "load_1min=1.0 -> 2.0" in img.text["Comment"]
        fig = plot_matmul.plot(plot_matmul.read(path))
        labels = [line.get_label() for line in fig.axes[0].lines]
        assert labels[:3] == ["ours (matmul_4bit)", "bitsandbytes", f"dense bf16 ({dense})"]
        assert labels[3] == "our bytes at copy bandwidth"
