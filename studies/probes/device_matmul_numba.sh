#!/usr/bin/env bash
# One device call for issue 18's Numba CUDA GEMV: its GPU tests, then the matmul bench at the GEMV's M (numba_cuda
# beside the production GEMV, bitsandbytes and cuBLAS in one process) and the weight-layout A/B of its kernel (rows
# against the tiled copy, beside the production path).
# Carry [".whl", ".devlibs"] (bitsandbytes wheel, gzipped prebuilt .so files; else the families are built here).
# usage (on the device, repo root): MS=1,4 bash studies/probes/device_matmul_numba.sh
source studies/probes/device_env.sh >/dev/null
python3 -m workbench.cuda_build matmul quant 2>&1 | tail -1
if [ -z "${PROFILE_ONLY:-}" ]; then
  timeout ${TEST_TIMEOUT:-240} python3 -m pytest -q -p no:cacheprovider ${TESTS:-tests/test_matmul_numba_cuda_gpu.py} \
    > "$OUT/pytest_gpu_matmul_numba_cuda.txt" 2>&1; tail -3 "$OUT/pytest_gpu_matmul_numba_cuda.txt"
  timeout ${BENCH_TIMEOUT:-300} python3 -m studies.bench.bench_matmul_gpu --ms "${MS:-1,4}" --out "$OUT" 2>&1 \
    | grep -E "copy bandwidth| (ours|numba_cuda|bnb|cublas_bf16) [0-9]" | tail -60
  timeout ${AB_TIMEOUT:-240} python3 -m studies.probes.numba_gemv_layout_ab --ms "${MS:-1,4}" --out "$OUT" 2>&1 \
    | tee "$OUT/numba_gemv_layout_ab.txt" | tail -32
fi
# PROFILE=1: Nsight Compute of the Numba GEMV beside the production one (28672x8192, M = 1, their launches after the
# first): speed of light, instruction mix, memory workload, warp stall reasons, occupancy. PROFILE_ONLY=1: no tests
# or bench before it.
NCU=$(command -v ncu || ls /usr/local/cuda*/bin/ncu /opt/nvidia/nsight-compute/*/ncu 2>/dev/null | head -1)
if [ -n "$PROFILE" ] && [ -n "$NCU" ]; then
  timeout ${PROFILE_TIMEOUT:-240} "$NCU" --target-processes all --kernel-name regex:'gemv' --launch-skip 2 \
    --launch-count 2 --section SpeedOfLight --section ComputeWorkloadAnalysis --section InstructionStats \
    --section WarpStateStats --section MemoryWorkloadAnalysis --section Occupancy --section LaunchStats \
    python3 -c "
import torch, workbench as wb
from workbench.matmul import matmul_4bit
W = torch.randn(28672, 8192, device='cuda', dtype=torch.bfloat16)
P, qs = wb.quantize_4bit(W, blocksize=64, compress_statistics=True)
A = torch.randn(1, 8192, device='cuda', dtype=torch.bfloat16)
for b in ('numba_cuda', 'cuda', 'numba_cuda', 'cuda'):
    matmul_4bit(A, P, qs, backend=b)
torch.cuda.synchronize()" > "$OUT/ncu_gemv_numba_vs_cuda.txt" 2>&1
  grep -E "gemv|DRAM Throughput|Memory Throughput|Duration|Issue Slots Busy|Stall|Achieved Occupancy|L1/TEX Hit" \
    "$OUT/ncu_gemv_numba_vs_cuda.txt" | head -60
fi
