"""Run at git 40aa8f3 (KBIT_LUT_MAX_M then sent 65..256 rows to the rule-2 form, since removed): one case per process, forced K splits with empty trailing splits (grouped cps rounding), CUDA_LAUNCH_BLOCKING."""
import os, subprocess, sys
CASE = r'''
import sys, torch, workbench as wb
from workbench.backends.cuda import matmul as CM
from workbench.matmul import matmul_4bit
M, N, K, s = map(int, sys.argv[1:5])
CM.LUT_MAX_M = 256
CM.lut_splits = lambda *a, **k: s
CM._lut_plans.clear()
torch.manual_seed(0)
W = torch.randn(N, K, device="cuda", dtype=torch.bfloat16)
P, qs = wb.quantize_4bit(W, blocksize=64, compress_statistics=True)
A = torch.randn(M, K, device="cuda", dtype=torch.bfloat16)
ref = A.float() @ wb.dequantize_4bit(P, qs).float().t()
out = matmul_4bit(A, P, qs, backend="cuda"); torch.cuda.synchronize()
print("ok", M, N, K, s, float((out.float() - ref).abs().max()))
'''
for M, N, K, s in [(16, 1000, 2048, 7), (64, 1000, 2048, 7), (33, 1000, 2048, 6), (100, 1000, 2048, 7), (100, 1000, 2048, 4), (200, 1000, 2048, 5)]:
    r = subprocess.run([sys.executable, "-c", CASE, str(M), str(N), str(K), str(s)], capture_output=True, text=True,
                       env=dict(os.environ, CUDA_LAUNCH_BLOCKING="1", KBIT_LUT_MAX_M="256"), timeout=60)
    print(M, N, K, s, "rc", r.returncode, (r.stdout.strip() or r.stderr.strip().splitlines()[-1])[:200], flush=True)
