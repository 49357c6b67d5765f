"""Sweeps run the same through every executor: serial, local process pool, dask LocalCluster."""
import concurrent.futures as cf

import pytest

from workbench.sweep import SerialExecutor, executor, run_tasks


def _square_plus(x, y=0):
    return x * x + y


def _boom(x):
    raise ValueError(f"bad task {x}")


TASKS = [dict(x=i, y=-i) for i in (5, 1, 9, 3, 7)]
EXPECTED = [i * i - i for i in (5, 1, 9, 3, 7)]


def test_serial_executor_keeps_order_and_raises():
    assert run_tasks(_square_plus, TASKS, SerialExecutor(), progress=False) == EXPECTED
    with pytest.raises(ValueError, match="bad task 2"):
        run_tasks(_boom, [dict(x=2)], SerialExecutor(), progress=False)


def test_default_is_a_process_pool_with_results_in_task_order():
    with executor(None, max_workers=2) as ex:
        assert isinstance(ex, cf.ProcessPoolExecutor)
        assert run_tasks(_square_plus, TASKS, ex, progress=True) == EXPECTED
    with executor("serial") as ex:
        assert isinstance(ex, SerialExecutor)


def test_ready_executor_passes_through_and_bad_spec_is_refused():
    with cf.ThreadPoolExecutor(2) as pool:
        with executor(pool) as ex:
            assert ex is pool
            assert run_tasks(_square_plus, [dict(x=3)], ex, progress=False) == [9]
    with pytest.raises(TypeError, match="executor"):
        with executor(3.5):
            pass


def test_dask_local_cluster():
    distributed = pytest.importorskip("dask.distributed")
    with distributed.LocalCluster(n_workers=1, threads_per_worker=2, processes=False, dashboard_address=":0") as cl:
        # by address, as `workbench report --scheduler ADDRESS` does
        with executor(cl.scheduler_address) as ex:
            assert run_tasks(_square_plus, TASKS, ex, progress=False) == EXPECTED
            with pytest.raises(ValueError, match="bad task 4"):
                run_tasks(_boom, [dict(x=4)], ex, progress=False)
        # and a ready Client
        with distributed.Client(cl) as client:
            with executor(client) as ex:
                assert run_tasks(_square_plus, TASKS[:2], ex, progress=False) == EXPECTED[:2]


def test_a_study_gives_the_same_rows_serial_and_on_dask():
    distributed = pytest.importorskip("dask.distributed")
    from studies import error_study
    kw = dict(quick=True, sources=("laplace",), methods=("nf4", "nvfp4"), blocksizes=(64,), n=4096)
    a, _ = error_study.run(executor=SerialExecutor(), **kw)
    with distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=":0") as cl:
        with executor(cl.scheduler_address) as ex:
            b, _ = error_study.run(executor=ex, **kw)
    cols = ["source", "method", "blocksize", "mae", "mse", "bits"]
    assert a[cols].equals(b[cols])


def test_cli_scheduler_option_runs_a_study_on_dask(capsys):
    distributed = pytest.importorskip("dask.distributed")
    from workbench import cli
    with distributed.LocalCluster(n_workers=1, threads_per_worker=2, processes=False, dashboard_address=":0") as cl:
        rc = cli.main(["study", "bnb_table", "--quick", "--scheduler", cl.scheduler_address, "--no-progress"])
    out = capsys.readouterr().out
    assert rc == 0 and "published" in out
