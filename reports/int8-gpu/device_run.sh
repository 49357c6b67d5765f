#!/usr/bin/env bash
# One device call (nvidia-h100-x1, carry [".whl"]): build the int8 family, GPU parity tests, H100 bench -> $OUT.
# usage on the device, repo root:  bash reports/int8-gpu/device_run.sh
set -u
python3 -m pip install -q --no-index --no-deps --no-compile --upgrade --target /tmp/site .whl/*.whl 2>/dev/null
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 NUMBA_CACHE_DIR=/tmp/nc
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem --format=csv > "$OUT/build.txt"
python3 -m workbench.cuda_build int8 --force --verbose 2>&1 | grep -E "Function properties|registers|spill|built|error" \
  | sed -E 's/_ZN[0-9]+_GLOBAL__N__[0-9a-f_]+int8_cu_[0-9a-f]+//' >> "$OUT/build.txt"
timeout 180 python3 -m pytest -q -rs --tb=short -s -p no:cacheprovider -p no:warnings tests/test_int8_gpu.py 2>&1 \
  | grep -v KBIT_TEST_SEED > "$OUT/pytest.txt"
grep -E "reference cuda-vs-cpu|passed|failed|Error" "$OUT/pytest.txt" | tail -30
timeout 190 python3 -m studies.bench_int8 --out "$OUT" 2>&1 | grep -v -i warn | tail -60
