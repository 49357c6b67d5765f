"""One launch each of the k-bit CUDA quantizer (K = 4 and 8, bit-plane, the defaults: blocksize 32, e4m4) at
n = 2**28 bf16, for ncu to profile (``ncu -k regex:kk_quantize_lane python3 -m studies.probes.device_ncu_kbit``)."""
import torch

from workbench import kbit

A = torch.randn(1 << 28, device="cuda", dtype=torch.bfloat16)
for k in (4, 8):
    kbit.quantize_kbit(A, k, backend="cuda")
torch.cuda.synchronize()
