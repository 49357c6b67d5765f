#!/usr/bin/env bash
# One device call for the unscaled-lookup tensor-core GEMM (cuda_src/matmul_lut.cuh): build with the ptxas resource
# report, then studies/probes/matmul_lut_ab.py (parity against the reference's bound, then kernel time beside the
# committed dispatch and cuBLAS bf16). Carry [".whl"] (the bitsandbytes wheel; cython and setuptools for the
# launcher). usage (on the device, repo root): bash studies/probes/device_matmul_lut.sh [--quick] [--no-speed]
set -u
source studies/probes/device_env.sh >/dev/null   # the bitsandbytes wheel, PYTHONPATH, revision, the CUDA launcher
exec > >(tee -a "$OUT/log.txt") 2>&1
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm --format=csv,noheader | tee -a "$OUT/device.txt"
python3 -m workbench.cuda_build matmul quant --verbose > "$OUT/ptxas.txt" 2>&1; tail -1 "$OUT/ptxas.txt"
python3 -m studies.probes.matmul_lut_ab --out "$OUT" "$@"
# Nsight Compute on one call of each (where the machine has ncu): speed of light, memory, stall reasons
NCU=$(command -v ncu || ls /usr/local/cuda*/bin/ncu /opt/nvidia/nsight-compute/*/ncu 2>/dev/null | head -1)
if [ -n "$NCU" ] && [ -z "${NO_NCU:-}" ]; then
  timeout ${PROFILE_TIMEOUT:-240} "$NCU" --target-processes all --kernel-name regex:'gemv_4bit|gemm_4bit_mma|gemm_lut' \
    --section SpeedOfLight --section MemoryWorkloadAnalysis --section WarpStateStats --section Occupancy \
    python3 -m studies.probes.matmul_lut_ab --profile-target > "$OUT/ncu_lut.txt" 2>&1
  grep -E "gemv_4bit|gemm_4bit|gemm_lut|DRAM Throughput|L1/TEX Hit|Mem Busy|Max Bandwidth|Duration|Issue Slots|Achieved Occ" \
    "$OUT/ncu_lut.txt" | head -60
fi
