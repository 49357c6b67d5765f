"""A/B: the local process pool vs a dask LocalCluster on this machine, for the error study with one custom code.

    python -m studies.probes.dask_vs_pool [--workers 2] [--reps 2] [--full]

Prints each run's time (the cluster's start-up apart) and how many rows came back skipped (0 expected: the
custom code travels by value). The README's "When dask pays off" table comes from this script.
"""
from __future__ import annotations

import argparse
import os
import time


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--full", action="store_true", help="the full study instead of quick mode")
    a = ap.parse_args()
    os.environ["KBIT_PROGRESS"] = "0"
    os.environ.setdefault("MPLBACKEND", "Agg")
    from dask.distributed import LocalCluster

    from studies import error_study
    from workbench import codebooks as cbs
    from workbench.sweep import executor
    cb = cbs.from_values([-1, -0.55, -0.2, 0, 0.2, 0.55, 1], "my7", pad_to_pow2=True)
    cbs.register("my7", cb, overwrite=True)   # known to this process only: workers get it by value
    for rep in range(a.reps):
        t = time.perf_counter()
        with executor(None, max_workers=a.workers) as ex:
            df, _ = error_study.run(quick=not a.full, executor=ex, codebooks=[cb])
        print(f"pool  rep {rep}: run {time.perf_counter() - t:7.1f} s  skipped {int(df['skipped'].notna().sum())}",
              flush=True)
        t = time.perf_counter()
        with LocalCluster(n_workers=a.workers, threads_per_worker=1, processes=True, dashboard_address=None) as cl:
            t1 = time.perf_counter()
            with executor(cl.scheduler_address) as ex:
                df, _ = error_study.run(quick=not a.full, executor=ex, codebooks=[cb])
            t2 = time.perf_counter()
        print(f"dask  rep {rep}: run {t2 - t1:7.1f} s  start-up {t1 - t:5.1f} s  skipped "
              f"{int(df['skipped'].notna().sum())}  my7 rows {int((df['method'] == 'my7').sum())}", flush=True)


if __name__ == "__main__":
    main()
