#!/usr/bin/env bash
# One device call: build, the GPU tests of the op registry / public API / new families, and the
# public-call bench (studies/bench/public_call.py). Carry [".whl"] holding the bitsandbytes wheel.
# usage (on the device, repo root): bash studies/probes/device_public_api.sh
source studies/probes/device_env.sh
for f in ${FAMILIES:-quant int8 optim kbit matmul}; do (timeout 150 python3 -m workbench.cuda_build $f 2>&1 | tail -1) & done
wait  # the families build in parallel (one nvcc each)
timeout ${TEST_TIMEOUT:-150} python3 -m pytest -q --tb=line -p no:cacheprovider -p no:warnings -p no:logging -m gpu \
  ${TESTS:-tests/test_cuda_graphs.py tests/test_op_registry.py tests/test_int8_gpu.py tests/test_kbit_gpu.py tests/test_matmul_gpu.py tests/test_matmul_gemv_one_call.py} \
  > "$OUT/pytest_gpu.txt" 2>&1
grep -E "passed|failed|^FAILED|rror" "$OUT/pytest_gpu.txt" | tail -15
timeout ${BENCH_TIMEOUT:-100} python3 -m studies.bench.public_call --out "$OUT" 2>&1 | grep -v -i warn | tail -9
