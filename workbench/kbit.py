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
from .backends.reference.kbit import LAYOUTS, SCALE_FORMATS, flat_on
from .backends.registry import resolve
from .ops import _DTYPE_NAMES, _device, _flat, _quantize_absmax, call_op, dequantize_blockwise
from .kbit_state import (CODES_AGAINST, DQ8, KBIT_BLOCKSIZES, PUBLIC_SCALE_FORMATS, KbitState, check_affine,
                         check_k, check_layout, check_scale_format, codebook_tensor, remember_checked,
                         resolve_blocksize)
from .validation import FLOAT_DTYPES, QuantInputError, check_dtype, check_finite, check_tensor, raise_if_flagged

__all__ = ["quantize_kbit", "dequantize_kbit", "KbitState", "kbit_codebook_tensor", "bits_per_param",
           "frontier_rows", "KBIT_BLOCKSIZES", "SCALE_FORMATS", "LAYOUTS"]

_SCALE_BITS = {"fp32": 32, "fp16": 16, "bf16": 16, "e4m4": 8, "e8m0": 8, "e4m3": 8, DQ8: 8 + 32 / 256}
_ZERO_POINT_BITS = 8          # affine: the stored uint8 zero point per group


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
    a = _flat(A)
    if R:                     # the rotated, zero-padded float32 tensor is what gets coded
        a = hadamard.rotate(a, R, rotate_seed).contiguous()
    zeros = nonfinite = None
    if affine:
        name = resolve(backend, "quantize_kbit_affine", dev, _DTYPE_NAMES.get(a.dtype))
        packed, scales, zeros = call_op("quantize_kbit_affine", name, a, k, blocksize, layout, scale_format, affine)
        ts = torch.zeros(0, dtype=torch.float32, device=A.device)
    else:
        name = resolve(backend, "quantize_kbit", dev, _DTYPE_NAMES.get(a.dtype))
        op_format = "fp32" if scale_format == DQ8 else scale_format
        packed, scales, ts, nonfinite = call_op("quantize_kbit", name, a, cb, k, blocksize, layout, op_format,
                                                codes_against)
    offset = state2 = None
    if scale_format == DQ8:   # bitsandbytes' double quantization of the fp32 absmax (workbench.ops)
        scales, offset, state2 = _quantize_absmax(scales, backend)
    state = KbitState(k=k, codebook=cb, blocksize=blocksize, layout=layout,
                      scale_format=scale_format, codes_against=codes_against, scales=scales, tensor_scale=ts,
                      shape=A.shape, dtype=A.dtype, offset=offset, state2=state2, affine=affine, zeros=zeros,
                      rotate=R, rotate_seed=rotate_seed if R else 0)
    if nonfinite is not None:
        raise_if_flagged("A", A, nonfinite)   # last: a host sync on CUDA, after every launch
    return packed, state


def dequantize_kbit(packed: torch.Tensor, state: KbitState, *, dtype: torch.dtype | None = None,
                    backend: str = "auto") -> torch.Tensor:
    """``dtype(codebook[code] * decoded scale)`` (affine: ``dtype((code - zero) * scale)``), shaped like the
    quantized tensor."""
    if not isinstance(state, KbitState):
        raise QuantInputError(f"state: expected a KbitState, got {type(state).__name__}")
    check_tensor("packed", packed, dtypes=None)
    plan = _dequantize_plan(packed, state, dtype, backend)
    out_dtype, coded_dtype, name, scales, ts, cb, zeros = plan
    words = _flat(packed)
    n = state.n_coded
    if state.affine:
        out = call_op("dequantize_kbit_affine", name, words, scales, zeros, state.k, state.blocksize, n, state.layout,
                      coded_dtype)
    else:
        fmt = state.scale_format
        if fmt == DQ8:        # decode the 8-bit absmax first: dequantize_blockwise + offset, in float32
            scales = (dequantize_blockwise(scales, state.state2, backend=backend)
                      + state.offset.to(packed.device, torch.float32))
            fmt = "fp32"
        out = call_op("dequantize_kbit", name, words, scales, ts, cb, state.k, state.blocksize, n, state.layout, fmt,
                      coded_dtype)
    if state.rotate:
        out = hadamard.unrotate(out, state.rotate, state.rotate_seed, state.n).to(out_dtype)
    return out if out.shape == state.shape else out.view(state.shape)


def _dequantize_plan(packed: torch.Tensor, state: KbitState, dtype, backend: str) -> tuple:
    """(out dtype, coded dtype, backend name, scales, tensor scale, codebook, zeros) for dequantizing ``packed``
    with ``state``: validated, the tensors on packed's device. Remembered on the state while nothing it was
    checked against has changed, so a weight dequantized every forward pass is validated once."""
    key = _memo_key(packed, state, dtype, backend)
    memo = state.memo
    if key is not None and memo is not None and memo[0] == key:
        return memo[1]
    state.validate(packed)
    out_dtype = check_dtype("dtype", dtype or state.dtype, FLOAT_DTYPES)
    coded_dtype = torch.float32 if state.rotate else out_dtype   # undo the rotation in float32, round once
    dev = packed.device
    scales = flat_on(state.scales, dev)
    if state.affine:
        name = resolve(backend, "dequantize_kbit_affine", _device(packed), None)
        plan = (out_dtype, coded_dtype, name, scales, None, None, flat_on(state.zeros, dev))
    else:
        name = resolve(backend, "dequantize_kbit", _device(packed), _DTYPE_NAMES[coded_dtype])
        plan = (out_dtype, coded_dtype, name, scales, flat_on(state.tensor_scale, dev),
                flat_on(state.codebook, dev, torch.float32), None)
    own = (state.scales, state.tensor_scale, state.codebook, state.zeros)
    if key is not None and all(t is None or any(t is o for o in own) for t in plan[3:]):
        state.memo = (key, plan)   # only the state's own tensors: a copy could go stale
    return plan


def _memo_key(packed: torch.Tensor, state: KbitState, dtype, backend: str):
    """What the validation of (packed, state, dtype, backend) depended on (None under a compile trace). The
    tensors by identity, size, dtype and version: reassigning a field or editing the codebook in place misses."""
    if torch.compiler.is_compiling() or type(state) is not KbitState:
        return None
    ts = tuple((id(t), t.numel(), t.dtype, t.device, t._version) if isinstance(t, torch.Tensor) else t
               for t in (state.scales, state.tensor_scale, state.codebook, state.zeros, state.offset))
    return (ts, id(state.state2), packed.numel(), packed.dtype, packed.device, dtype, backend, state.k,
            state.blocksize, state.layout, state.scale_format, state.codes_against, state.affine, state.rotate,
            state.rotate_seed, state.shape, state.dtype)


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
