"""studies/bench/bench_matmul.py on CPU, tiny: every case timed in one process, the columns the report and
plot_matmul read, ratios against dense and bitsandbytes."""
from studies.bench import bench_matmul


def test_cpu_bench_tiny():
    df = bench_matmul.run("cpu", shapes=[((64, 128), (1, 3))], reps=2)
    impls = set(df.impl)
    assert {"ours", "ours_module", "ours_numba_cpu", "ours_cython_cpu", "dense_bf16"} <= impls
    assert {"public_ms", "kernel_ms", "cpu_ms", "bytes", "copy_gbps", "load_start", "load_end"} <= set(df.columns)
    ours = df[df.impl == "ours"]
    assert len(ours) == 2 and (ours.public_ms > 0).all()
    assert df[df.impl == "ours_cython_cpu"].kernel_ms.notna().all()
    assert ours.speedup_vs_dense_bf16_public.notna().all()
