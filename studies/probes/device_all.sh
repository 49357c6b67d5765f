#!/usr/bin/env bash
# One device call for any of the GPU families: build (+ ptxas resource report), GPU tests, benchmarks.
# usage (on the device, repo root, carry [".whl"] holding the bitsandbytes 0.50.2 wheel):
#     bash studies/probes/device_all.sh [build] [tests] [quant] [optim] [int8] [ab] [abnumba] [host] [grid] [thrcost] [ncu8] [ncu] [--quick]
# grid: Numba quantizer kernel time vs persistent grid and launch bounds (studies/probes/numba_grid_sweep.py)
# host: host time per call of the cuda and numba_cuda ops (plain and under cProfile, studies/bench/host_overhead.py)
# ab: the quant library of git revision $AB_REV (default HEAD; it must exist in the .git that travels with the
#     tree, which on the device may be older than the tree) vs this tree's, interleaved in one process
#     (studies/probes/ab_quant_lib.py)
# abnumba: the Numba optimizer kernels of git $AB_REV vs this tree's (speed, new / old / new)
# thrcost: int8 row kernel time vs outliers per row (studies/probes/int8_threshold_cost.py); ncu8: ncu sections of
#       the int8 row kernel at threshold 0 and 6 (studies/probes/device_ncu_int8.py)
# ncu: Nsight Compute sections of the production quant kernels (studies/probes/device_ncu_quant.py), where ncu reads
#      counters (Firecracker machines; not gVisor)
# Results land in $OUT/results/<family>/ and are packed into $OUT/results.tgz (the device tool returns
# at most 8 files); the log is $OUT/log.txt. The git revision of the measured code is read from
# .whl/GIT_REV when present (the .git copied to the device may be older than the tree it measures).
set -u
QUICK=""; STEPS=()
for a in "$@"; do case $a in --quick) QUICK=--quick;; *) STEPS+=("$a");; esac; done
[ ${#STEPS[@]} -eq 0 ] && STEPS=(build tests quant optim int8)
source studies/probes/device_env.sh >/dev/null   # the bitsandbytes wheel, PYTHONPATH, revision, the CUDA launcher
R="$OUT/results"; mkdir -p "$R"
exec > >(tee -a "$OUT/log.txt") 2>&1
has() { for s in "${STEPS[@]}"; do [ "$s" = "$1" ] && return 0; done; return 1; }
pack() { tar czf "$OUT/results.tgz" -C "$R" . ; }
trap pack EXIT
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem,memory.total --format=csv | tee "$R/device.txt"
echo "git ${KBIT_GIT_REV:-unknown}" | tee -a "$R/device.txt"
if has build; then
  for fam in quant optim int8; do
    python3 -m workbench.cuda_build $fam --force --verbose 2>&1 | grep -E "Function properties|registers|spill|built|FAILED|error" \
      | sed -E 's/_ZN[0-9]+_GLOBAL__N__[0-9a-f_]+[a-z0-9]+_cu_[0-9a-f]+//' > "$R/build_$fam.txt"
    grep -c registers "$R/build_$fam.txt" | sed "s/^/$fam kernels reported: /"
  done
fi
if has ab; then
  rm -rf /tmp/ab_old && mkdir -p /tmp/ab_old && git archive "${AB_REV:-HEAD}" | tar x -C /tmp/ab_old
  (cd /tmp/ab_old && timeout 200 python3 -m workbench.cuda_build quant --force > /dev/null 2>&1) &
  OLD_BUILD=$!
  timeout 200 python3 -m workbench.cuda_build quant > /dev/null 2>&1
  wait $OLD_BUILD  # by pid: a bare wait would also wait for the log's tee (a process substitution) forever
  ls -la /tmp/ab_old/cuda_src/build/ cuda_src/build/ | grep quant
  timeout 200 python3 -m studies.probes.ab_quant_lib /tmp/ab_old/cuda_src/build/libkbit_quant.so \
    cuda_src/build/libkbit_quant.so --rounds 3 --out "$R" 2>&1 | grep -v -i warn | tail -14
fi
if has tests; then
  timeout 280 python3 -m pytest -q --tb=short -p no:cacheprovider -p no:warnings -m gpu \
    ${TESTS:-tests/test_gpu_quant.py tests/test_optim_gpu.py tests/test_int8_gpu.py} > "$R/pytest_gpu.txt" 2>&1
  tail -3 "$R/pytest_gpu.txt"
fi
if has quant; then
  mkdir -p "$R/quant"
  timeout 380 python3 -m studies.bench.bench_gpu --out "$R/quant" $QUICK 2>&1 | grep -v -i "warn" | tail -40
fi
if has optim; then
  mkdir -p "$R/optim"
  timeout 300 python3 -m studies.bench.bench_optim_gpu --out "$R/optim" 2>&1 | grep -v -i "warn" | tail -30
fi
if has int8; then
  mkdir -p "$R/int8"
  timeout 200 python3 -m studies.bench.bench_int8 --out "$R/int8" $QUICK ${INT8_ARGS:-} 2>&1 | grep -v -i "warn" | tail -30
fi
if has abnumba; then
  # the Numba optimizer kernels of git ${AB_REV:-HEAD} (of the .git copied to the device, maybe older) vs this
  # tree's, speed only, in the order new / old / new (one process each; a swapped file recompiles)
  mkdir -p "$R/abnumba"; cp numba_kernels/cuda/optim.py /tmp/optim_new.py
  for v in new old new2; do
    if [ $v = old ]; then git show "${AB_REV:-HEAD}":numba_kernels/cuda/optim.py > numba_kernels/cuda/optim.py
    else cp /tmp/optim_new.py numba_kernels/cuda/optim.py; fi
    echo "== numba optimizer kernels: $v"
    timeout 200 python3 -m studies.bench.bench_optim_gpu --out "$R/abnumba/$v" --backends numba_cuda --skip-parity --no-bnb \
      2>&1 | grep -E "^numba_cuda"
  done
  cp /tmp/optim_new.py numba_kernels/cuda/optim.py
fi
if has host; then
  timeout 120 python3 -m studies.bench.host_overhead --n-log2 16 --calls 300 --top 25 > "$R/host_overhead.txt" 2>&1
  grep "=====" "$R/host_overhead.txt"
fi
if has grid; then
  timeout 200 python3 -m studies.probes.numba_grid_sweep ${GRID_PER_SM:+--per-sm $GRID_PER_SM} 2>&1 | grep -v -i warn | tee "$R/numba_grid_sweep.txt"
fi
if has thrcost; then
  timeout 120 python3 -m studies.probes.int8_threshold_cost --out "$R/int8_threshold_cost.json" 2>&1 | grep -v -i warn | tail -12
fi
if has ncu8 && command -v ncu > /dev/null; then
  timeout 150 ncu --clock-control none -k regex:k_vectorwise_quant --section SpeedOfLight --section Occupancy \
    --section SchedulerStats --section WarpStateStats --section MemoryWorkloadAnalysis python3 studies/probes/device_ncu_int8.py \
    > "$R/ncu_int8.txt" 2>&1
  grep -E "k_vectorwise|Throughput|Duration|Stall|Issued|Eligible|Active Warps|Hit Rate|Mem Busy|Max Bandwidth" \
    "$R/ncu_int8.txt" | head -60
fi
if has ncu && command -v ncu > /dev/null; then
  timeout 150 ncu --clock-control none --launch-count 3 -k regex:k_ --section SpeedOfLight --section Occupancy \
    --section LaunchStats --section SchedulerStats --section WarpStateStats python3 studies/probes/device_ncu_quant.py \
    > "$R/ncu.txt" 2>&1
  grep -E "k_quantize|k_dequantize|Memory Throughput|DRAM Throughput|Compute \(SM\)|Duration|Achieved Occupancy|Issued Ipc" \
    "$R/ncu.txt" | head -40
fi
