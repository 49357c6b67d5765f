"""The multi-GPU run of issue 22: parity on CUDA and the speed sweep on 1 GPU, then on every GPU of the host
(one dask worker per GPU, workbench/gpu_sweep.py); per-GPU rows and wall time vs one GPU.

    python -m studies.probes.multi_gpu_sweep --out reports/gpu-multi-h200x2 [--quick] [--gpus all]

Writes ``parity.parquet`` / ``speed.parquet`` (``gpus`` = workers of that pass, ``gpu_index`` / ``gpu_name`` per
row), ``wall.csv`` and ``README.md``; exits 1 when the split parity rows differ from the one-GPU rows.
Needs dask-cuda (``pip install 'kbit-workbench[gpus]'``) and 2 or more GPUs.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import pandas as pd


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--gpus", default="all")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--seed", type=int, default=22)
    ap.add_argument("--no-speed", action="store_true")
    args = ap.parse_args(argv)
    from studies.speed import speed_on_gpus
    from workbench import gpu_sweep as gs
    from workbench import results
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    n = gs.resolve(gs.parse_gpus(args.gpus), gs.visible_gpus())
    frames: dict = {"parity": [], "speed": []}
    wall = []
    for g in dict.fromkeys((1, n)):
        with gs.gpu_executor(g, store=out / f"pass-{g}") as ex:
            for study in ("parity",) + (() if args.no_speed else ("speed",)):
                t0 = time.perf_counter()
                df = (gs.parity_on_gpus(ex, quick=args.quick, seed=args.seed) if study == "parity"
                      else speed_on_gpus(ex, quick=args.quick))
                wall.append({"study": study, "gpus": g, "wall_s": round(time.perf_counter() - t0, 2),
                             "rows": len(df)})
                print(wall[-1], flush=True)
                frames[study].append(df.assign(gpus=g))
    meta = results.run_metadata("cuda")
    for study, fs in frames.items():
        if fs:
            results.save(pd.concat(fs, ignore_index=True), out / f"{study}.parquet", meta)
    w = pd.DataFrame(wall)
    w.to_csv(out / "wall.csv", index=False)
    p = frames["parity"]
    same = len(p) < 2 or p[0].drop(columns=["gpu_index", "gpu_name", "gpus"]).equals(
        p[-1].drop(columns=["gpu_index", "gpu_name", "gpus"]))
    (out / "README.md").write_text(
        f"# Sweeps across {n} GPUs ({meta.get('run_device')}, git {meta.get('run_git')})\n\n"
        f"`python -m studies.probes.multi_gpu_sweep --out {args.out}{' --quick' if args.quick else ''}{' --no-speed' if args.no_speed else ''}`\n\n"
        f"{w.to_markdown(index=False)}\n\nparity rows split over {n} GPUs "
        f"{'equal' if same else 'DIFFER FROM'} the one-GPU rows (seed {args.seed}).\n")
    print(f"parity split == one GPU: {same}; -> {out}")
    return 0 if same else 1


if __name__ == "__main__":
    raise SystemExit(main())
