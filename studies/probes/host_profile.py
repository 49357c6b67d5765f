"""Where the host time of a public call goes, on CUDA at n = 4096 (small kernels, though not always shorter than the
host work: the idle column is the host's alone).

    python -m studies.probes.host_profile [--out DIR]

Per op: µs per call (back to back, one sync at the end; and the host time alone, on an idle GPU), the same call with
the kernel replaced by one returning preallocated outputs (the Python + dispatcher part), bitsandbytes' call,
and a cProfile of the public call (top entries by own time). Also the primitives a call is made
of (an empty CUDA tensor, a small clone, a torch.ops dispatch), so a cost can be
traced to its line.
"""
from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import time

import torch

import workbench as wb
from workbench.backends import registry as R
from workbench.int8 import int8_vectorwise_quant
from workbench.kbit import dequantize_kbit, quantize_kbit


def per_call_us(f, reps: int = 2000) -> float:
    for _ in range(200):
        f()
    torch.cuda.synchronize()
    runs = []
    for _ in range(5):
        t = time.perf_counter()
        for _ in range(reps):
            f()
        torch.cuda.synchronize()
        runs.append((time.perf_counter() - t) / reps * 1e6)
    return sorted(runs)[2]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    n = 4096
    A = torch.randn(n, device="cuda", dtype=torch.bfloat16)
    M = torch.randn(64, 64, device="cuda", dtype=torch.float16)
    p, s = wb.quantize_4bit(A, blocksize=64, quant_type="nf4")
    c, s8 = wb.quantize_blockwise(A)
    kp, ks = quantize_kbit(A)
    ops = {"quantize_4bit": lambda: wb.quantize_4bit(A, blocksize=64, quant_type="nf4"),
           "dequantize_4bit": lambda: wb.dequantize_4bit(p, s),
           "quantize_blockwise": lambda: wb.quantize_blockwise(A),
           "dequantize_blockwise": lambda: wb.dequantize_blockwise(c, s8),
           "int8_vectorwise_quant": lambda: int8_vectorwise_quant(M, 0.0),
           "quantize_kbit": lambda: quantize_kbit(A),
           "dequantize_kbit": lambda: dequantize_kbit(kp, ks)}
    try:
        import bitsandbytes.functional as F
        pb, sb = F.quantize_4bit(A, blocksize=64, quant_type="nf4")
        cb_, sb8 = F.quantize_blockwise(A)
        bnb = {"quantize_4bit": lambda: F.quantize_4bit(A, blocksize=64, quant_type="nf4"),
               "dequantize_4bit": lambda: F.dequantize_4bit(pb, sb),
               "quantize_blockwise": lambda: F.quantize_blockwise(A),
               "dequantize_blockwise": lambda: F.dequantize_blockwise(cb_, sb8),
               "int8_vectorwise_quant": lambda: F.int8_vectorwise_quant(M, 0.0)}
    except Exception as e:  # noqa: BLE001
        print("bitsandbytes unavailable:", e)
        bnb = {}
    from studies.bench.public_call import _host_idle_ms
    lines = ["back to back (the GPU's time per call where its kernels outlast the host work), then idle: the host "
             "time of one call on an idle GPU (studies/bench/public_call.py: host_idle_us_4096)"]
    for name, f in ops.items():
        b = bnb.get(name)
        lines.append(f"{name:24s} ours {per_call_us(f):6.1f} us, idle {_host_idle_ms(f) * 1e3:6.1f} us   bnb "
                     f"{per_call_us(b) if b else float('nan'):6.1f} us, idle "
                     f"{_host_idle_ms(b) * 1e3 if b else float('nan'):6.1f} us")
    # the adapters alone and their launch calls alone (idle GPU): where the rest of a call's host time goes
    from workbench.backends.cuda import kbit as CK
    from workbench.backends.cuda import quant as CQ
    from workbench.backends.cuda import kernels, raw_stream
    from workbench.codebooks import get as codebook
    nf4, dyn = codebook("nf4"), codebook("dynamic")
    L, st = kernels("quant"), raw_stream(torch.cuda.current_device())
    o16, o8 = torch.empty(n, dtype=torch.bfloat16, device="cuda"), torch.empty(n, dtype=torch.uint8, device="cuda")
    am = torch.empty(n, dtype=torch.float32, device="cuda")
    parts = {
        "adapter quantize_4bit": lambda: CQ.quantize_4bit(A, nf4, 64),
        "adapter dequantize_4bit": lambda: CQ.dequantize_4bit(p.view(-1), s.absmax, s.code, 64, n, torch.bfloat16),
        "adapter quantize_blockwise": lambda: CQ.quantize_blockwise(A, dyn, 4096),
        "adapter dequantize_blockwise": lambda: CQ.dequantize_blockwise(c.view(-1), s8.absmax, s8.code, 4096,
                                                                        torch.bfloat16),
        "launch kbit_quantize_4bit": lambda: L.kbit_quantize_4bit(
            A.data_ptr(), 2, n, 64, *CQ.cuda_quant_arrays(nf4)[2], o8.data_ptr(), am.data_ptr(), 0, st),
        "launch kbit_dequantize_4bit": lambda: L.kbit_dequantize_4bit(
            p.data_ptr(), s.absmax.data_ptr(), s.code.data_ptr(), n, 64, o16.data_ptr(), 2, st),
        "launch kbit_quantize_blockwise": lambda: L.kbit_quantize_blockwise(
            A.data_ptr(), 2, n, 4096, *CQ.cuda_quant_arrays(dyn)[2], o8.data_ptr(), am.data_ptr(), 0, st),
        "launch kbit_dequantize_blockwise": lambda: L.kbit_dequantize_blockwise(
            c.data_ptr(), s8.absmax.data_ptr(), s8.code.data_ptr(), s8.code.numel(), n, 4096, o16.data_ptr(), 2, st),
        "adapter quantize_kbit": lambda: CK.quantize_kbit(A, ks.codebook, 4, 32, "bitplane", "e4m4", "exact"),
        "adapter dequantize_kbit": lambda: CK.dequantize_kbit(kp, ks.scales, ks.tensor_scale, ks.codebook, 4, 32, n,
                                                              "bitplane", "e4m4", torch.bfloat16),
        "torch.empty x2 (4096 bf16, 1 f32)": lambda: (torch.empty(n, dtype=torch.bfloat16, device="cuda"),
                                                      torch.empty(1, dtype=torch.float32, device="cuda")),
    }
    for k, f in parts.items():
        lines.append(f"  {k:34s} idle {_host_idle_ms(f) * 1e3:6.2f} us, back to back {per_call_us(f):6.2f} us")
    # the same calls with null kernels: what Python and the dispatcher cost
    outs = {"quantize_4bit": wb.quantize_4bit(A, blocksize=64, quant_type="nf4")[0].view(-1),
            "quantize_blockwise": c.view(-1)}
    no_flag = torch.zeros(1, dtype=torch.int32)   # on the host: the null quantize_kbit's flag read is no sync
    null = {"quantize_4bit": lambda *a: (outs["quantize_4bit"], s.absmax),
            "dequantize_4bit": lambda *a: A,
            "quantize_blockwise": lambda *a: (outs["quantize_blockwise"], s8.absmax),
            "dequantize_blockwise": lambda *a: A,
            "int8_vectorwise_quant": lambda *a: (M.to(torch.int8), M[:, 0].float(), None),
            "quantize_kbit": lambda *a: (kp, ks.scales, ks.tensor_scale, no_flag),
            "dequantize_kbit": lambda *a: A}
    saved = dict(R._resolved)
    for op, fn in null.items():
        R._kernels[op]["null"] = fn
        for dt in ("bfloat16", "float16", "uint8", None):
            R._resolved[("auto", op, "cuda", dt)] = "null"
    s.memo = s8.memo = ks.memo = None  # the dequantizers remember the backend they resolved with their validation
    for name, f in ops.items():
        lines.append(f"{name:24s} null kernel {per_call_us(f):6.1f} us")
    R._resolved.clear()
    R._resolved.update(saved)
    s.memo = s8.memo = ks.memo = None
    x16 = torch.randn(16, device="cuda")
    prims = {"torch.empty(2048, u8, cuda)": lambda: torch.empty(2048, dtype=torch.uint8, device="cuda"),
             "clone(16 f32)": lambda: x16.clone(),
             "torch.cuda.current_device()": torch.cuda.current_device,
             "A.view(-1, 1)": lambda: A.view(-1, 1),
             "torch.ops.aten.add (dispatch)": lambda: torch.ops.aten.add(x16, x16)}
    for k, f in prims.items():
        lines.append(f"  {k:34s} {per_call_us(f):6.2f} us")
    for name, f in ops.items():
        pr = cProfile.Profile()
        pr.enable()
        for _ in range(3000):
            f()
        torch.cuda.synchronize()
        pr.disable()
        buf = io.StringIO()
        pstats.Stats(pr, stream=buf).sort_stats("tottime").print_stats(14)
        lines.append(f"\n=== cProfile {name} (3000 calls)\n" + buf.getvalue().split("ncalls", 1)[-1])
    text = "\n".join(lines)
    print(text)
    if args.out:
        from pathlib import Path
        Path(args.out, "host_profile.txt").write_text(text)


if __name__ == "__main__":
    main()
