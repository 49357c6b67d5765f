#!/usr/bin/env bash
# Issue 19's Numba-vs-CUDA speed rows in one device call: one process per (K, layout) checks the Numba lane quantizer
# against the CUDA one bit for bit (compiling its kernels, about 15 s each, all processes at once; 8 (K, layout) pairs
# took 61 s at 88dfefc), then benches both in turn, each bench alone on the GPU
# (studies/probes/kbit_numba_lane_check.py --bench-after/--bench-done).
# Results: $OUT/numba_ratios/check_K_L.txt and bench_K_L/kbit_speed.*; a summary table on stdout.
# Carry [".whl", ".devlibs"]. usage (on the device, repo root): [KS="3 8"] [LAYOUTS="bitplane dense"] bash $0
export PYTHONUNBUFFERED=1 KBIT_PROGRESS=0 MPLBACKEND=Agg
source studies/probes/device_env.sh >/dev/null
D="$OUT/numba_ratios"; mkdir -p "$D"
prev=$D/turn0; touch "$prev"; i=0
for k in ${KS:-3 8}; do
  for l in ${LAYOUTS:-bitplane dense}; do
    i=$((i + 1))
    NUMBA_CACHE_DIR=/tmp/nc_r$i timeout ${CHECK_TIMEOUT:-500} python3 -m studies.probes.kbit_numba_lane_check \
      --ks $k --layouts $l --bench-out "$D/bench_${k}_$l" --bench-after "$prev" --bench-done "$D/turn$i" \
      > "$D/check_${k}_$l.txt" 2>&1 &
    prev=$D/turn$i
  done
done
wait
rm -f "$D"/turn*
grep -h "differ" "$D"/check_*.txt
python3 - "$D" <<'PY'
import sys, pathlib, pandas as pd
rows = [pd.read_csv(f) for f in sorted(pathlib.Path(sys.argv[1]).glob("bench_*/kbit_speed.csv"))]
if rows:
    df = pd.concat(rows)
    cols = ["k", "layout", "backend", "kernel_ms", "kernel_pct_copy", "pct_of_cuda_kernel", "copy_gbps"]
    print(df[cols].to_string(index=False))
PY
