#!/usr/bin/env bash
# What the device_*.sh scripts carry, made here (repo root; needs the network for the wheel and nvcc for the
# libraries): .whl/ holds the bitsandbytes 0.50.2 wheel cut to its CUDA 13.0 library (the device runs CUDA 13; the
# whole wheel, 43 MB, would not fit the 64 MiB a call may carry beside the tree) and GIT_REV; .devlibs/ the gzipped
# libraries of the families named (default: matmul quant), built from this tree (the matmul family takes about 10
# minutes on 2 cores). The device image has Cython and setuptools: no wheels for them. Prints what the call would
# carry against its limit.
#     bash studies/probes/device_carry.sh [family ...]
set -eu
PY=${PY:-.venv/bin/python}
mkdir -p .whl .devlibs
whl=.whl/bitsandbytes-0.50.2-py3-none-manylinux_2_24_x86_64.whl
if [ ! -f "$whl" ]; then
  tmp=$(mktemp -d)
  "$PY" -m pip download -q --no-deps -d "$tmp" bitsandbytes==0.50.2 --platform manylinux_2_24_x86_64 --only-binary=:all:
  "$PY" - "$tmp"/bitsandbytes-0.50.2-*.whl "$whl" <<'EOF'
import re, sys, zipfile
drop = re.compile(r"libbitsandbytes_(cuda1[12]\d|cuda132|rocm\d+)\.so")   # keep cuda130, cpu, xpu
src, dst = zipfile.ZipFile(sys.argv[1]), zipfile.ZipFile(sys.argv[2], "w", zipfile.ZIP_DEFLATED)
for info in src.infolist():
    if drop.search(info.filename):
        continue
    data = src.read(info.filename)
    if info.filename.endswith(".dist-info/RECORD"):   # no rows for what is gone, and no empty row (pip rejects it)
        data = b"\n".join(r for r in data.split(b"\n") if r.strip() and not drop.search(r.decode())) + b"\n"
    dst.writestr(info, data)
dst.close()
EOF
  rm -rf "$tmp"
fi
git rev-parse --short HEAD > .whl/GIT_REV
for fam in ${*:-matmul quant}; do
  "$PY" -m workbench.cuda_build "$fam" | tail -1
  gzip -c "cuda_src/build/libkbit_$fam.so" > ".devlibs/libkbit_$fam.so.gz"
done
tree=$(git ls-files -z | xargs -0 du -cb 2>/dev/null | tail -1 | cut -f1)
carry=$(du -cb .whl .devlibs | tail -1 | cut -f1)
echo "carry: tree $((tree / 1048576)) MiB + .whl and .devlibs $((carry / 1048576)) MiB of 64 MiB"
