"""Public API of the 4-bit matmul family: ``gemv_4bit``, ``gemm_4bit``, ``matmul_4bit``.

Signatures and semantics follow bitsandbytes 0.50.2 (``bitsandbytes.functional.gemv_4bit``,
``torch.ops.bitsandbytes.gemm_4bit``, ``bitsandbytes.matmul_4bit``) for a weight quantized with
:func:`workbench.quantize_4bit` in (N, K) = (out_features, in_features) orientation, with any 16-entry
codebook (the state's table), plus ``backend=``. The rules (nested absmax, weight rounding, accumulation
order and precision, bias) are written down in :mod:`workbench.backends.reference.matmul`.

Arguments are checked from metadata before any kernel runs; errors (:class:`QuantInputError`) name the
argument: the state against the packed weight, A's dtype and device, the inner dimensions, the bias.
``matmul_4bit`` is differentiable in A and bias (the QLoRA use): grad_A = grad_out @ W, W the dequantized
weight in grad_out's dtype, as bitsandbytes' MatMul4Bit.backward does.

The cuda backend keeps a tiled copy of a packed weight and a finiteness check of each codebook, remade when the
tensor's version counter moves. Writes torch does not count (through ``.data``, numpy, DLPack or another library's
kernel) must be announced with ``torch.autograd.graph.increment_version(t)``, or the next call reads the old codes.
"""
from __future__ import annotations

import math
import warnings

import torch

from . import library  # noqa: F401  (declares the torch.ops.workbench ops)
from .backends.registry import resolve
from .ops import _as, _eager, _nested_args, _remembered, _resolve_absmax, call_op, dequantize_4bit
from .quant_state import QuantState
from .validation import FLOAT_DTYPES, QuantInputError, check_bias, check_on, check_out

__all__ = ["gemv_4bit", "gemm_4bit", "matmul_4bit", "MatMul4Bit"]

_DTYPE_NAMES = {d: str(d).removeprefix("torch.") for d in FLOAT_DTYPES}
_CPU = torch.device("cpu")


def _as_state(quant_state, where: str = "quant_state") -> QuantState:
    if isinstance(quant_state, QuantState):
        return quant_state
    if quant_state is None:
        raise QuantInputError(f"{where}: required (the QuantState returned by quantize_4bit)")
    if type(quant_state).__module__.startswith("bitsandbytes"):
        return QuantState.from_bnb(quant_state)
    raise QuantInputError(f"{where}: expected a workbench QuantState, got {type(quant_state).__name__}")


def _check(A, B, qs: QuantState, bias=None, *, where: str = "quant_state"):
    """Validate (A, B, state, bias) from metadata; returns (N, K) of the stored weight."""
    qs.validate(bits=4)
    if qs.shape is None or len(qs.shape) != 2:
        raise QuantInputError(f"{where}.shape: expected the 2-D (out_features, in_features) shape of the weight, "
                              f"got {None if qs.shape is None else tuple(qs.shape)}")
    N, K = int(qs.shape[0]), int(qs.shape[1])
    if not isinstance(A, torch.Tensor):
        raise QuantInputError(f"A: expected a torch.Tensor, got {type(A).__name__}")
    if A.dtype not in FLOAT_DTYPES:
        raise QuantInputError(f"A: dtype {A.dtype} not supported; expected float32, float16 or bfloat16")
    if A.device.type not in ("cpu", "cuda"):
        raise QuantInputError(f"A: device {A.device} not supported; expected cpu or cuda")
    if A.dim() < 1:
        raise QuantInputError("A: expected at least one dimension (..., in_features)")
    if not isinstance(B, torch.Tensor):
        raise QuantInputError(f"B: expected the packed 4-bit weight tensor, got {type(B).__name__}")
    nbytes = B.numel() * B.element_size()
    if nbytes != (N * K + 1) // 2:
        raise QuantInputError(f"B: {nbytes} packed bytes, but {where}.shape {(N, K)} needs {(N * K + 1) // 2}")
    check_on("B", B, A, "A")
    check_on(f"{where}.absmax", qs.absmax, A, "A")
    check_bias(bias, N, A, same_dtype=True)
    return N, K


def _inner(A, K, where="quant_state"):
    if A.shape[-1] != K:
        raise QuantInputError(f"A: inner dimension {A.shape[-1]} does not match {where}.shape[1] = {K} "
                              "(in_features)")


def _packed(B):
    """B as the flat contiguous uint8 bytes the kernels read from ``data_ptr()`` (a strided view gets a copy)."""
    b = B.detach().reshape(-1).contiguous()
    return b if b.dtype == torch.uint8 else b.view(torch.uint8)


def _backend(backend: str, op: str, A: torch.Tensor) -> str:
    return resolve(backend, op, A.device.type, _DTYPE_NAMES.get(A.dtype))


def gemv_4bit(A: torch.Tensor, B: torch.Tensor, out: torch.Tensor | None = None, transposed_A=False,
              transposed_B=False, state: QuantState | None = None, *, backend: str = "auto") -> torch.Tensor:
    """bitsandbytes.functional.gemv_4bit: ``A @ dequantize_4bit(B, state).T`` for a (..., K) activation
    (bitsandbytes uses it for one token; any number of rows works); result (..., N) in A's dtype."""
    if state is None:
        raise QuantInputError("state: required; gemv_4bit() needs the QuantState from quantize_4bit()")
    qs = _as_state(state, "state")
    N, K = _check(A, B, qs, where="state")
    _inner(A, K, "state")
    if out is not None:
        check_out(out, (*A.shape[:-1], N), A)
    name = _backend(backend, "gemv_4bit", A)
    A2 = A.detach().reshape(-1, K).contiguous()
    table = qs.code.to(A.device, torch.float32).contiguous()
    y = call_op("gemv_4bit", name, A2, _packed(B), [N, K], _resolve_absmax(qs, name), table, qs.blocksize)
    y = y.view(*A.shape[:-1], N)
    if out is not None:
        out.copy_(y)
        return out
    return y


def gemm_4bit(A: torch.Tensor, B: torch.Tensor, quant_state: QuantState, bias: torch.Tensor | None = None, *,
              backend: str = "auto") -> torch.Tensor:
    """torch.ops.bitsandbytes.gemm_4bit: ``linear(A, W, bias)`` with the nested absmax decoded in the kernel;
    no autograd (see :func:`matmul_4bit`)."""
    y = _gemv_one_call(A, B, quant_state, bias, backend)
    if y is not None:
        return y
    qs = _as_state(quant_state)
    N, K = _check(A, B, qs, bias)
    _inner(A, K)
    return _gemm(A, B, qs, bias, backend, N, K)


def _gemm(A, B, qs, bias, backend, N, K):
    name = _backend(backend, "gemm_4bit", A)
    flat = A.dim() == 2 and A.is_contiguous() and not A.requires_grad   # the common case: no reshaping calls
    A2 = A if flat else A.detach().reshape(-1, K).contiguous()
    if A2.shape[0] == 0:
        return A.new_empty((*A.shape[:-1], N))
    absmax, a8, acode, aoff = _nested_args(qs, name)
    table = _as(qs.code, A.device)
    b = None if bias is None else bias.detach().contiguous()
    packed = B if B.dtype == torch.uint8 and B.dim() == 1 and not B.requires_grad and B.is_contiguous() else _packed(B)
    y = call_op("gemm_4bit", name, A2, packed, [N, K], absmax, table, qs.blocksize, b, a8, acode, aoff)
    return y if flat else y.view(*A.shape[:-1], N)


# ------------------------------------------------------------------ the GEMV (and the CUDA GEMM) in one step
# A GEMV's own time is microseconds to a few milliseconds, so the general path's host work shows: its validation,
# backend resolution, custom-op dispatch and argument conversions cost ~0.05 ms before the kernel starts on a GPU
# (reports/matmul-h200) and added 0.1-0.5 ms to a 1-3 ms CPU GEMV, whose every torch call costs tens of microseconds
# once the kernel has streamed the weights through the caches (reports/matmul-cpu). This path makes one allocation
# and one kernel call; what it needs checked about the state is remembered on the state (ops._remembered, as the
# dequantizers remember their validation), keyed by everything that check read.

_PLANE_KINDS = {torch.bfloat16: 1, torch.float16: 2}   # the cython_cpu byte-plane kernel's activation dtypes
_PLANE_MAX_M = 32
_PLAIN = (torch.Tensor, torch.nn.Parameter)
_planes_at = None   # workbench._native.matmul_cpu.gemv_4bit_planes_at once loaded; False: this path is off


def _planes_kernel():
    global _planes_at
    if _planes_at is None:
        from .backends import status
        _planes_at = False
        if status("cython_cpu")[0]:
            from .backends.cython_cpu import debug, native
            lib = native("matmul")
            # the bounds-checked debug build is there to check indexing: keep its memoryview path
            if lib.HAS_PLANES and not debug():
                _planes_at = lib.gemv_4bit_planes_at
    return _planes_at


_cuda_matmul = None   # workbench.backends.cuda.matmul, imported on the first CUDA call (an import statement per call
                      # costs host time before the launch)


def _load_cuda_matmul():
    global _cuda_matmul
    from .backends.cuda import matmul
    _cuda_matmul = matmul
    return matmul


def _device_index(t: torch.Tensor):
    """-1 for a CPU tensor, the device index of a CUDA one, None for any other (meta, ...): no kernel reads it."""
    return -1 if t.is_cpu else t.get_device() if t.is_cuda else None


def _gemv_key(qs: QuantState):
    """What the GEMV plan of ``qs`` (``_gemv_plan``) was checked against, or None (not remembered, no fast path):
    per state tensor its identity, address, size, rank, dtype and contiguity. Addresses are part of it because the
    plan holds them; a change of the data in place needs no new plan (the kernel reads the state's own tensors at
    every call). A tensor's device is not: moving it changes its address (one virtual address space for the host
    and every GPU), and the plan, made again, checks the devices. Written out flat: this runs on every call, and
    each tensor method call costs host time before the launch."""
    shape, am, code, s2 = qs.shape, qs.absmax, qs.code, qs.state2
    if (type(shape) is not torch.Size and type(shape) is not tuple) or type(am) not in _PLAIN \
            or type(code) not in _PLAIN:
        return None
    key = (id(am), am.data_ptr(), am.numel(), am.dim(), am.dtype, am.is_contiguous(), id(code), code.data_ptr(),
           code.numel(), code.dim(), code.dtype, code.is_contiguous(), qs.blocksize, shape, qs.dtype, qs.nested)
    if s2 is None:
        return key + (qs.offset is None,)
    if type(s2) is not QuantState:
        return None
    a2, c2, off = s2.absmax, s2.code, qs.offset
    if type(a2) not in _PLAIN or type(c2) not in _PLAIN or type(off) not in _PLAIN:
        return None
    return key + (id(s2), id(a2), a2.data_ptr(), a2.numel(), a2.dim(), a2.dtype, a2.is_contiguous(), id(c2),
                  c2.data_ptr(), c2.numel(), c2.dim(), c2.dtype, c2.is_contiguous(), id(off), off.data_ptr(),
                  off.numel(), off.dim(), off.dtype, off.is_contiguous(), s2.blocksize, s2.dtype, s2.state2 is None)


def _gemv_plan(qs: QuantState):
    """(absmax, code, plan): plan = (N, K, device index (-1: CPU), the kernel's state arguments, the tensors they
    point into) when a one-call GEMV kernel can take this state, else None. A state that fails validation gets None
    too: the general path then raises its error."""
    none = (qs.absmax, qs.code, None)
    try:
        qs.validate(bits=4)
    except QuantInputError:
        return none
    if len(qs.shape) != 2:
        return none
    N, K = int(qs.shape[0]), int(qs.shape[1])
    bs = qs.blocksize
    am, code = qs.absmax, qs.code
    if qs.nested:
        s2, off = qs.state2, qs.offset
        a2, c2 = s2.absmax, s2.code
        keep = (am, code, s2, a2, c2, off)
        # the kernels index 256 code values with the uint8 codes and one second-level absmax per 256 blocks
        if s2.blocksize != 256 or c2.numel() != 256 or off.dtype != torch.float32:
            return none
        args = (a2.data_ptr(), am.data_ptr(), c2.data_ptr(), off.data_ptr(), code.data_ptr(), bs)
    else:
        keep = (am, code)
        args = (am.data_ptr(), 0, 0, 0, code.data_ptr(), bs)
    dev = _device_index(am)
    if N < 1 or dev is None or not all(_device_index(t) == dev and t.is_contiguous()
                                       for t in keep if isinstance(t, torch.Tensor)):
        return none
    # the CPU byte-plane kernel's unit is 64 elements (K % 64, blocksize % 64); validate() has checked the counts
    # each kernel reads, and the CUDA GEMV takes any K
    if dev < 0 and (K < 64 or K % 64 or bs % 64):
        return none
    return am, code, (N, K, dev, args, keep)


def _gemv_one_call(A, B, qs, bias, backend):
    """``A @ W.T (+ bias)`` by one GEMV kernel call, or None: then the general path runs (and raises what it
    raises). Taken only for plain eager calls (``ops._eager``: nothing that must see the custom op, such as a compile
    trace, a mode or the profiler; no autograd), a state the plan accepts, B and bias that match it, and A that the
    backend 'auto' (or the one named) would send to the same kernel: on CPU bf16/fp16 A of at most 32 rows to the
    cython_cpu byte-plane kernel, on CUDA the rows its dispatch gives the fused GEMV (one, for fp16/bf16 A), the
    tensor-core GEMMs (2..64 rows of fp16/bf16 A, K % 32 == 0, A and B 16-byte aligned; the unscaled-lookup one
    where its dispatch rule applies, one row included) or dequantize + cuBLAS (the rows above those: the weight
    dequantized by one launch, the nested absmax decoded in it)."""
    if not _eager(A) or type(qs) is not QuantState or not A.is_contiguous():
        return None
    dtype, cpu = A.dtype, A.is_cpu
    if cpu:
        if dtype not in _PLANE_KINDS or (backend != "auto" and backend != "cython_cpu"):
            return None
    elif dtype not in _DTYPE_NAMES or (backend != "auto" and backend != "cuda"):
        return None
    if (A.requires_grad or bias is not None and bias.requires_grad) and torch.is_grad_enabled():
        return None
    key = _gemv_key(qs)
    if key is None:
        return None
    plan = _remembered(qs, key, lambda: _gemv_plan(qs))[2]
    if plan is None:
        return None
    N, K, dev, args, _ = plan
    shape = A.shape
    if not shape or shape[-1] != K or (-1 if cpu else A.get_device()) != dev:   # A: CPU or CUDA (_eager)
        return None
    rows = A.numel() // K
    if rows < 1 or type(B) not in _PLAIN or not B.is_contiguous() or B.nbytes != (N * K + 1) // 2 \
            or _device_index(B) != dev:
        return None
    if bias is None:
        b = 0
    elif (type(bias) in _PLAIN and bias.dtype == dtype and bias.dim() == 1 and bias.numel() == N
          and bias.is_contiguous() and _device_index(bias) == dev):
        b = bias.data_ptr()
    else:
        return None
    if cpu:
        kernel = _planes_kernel()
        if not kernel or rows > _PLANE_MAX_M:
            return None
        if resolve(backend, "gemm_4bit", "cpu", _DTYPE_NAMES[dtype]) != "cython_cpu":
            return None
        out = torch.empty((*shape[:-1], N), dtype=dtype, device=_CPU)
        a2, a8, c2, off, table, bs = args
        if not kernel(A.data_ptr(), rows, N, K, B.data_ptr(), a2, a8, c2, off, table, bs, _PLANE_KINDS[dtype], b,
                      out.data_ptr()):
            return None   # a table with NaN or Inf: the general path's other kernel
        return out
    if resolve(backend, "gemm_4bit", "cuda", _DTYPE_NAMES[dtype]) != "cuda":
        return None
    cuda_matmul = _cuda_matmul or _load_cuda_matmul()
    if torch._C._cuda_getDevice() != dev:   # A is on a GPU, so CUDA is initialized (torch.cuda.current_device's check)
        return None
    aligned = A.data_ptr() % 16 == 0 and B.data_ptr() % 16 == 0   # the GEMMs read A and B in 16-byte vectors
    lut = cuda_matmul.lut_rows(rows, N, K) and cuda_matmul.table_fits(plan[4][1], dtype)
    if cuda_matmul.takes_lut(dtype, rows, N, K, args[5], lut):
        if not aligned:
            return None
        at = cuda_matmul.gemm_lut_at
    elif cuda_matmul.takes_gemv(dtype, rows, K):
        at = cuda_matmul.gemv_4bit_at
    elif cuda_matmul.takes_mma(dtype, rows, K) and aligned:
        at = cuda_matmul.gemm_mma_at
    elif rows > cuda_matmul.GEMV_MAX_M and not cuda_matmul.takes_mma(dtype, rows, K):   # dequantize + cuBLAS
        y = cuda_matmul.dequant_mm_at(A, rows, N, K, B, args, bias, dev)
        return y.view(*shape[:-1], N)
    else:
        return None
    out = torch.empty((*shape[:-1], N), dtype=dtype, device=A.device)
    at(A, rows, N, K, B, args, b, out, dev)
    return out


class MatMul4Bit(torch.autograd.Function):
    """Forward: the fused op; backward: grad_A = grad_out @ W (W dequantized to grad_out's dtype),
    grad_bias = sum of grad_out over all leading dimensions. No gradient for the packed weight."""

    @staticmethod
    def forward(ctx, A, B, bias, qs, backend, N, K):
        ctx.qs, ctx.backend, ctx.B = qs, backend, B
        ctx.bias_dtype = None if bias is None else bias.dtype
        return _gemm(A, B, qs, bias, backend, N, K)

    @staticmethod
    def backward(ctx, grad_out):
        grad_A = grad_bias = None
        if ctx.needs_input_grad[0]:
            W = dequantize_4bit(ctx.B, ctx.qs, backend=ctx.backend).to(grad_out.dtype)
            grad_A = torch.matmul(grad_out, W)
        if ctx.needs_input_grad[2]:
            grad_bias = grad_out.reshape(-1, grad_out.shape[-1]).sum(0, dtype=ctx.bias_dtype)
        return grad_A, None, grad_bias, None, None, None, None


def matmul_4bit(A: torch.Tensor, B: torch.Tensor, quant_state: QuantState, out: torch.Tensor | None = None,
                bias: torch.Tensor | None = None, *, backend: str = "auto") -> torch.Tensor:
    """bitsandbytes.matmul_4bit: ``A @ W.T + bias`` for W of quant_state.shape (N, K), A (..., K) -> (..., N).

    Like bitsandbytes, a weight stored in (K, N) orientation (``A.shape[-1] == shape[0] != shape[1]``) is
    dequantized and used transposed, with a DeprecationWarning."""
    if out is None:
        y = _gemv_one_call(A, B, quant_state, bias, backend)
        if y is not None:
            return y
    qs = _as_state(quant_state)
    N, K = _check(A, B, qs, bias)
    transposed = A.shape[-1] == N and N != K
    if out is not None:
        check_out(out, (*A.shape[:-1], K if transposed else N), A)
    if transposed:
        warnings.warn(f"matmul_4bit: weight was quantized from a [K, N] tensor (quant_state.shape={[N, K]}); "
                      "re-quantize it in (out_features, in_features) orientation", DeprecationWarning, stacklevel=2)
        W = dequantize_4bit(B, qs, backend=backend).to(A.dtype)
        y = torch.nn.functional.linear(A, W.t(), bias)
    else:
        _inner(A, K)
        needs_grad = torch.is_grad_enabled() and (A.requires_grad or (bias is not None and bias.requires_grad))
        if needs_grad and A.numel():
            y = MatMul4Bit.apply(A, B, bias, qs, backend, N, K)
        else:
            y = _gemm(A, B, qs, bias, backend, N, K)
    if out is not None:
        out.copy_(y)
        return out
    return y


def weight_bytes(shape, blocksize: int, nested: bool) -> int:
    """Bytes a fused kernel reads for the weight: packed codes + absmax (uint8 + nested float32, or float32)."""
    n = math.prod(shape)
    nb = -(-n // blocksize)
    return (n + 1) // 2 + (nb + 4 * -(-nb // 256) if nested else 4 * nb)
