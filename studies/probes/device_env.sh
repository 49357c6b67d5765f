# Sourced by the device_*.sh scripts (repo root, on the device): what every device call starts from. Installs a
# carried bitsandbytes wheel (.whl/) into /tmp/site, unpacks carried prebuilt libraries (.devlibs/), puts the wheel
# and the tree on PYTHONPATH, names the git revision
# (.whl/GIT_REV: the copied tree may carry an older .git), builds the CUDA launcher (workbench/_native/cuda_launch.pyx)
# for this machine's Python (Cython from a carried wheel if it has none) and writes the machine's facts to
# $OUT/device.txt.
export PYTHONUNBUFFERED=1 NUMBA_CACHE_DIR=/tmp/numba_cache
if ls .whl/bitsandbytes*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/bitsandbytes*.whl 2>&1 | tail -1
fi
export PYTHONPATH=/tmp/site:$PWD KBIT_GIT_REV=${KBIT_GIT_REV:-$(cat .whl/GIT_REV 2>/dev/null || git rev-parse --short HEAD)}
OUT=${OUT:-out/device}; mkdir -p "$OUT"
# Carried prebuilt libraries of cuda_src/ (.devlibs/*.so.gz: carry them only when built from this tree's sources) go
# to cuda_src/build, touched: newer than the sources, so no call rebuilds them.
if [ -d .devlibs ]; then
  mkdir -p cuda_src/build
  for f in .devlibs/*.gz; do gunzip -c "$f" > "cuda_src/build/$(basename "$f" .gz)"; done
  touch cuda_src/build/*.so
fi
if ! python3 -c "import workbench._native.cuda_launch" 2>/dev/null; then
  { ls .whl/cython*.whl .whl/setuptools*.whl >/dev/null 2>&1 &&   # build tools apart: nothing else imports them
      python3 -m pip install -q --no-index --no-deps --target /tmp/buildtools .whl/cython*.whl .whl/setuptools*.whl
    PYTHONPATH=/tmp/buildtools:$PYTHONPATH KBIT_NATIVE=cuda_launch python3 setup.py -q build_ext --inplace; } \
    > "$OUT/launcher_build.txt" 2>&1 || echo "the CUDA launcher did not build: $OUT/launcher_build.txt" >&2
fi
{ nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
  python3 -c "import torch, numba; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'numba', numba.__version__)"
  echo "git $KBIT_GIT_REV"; } | tee "$OUT/device.txt"
# The GPU tests named by TESTS (pytest -k KEXPR; limit TEST_TIMEOUT, default 300 s) into $OUT/pytest_gpu.txt; nothing
# when TESTS is empty.
gpu_tests() {
  [ -n "${TESTS:-}" ] || return 0
  timeout "${TEST_TIMEOUT:-300}" python3 -m pytest -q --tb=short -p no:cacheprovider -m gpu ${KEXPR:+-k "$KEXPR"} $TESTS \
    > "$OUT/pytest_gpu.txt" 2>&1
  tail -3 "$OUT/pytest_gpu.txt"
}
