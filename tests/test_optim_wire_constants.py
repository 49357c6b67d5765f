"""The optimizer kernels' wire format is defined once, in Python (workbench/optim/functional.py:
KERNEL_RULES / OPTIMIZER_ID -- the rule id of each optimizer -- and KERNEL_SLOTS -- the order of the float32
constant vector every compiled kernel indexes). The C/C++/Cython/Numba sides spell it out again; these
tests parse them and fail if an id or a slot moves (a reordered slot would silently feed e.g. beta2 where
the kernel reads beta1)."""
from __future__ import annotations

import ast
import re
from pathlib import Path

import numpy as np
import torch

from workbench.optim import _cpu_adapter, _gpu_plan
from workbench.optim import functional as W

ROOT = Path(__file__).resolve().parents[1]
HEADER = ROOT / "cuda_src" / "kbit_optim.h"
PYX = ROOT / "workbench" / "_native" / "optim_cpu.pyx"


def _defines(text: str, prefix: str) -> dict[str, int]:
    return {m.group(1): int(m.group(2)) for m in re.finditer(rf"#define\s+{prefix}(\w+)\s+(\d+)\b", text)}


def _enum_with(text: str, member: str) -> dict[str, int]:
    """The C enum (``enum { A, B = 3, C };``) that lists ``member``: name -> value, C's numbering rules."""
    for body in re.findall(r"enum\s*\{([^}]*)\}", text):
        names = [x.strip() for x in body.replace("\n", " ").split(",") if x.strip()]
        if not any(x.split("=")[0].strip() == member for x in names):
            continue
        out, nxt = {}, 0
        for x in names:
            if "=" in x:
                k, v = (y.strip() for y in x.split("=", 1))
                nxt = int(v, 0)
            else:
                k = x
            out[k] = nxt
            nxt += 1
        return out
    raise AssertionError(f"no enum with {member}")


def _expected_ids(prefix: str) -> dict[str, int]:
    return {prefix + rule.upper(): i for i, rule in enumerate(W.KERNEL_RULES)}


def _expected_slots(prefix: str) -> dict[str, int]:
    return {prefix + slot.upper(): i for i, slot in enumerate(W.KERNEL_SLOTS)}


def test_python_definition_is_consistent():
    assert W.NK == len(W.KERNEL_SLOTS) == 17 and len(set(W.KERNEL_SLOTS)) == W.NK
    assert W.KERNEL_SLOTS[:len(W.SCALAR_NAMES)] == W.SCALAR_NAMES and W.KERNEL_SLOTS[-1] == "upd_mul"
    assert set(W.OPTIMIZER_ID) == set(W.NAMES)
    for name, i in W.OPTIMIZER_ID.items():
        assert W.KERNEL_RULES[i] == {"lamb": "adam", "lars": "momentum"}.get(name, name)
    # the adapters take the one definition, not copies
    assert _cpu_adapter.ID is W.OPTIMIZER_ID and _gpu_plan.ID is W.OPTIMIZER_ID
    assert _cpu_adapter.consts is W.kernel_constants and _gpu_plan.consts is W.kernel_constants
    k = W.kernel_constants("adam", 0.9, 0.99, 0.5, 2.0, 1e-8, 0.01, 7, 1e-3, 0.75, True, 1.5)
    named = W.scalars("adam", 0.9, 0.99, 0.5, 2.0, 1e-8, 0.01, 7, 1e-3, 0.75, True)
    assert k.dtype == np.float32 and k.shape == (W.NK,)
    for i, slot in enumerate(W.SCALAR_NAMES):
        assert k[i] == np.float32(named[slot]), slot
    assert k[W.KERNEL_SLOTS.index("upd_mul")] == np.float32(named["adam32_step"] * 1.5)


def test_cuda_header_matches_python():
    text = HEADER.read_text()
    assert {f"KBIT_OPT_{k}": v for k, v in _defines(text, "KBIT_OPT_").items() if k != "NK"} == _expected_ids("KBIT_OPT_")
    assert _defines(text, "KBIT_OPT_")["NK"] == W.NK
    assert {f"KBIT_K_{k}": v for k, v in _defines(text, "KBIT_K_").items()} == _expected_slots("KBIT_K_")
    assert '#include "kbit_dtypes.h"' in text
    dtypes = _defines((HEADER.parent / "kbit_dtypes.h").read_text(), "KBIT_")
    assert {dtypes["F32"], dtypes["F16"], dtypes["BF16"]} == {0, 1, 2}
    assert _gpu_plan.DTYPE == {torch.float32: dtypes["F32"], torch.float16: dtypes["F16"],
                               torch.bfloat16: dtypes["BF16"]}


def test_cython_enums_match_python():
    text = PYX.read_text()
    assert _enum_with(text, "KO_ADAM") == _expected_ids("KO_")
    assert _enum_with(text, "K_B1") == _expected_slots("K_")


def _module_ints(path: Path) -> dict[str, int]:
    """Top-level integer constants of a Python module, from its source (no import: numba_kernels.cuda must
    not be imported here, the simulator tests choose its mode)."""
    out = {}
    for node in ast.parse(path.read_text()).body:
        if not isinstance(node, ast.Assign) or len(node.targets) != 1:
            continue
        t, v = node.targets[0], node.value
        names = [e.id for e in t.elts] if isinstance(t, ast.Tuple) else [t.id] if isinstance(t, ast.Name) else []
        if isinstance(v, ast.Tuple) and all(isinstance(e, ast.Constant) for e in v.elts):
            vals = [e.value for e in v.elts]
        elif isinstance(v, ast.Call) and getattr(v.func, "id", None) == "range" and len(v.args) == 1:
            vals = list(range(v.args[0].value))
        elif isinstance(v, ast.Constant) and isinstance(v.value, int):
            vals = [v.value]
        else:
            continue
        if len(vals) == len(names):
            out.update(zip(names, vals))
    return out


def test_numba_kernels_match_python():
    for rel in ("numba_kernels/cpu/optim.py", "numba_kernels/cuda/optim.py"):
        ints = _module_ints(ROOT / rel)
        for i, rule in enumerate(W.KERNEL_RULES):
            assert ints[rule.upper()] == i, (rel, rule)
        for i, slot in enumerate(W.KERNEL_SLOTS):
            assert ints[slot.upper()] == i, (rel, slot)
    from numba_kernels.cpu import optim as K
    assert K.ID == W.OPTIMIZER_ID and K.NK == W.NK


def test_parsers_notice_a_reordered_slot():
    """The parsers themselves: swapping two slots in the header's text or the pyx enum is caught."""
    text = HEADER.read_text().replace("#define KBIT_K_B1 0", "#define KBIT_K_B1 1").replace(
        "#define KBIT_K_B2 1", "#define KBIT_K_B2 0")
    assert {f"KBIT_K_{k}": v for k, v in _defines(text, "KBIT_K_").items()} != _expected_slots("KBIT_K_")
    pyx = PYX.read_text().replace("K_B1, K_B2,", "K_B2, K_B1,")
    assert _enum_with(pyx, "K_B1") != _expected_slots("K_")
    pyx = PYX.read_text().replace("KO_ADAM = 0, KO_ADEMAMIX = 1", "KO_ADAM = 1, KO_ADEMAMIX = 0")
    assert _enum_with(pyx, "KO_ADAM") != _expected_ids("KO_")
