"""One launch each of the production quantize kernels at n = 2**28 bf16, for ncu to profile."""
import torch

from workbench import codebooks as cbs
from workbench.backends.cuda import quant as C

A = torch.randn(1 << 28, device="cuda", dtype=torch.bfloat16)
C.quantize_4bit(A, cbs.get("nf4"), 64)
C.quantize_blockwise(A, cbs.get("dynamic"), 256)
p, a = C.quantize_4bit(A, cbs.get("nf4"), 64)
C.dequantize_4bit(p, a, cbs.get("nf4").tensors("cuda")[0], 64, A.numel(), torch.bfloat16)
torch.cuda.synchronize()
