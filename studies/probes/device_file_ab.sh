#!/usr/bin/env bash
# One device call: this tree against a base that differs in a few Python files (a Numba kernel, an adapter), in
# alternating processes of a probe, RUNS times. The base files are carried under .whl/base_tree/ at their repo
# paths (e.g. `git show REV:numba_kernels/cuda/kbit_lane.py > .whl/base_tree/numba_kernels/cuda/kbit_lane.py`);
# the base runs from a copy of this tree (built libraries and launcher included) with them laid over it. First the
# GPU tests of this tree (TESTS, KEXPR as pytest -k) and an optional CHECK command.
# usage (on the device, repo root): PROBE="studies.probes.kbit_numba_lane_check --ks 3 --bench-out" [RUNS=2]
#        [TESTS=files] [KEXPR=...] [CHECK="python3 -m ..."] bash studies/probes/device_file_ab.sh
# The probe's last argument gets a folder per run ($OUT/new_R, $OUT/base_R) when it ends in --bench-out or --out.
source studies/probes/device_env.sh
[ -d .whl/base_tree ] || { echo "no .whl/base_tree: nothing to compare against" >&2; exit 2; }
BASE=/tmp/base_tree
rm -rf "$BASE" && mkdir -p "$BASE"
cp -a workbench numba_kernels studies cuda_src pyproject.toml "$BASE"/
cp -a .whl/base_tree/. "$BASE"/
gpu_tests
if [ -n "${CHECK:-}" ]; then
  timeout 300 $CHECK > "$OUT/check.txt" 2>&1; echo "check exit $?"; tail -2 "$OUT/check.txt"
fi
folder() { case "$PROBE" in *--bench-out|*--out) echo "$1";; esac; }
for r in $(seq 1 "${RUNS:-2}"); do
  echo "== new, run $r"
  timeout 240 python3 -m $PROBE $(folder "$OUT/new_$r") > "$OUT/new_$r.txt" 2>&1; tail -2 "$OUT/new_$r.txt"
  echo "== base, run $r"
  (cd "$BASE" && PYTHONPATH=/tmp/site:$BASE timeout 240 python3 -m $PROBE $(folder "$OUT/base_$r")) \
    > "$OUT/base_$r.txt" 2>&1
  tail -2 "$OUT/base_$r.txt"
done
