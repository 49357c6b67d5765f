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
