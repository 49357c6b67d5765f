#!/usr/bin/env bash
# One device call for the k-bit public path: build, the k-bit CUDA GPU tests (numba_cuda excluded: its compile
# takes minutes, studies/probes/device_kbit_numba_cuda.sh), the k-bit speed bench (public call, graph-replayed
# kernel, host time) and the host-time profile of every public call. Carry [".whl"] (bitsandbytes wheel, GIT_REV).
# usage (on the device, repo root): OUT=... bash studies/probes/device_kbit_host.sh
source studies/probes/device_env.sh
for f in quant int8 kbit kbit_affine matmul; do (timeout 200 python3 -m workbench.cuda_build $f 2>&1 | tail -1) & done
wait
timeout ${TEST_TIMEOUT:-200} python3 -m pytest -q --tb=short -p no:cacheprovider -p no:warnings -m gpu -k "not numba_cuda" \
  ${TESTS:-tests/test_kbit_gpu.py tests/test_cuda_graphs.py tests/test_op_registry.py tests/test_cpu_kernels.py} \
  > "$OUT/pytest_gpu.txt" 2>&1
grep -E "passed|failed|^FAILED|rror" "$OUT/pytest_gpu.txt" | tail -15
timeout ${BENCH_TIMEOUT:-240} python3 -m studies.bench.bench_kbit_gpu --out "$OUT/kbit_speed" --backends cuda 2>&1 \
  | grep -v -i warn | tail -4
timeout 150 python3 -m studies.probes.host_profile --out "$OUT" 2>&1 | head -40
