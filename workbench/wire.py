"""Constants shared with compiled code, defined once here and checked against it
(tests/test_wire_constants.py parses the headers and kernel modules).

Two dtype enumerations cross the boundary, each fixed by the kernels that read it:

* ``DTYPE_CODE``: the CUDA families' ``dtype`` arguments (``KBIT_F32/F16/BF16`` in
  cuda_src/kbit_quant.h; int8, optim and matmul use the same values);
* ``ELEMENT_KIND``: the ``kind`` argument of the CPU kernels (numba_kernels/cpu, workbench/_native)
  and of the CUDA k-bit family, which read 16-bit inputs as raw bits.

The optimizer ids and scalar slots live with their rules in workbench/optim/functional.py
(``OPTIMIZER_ID``, ``KERNEL_SLOTS``), checked by tests/test_optim_wire_constants.py.
"""
from __future__ import annotations

import torch

DTYPE_CODE = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2}
ELEMENT_KIND = {torch.float32: 0, torch.bfloat16: 1, torch.float16: 2}
