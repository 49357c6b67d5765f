"""Registers, spills and shared memory of the Numba CUDA kernels (quantizers, 8-bit optimizers, matmul GEMVs),
without a GPU: PTX from numba-cuda, then ``ptxas -v`` (the CUDA toolkit on this machine).

    pip install --target .numba-cuda --no-deps numba-cuda==0.30.4 "cuda-bindings==13.*" cuda-core cuda-pathfinder
    PYTHONPATH=.numba-cuda python -c "import _numba_cuda_redirector; import runpy; \\
        runpy.run_module('studies.probes.numba_ptx_report', run_name='__main__')"

numba-cuda is the device machine's CUDA target (the venv's numba has an older built-in one that
cannot compile these kernels); without a driver and libnvrtc it needs two stand-ins: the compute
capability (sm_90) and the list of supported architectures. Local memory (``ld.local``) in a kernel's
PTX means a per-thread array was not kept in registers.
"""
from __future__ import annotations

import subprocess
import tempfile
from pathlib import Path


def _offline_numba_cuda():
    import numba.cuda.cudadrv.nvrtc as nvrtc
    nvrtc.get_supported_ccs = lambda: ((9, 0),)
    import numba.cuda.cuda_paths as paths
    paths._get_nvrtc_path = lambda: None
    import numba.cuda.dispatcher as disp

    class _Device:  # device functions ask the current device for its compute capability
        compute_capability = (9, 0)
    disp.get_current_device = lambda: _Device()


def report(dispatcher, sig, name: str, out: Path) -> str:
    from numba import cuda
    bounds = dispatcher.targetoptions.get("launch_bounds")
    ptx, _ = cuda.compile_ptx(dispatcher.py_func, sig, cc=(9, 0), fastmath=False,
                              **({"launch_bounds": bounds} if bounds else {}))
    path = out / f"{name}.ptx"
    path.write_text(ptx)
    r = subprocess.run(["ptxas", "-arch=sm_90", "-v", str(path), "-o", "/dev/null"], capture_output=True, text=True)
    info = " ".join(line.split("info    : ")[-1].strip() for line in r.stderr.splitlines()
                    if "registers" in line or "spill" in line)
    local = sum(ptx.count(op) for op in ("ld.local", "st.local"))
    return f"{name:28s} {info}  local accesses in PTX: {local}"


def main():
    _offline_numba_cuda()
    from numba import types as T

    from numba_kernels.cuda import optim as O
    from numba_kernels.cuda import quant as Q
    a1 = lambda t: T.Array(t, 1, "C")  # noqa: E731  (the launches see contiguous views)
    i8, f, u8, i32, i64 = T.int64, a1(T.float32), a1(T.uint8), a1(T.int32), a1(T.int64)
    out = Path(tempfile.mkdtemp(prefix="numba_ptx_"))
    lines = []
    for bits, clamped in ((4, 0), (8, 1)):
        sig = (i64, a1(T.int16), i8, T.boolean, i8, i8, i8, i8, i8, i64, i8, i8, i8, i8, i8, i8, i64, u8, f)
        lines.append(report(Q.kernel("quantize_fine", bits, Q.BF16, clamped), sig, f"quantize_fine{bits}_bf16", out))
    for bits, words in ((4, a1(T.int16)), (8, a1(T.int32))):
        sig = (words, f, f, i8, i8, i64)
        lines.append(report(Q.kernel("dequantize_fast", bits, Q.BF16), sig, f"dequantize{bits}_bf16", out))
    tables = (f, u8, f, i32, i8, i8)
    sig = (T.boolean, T.boolean, i64, i64, i32, i32, i32, f, f, u8, u8, u8, i8, f, f, f, *tables, *tables, i8, i8,
           T.UniTuple(T.float32, 17))
    for name, opt in (("adam", O.ADAM), ("ademamix", O.ADEMAMIX), ("momentum", O.MOMENTUM), ("lion", O.LION),
                      ("rmsprop", O.RMSPROP), ("adagrad", O.ADAGRAD)):
        lines.append(report(O.kernel("8bit", opt, True), sig, f"optim8_{name}", out))  # the standard maps: fast
    from numba_kernels.cuda import matmul as MM
    for kind, bias in ((MM.BF16, a1(T.int16)), (MM.F16, a1(T.float16))):   # the matmul GEMVs' adapter arguments
        sig = (i64, i8, i8, i64, f, u8, f, f, i8, f, i8, bias, i8, f)
        dt = "bf16" if kind == MM.BF16 else "f16"
        for M in (1, 2, 4):
            lines.append(report(MM.gemv_rows(64, M, kind), sig, f"gemv_rows_m{M}_{dt}", out))
            lines.append(report(MM.gemv_tiled(M, kind), sig, f"gemv_tiled_m{M}_{dt}", out))
    print("\n".join(lines))
    print(f"(PTX in {out}; the 8-bit optimizer kernels run with launch bounds 4 CTAs/SM on the GPU: ptxas "
          f"-maxrregcount=64 on their PTX shows the spills that cap costs)")


if __name__ == "__main__":
    main()
