"""Public API of the k-bit family: 2- to 8-bit codes with packed storage and scale formats (issue 19).

``quantize_kbit(A, k=4, codebook=None, blocksize=32, layout="bitplane", scale_format="e4m4",
codes_against="exact", backend="auto") -> (packed int32 words, KbitState)`` and
``dequantize_kbit(packed, state, dtype=None, backend="auto")``. ``scale_format="dq8"`` is the existing
8-bit double quantization of the fp32 absmax (workbench.ops: offset = mean, dynamic map, blocksize 256),
done here around the ops with codes against the exact absmax. The rules (codes, packing, every
scale format) are the reference kernel's docstring, workbench/backends/reference/kbit.py; with the
defaults and blocksize 32 they are bitsandbytes' in-development k-bit quantizer bit for bit.

Arguments are validated from metadata (no pass over the data). k-bit scale formats cannot carry NaN/Inf, so NaN
or Inf in ``A`` raises QuantInputError: the quantize kernels raise a flag in their absmax pass and the call reads
it after the launch (one host sync on CUDA; affine groups check with a pass of their own first).
"""
from __future__ import annotations

import math
import weakref

import torch

from . import codebooks as cbs
from . import hadamard
from . import library  # noqa: F401  (declares the torch.ops.workbench ops)
from .backends.reference.kbit import LAYOUTS, SCALE_FORMATS
from .backends.registry import resolve
from .kbit_state import (CODES_AGAINST, DQ8, KBIT_BLOCKSIZES, PUBLIC_SCALE_FORMATS, KbitState, check_affine,
                         check_k, check_layout, check_scale_format, codebook_tensor, remember_checked,
                         resolve_blocksize)
from .validation import FLOAT_DTYPES, QuantInputError, check_dtype, check_finite, check_tensor, raise_if_flagged

__all__ = ["quantize_kbit", "dequantize_kbit", "KbitState", "kbit_codebook_tensor", "bits_per_param",
           "frontier_rows", "KBIT_BLOCKSIZES", "SCALE_FORMATS", "LAYOUTS"]

_SCALE_BITS = {"fp32": 32, "fp16": 16, "bf16": 16, "e4m4": 8, "e8m0": 8, "e4m3": 8, DQ8: 8 + 32 / 256}
_ZERO_POINT_BITS = 8          # affine: the stored uint8 zero point per group
_ops = torch.ops.workbench


def kbit_codebook_tensor(codebook, k: int) -> torch.Tensor:
    """The validated float32 codebook tensor the ops take (None -> create_normal_float_codebook(k))."""
    check_k(k)
    if codebook is None:
        return cbs.create_normal_float_codebook(k)
    return codebook_tensor(codebook, k)


_on_device: dict[tuple, tuple] = {}   # (codebook key, k, device) -> (weakref or None, checked tensor there)


def _codebook_on(codebook, k: int, device: torch.device) -> torch.Tensor:
    """The checked float32 codebook on ``device``, cached: the default normal-float codebook is built once per
    (k, device) (its scipy quantiles cost ~0.1 ms), a name per registry generation, a tensor while unchanged.
    The same tensor goes into every state; an in-place edit of it bumps its version and rebuilds the entry."""
    if torch.compiler.is_compiling():
        return kbit_codebook_tensor(codebook, k).to(device)
    if codebook is None:
        key = ("nf", k, device)
    elif isinstance(codebook, str):
        key = ("name", codebook, cbs.generation, k, device)
    elif isinstance(codebook, torch.Tensor):
        key = ("tensor", id(codebook), codebook._version, k, device)
    else:                     # sequences and Codebook objects: built per call
        return kbit_codebook_tensor(codebook, k).to(device)
    hit = _on_device.get(key)
    if hit is not None and (hit[0] is None or hit[0]() is codebook) and hit[2] == hit[1]._version:
        return hit[1]
    t = kbit_codebook_tensor(codebook, k).to(device).clone()   # never the caller's storage: states share it
    if len(_on_device) >= 256:
        _on_device.clear()
    _on_device[key] = (weakref.ref(codebook) if isinstance(codebook, torch.Tensor) else None, t, t._version)
    remember_checked(t, k)
    return t


def _device(t: torch.Tensor) -> str:
    if t.device.type not in ("cpu", "cuda"):
        raise QuantInputError(f"A: device {t.device} not supported; expected cpu or cuda")
    return t.device.type


# ------------------------------------------------------------------ the public ops

def quantize_kbit(A: torch.Tensor, k: int = 4, codebook=None, blocksize: int | str = 32, layout: str = "bitplane",
                  scale_format: str | None = None, codes_against: str = "exact", *, affine: str | None = None,
                  rotate: int | None = None, rotate_seed: int = 0, backend: str = "auto"):
    """K-bit groupwise quantization. Returns ``(packed int32 words, KbitState)``.

    ``codebook``: 2**k sorted values (tensor, sequence, Codebook or registered name); default the
    normal-float codebook of bitsandbytes' ``create_normal_float_codebook(k)``.
    ``blocksize``: the scale group: a power of two 16..4096, ``"row"`` (one scale per row, i.e. per output
    channel of a weight), or any size >= 16 that divides ``A.shape[-1]`` (e.g. 384).
    ``scale_format``: default ``"e4m4"`` (codebook) or ``"fp16"`` (affine).
    ``codes_against``: ``"exact"`` picks codes against the block's absmax (bitsandbytes),
    ``"decoded"`` against the scale as stored (what dequantization will multiply by).
    ``affine``: ``"minmax"`` or ``"mse"`` for int-k codes with a scale and a zero point per group
    (torchao's asymmetric affine; ``"mse"`` searches a clip of the range; spec:
    workbench/backends/reference/kbit_affine.py) instead of a codebook.
    ``rotate``: a power of two 32..4096: quantize ``H (s * x) / sqrt(rotate)`` per block of that many flat
    elements (randomized Hadamard, signs from ``rotate_seed``; workbench/hadamard.py) and undo it on dequantize.
    """
    check_tensor("A", A)
    check_k(k)
    check_affine(affine)
    R = hadamard.check_rotate(rotate, rotate_seed)
    blocksize = resolve_blocksize(blocksize, A.shape)
    check_layout(layout)
    if scale_format is None:
        scale_format = "fp16" if affine else "e4m4"
    check_scale_format(scale_format, blocksize, affine)
    if codes_against not in CODES_AGAINST:
        raise QuantInputError(f"codes_against: expected one of {CODES_AGAINST}, got {codes_against!r}")
    if scale_format == DQ8 and codes_against != "exact":
        raise QuantInputError("codes_against: scale_format 'dq8' codes against the exact absmax only "
                              "(its 8-bit scales exist after the codes)")
    if affine is not None and codebook is not None:
        raise QuantInputError(f"codebook: affine groups use the int-{k} levels 0..{2 ** k - 1}; pass codebook=None")
    dev = _device(A)
    cb = None if affine else _codebook_on(codebook, k, A.device)
    if affine:                # the affine kernels report no non-finite flag: check first (one pass)
        check_finite("A", A, "raise")
    a = A.detach().reshape(-1)
    if R:                     # the rotated, zero-padded float32 tensor is what gets coded
        a = hadamard.rotate(a, R, rotate_seed)
    if not a.is_contiguous():
        a = a.contiguous()
    zeros = None
    if affine:
        name = resolve(backend, "quantize_kbit_affine", dev, str(a.dtype).removeprefix("torch."))
        packed, scales, zeros = _ops.quantize_kbit_affine(a, k, blocksize, layout, scale_format, affine, name)
        ts = torch.zeros(0, dtype=torch.float32, device=A.device)
    else:
        name = resolve(backend, "quantize_kbit", dev, str(a.dtype).removeprefix("torch."))
        op_format = "fp32" if scale_format == DQ8 else scale_format
        packed, scales, ts, nonfinite = _ops.quantize_kbit(a, cb, k, blocksize, layout, op_format,
                                                           codes_against, name)
        raise_if_flagged("A", A, nonfinite)
    offset = state2 = None
    if scale_format == DQ8:   # bitsandbytes' double quantization of the fp32 absmax (workbench.ops)
        from .ops import _quantize_absmax
        scales, offset, state2 = _quantize_absmax(scales, backend)
    state = KbitState(k=k, codebook=cb, blocksize=blocksize, layout=layout,
                      scale_format=scale_format, codes_against=codes_against, scales=scales, tensor_scale=ts,
                      shape=A.shape, dtype=A.dtype, offset=offset, state2=state2, affine=affine, zeros=zeros,
                      rotate=R, rotate_seed=rotate_seed if R else 0)
    return packed, state


def dequantize_kbit(packed: torch.Tensor, state: KbitState, *, dtype: torch.dtype | None = None,
                    backend: str = "auto") -> torch.Tensor:
    """``dtype(codebook[code] * decoded scale)`` (affine: ``dtype((code - zero) * scale)``), shaped like the
    quantized tensor."""
    if not isinstance(state, KbitState):
        raise QuantInputError(f"state: expected a KbitState, got {type(state).__name__}")
    check_tensor("packed", packed, dtypes=None)
    state.validate(packed)
    out_dtype = check_dtype("dtype", dtype or state.dtype, FLOAT_DTYPES)
    dev = packed.device
    words = packed.detach().reshape(-1).contiguous()
    n = state.n_coded
    coded_dtype = torch.float32 if state.rotate else out_dtype   # undo the rotation in float32, round once
    if state.affine:
        name = resolve(backend, "dequantize_kbit_affine", _device(packed), None)
        out = _ops.dequantize_kbit_affine(words, state.scales.to(dev).contiguous(), state.zeros.to(dev).contiguous(),
                                          state.k, state.blocksize, n, state.layout, coded_dtype, name)
    else:
        name = resolve(backend, "dequantize_kbit", _device(packed), str(coded_dtype).removeprefix("torch."))
        scales, fmt = state.scales, state.scale_format
        if fmt == DQ8:        # decode the 8-bit absmax first: dequantize_blockwise + offset, in float32
            from .ops import dequantize_blockwise
            scales = (dequantize_blockwise(scales.to(dev), state.state2, backend=backend)
                      + state.offset.to(dev, torch.float32))
            fmt = "fp32"
        out = _ops.dequantize_kbit(words, scales.to(dev).contiguous(), state.tensor_scale.to(dev),
                                   state.codebook.to(dev, torch.float32).contiguous(), state.k, state.blocksize, n,
                                   state.layout, fmt, coded_dtype, name)
    if state.rotate:
        out = hadamard.unrotate(out, state.rotate, state.rotate_seed, state.n).to(out_dtype)
    return out.view(state.shape)


# ------------------------------------------------------------------ study hook

def bits_per_param(k: int, blocksize: int, scale_format: str, affine: str | None = None) -> float:
    """Storage cost per element: k code bits plus the group's stored bits spread over the group: its scale
    (dq8: 8 bits plus a float32 per 256 scales) and, for affine groups, the uint8 zero point. Per-tensor
    constants (e4m3's float32, a rotation seed) are not counted."""
    return k + (_SCALE_BITS[scale_format] + (_ZERO_POINT_BITS if affine else 0)) / blocksize


def frontier_rows(ks=range(2, 9), configs=(("fp32", 32), ("e4m4", 32), ("e8m0", 32), ("e4m3", 16), ("bf16", 64),
                                           ("dq8", 64)),
                  codes_against=("exact", "decoded"), n: int = 1 << 16, seed: int = 0, backend: str = "auto",
                  data: torch.Tensor | None = None) -> list[dict]:
    """Bits per parameter vs error for K = 2..8 with the normal-float codebook, on N(0,1) data
    (or ``data``): one dict per (k, scale_format, blocksize, codes_against) with bits_per_param,
    mse, rel_mse (mse / mean x^2), sqnr_db, max_abs_err and ``pareto`` (no other row has both fewer
    bits and a lower mse). The issue-19 report draws its frontier from these rows."""
    if data is None:
        g = torch.Generator().manual_seed(seed)
        data = torch.randn(n, generator=g, dtype=torch.float32)
    x = data.detach().reshape(-1).float()
    power = float((x * x).mean())
    rows = []
    for k in ks:
        for fmt, bs in configs:
            for ca in codes_against:
                if fmt == DQ8 and ca != "exact":
                    continue
                packed, st = quantize_kbit(x, k=k, blocksize=bs, scale_format=fmt, codes_against=ca, backend=backend)
                err = dequantize_kbit(packed, st, dtype=torch.float32, backend=backend) - x
                mse = float((err * err).mean())
                rows.append(dict(k=k, scale_format=fmt, blocksize=bs, codes_against=ca,
                                 bits_per_param=bits_per_param(k, bs, fmt), mse=mse, rel_mse=mse / power,
                                 sqnr_db=10 * math.log10(power / max(mse, 1e-30)),
                                 max_abs_err=float(err.abs().max())))
    for r in rows:
        r["pareto"] = not any(o["bits_per_param"] <= r["bits_per_param"] and o["mse"] < r["mse"]
                              and (o["bits_per_param"] < r["bits_per_param"] or o["mse"] < r["mse"]) for o in rows)
    return rows
