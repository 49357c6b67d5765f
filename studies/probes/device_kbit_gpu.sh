#!/usr/bin/env bash
# One device call for issue 19's k-bit speed target: build the kbit and quant CUDA families, the k-bit GPU tests
# (cuda and numba_cuda, affine included: their pass is what clears registry.NOT_YET_RUN_ON_A_GPU),
# then the k-bit bench (studies/bench/bench_kbit_gpu.py) into $OUT/kbit-h200. A carried .whl/ (bitsandbytes wheel)
# is installed when present; the bench does not need it.
# usage (on the device, repo root): [KBIT_GIT_REV=<rev>] [TEST_K=<pytest -k expression>] bash studies/probes/device_kbit_gpu.sh
# Worst case 150 + 2 x 120 + 300 s (BUILD/TEST/BENCH_TIMEOUT). Numba compiles each (K, layout, format) kernel on
# first use, so the numba_cuda cases of test_kbit_gpu need several minutes on a fresh machine: TEST_K selects.
export PYTHONUNBUFFERED=1 NUMBA_CACHE_DIR=/tmp/numba_cache KBIT_PROGRESS=0 MPLBACKEND=Agg
source studies/probes/device_env.sh >/dev/null   # the bitsandbytes wheel, PYTHONPATH, revision, the CUDA launcher
mkdir -p "$OUT/kbit-h200"
{ nvidia-smi --query-gpu=name,driver_version,clocks.max.sm --format=csv,noheader
  python3 -c "import torch, numba; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'numba', numba.__version__)"
  echo "git $KBIT_GIT_REV"; } | tee "$OUT/kbit-h200/device.txt"
for f in kbit kbit_affine quant; do (timeout ${BUILD_TIMEOUT:-150} python3 -m workbench.cuda_build $f 2>&1 | tail -1) & done
wait  # one nvcc per family, in parallel
# One process per file: test_kbit_affine_sim selects Numba's simulator for its whole process.
for t in test_kbit_gpu test_kbit_affine_sim; do
  timeout ${TEST_TIMEOUT:-120} python3 -m pytest -q --tb=short -p no:cacheprovider -p no:warnings -m gpu \
    ${TEST_K:+-k "$TEST_K"} tests/$t.py >> "$OUT/kbit-h200/pytest_gpu_kbit.txt" 2>&1
  echo " ($t, exit $?)" >> "$OUT/kbit-h200/pytest_gpu_kbit.txt"
done
grep -E "passed|failed|exit|^FAILED|rror" "$OUT/kbit-h200/pytest_gpu_kbit.txt" | tail -15
timeout ${BENCH_TIMEOUT:-300} python3 -m studies.bench.bench_kbit_gpu --out "$OUT/kbit-h200" ${BENCH_ARGS:-} \
  > "$OUT/kbit-h200/bench_log.txt" 2>&1
echo "bench exit $?"
grep -E "^\[bench_kbit\]|skipping|MISSED|rror" "$OUT/kbit-h200/bench_log.txt" | tail -40
tail -n 4 "$OUT/kbit-h200/bench_log.txt"
grep -E "^\*\*Met" "$OUT/kbit-h200/kbit_speed.md" 2>/dev/null
