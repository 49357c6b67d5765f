#!/usr/bin/env bash
# One device call for the tensor-core GEMM's chunk loop (matmul_mma.cuh LOOP): the A/B with each variant's parity
# (studies/probes/gemm_loop_ab.py), Nsight Compute of the M = 1 / 16 / 64 calls with each loop, and the GPU matmul
# tests with the new loop forced.
# Carry [".whl", ".devlibs"]. usage (on the device, repo root): bash studies/probes/device_gemm_loop.sh
source studies/probes/device_env.sh >/dev/null
if [ -d .devlibs ]; then
  mkdir -p cuda_src/build
  for f in .devlibs/*.gz; do gunzip -c "$f" > "cuda_src/build/$(basename "$f" .gz)"; done
  touch cuda_src/build/*.so  # newer than the sources: no rebuild
fi
cat "$OUT/device.txt"
timeout ${AB_TIMEOUT:-240} python3 -m studies.probes.gemm_loop_ab --out "$OUT" 2>&1 | tee "$OUT/gemm_loop_ab.txt" | tail -25
NCU=$(command -v ncu || ls /usr/local/cuda*/bin/ncu /opt/nvidia/nsight-compute/*/ncu 2>/dev/null | head -1)
if [ -n "$NCU" ]; then
  for v in 0 1 2; do
    KBIT_GEMM_LOOP=$v timeout ${PROFILE_TIMEOUT:-120} "$NCU" --target-processes all --kernel-name regex:'gemm_4bit_mma' \
      --section SpeedOfLight --section MemoryWorkloadAnalysis --section WarpStateStats --metrics smsp__inst_executed.sum \
      python3 -m studies.probes.matmul_profile_target > "$OUT/ncu_gemm_loop$v.txt" 2>&1
    echo "== LOOP $v"; grep -E "gemm_4bit_mma|DRAM Throughput|Duration|Compute \(SM\) Throughput|Warp Cycles Per Issued|inst_executed" "$OUT/ncu_gemm_loop$v.txt" | head -24
  done
fi
KBIT_GEMM_LOOP=${TEST_LOOP:-1} timeout ${TEST_TIMEOUT:-200} python3 -m pytest -q -m gpu -p no:cacheprovider \
  tests/test_matmul_gpu.py > "$OUT/pytest_gpu_matmul_loop${TEST_LOOP:-1}.txt" 2>&1
tail -3 "$OUT/pytest_gpu_matmul_loop${TEST_LOOP:-1}.txt"
