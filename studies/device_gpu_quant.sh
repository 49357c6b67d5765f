#!/usr/bin/env bash
# One device call: build + resource report, GPU parity tests, benchmark + parity study -> $OUT.
# usage (on the device, repo root): bash studies/device_gpu_quant.sh [--quick] [--no-tests]
set -u
QUICK=""; TESTS=1
for a in "$@"; do case $a in --quick) QUICK=--quick;; --no-tests) TESTS=0;; esac; done
export PYTHONUNBUFFERED=1 NUMBA_CACHE_DIR=/tmp/numba_cache
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl 2>&1 | tail -2
export PYTHONPATH=/tmp/site:$PWD
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem --format=csv | tee "$OUT/build.txt"
python3 -m workbench.cuda_build quant --force --verbose 2>&1 | grep -E "k_(de)?quantize|registers|spill|built|FAILED|error" \
  | sed -E 's/_ZN[0-9]+_GLOBAL__N__[0-9a-f_]+quant_cu_[0-9a-f]+//' >> "$OUT/build.txt"
if [ $TESTS = 1 ]; then
  timeout 300 python3 -m pytest -q -x --tb=short -p no:cacheprovider -p no:warnings tests/test_gpu_quant.py 2>&1 | tail -40 | tee "$OUT/pytest.txt"
fi
timeout 400 python3 -m studies.bench_gpu --out "$OUT" $QUICK 2>&1 | grep -v -i "warn" | tail -70
if [ "${NCU:-1}" = 1 ] && command -v ncu >/dev/null; then
  timeout 120 ncu --launch-count 3 -k regex:k_ --section SpeedOfLight --section Occupancy --section LaunchStats \
    --section SchedulerStats --section WarpStateStats python3 studies/device_ncu_quant.py > "$OUT/ncu.txt" 2>&1
  grep -E "k_quantize|k_dequantize|Memory Throughput|DRAM Throughput|Compute \(SM\)|Duration|Achieved Occupancy|Registers|Issued Ipc|No Eligible" "$OUT/ncu.txt" | head -60
fi
