#!/usr/bin/env bash
# One device call for issue 18's tensor-core GEMM: the codebook-lookup A/B with each variant's parity
# (studies/probes/matmul_lookup_ab.py), then the matmul bench (studies/bench/bench_matmul_gpu.py) with the fastest
# variant that passed. Carry [".whl"] (bitsandbytes wheel) and, optionally, ".devlibs" (gzipped prebuilt .so files).
# usage (on the device, repo root): KBIT_GIT_REV=<rev> bash studies/probes/device_matmul_gpu.sh
export PYTHONUNBUFFERED=1 NUMBA_CACHE_DIR=/tmp/numba_cache
OUT=${OUT:-out/device}; mkdir -p "$OUT"
source studies/probes/device_env.sh >/dev/null   # the bitsandbytes wheel, PYTHONPATH, revision, the CUDA launcher
{ nvidia-smi --query-gpu=name,driver_version,clocks.max.sm --format=csv,noheader
  python3 -c "import torch, bitsandbytes as b; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'bnb', b.__version__)"
  echo "git ${KBIT_GIT_REV:-$(git rev-parse --short HEAD 2>/dev/null)}"; } | tee "$OUT/device.txt"
python3 -m workbench.cuda_build matmul quant 2>&1 | tail -1
timeout ${AB_TIMEOUT:-90} python3 -m studies.probes.matmul_lookup_ab --out "$OUT" > "$OUT/lookup_ab.txt" 2>&1
grep -E "^lookup|BEST|parity" "$OUT/lookup_ab.txt"
best=$(grep -oP 'BEST_LOOKUP=\K[0-9]+' "$OUT/lookup_ab.txt" || echo 0)
echo "lookup $best" >> "$OUT/device.txt"
KBIT_MMA_LOOKUP=$best timeout ${BENCH_TIMEOUT:-200} python3 -m studies.bench.bench_matmul_gpu --out "$OUT" 2>&1 \
  | grep -E "copy bandwidth|^ +ours [0-9]" | tail -40
