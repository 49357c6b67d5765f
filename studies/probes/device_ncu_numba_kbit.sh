#!/usr/bin/env bash
# Nsight Compute of the Numba CUDA k-bit quantizer and dequantizer beside the CUDA ones (K = 4, bit-plane, n = 2^28
# bf16, the defaults): speed of light, instruction mix, warp stalls, occupancy, and the SASS lines that cost most.
# Carry [".whl", ".devlibs"]. usage (on the device, repo root): bash studies/probes/device_ncu_numba_kbit.sh
source studies/probes/device_env.sh >/dev/null
python3 -m workbench.cuda_build kbit 2>&1 | tail -1
NCU=$(command -v ncu || ls /usr/local/cuda*/bin/ncu /opt/nvidia/nsight-compute/*/ncu 2>/dev/null | head -1)
SECTIONS="--section SpeedOfLight --section ComputeWorkloadAnalysis --section InstructionStats --section WarpStateStats
  --section MemoryWorkloadAnalysis --section Occupancy --section LaunchStats"
K=${KS:-4}; L=${LAYOUT:-bitplane}
# the Numba kernels: the second call of each (the first compiles); the CUDA ones: their only call
timeout ${PROFILE_TIMEOUT:-240} "$NCU" --target-processes all --kernel-name regex:'fused|dequant8' --launch-skip 1 \
  --launch-count 2 $SECTIONS --section SourceCounters \
  python3 -m studies.probes.device_ncu_kbit --ks $K --layout $L --backend numba_cuda --ops quantize dequantize \
  > "$OUT/ncu_numba_kbit.txt" 2>&1
timeout ${PROFILE_TIMEOUT:-240} "$NCU" --target-processes all --kernel-name regex:'fused|dequant8' --launch-skip 1 \
  --launch-count 2 --section SourceCounters --page source --print-source sass --csv \
  python3 -m studies.probes.device_ncu_kbit --ks $K --layout $L --backend numba_cuda --ops quantize dequantize \
  > "$OUT/ncu_numba_kbit_source.csv" 2>&1
timeout ${PROFILE_TIMEOUT:-240} "$NCU" --target-processes all --kernel-name regex:'kk_' $SECTIONS \
  python3 -m studies.probes.device_ncu_kbit --ks $K --layout $L --backend cuda --ops quantize dequantize \
  > "$OUT/ncu_cuda_kbit.txt" 2>&1
grep -E "^  [a-z_]|Duration|DRAM Throughput|Memory Throughput|Executed Ipc A|Issue Slots Busy|Executed Instructions  |Registers Per|Achieved Occupancy|Theoretical Occ|Stall|Block Limit" \
  "$OUT/ncu_numba_kbit.txt" "$OUT/ncu_cuda_kbit.txt" | head -120
python3 -m studies.probes.ncu_source_top "$OUT/ncu_numba_kbit_source.csv" --top 25 > "$OUT/ncu_numba_kbit_source_top.txt" 2>&1
head -80 "$OUT/ncu_numba_kbit_source_top.txt"
gzip -f "$OUT/ncu_numba_kbit_source.csv"
