"""A/B of the k-bit CUDA quantizer's knobs (cuda_src/kbit.cu, ``kbit_kbit_tuning``): the thread-per-group kernel at
several grid caps (CTAs per SM) and shared-memory budgets for its table copies (KB; past 44 more copies at fewer
CTAs per SM); the dequantizer and a device copy beside them. n = 2^28 bf16, blocksize 32, e4m4 (the k-bit
defaults); kernel time by CUDA-graph replay; every setting's words and scales must equal the defaults' bit for bit
(exit 1 otherwise). The production defaults are the first row. A library
built another way (a compiler flag, a launch bound) is compared by running this once per build directory
(``KBIT_CUDA_BUILD``, workbench/cuda_build.py).

usage (GPU): python -m studies.probes.kbit_kernel_ab [--ks 2,4,6,8] [--layouts bitplane] [--settings 16,6,32,64]
             [--lane-kb 44,88,176] [--out DIR]"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from workbench import bench, kbit
from workbench.backends.cuda import kbit as C

SETTINGS = [16, 6, 32, 64]   # CTAs per SM


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=None)
    ap.add_argument("--n-log2", type=int, default=28)
    ap.add_argument("--ks", default="2,4,6,8", help="K values")
    ap.add_argument("--layouts", default="bitplane", help="bitplane,dense")
    ap.add_argument("--settings", default=",".join(map(str, SETTINGS)), help="grid caps, CTAs per SM")
    ap.add_argument("--lane-kb", default="44", help="the table copies' shared-memory budgets, KB")
    args = ap.parse_args(argv)
    settings = [(int(v), int(kb)) for kb in args.lane_kb.split(",") for v in args.settings.split(",")]
    cases = [(int(k), lay) for lay in args.layouts.split(",") for k in args.ks.split(",")]
    n = 1 << args.n_log2
    A = torch.randn(n, device="cuda", dtype=torch.bfloat16)
    copy = bench.copy_bandwidth("cuda")
    ops, rows, differ = torch.ops.workbench, [], 0
    lib = C.lib()
    lib.kbit_kbit_tuning.argtypes = [C._c.c_int, C._c.c_int]
    for k, layout in cases:
        cb = kbit.kbit_codebook_tensor(None, k).to("cuda")
        packed, st = kbit.quantize_kbit(A, k=k, layout=layout)
        nbytes = 2 * n + bench.tensor_bytes(packed, st.scales)
        q = lambda: ops.quantize_kbit(A, cb, k, 32, layout, "e4m4", "exact", "cuda")
        lib.kbit_kbit_tuning(0, 0)
        want = [t.clone() for t in q()[:2]]
        for per_sm, kb in settings:
            lib.kbit_kbit_tuning(per_sm, kb)
            try:
                same = all(torch.equal(a, b) for a, b in zip(q()[:2], want))
                ms = bench.graph_replay_ms(q)
            finally:
                lib.kbit_kbit_tuning(0, 0)
            differ += not same
            rows.append(dict(op="quantize", k=k, layout=layout, per_sm=per_sm, lane_kb=kb, ms=ms, equal=same,
                             pct_copy=100 * nbytes / (ms * 1e-3) / (copy * 1e9)))
            print(f"quantize K={k} {layout:8s} per_sm={per_sm:3d} lane_kb={kb:3d}  {ms:.4f} ms "
                  f"{rows[-1]['pct_copy']:.1f} % of copy  equal {same}", flush=True)
        words, scales = packed.reshape(-1).contiguous(), st.scales.contiguous()
        table = st.codebook.to(torch.float32).contiguous()
        d = lambda: ops.dequantize_kbit(words, scales, st.tensor_scale, table, k, 32, n, layout, "e4m4",
                                        torch.bfloat16, "cuda")
        ms = bench.graph_replay_ms(d)
        rows.append(dict(op="dequantize", k=k, layout=layout, ms=ms, pct_copy=100 * nbytes / (ms * 1e-3) / (copy * 1e9)))
        print(f"dequantize K={k} {layout:8s}  {ms:.4f} ms {rows[-1]['pct_copy']:.1f} % of copy", flush=True)
    print(f"copy {copy:.0f} GB/s; settings whose output differs from the defaults': {differ}")
    if args.out:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        Path(args.out, "kbit_kernel_ab.json").write_text(json.dumps(dict(copy_gbps=copy, rows=rows), indent=1))
    return 1 if differ else 0


if __name__ == "__main__":
    raise SystemExit(main())
