#!/usr/bin/env bash
# One device call for the matmul dispatch as committed: the matmul GPU tests (the rule-2 paths, the unscaled-lookup
# GEMM and its tiled copies, the one-call path, the argument checks), then the matmul bench (BENCH_ARGS, e.g.
# "--ms 1,4,16,64 --reps 10"; BENCH=0 skips it) and, with PROBE_ARGS, the LUT kernel's variant A/B
# (studies/probes/matmul_lut_ab.py; its json under $OUT/probe), with LARGE_M_ARGS the interleaved large-M timing,
# with HOST_PROFILE=1 the public call's host profile.
# TESTS overrides the test files ("" for none). QUANT_BENCH=1 adds the quant family's bench, speed only (its
# 'nf4-dq' row: dequantize_4bit of a double-quantized state, one nested launch). NEED_H200=1 stops at once, running
# nothing, when the card is not an H200.
# Carry [".whl", ".devlibs"] (prebuilt matmul and quant libraries of this tree). usage (on the device, repo root):
#     bash studies/probes/device_matmul_lut_adopted.sh
set -u
source studies/probes/device_env.sh >/dev/null   # the bitsandbytes wheel, PYTHONPATH, revision, the CUDA launcher
exec > >(tee -a "$OUT/log.txt") 2>&1
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm --format=csv,noheader | tee -a "$OUT/device.txt"
if [ -n "${NEED_H200:-}" ] && ! nvidia-smi --query-gpu=name --format=csv,noheader | grep -q H200; then
  echo "not an H200: nothing run (NEED_H200=1)"; exit 0
fi
python3 -m workbench.cuda_build matmul quant 2>&1 | tail -1
ALL="tests/test_matmul_gpu.py tests/test_matmul_lut_gpu.py tests/test_matmul_gemv_one_call.py tests/test_op_checks.py"
TESTS=${TESTS-$ALL} TEST_TIMEOUT=${TEST_TIMEOUT:-240} gpu_tests
grep -E "passed|failed|Error|FAILED" "$OUT/pytest_gpu.txt" 2>/dev/null | tail -15
if [ "${BENCH:-1}" != 0 ]; then   # BENCH=0: no bench (a variant A/B alone)
  timeout ${BENCH_TIMEOUT:-260} python3 -m studies.bench.bench_matmul_gpu --out "$OUT/bench" ${BENCH_ARGS:-} 2>&1 \
    | tail -45
  tar czf "$OUT/bench.tgz" -C "$OUT" bench 2>/dev/null; rm -rf "$OUT/bench"
fi
if [ -n "${QUANT_BENCH:-}" ]; then
  timeout ${QUANT_TIMEOUT:-200} python3 -m studies.bench.bench_gpu --out "$OUT/quant" --quick --no-parity --no-sweep \
    2>&1 | grep -v -i warn | tail -30
fi
# PROBE_ARGS (e.g. "--variants 0,14 --ms 1,4,16"): the LUT kernel's variants, parity then speed
if [ -n "${PROBE_ARGS:-}" ]; then
  timeout ${PROBE_TIMEOUT:-200} python3 -m studies.probes.matmul_lut_ab --out "$OUT/probe" ${PROBE_ARGS} 2>&1 \
    | tee "$OUT/lut_ab.txt" | tail -60
fi
# LARGE_M_ARGS (e.g. "--ms 256,2048"): the public call against cuBLAS and bitsandbytes, interleaved
# (studies/probes/matmul_large_m_interleaved.py; its json under $OUT/large_m)
if [ -n "${LARGE_M_ARGS:-}" ]; then
  timeout ${LARGE_M_TIMEOUT:-240} python3 -m studies.probes.matmul_large_m_interleaved --out "$OUT/large_m" \
    ${LARGE_M_ARGS} 2>&1 | tee "$OUT/large_m.txt" | tail -40
fi
# HOST_PROFILE=1: where the public call's host time goes (studies/probes/matmul_host_profile.py), beside F.linear
if [ -n "${HOST_PROFILE:-}" ]; then
  timeout ${HOST_TIMEOUT:-120} python3 -m studies.probes.matmul_host_profile > "$OUT/host_profile.txt" 2>&1
  grep -E "host per call" "$OUT/host_profile.txt"
fi
