"""The CUDA launcher (workbench/_native/cuda_launch.pyx) passes every argument of every entry point in its place.

No GPU needed: a stub library defines each extern "C" entry point the launcher binds, with the prototypes of
cuda_src's headers (the C compiler holds the stub to them), recording the arguments it receives. Each launch
function is called with distinct values and the stub must see exactly those, in order.
"""
from __future__ import annotations

import ctypes
import re
import shutil
import subprocess
from pathlib import Path

import pytest

launch = pytest.importorskip("workbench._native.cuda_launch", reason="cuda_launch not built (make setup)")

SRC = Path(__file__).resolve().parents[1] / "cuda_src"
PROTO = re.compile(r"(cudaError_t|int)\s+(kbit_\w+)\(([^)]*)\);", re.S)


def _entry_points() -> dict[str, tuple[str, str, list[tuple[str, str]]]]:
    """name -> (return type, parameter list, [(kind, parameter name)]) for every entry point the launcher has,
    from the headers; kind is 'p' for pointers and streams, 'f' for float, 'i' for integers."""
    launchers = {n for n in dir(launch) if n.startswith("kbit_")}
    out = {}
    for h in sorted(SRC.glob("kbit_*.h")):
        for ret, name, params in PROTO.findall(h.read_text()):
            if name not in launchers:
                continue
            ps = []
            for p in (x.strip() for x in params.split(",")):
                pname = re.findall(r"\w+", p)[-1]
                kind = "p" if ("*" in p or p.startswith("cudaStream_t")) else "f" if p.startswith("float ") else "i"
                ps.append((kind, pname))
            out[name] = (ret, params, ps)
    assert set(out) == launchers, f"launch functions without a header prototype: {sorted(launchers - set(out))}"
    return out


def _stub_source(eps) -> str:
    lines = ["#define KBIT_API_ONLY", '#include "kbit.h"', "#include <stdint.h>",
             "double kb_rec[64]; int kb_n;"]
    for name, (ret, params, ps) in eps.items():
        body = "".join(f"kb_rec[{i}] = (double)({'(intptr_t)' if k == 'p' else ''}{pn}); "
                       for i, (k, pn) in enumerate(ps))
        lines.append(f"{ret} {name}({params}) {{ kb_n = {len(ps)}; {body}return 42; }}")
    return "\n".join(lines) + "\n"


@pytest.fixture(scope="module")
def stub(tmp_path_factory):
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        pytest.skip("no C compiler")
    eps = _entry_points()
    d = tmp_path_factory.mktemp("stub")
    (d / "stub.c").write_text(_stub_source(eps))
    so = d / "libstub.so"
    subprocess.run([cc, "-shared", "-fPIC", "-Werror=incompatible-pointer-types", "-I", str(SRC), str(d / "stub.c"),
                    "-o", str(so)], check=True)
    lib = ctypes.CDLL(str(so))
    assert sorted(launch.bind(str(so))) == sorted(eps)
    yield eps, lib
    from workbench.backends import cuda   # bind the real libraries again where this process had loaded them
    for real in cuda._libs.values():
        launch.bind(real._name)


def test_every_launch_passes_its_arguments_in_order(stub):
    eps, lib = stub
    rec = (ctypes.c_double * 64).in_dll(lib, "kb_rec")
    n = ctypes.c_int.in_dll(lib, "kb_n")
    for name, (_, _, ps) in eps.items():
        args = [0x10000 + 0x100 * i if k == "p" else (i + 0.5 if k == "f" else 3 * i + 1)
                for i, (k, _) in enumerate(ps)]
        assert getattr(launch, name)(*args) == 42, name
        assert n.value == len(ps), name
        assert [rec[i] for i in range(len(ps))] == [float(a) for a in args], name


def test_a_null_pointer_is_zero_and_none_is_refused(stub):
    eps, lib = stub
    ps = eps["kbit_dequantize_4bit"][2]
    args = [0] * len(ps)
    assert launch.kbit_dequantize_4bit(*args) == 42
    with pytest.raises(TypeError):
        launch.kbit_dequantize_4bit(None, *args[1:])

