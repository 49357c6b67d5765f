#!/usr/bin/env bash
# Why the fused 4-bit kernels stream weights at ~1 TB/s (reports/matmul-h200): Nsight Compute on one call of each
# path (studies/probes/matmul_profile_target.py): speed of light, memory workload, warp stall reasons, pipes.
# usage (on the device, repo root, after a build; carry [".whl"] for bitsandbytes): bash studies/probes/matmul_profile.sh
source studies/probes/device_env.sh >/dev/null   # the bitsandbytes wheel, PYTHONPATH, revision, the CUDA launcher
NCU=$(command -v ncu || ls /usr/local/cuda*/bin/ncu /opt/nvidia/nsight-compute/*/ncu 2>/dev/null | head -1)
if [ -z "$NCU" ]; then echo "no ncu on this machine"; exit 0; fi
timeout ${PROFILE_TIMEOUT:-300} "$NCU" --target-processes all --kernel-name regex:'gemv_4bit|gemm_4bit|kgemm' \
  --section SpeedOfLight --section MemoryWorkloadAnalysis --section WarpStateStats --section ComputeWorkloadAnalysis \
  --section LaunchStats --section Occupancy python3 -m studies.probes.matmul_profile_target > "$OUT/ncu_matmul.txt" 2>&1
grep -E "gemv_4bit|gemm_4bit|kgemm|DRAM Throughput|Memory Throughput|Duration|Issue Slots Busy|Stall|Achieved Occupancy" \
  "$OUT/ncu_matmul.txt" | head -80
