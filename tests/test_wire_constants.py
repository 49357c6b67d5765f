"""The dtype codes of workbench/wire.py against the compiled code that reads them: reordering
one side without the other fails here, not as silently wrong numbers."""
import re
from pathlib import Path

import torch

from workbench.wire import DTYPE_CODE, ELEMENT_KIND

ROOT = Path(__file__).resolve().parents[1]
NAMES = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}


def _defines(path: Path) -> dict:
    found = dict(re.findall(r"#define KBIT_(F32|F16|BF16) (\d+)", path.read_text()))
    return {NAMES[k]: int(v) for k, v in found.items()}


def test_cuda_dtype_codes_match_every_header():
    headers = [h for h in sorted((ROOT / "cuda_src").glob("*.h")) if "#define KBIT_F32" in h.read_text()]
    assert [h.name for h in headers] == ["kbit_dtypes.h"]  # defined once; the family headers include it
    assert _defines(headers[0]) == DTYPE_CODE
    for h in ("kbit_quant.h", "kbit_optim.h", "kbit_matmul.h"):
        assert '#include "kbit_dtypes.h"' in (ROOT / "cuda_src" / h).read_text(), h


def test_element_kinds_match_the_cpu_kernels_and_kbit_header():
    src = (ROOT / "numba_kernels/cpu/quant.py").read_text()
    f32, bf16, f16 = map(int, re.search(r"^F32, BF16, F16 = (\d), (\d), (\d)$", src, re.M).groups())
    assert {torch.float32: f32, torch.bfloat16: bf16, torch.float16: f16} == ELEMENT_KIND
    for h in ("kbit_kbit.h", "kbit_kbit_affine.h"):
        note = re.search(r"Element kinds: (\d) float32, (\d) bfloat16, (\d) float16", (ROOT / "cuda_src" / h).read_text())
        assert tuple(map(int, note.groups())) == (ELEMENT_KIND[torch.float32], ELEMENT_KIND[torch.bfloat16],
                                                   ELEMENT_KIND[torch.float16]), h
    pyx = (ROOT / "workbench/_native/quant_cpu.pyx").read_text()
    # the Cython kernels decode kind 1 as bfloat16 (the upper half of a float32) and kind 0 as float32
    assert re.search(r"kind == 1\) \{ for .*<< 16", pyx) and "kind == 0) { memcpy" in pyx
