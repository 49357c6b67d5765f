#!/usr/bin/env bash
# compute-sanitizer memcheck over the GPU tests of one or more families (default: int8 and optim),
# after the libraries are built. usage (device, repo root): bash studies/probes/device_memcheck.sh [test files]
export PYTHONUNBUFFERED=1 NUMBA_CACHE_DIR=/tmp/numba_cache
source studies/probes/device_env.sh >/dev/null   # the bitsandbytes wheel, PYTHONPATH, revision, the CUDA launcher
TESTS=${*:-tests/test_int8_gpu.py tests/test_optim_gpu.py}
{ echo "# compute-sanitizer --tool memcheck over: $TESTS"
  nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
  compute-sanitizer --version | tail -1
  echo "git ${KBIT_GIT_REV:-$(cat .whl/GIT_REV 2>/dev/null)}"
  timeout ${MEMCHECK_TIMEOUT:-240} compute-sanitizer --tool memcheck --print-limit 50 \
    python3 -m pytest -q -p no:cacheprovider -m gpu -k "not numba" $TESTS 2>&1 | tail -60
} > "$OUT/memcheck.txt" 2>&1
grep -E "passed|failed|ERROR SUMMARY|Invalid" "$OUT/memcheck.txt" | sort | uniq -c | head
