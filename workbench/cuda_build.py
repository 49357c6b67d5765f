"""Build the CUDA production kernels: each ``cuda_src/<family>.cu`` -> ``cuda_src/build/libkbit_<family>.so``.

One shared library per op family so a family that fails to build does not disable the
others. Flags keep IEEE float32 semantics (no FMA contraction, IEEE division and sqrt,
subnormals kept) because codes must match the reference bit for bit.

    python -m workbench.cuda_build [family ...] [--arch sm_90a] [--check]
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SRC = ROOT / "cuda_src"
BUILD = Path(os.environ.get("KBIT_CUDA_BUILD", SRC / "build"))
WGMMA_SERIALIZED = "wgmma.mma_async instructions are serialized"   # ptxas advisories C7513..C7520
IEEE_FLAGS = ["-fmad=false", "-prec-div=true", "-prec-sqrt=true", "-ftz=false"]
DEFAULT_ARCHS = ("sm_90a",)


def nvcc() -> str | None:
    return shutil.which("nvcc") or (str(Path("/usr/local/cuda/bin/nvcc")) if Path("/usr/local/cuda/bin/nvcc").exists() else None)


def families() -> list[str]:
    return sorted(p.stem for p in SRC.glob("*.cu"))


def lib_path(family: str, build_dir: Path | None = None) -> Path:
    return Path(build_dir or BUILD) / f"libkbit_{family}.so"


def build(family: str, archs=DEFAULT_ARCHS, *, force: bool = False, verbose: bool = False,
          build_dir: str | os.PathLike | None = None, check_only: bool = False) -> Path:
    """Compile one family if its sources are newer than the library; return the .so path. ``check_only``: prove
    that the family builds and exports its API, with every optimizer off (host -O0, device -G) and the device code
    as PTX only (the same sources, IEEE flags and arch; 5x faster on the quant family than the optimized build) --
    never a library to run or time."""
    exe = nvcc()
    if exe is None:
        raise RuntimeError("nvcc not found on PATH; install the CUDA toolkit to build cuda_src/")
    src = SRC / f"{family}.cu"
    if not src.exists():
        raise FileNotFoundError(f"family: no {src}")
    out = lib_path(family, build_dir)
    deps = [src, *SRC.glob("*.h"), *SRC.glob("*.cuh")]
    if out.exists() and not force and out.stat().st_mtime >= max(d.stat().st_mtime for d in deps):
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    gencode = []
    for a in archs:   # check_only: PTX for the arch, no SASS (ptxas is half the time; the GPU machine's build runs it)
        num = a.removeprefix("sm_")
        gencode += ["-gencode", f"arch=compute_{num},code={'compute' if check_only else 'sm'}_{num}"]
    opt = ["-O0", "-G"] if check_only else ["-O3", "-lineinfo", "-Xptxas=-O3"]
    cmd = [exe, *opt, "-std=c++17", "--shared", "-Xcompiler", "-fPIC", *IEEE_FLAGS, *gencode,
           *(["-Xptxas=-v"] if verbose else []), "-I", str(SRC), "-o", str(out), str(src)]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"nvcc failed for {src.name}:\n{' '.join(cmd)}\n{r.stdout}\n{r.stderr}")
    serialized = [line for line in (r.stdout + r.stderr).splitlines() if WGMMA_SERIALIZED in line]
    if serialized:   # ptxas made a pipelined wgmma loop synchronous: right results, the kernel's design lost
        out.unlink(missing_ok=True)
        raise RuntimeError(f"ptxas serialized wgmma in {src.name} (each kernel must keep them asynchronous):\n"
                           + "\n".join(serialized))
    if verbose:
        print(r.stdout + r.stderr)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("families", nargs="*", help=f"default: all ({', '.join(families())})")
    ap.add_argument("--arch", action="append", help="e.g. sm_90a (repeatable); default sm_90a")
    ap.add_argument("--force", action="store_true")
    ap.add_argument("--verbose", action="store_true", help="print ptxas resource usage (registers, spills)")
    ap.add_argument("--check", action="store_true",
                    help="prove the families build (PTX only, optimizers off) into a temporary folder; no library kept")
    args = ap.parse_args(argv)
    ok = True
    scratch = tempfile.TemporaryDirectory() if args.check else None
    for fam in args.families or families():
        try:
            p = build(fam, tuple(args.arch or DEFAULT_ARCHS), force=args.force or args.check, verbose=args.verbose,
                      build_dir=scratch.name if scratch else None, check_only=args.check)
            print(f"{'checked' if args.check else 'built'} {p.name if args.check else p}")
        except Exception as e:
            ok = False
            print(f"FAILED {fam}: {e}", file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
