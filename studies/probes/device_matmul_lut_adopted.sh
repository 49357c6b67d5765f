#!/usr/bin/env bash
# One device call after adopting the unscaled-lookup GEMM for 2..32 rows: the matmul GPU tests (the rule-2 paths,
# the unscaled-lookup GEMM, the one-call path), then the matmul bench with the new dispatch. Carry [".whl"] and
# ".devlibs" (prebuilt matmul and quant libraries of this tree). usage (on the device, repo root):
#     bash studies/probes/device_matmul_lut_adopted.sh
set -u
source studies/probes/device_env.sh >/dev/null   # the bitsandbytes wheel, PYTHONPATH, revision, the CUDA launcher
exec > >(tee -a "$OUT/log.txt") 2>&1
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm --format=csv,noheader | tee -a "$OUT/device.txt"
python3 -m workbench.cuda_build matmul quant 2>&1 | tail -1
TESTS="tests/test_matmul_gpu.py tests/test_matmul_lut_gpu.py tests/test_matmul_gemv_one_call.py" \
  TEST_TIMEOUT=${TEST_TIMEOUT:-240} gpu_tests
grep -E "passed|failed|Error|FAILED" "$OUT/pytest_gpu.txt" | tail -15
timeout ${BENCH_TIMEOUT:-260} python3 -m studies.bench.bench_matmul_gpu --out "$OUT/bench" 2>&1 \
  | tail -45
tar czf "$OUT/bench.tgz" -C "$OUT" bench 2>/dev/null; rm -rf "$OUT/bench"
