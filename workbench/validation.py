"""Argument checks shared by every public op: clear errors that name the argument."""
from __future__ import annotations

import math
import numbers

import torch

FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
BLOCKSIZES = tuple(2 ** k for k in range(5, 13))  # 32 .. 4096
NAN_POLICIES = ("raise", "propagate")


class QuantInputError(ValueError):
    """An op's input is unusable; the message names the argument and what was expected."""


def check_tensor(name: str, t, *, dtypes=FLOAT_DTYPES, allow_empty: bool = False) -> torch.Tensor:
    if not isinstance(t, torch.Tensor):
        raise QuantInputError(f"{name}: expected a torch.Tensor, got {type(t).__name__}")
    if dtypes is not None and t.dtype not in dtypes:
        want = ", ".join(str(d).replace("torch.", "") for d in dtypes)
        raise QuantInputError(f"{name}: dtype {str(t.dtype).replace('torch.', '')} not supported; expected one of {want}")
    if not allow_empty and t.numel() == 0:
        raise QuantInputError(f"{name}: tensor is empty (shape {tuple(t.shape)}); expected at least one element")
    return t


def check_nan_policy(nan_policy) -> str:
    if nan_policy not in NAN_POLICIES:
        raise QuantInputError(f"nan_policy: expected one of {NAN_POLICIES}, got {nan_policy!r}")
    return nan_policy


def check_dtype(name: str, dtype, allowed) -> torch.dtype:
    if dtype not in allowed:
        want = ", ".join(str(d).replace("torch.", "") for d in allowed)
        raise QuantInputError(f"{name}: {dtype!r} not supported; expected one of {want}")
    return dtype


def _nonfinite_error(name: str, t: torch.Tensor) -> QuantInputError:
    bad = int((~torch.isfinite(t)).sum())
    return QuantInputError(
        f"{name}: contains {bad} non-finite value(s) (NaN/Inf); absmax scaling would spread them over "
        f"the whole block. Clean the input or pass nan_policy='propagate' to accept undefined codes there")


def raise_if_nonfinite(name: str, t: torch.Tensor, scales: torch.Tensor, nan_policy: str) -> None:
    """The non-finite check of ``nan_policy="raise"``, from the per-block (or per-row) scales the
    kernel already computed: by the spec a block's absmax is NaN or Inf exactly when the block holds
    a NaN or Inf, so no pass over ``t`` is needed, only a max over the scales (NaN-propagating; the
    scales are >= 0). Reading the verdict is a host sync on CUDA, so the ops call this last, after
    every launch; under torch.compile it becomes an asynchronous assert, and during CUDA-graph
    capture it is refused."""
    if nan_policy != "raise" or scales.numel() == 0:
        return
    if torch.compiler.is_compiling():
        torch._assert_async(torch.isfinite(scales.amax()), f"{name}: non-finite values (NaN/Inf) with nan_policy='raise'")
        return
    if scales.is_cuda and torch.cuda.is_current_stream_capturing():
        raise QuantInputError(f"nan_policy: 'raise' reads a flag on the host, which a CUDA graph cannot do; "
                              f"pass nan_policy='propagate' when capturing {name}'s quantization")
    if scales.device.type == "cpu":
        # NumPy's max (NaN-propagating, one thread): a torch reduction here would wake torch's thread pool
        # right after the Numba/OpenMP kernel's, and the two pools' spin-waits cost milliseconds on small CPUs
        worst = float(scales.detach().numpy().max())
    else:
        worst = scales.amax().item()
    if not math.isfinite(worst):
        raise _nonfinite_error(name, t)


def check_finite(name: str, t: torch.Tensor, nan_policy: str) -> None:
    """A pass over ``t`` (for ops whose kernels don't report non-finite input in their scales)."""
    check_nan_policy(nan_policy)
    if nan_policy == "raise" and t.is_floating_point() and not _extremes_finite(t):
        raise _nonfinite_error(name, t)


def raise_if_flagged(name: str, t: torch.Tensor, nonfinite: torch.Tensor) -> None:
    """Raise if the kernel's non-finite flag (int32[1], 1 when ``t`` held NaN/Inf) is set. Reading it is a host
    sync on CUDA, so ops call this after every launch; under torch.compile and during CUDA-graph capture it
    becomes an asynchronous assert (a device-side error at run time)."""
    if torch.compiler.is_compiling() or (nonfinite.is_cuda and torch.cuda.is_current_stream_capturing()):
        torch._assert_async(nonfinite.reshape(()) == 0, f"{name}: non-finite values (NaN/Inf)")
        return
    if nonfinite.item():
        raise _nonfinite_error(name, t)


def nonfinite_flag(t: torch.Tensor) -> torch.Tensor:
    """int32[1] on the CPU: 1 if ``t`` holds NaN/Inf (for kernels that report no flag of their own)."""
    return torch.tensor([0 if not t.is_floating_point() or _extremes_finite(t) else 1], dtype=torch.int32)


def _extremes_finite(t: torch.Tensor) -> bool:
    # min and max propagate NaN and expose +-Inf, so both finite <=> every element finite;
    # aminmax makes one pass without a full-size temporary (isfinite(t).all() allocates one)
    lo, hi = torch.aminmax(t.reshape(-1))
    return bool(torch.isfinite(lo)) and bool(torch.isfinite(hi))


def check_blocksize(blocksize, allowed=BLOCKSIZES) -> int:
    if isinstance(blocksize, bool) or not isinstance(blocksize, int):
        raise QuantInputError(f"blocksize: expected an int, got {type(blocksize).__name__}")
    if blocksize not in allowed:
        raise QuantInputError(f"blocksize: {blocksize} not supported; expected a power of two in {allowed[0]}..{allowed[-1]}")
    return blocksize


def check_shape(where: str, shape, *, allow_none: bool = False):
    """``shape`` as a torch.Size of non-negative ints (None passes when ``allow_none``)."""
    if shape is None and allow_none:
        return None
    if not isinstance(shape, (tuple, list, torch.Size)):
        raise QuantInputError(f"{where}: expected a tuple of non-negative ints, got {shape!r} ({type(shape).__name__})")
    for d in shape:
        if isinstance(d, bool) or not isinstance(d, numbers.Integral) or d < 0:
            raise QuantInputError(f"{where}: expected a tuple of non-negative ints, got {tuple(shape)!r}")
    return torch.Size(int(d) for d in shape)


def check_on(name: str, t: torch.Tensor, like: torch.Tensor, like_name: str) -> None:
    """A kernel gets one device's pointers: ``t`` must be on ``like``'s device."""
    if t.device != like.device:
        raise QuantInputError(f"{name}: on {t.device}, but {like_name} is on {like.device}")


def check_out(out, shape, like: torch.Tensor, like_name: str = "A") -> None:
    """A preallocated result: a tensor of exactly ``shape``, ``like``'s dtype and device (bitsandbytes' ``.out``
    ops check the same), so that copying into it neither broadcasts nor casts."""
    if not isinstance(out, torch.Tensor):
        raise QuantInputError(f"out: expected a tensor or None, got {type(out).__name__}")
    if tuple(out.shape) != tuple(shape):
        raise QuantInputError(f"out: shape {tuple(out.shape)}, expected {tuple(shape)}")
    if out.dtype != like.dtype:
        raise QuantInputError(f"out: dtype {out.dtype} must match {like_name}'s dtype {like.dtype}")
    check_on("out", out, like, like_name)


def check_bias(bias, n: int, like: torch.Tensor, like_name: str = "A", *, same_dtype: bool = False):
    """None, or a 1-D float tensor of n (out_features) values on ``like``'s device; of ``like``'s dtype when
    ``same_dtype``. Returns it."""
    if bias is None:
        return None
    if not isinstance(bias, torch.Tensor) or bias.dim() != 1 or bias.numel() != n:
        raise QuantInputError(f"bias: expected a 1-D tensor of {n} (out_features) values, got "
                              f"{tuple(bias.shape) if isinstance(bias, torch.Tensor) else type(bias).__name__}")
    if same_dtype and bias.dtype != like.dtype:
        raise QuantInputError(f"bias: dtype {bias.dtype} must match {like_name}'s dtype {like.dtype}")
    check_tensor("bias", bias, allow_empty=True)
    check_on("bias", bias, like, like_name)
    return bias


def check_codebook_size(cb, *, max_bits: int, exact_bits: int | None = None):
    if exact_bits is not None and cb.bits != exact_bits:
        raise QuantInputError(f"codebook: {cb.name!r} has {cb.size} entries; this op packs {exact_bits}-bit codes and needs exactly {2 ** exact_bits}")
    if cb.bits > max_bits:
        raise QuantInputError(f"codebook: {cb.name!r} has {cb.size} entries; at most {2 ** max_bits} allowed")
    return cb
