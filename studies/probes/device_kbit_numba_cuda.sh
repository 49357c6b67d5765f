#!/usr/bin/env bash
# The numba_cuda k-bit GPU tests (tests/test_kbit_gpu.py, the affine case of tests/test_kbit_affine_sim.py), split
# over parallel processes (one per group below; the every-K test one per K, and K = 8 and the lane quantizer's
# search-table cases one per blocksize or K): Numba compiles each (K, layout, input kind, blocksize, scale format)
# kernel on first use (the lane quantizer about 15 s each, CPU bound), so one process would need over 10 minutes on
# a fresh machine. All groups at once, in one call: 7 min 12 s at ca6a365 (26 processes on 16 cores).
# Their pass is what clears registry.NOT_YET_RUN_ON_A_GPU. Results: $OUT/kbit-h200/numba_cuda/pytest_gpu_numba_cuda.txt.
# usage (on the device, repo root): [KBIT_NUMBA_SHARD=1/2] bash studies/probes/device_kbit_numba_cuda.sh
export PYTHONUNBUFFERED=1 KBIT_PROGRESS=0 MPLBACKEND=Agg
source studies/probes/device_env.sh >/dev/null   # the bitsandbytes wheel, PYTHONPATH, revision, the CUDA launcher
D="$OUT/kbit-h200/numba_cuda"; mkdir -p "$D"
GROUPS_K=("bit_exact and (dtype0 or dtype1)" "bit_exact and (dtype2 or dtype3)"
          "bit_exact and (dtype4 or dtype5 or dtype6)" "grid_stride and dense" "grid_stride and bitplane"
          "every_k_and and K2" "every_k_and and K3" "every_k_and and K4" "every_k_and and K5" "every_k_and and K6"
          "every_k_and and K7" "every_k_and and K8-16" "every_k_and and K8-32" "nonfinite_flag or unaligned"
          "search_table and 32-fp32" "search_table and 16-e4m4-decoded-2" "search_table and 16-e4m4-decoded-4"
          "search_table and 16-e4m4-decoded-8" "search_table and 32-e8m0-exact-2" "search_table and 32-e8m0-exact-4"
          "search_table and 32-e8m0-exact-8" "search_table and 64-fp16"
          "search_table and 512-bf16" "dequantize_nonfinite" "default_format")
# KBIT_NUMBA_GROUPS="expr1;expr2": only these groups (and no affine part), e.g. to rerun what a timeout cut
affine=1
if [ -n "${KBIT_NUMBA_GROUPS:-}" ]; then IFS=';' read -r -a GROUPS_K <<< "$KBIT_NUMBA_GROUPS"; affine=0; fi
# KBIT_NUMBA_SHARD=i/n: every n-th group from the i-th (1-based; the affine part with shard 1), for a slower
# machine or compiler: before the lane quantizer's helpers were NVVM-inlined (ca6a365) its compile took 45-80 s and
# the whole set ran past a 470 s limit in 22 of 26 processes (reports/kbit-h200/numba_cuda/, 261f13f).
if [ -n "${KBIT_NUMBA_SHARD:-}" ]; then
  si=${KBIT_NUMBA_SHARD%/*}; sn=${KBIT_NUMBA_SHARD#*/}; pick=()
  for j in "${!GROUPS_K[@]}"; do [ $((j % sn)) -eq $((si - 1)) ] && pick+=("${GROUPS_K[$j]}"); done
  GROUPS_K=("${pick[@]}")
  [ "$si" -eq 1 ] || affine=0   # the affine part only once
fi
i=0
for k in "${GROUPS_K[@]}"; do
  i=$((i + 1))
  { echo "-k numba_cuda and ($k)"; NUMBA_CACHE_DIR=/tmp/nc$i timeout ${TEST_TIMEOUT:-500} python3 -m pytest -q \
    --tb=short -p no:cacheprovider -m gpu -k "numba_cuda and ($k)" tests/test_kbit_gpu.py; echo "exit $?"; } \
    > "$D/part$i.txt" 2>&1 &
done
[ "$affine" = 1 ] && { NUMBA_CACHE_DIR=/tmp/nc0 timeout ${TEST_TIMEOUT:-500} python3 -m pytest -q \
  --tb=short -p no:cacheprovider -m gpu tests/test_kbit_affine_sim.py > "$D/part0.txt" 2>&1 & }
wait
for f in "$D"/part*.txt; do echo "== $(basename "$f")"; cat "$f"; done > "$D/pytest_gpu_numba_cuda.txt"
rm -f "$D"/part*.txt
grep -E "^== |^-k |^exit |passed|failed|error|^FAILED" "$D/pytest_gpu_numba_cuda.txt"
