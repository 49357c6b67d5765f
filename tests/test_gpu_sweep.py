"""Issue 22: sweeps across GPUs (workbench/gpu_sweep.py), on CPU: two dask worker processes stand in for two GPUs
(``KBIT_FAKE_GPUS=2``; each worker gets its own ``CUDA_VISIBLE_DEVICES`` as dask-cuda sets it)."""
import os
import re

import pandas as pd
import pytest
import torch

from workbench import cli
from workbench import gpu_sweep as gs
from workbench.parity import run_parity

# a small parity selection: the split must give the one-run rows for any selection
SEL = dict(families=["quant"], backends=["cython_cpu"], sizes=[777], blocksizes=[64], quick=True)


@pytest.fixture(scope="module")
def fake2(tmp_path_factory):
    import dask
    mp = pytest.MonkeyPatch()
    mp.setenv(gs.FAKE_ENV, "2")
    mp.setenv("KBIT_PROGRESS", "0")
    # a task whose worker dies is reported at once (dask's default retries it on other workers three times)
    with dask.config.set({"distributed.scheduler.allowed-failures": 0}), \
            gs.gpu_executor("all", store=tmp_path_factory.mktemp("store")) as ex:
        yield ex
    mp.undo()


def test_resolve_and_parse():
    assert gs.parse_gpus("all") == "all" and gs.parse_gpus(" 2 ") == 2
    for bad in ("0", "-1", "two", "1.5", ""):
        with pytest.raises(ValueError):
            gs.parse_gpus(bad)
    assert gs.resolve("all", 2) == 2 and gs.resolve(1, 2) == 1
    with pytest.raises(gs.GpuSweepError, match=r"^3 GPUs asked for, this host has 2 visible \(0, 1\)"):
        gs.resolve(3, 2)
    with pytest.raises(gs.GpuSweepError, match="^no GPU visible"):
        gs.resolve("all", 0)


@pytest.mark.parametrize("argv, env, msg", [
    (["study", "parity", "--gpus", "3"], "2", "error: --gpus: 3 GPUs asked for, this host has 2 visible"),
    (["report", "--gpus", "all", "--studies", "parity"], "0", "error: --gpus: no GPU visible"),
    (["study", "parity", "--gpus", "0"], "2", "argument --gpus: expected 'all' or a number of GPUs"),
])
def test_cli_bad_gpus(argv, env, msg, monkeypatch, capsys, tmp_path):
    monkeypatch.setenv(gs.FAKE_ENV, env)
    if argv[0] == "report":
        argv = argv + ["--out", str(tmp_path)]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert msg in err and len(err.splitlines()) == 1, err
    assert not any(tmp_path.iterdir())   # nothing started, nothing written


def test_each_worker_sees_its_own_gpu(fake2):
    seen = fake2.client.run(gs.worker_gpu)
    assert sorted(v["gpu_index"] for v in seen.values()) == [0, 1]
    assert all(v["gpu_name"].startswith("fake GPU") for v in seen.values())


def test_parity_split_gives_the_one_gpu_rows(fake2, monkeypatch):
    monkeypatch.setenv(gs.FAKE_ENV, "2")
    one = run_parity("cpu", seed=1234, **SEL)
    split = gs.parity_on_gpus(fake2, seed=1234, per_gpu=2, **SEL)   # 4 shards on 2 workers
    assert len(one) > 8
    pd.testing.assert_frame_equal(one, split.drop(columns=["gpu_index", "gpu_name"]))
    assert split["gpu_index"].isin([0, 1]).all() and split["gpu_name"].notna().all()
    stored = pd.read_parquet(fake2.store / "parity.parquet")     # the one store, GPU on every row
    assert len(stored) == len(one) and {"gpu_index", "gpu_name"} <= set(stored)
    # the shards partition the jobs: every shard count gives the same rows
    three = pd.concat([run_parity("cpu", seed=1234, shard=(k, 3), **SEL) for k in range(3)], ignore_index=True)
    pd.testing.assert_frame_equal(one, three)


def test_join_an_existing_scheduler(fake2, tmp_path):
    def one_row(k):   # nested: pickled by value, whatever the test module's import name
        return pd.DataFrame({"k": [k]})

    addr = fake2.client.scheduler.address
    with gs.gpu_executor("all", addr, store=tmp_path) as ex:
        assert ex.gpus == 2 and "scheduler" in repr(ex)
        df = gs.run_gpu_tasks(ex, one_row, [{"k": k} for k in range(2)], name="joined")
    assert list(df["k"]) == [0, 1] and (tmp_path / "joined.parquet").is_file()
    with pytest.raises(gs.GpuSweepError, match="^3 GPUs asked for, the scheduler .* has 2 worker"):
        with gs.gpu_executor(3, addr):
            pass


def test_worker_dies_mid_sweep_keeps_finished_rows(fake2):   # last: it kills a worker (its nanny restarts it)
    def task(k):
        if k == 2:
            os._exit(1)
        return pd.DataFrame({"task": [k], "value": [k * 10]})

    with pytest.raises(gs.GpuSweepError) as ei:
        gs.run_gpu_tasks(fake2, task, [{"k": k} for k in range(4)], name="dies")
    msg = str(ei.value)
    # the dying worker may take a task queued behind task 2 with it (timing): at least task 2 is lost,
    # and every task that finished is kept
    m = re.search(r"(\d) of 4 tasks lost mid-sweep \(task 2: a worker died\); (\d) rows of \d finished tasks kept", msg)
    assert len(msg.splitlines()) == 1 and m, msg
    kept = pd.read_parquet(fake2.store / "dies.parquet")
    assert 2 not in set(kept["task"]) and len(kept) == int(m.group(2)) == 4 - int(m.group(1))
    assert str(fake2.store / "dies.parquet") in msg
    assert kept["gpu_index"].isin([0, 1]).all()


@pytest.mark.gpu
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 or more GPUs")
def test_parity_cuda_split_over_real_gpus(tmp_path):   # the multi-GPU run of issue 22 (skipped on one GPU)
    sel = dict(families=["quant"], quick=True, sizes=[1000, 4097], blocksizes=[64, 256])
    one = run_parity("cuda", seed=7, **sel)
    with gs.gpu_executor("all", store=tmp_path) as ex:
        split = gs.parity_on_gpus(ex, seed=7, **sel)
    pd.testing.assert_frame_equal(one, split.drop(columns=["gpu_index", "gpu_name"]))
    assert split["gpu_index"].nunique() == torch.cuda.device_count()
