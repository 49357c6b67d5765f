#!/usr/bin/env bash
# One device call: this tree's library of one CUDA family against a carried base build of it
# (.whl/base_libkbit_<family>.so.gz, same entry points; the other families' libraries are .devlibs/ in both), in
# alternating processes of a probe, RUNS times. First the GPU tests of this tree (TESTS, KEXPR as pytest -k).
# usage (on the device, repo root): FAMILY=kbit PROBE="studies.probes.kbit_kernel_ab --settings 16" [RUNS=2]
#        [TESTS=files] [KEXPR=...] [TEST_TIMEOUT=300] bash studies/probes/device_kbit_lib_ab.sh
source studies/probes/device_env.sh
FAMILY=${FAMILY:-kbit}
mkdir -p /tmp/base_build
cp cuda_src/build/*.so /tmp/base_build/
gunzip -c ".whl/base_libkbit_$FAMILY.so.gz" > "/tmp/base_build/libkbit_$FAMILY.so"
touch /tmp/base_build/*.so
gpu_tests
for r in $(seq 1 "${RUNS:-2}"); do
  echo "== new, run $r"; timeout 200 python3 -m $PROBE > "$OUT/new_$r.txt" 2>&1; tail -2 "$OUT/new_$r.txt"
  echo "== base, run $r"; KBIT_CUDA_BUILD=/tmp/base_build timeout 200 python3 -m $PROBE > "$OUT/base_$r.txt" 2>&1
  tail -2 "$OUT/base_$r.txt"
done
