"""Every cuda_src/<family>.cu compiles with the machine's nvcc (IEEE flags, sm_90a) and exports its C API."""
import ctypes
import shutil
import subprocess
from pathlib import Path

import pytest

from workbench import cuda_build

pytestmark = pytest.mark.skipif(cuda_build.nvcc() is None, reason="nvcc not on PATH")

API = {
    "quant": ("kbit_quantize_blockwise", "kbit_quantize_4bit", "kbit_dequantize_blockwise", "kbit_dequantize_4bit",
              "kbit_quant_ieee_build", "kbit_quant_tuning"),
    "optim": ("kbit_optimizer_update_32bit", "kbit_optimizer_update_norm_sq", "kbit_optimizer_update_8bit_blockwise",
              "kbit_optim_ieee_build"),
    "int8": ("kbit_int8_vectorwise_quant", "kbit_int8_zero_late_cols", "kbit_int8_col_quant",
             "kbit_int8_vectorwise_dequant", "kbit_int8_linear_matmul", "kbit_int8_mm_dequant",
             "kbit_int8_scaled_mm"),
    "matmul": ("kbit_gemv_4bit", "kbit_gemm_4bit_mma", "kbit_gemm_4bit_mma_tile", "kbit_matmul_ieee_build",
               "kbit_gemv_tuning", "kbit_gemm_tuning"),
    "kbit": ("kbit_kbit_quantize", "kbit_kbit_dequantize", "kbit_kbit_tuning"),
    "kbit_affine": ("kbit_affine_range", "kbit_affine_mse", "kbit_affine_codes", "kbit_affine_dequantize"),
}


@pytest.mark.parametrize("family", sorted(API))
def test_family_builds_and_exports(family, tmp_path):
    # the production sources, IEEE flags and arch, PTX only and the optimizers off (they are most of the compile
    # time and change nothing this test checks); the optimized build runs on the GPU machine
    so = cuda_build.build(family, force=True, build_dir=tmp_path, check_only=True)
    assert so.exists() and so.parent == tmp_path
    nm = shutil.which("nm")
    if nm:
        syms = subprocess.run([nm, "-D", "--defined-only", str(so)], capture_output=True, text=True).stdout
        for name in API[family]:
            assert f" T {name}" in syms, name
    try:
        lib = ctypes.CDLL(str(so))
    except OSError as e:  # loading needs the CUDA runtime's dependencies; nm above already checked exports
        pytest.skip(f"cannot dlopen without the CUDA driver: {e}")
    ieee = {"quant": "kbit_quant_ieee_build", "optim": "kbit_optim_ieee_build",
            "matmul": "kbit_matmul_ieee_build"}.get(family)
    if ieee:
        assert getattr(lib, ieee)() == 1  # built without fast-math


def test_ieee_flags():
    flags = cuda_build.IEEE_FLAGS
    assert "-fmad=false" in flags and "-prec-div=true" in flags and "-ftz=false" in flags
    assert not any("fast" in f for f in flags)


def test_umbrella_header_compiles(tmp_path):
    """kbit.h includes every family header that exists; a host translation unit sees the quant API."""
    src = tmp_path / "use.cu"
    src.write_text('#include "kbit.h"\nint main(){ return (int)(long)&kbit_quantize_4bit == 0; }\n')
    r = subprocess.run([cuda_build.nvcc(), "-c", "-I", str(cuda_build.SRC), "-o", str(tmp_path / "use.o"), str(src)],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def test_a_wgmma_that_ptxas_serializes_fails_the_build(tmp_path, monkeypatch):
    """A kernel whose wgmma ptxas makes synchronous (its "Potential Performance Loss" advisories) still computes the
    right numbers, so only the build can catch it: the build fails, naming the advisory, and leaves no library."""
    src = tmp_path / "src"
    src.mkdir()
    shutil.copy(Path(__file__).parent / "data" / "wgmma_serialized.cu", src / "serial.cu")
    monkeypatch.setattr(cuda_build, "SRC", src)
    with pytest.raises(RuntimeError, match="ptxas serialized wgmma in serial.cu"):
        cuda_build.build("serial", ("sm_90a",), force=True, build_dir=tmp_path / "lib")
    assert not (tmp_path / "lib").exists() or not any((tmp_path / "lib").iterdir())
