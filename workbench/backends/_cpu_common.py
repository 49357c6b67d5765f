"""Shared plumbing for the compiled CPU backends: zero-copy torch <-> NumPy views and output buffers.
The per-codebook search tables the kernels take are built in workbench/codebook_tables.py
(``cpu_search_plan``, ``cpu_ord_lut``)."""
from __future__ import annotations

import mmap

import numpy as np
import torch

from ..wire import ELEMENT_KIND as KIND


def kind_of(dtype: torch.dtype, what: str = "dtype") -> int:
    """The kernels' input/output kind of ``dtype``; TypeError for anything but fp32/bf16/fp16."""
    kind = KIND.get(dtype)
    if kind is None:
        raise TypeError(f"{what}: the compiled CPU kernels read and write float32, bfloat16 or float16, "
                        f"not {dtype}")
    return kind


def as_numpy(t: torch.Tensor) -> np.ndarray:
    """A zero-copy NumPy view of a CPU tensor, also of one that requires grad (an nn.Parameter):
    the kernels only read inputs and write fresh outputs, so no autograd history is lost."""
    return t.detach().numpy()


def as_numpy_bits(t: torch.Tensor) -> tuple[np.ndarray, int]:
    """A NumPy view of a contiguous CPU tensor; bf16/fp16 as their uint16 bit patterns."""
    kind = kind_of(t.dtype, "A")
    t = t.detach()
    if kind == 0:
        return t.numpy(), 0
    return t.view(torch.int16).numpy().view(np.uint16), kind


# glibc's malloc reuses freed heap memory for requests below its mmap threshold, which rises with each
# freed mapping up to 32 MiB (64-bit): below that a steady loop of calls touches no fresh page.
HUGE_MIN_BYTES = 32 << 20


def alloc(n: int, dtype: torch.dtype) -> torch.Tensor:
    """An uninitialized CPU tensor. Below 32 MiB, torch.empty (malloc reuses the memory of earlier
    outputs: 8 MiB costs ~0 against 1-8 ms of zeroed fresh pages). At and above it every malloc
    is a fresh mapping, so the tensor is backed by transparent huge pages: on this class of VM a
    first touch of fresh 4 KiB pages costs more than the kernel's own work (64 MiB: ~45 ms of
    page faults vs ~13 ms with 2 MiB pages)."""
    nbytes = n * dtype.itemsize
    if nbytes < HUGE_MIN_BYTES or not hasattr(mmap, "MADV_HUGEPAGE"):
        return torch.empty(n, dtype=dtype)
    m = mmap.mmap(-1, nbytes, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    try:
        m.madvise(mmap.MADV_HUGEPAGE)
    except OSError:
        pass
    return torch.from_numpy(np.frombuffer(m, dtype=np.uint8)).view(dtype)  # the array keeps m alive


def empty_out(n: int, dtype: torch.dtype) -> tuple[torch.Tensor, np.ndarray, int]:
    kind_of(dtype, "dtype")  # before allocating: float64 / integer outputs are a TypeError, not a KeyError
    out = alloc(n, dtype)
    arr, kind = as_numpy_bits(out)
    return out, arr, kind


def nblocks(n: int, blocksize: int) -> int:
    return -(-n // blocksize)


def dense_matmul(A: torch.Tensor, W: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """``A @ W.T (+ bias)`` for the matmul family's rows above the fused kernels (W dequantized once), in A's dtype:
    float32 sums, the bias added, one rounding (rule 4 of workbench/backends/reference/matmul.py). bf16 runs torch's
    bf16 kernel, which accumulates in float32 and adds the bias before its one rounding (``addmm``; within
    error_bound also where the bias cancels the sum: tests/test_matmul.py), 2.6-6.9x faster than widening both to
    float32 on a 2-core Zen 4 (reports/matmul-cpu/dense_tail_zen4). fp16 and float32 multiply in float32."""
    if A.dtype == torch.bfloat16 and W.dtype == torch.bfloat16:
        return torch.mm(A, W.t()) if bias is None else torch.addmm(bias.to(A.dtype), A, W.t())
    y = A.float() @ W.float().t()
    if bias is not None:
        y = y + bias.float()
    return y.to(A.dtype)
