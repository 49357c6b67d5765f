#!/usr/bin/env bash
# One device call: where a public 4-bit matmul call's time goes on an idle GPU (studies/probes/public_call_timeline.py,
# ours beside F.linear and bitsandbytes), the Numba GEMV's layout A/B at one row (numba_gemv_layout_ab), and Nsight
# Compute of the one-row unscaled-lookup GEMM on 28672x8192 (instructions, stalls, occupancy).
# Carry [".whl", ".devlibs"] (studies/probes/device_carry.sh).
# usage (on the device, repo root): bash studies/probes/device_public_timeline.sh
source studies/probes/device_env.sh >/dev/null
python3 -m workbench.cuda_build matmul quant 2>&1 | tail -1
timeout ${TIMELINE_TIMEOUT:-150} python3 -m studies.probes.public_call_timeline ${CASES:+--cases "$CASES"} --out "$OUT" \
  2>&1 | tee "$OUT/public_call_timeline.txt" | tail -12
if [ -z "${NO_NUMBA:-}" ]; then
  timeout ${AB_TIMEOUT:-200} python3 -m studies.probes.numba_gemv_layout_ab --ms "${MS:-1}" --out "$OUT" 2>&1 \
    | tee "$OUT/numba_gemv_layout_ab.txt" | tail -14
fi
NCU=$(command -v ncu || ls /usr/local/cuda*/bin/ncu /opt/nvidia/nsight-compute/*/ncu 2>/dev/null | head -1)
if [ -z "${NO_NCU:-}" ] && [ -n "$NCU" ]; then
  timeout ${PROFILE_TIMEOUT:-150} "$NCU" --kernel-name regex:'gemm_lut' --launch-skip 2 --launch-count 1 \
    --section SpeedOfLight --section InstructionStats --section WarpStateStats --section Occupancy \
    --section LaunchStats --metrics smsp__inst_executed.sum,smsp__inst_executed_op_shared_ld.sum \
    python3 -c "
import torch, workbench as wb
from workbench.matmul import matmul_4bit
W = torch.randn(28672, 8192, device='cuda', dtype=torch.bfloat16)
P, qs = wb.quantize_4bit(W, blocksize=64, compress_statistics=True)
A = torch.randn(1, 8192, device='cuda', dtype=torch.bfloat16)
for _ in range(4):
    matmul_4bit(A, P, qs)
torch.cuda.synchronize()" > "$OUT/ncu_lut_m1_28672x8192.txt" 2>&1
  grep -E "gemm_lut|Duration|DRAM Throughput|Issued Warp|Warp Cycles Per Issued|Achieved Active Warps|Registers Per|inst_executed|Block Limit" \
    "$OUT/ncu_lut_m1_28672x8192.txt" | head -30
fi
