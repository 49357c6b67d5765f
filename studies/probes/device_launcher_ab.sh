#!/usr/bin/env bash
# One device call: the public calls' host time with this tree's launches (workbench/_native/cuda_launch.pyx) against
# a base tree's (a carried `git archive`, .whl/base_<rev>.tar.gz, and its quant library, .whl/base_libkbit_quant.so.gz;
# the other families' libraries are this tree's prebuilt ones, .devlibs/). Alternating processes, new then base,
# RUNS times: studies/bench/public_call.py and studies/probes/host_profile.py. STAGE=tests runs the GPU tests instead.
# usage (on the device, repo root): [RUNS=2] [STAGE=ab|tests [TESTS=files] [KEXPR=pytest -k]] bash studies/probes/device_launcher_ab.sh
source studies/probes/device_env.sh
if [ "${STAGE:-ab}" = tests ]; then
  timeout 400 python3 -m pytest -q --tb=short -p no:cacheprovider -m gpu ${KEXPR:+-k "$KEXPR"} ${TESTS:-tests/test_gpu_quant.py \
    tests/test_int8_gpu.py tests/test_optim_gpu.py tests/test_kbit_gpu.py tests/test_matmul_gpu.py \
    tests/test_matmul_gemv_one_call.py tests/test_cuda_graphs.py tests/test_op_registry.py} > "$OUT/pytest_gpu.txt" 2>&1
  tail -3 "$OUT/pytest_gpu.txt"
  timeout 60 python3 -m pytest -q -p no:cacheprovider tests/test_cuda_launch.py > "$OUT/pytest_launch.txt" 2>&1
  tail -1 "$OUT/pytest_launch.txt"
  exit 0
fi
base=$(ls .whl/base_*.tar.gz | head -1)
rev=$(basename "$base" .tar.gz); rev=${rev#base_}
B=/tmp/base; rm -rf $B; mkdir -p $B/cuda_src/build && tar xzf "$base" -C $B
cp cuda_src/build/*.so $B/cuda_src/build/ && gunzip -c .whl/base_libkbit_quant.so.gz > $B/cuda_src/build/libkbit_quant.so
touch $B/cuda_src/build/*.so
for r in $(seq 1 "${RUNS:-2}"); do
  echo "== new, run $r"; timeout 150 python3 -m studies.bench.public_call --out "$OUT/new_$r" 2>&1 | grep -v -i warn | tail -8
  echo "== base $rev, run $r"
  (cd $B && KBIT_GIT_REV=$rev PYTHONPATH=/tmp/site:$B timeout 150 python3 -m studies.bench.public_call --out "$OUT/base_$r" 2>&1 |
     grep -v -i warn | tail -8)
done
mkdir -p "$OUT/new_profile" "$OUT/base_profile"
timeout 100 python3 -m studies.probes.host_profile --out "$OUT/new_profile" > /dev/null 2>&1
(cd $B && PYTHONPATH=/tmp/site:$B timeout 100 python3 -m studies.probes.host_profile --out "$OUT/base_profile" > /dev/null 2>&1)
ls "$OUT"/*_profile
