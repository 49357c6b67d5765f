"""Launches of the production int8 row kernel at 8192 x 8192 fp16 (16 planted outlier columns), threshold 0
then 6, for ncu to profile (studies/probes/device_all.sh ncu8)."""
import torch

from studies.bench.bench_int8 import activations
from workbench.backends.cuda import int8 as C

A = activations(8192, 8192)
for thr in (0.0, 6.0):
    C.int8_vectorwise_quant(A, thr)
torch.cuda.synchronize()
