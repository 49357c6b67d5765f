"""Public API of the k-bit family: 2- to 8-bit codes with packed storage and scale formats (issue 19).

``quantize_kbit(A, k=4, codebook=None, blocksize=32, layout="bitplane", scale_format="e4m4",
codes_against="exact", backend="auto") -> (packed int32 words, KbitState)`` and
``dequantize_kbit(packed, state, dtype=None, backend="auto")``. ``scale_format="dq8"`` is the existing
8-bit double quantization of the fp32 absmax (workbench.ops: offset = mean, dynamic map, blocksize 256),
done here around the ops with codes against the exact absmax. The rules (codes, packing, every
scale format) are the reference kernel's docstring, workbench/backends/reference/kbit.py; with the
defaults and blocksize 32 they are bitsandbytes' in-development k-bit quantizer bit for bit.

Arguments are validated from metadata (no pass over the data) except the non-finite check: k-bit
scale formats cannot carry NaN/Inf, so NaN or Inf in ``A`` raises QuantInputError (one pass).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch

from . import codebooks as cbs
from . import library  # noqa: F401  (declares the torch.ops.workbench ops)
from .backends.reference.kbit import LAYOUTS, SCALE_DTYPES, SCALE_FORMATS, nblocks, packed_words
from .backends.registry import resolve
from .validation import FLOAT_DTYPES, QuantInputError, check_dtype, check_finite, check_tensor

__all__ = ["quantize_kbit", "dequantize_kbit", "KbitState", "kbit_codebook_tensor", "bits_per_param",
           "frontier_rows", "KBIT_BLOCKSIZES", "SCALE_FORMATS", "LAYOUTS"]

KBIT_BLOCKSIZES = tuple(2 ** e for e in range(4, 13))   # 16 .. 4096
CODES_AGAINST = ("exact", "decoded")
DQ8 = "dq8"   # the existing 8-bit double quantization of fp32 absmax (offset + dynamic map, blocksize 256)
PUBLIC_SCALE_FORMATS = SCALE_FORMATS + (DQ8,)
_REQUIRED_BLOCKSIZE = {"e8m0": 32, "e4m3": 16}           # MXFP4: block 32; NVFP4: block 16
_SCALE_BITS = {"fp32": 32, "fp16": 16, "bf16": 16, "e4m4": 8, "e8m0": 8, "e4m3": 8, DQ8: 8 + 32 / 256}
_ops = torch.ops.workbench


@dataclass
class KbitState:
    """Everything dequantize_kbit needs besides the packed words."""
    k: int
    codebook: torch.Tensor          # float32[2**k], sorted
    blocksize: int
    layout: str
    scale_format: str
    codes_against: str
    scales: torch.Tensor            # [nblocks], dtype of the format (uint8 for e4m4/e8m0/e4m3)
    tensor_scale: torch.Tensor      # float32[1] for e4m3, else float32[0]
    shape: torch.Size
    dtype: torch.dtype
    offset: torch.Tensor | None = None      # dq8: the mean subtracted before the 8-bit quantization
    state2: object = None                   # dq8: the QuantState of the 8-bit absmax codes
    meta: dict = field(default_factory=dict)

    @property
    def n(self) -> int:
        return math.prod(self.shape)

    def validate(self, packed: torch.Tensor) -> None:
        _check_k(self.k)
        _check_layout(self.layout)
        _check_scale_format(self.scale_format, self.blocksize)
        n = self.n
        want = packed_words(n, self.k, self.layout)
        if packed.numel() != want:
            raise QuantInputError(f"packed: {packed.numel()} words, but {n} {self.k}-bit codes in the "
                                  f"{self.layout!r} layout need {want}")
        if packed.dtype != torch.int32:
            raise QuantInputError(f"packed: dtype {packed.dtype}; expected torch.int32 words")
        nb = nblocks(n, self.blocksize)
        want_dtype = torch.uint8 if self.scale_format == DQ8 else SCALE_DTYPES[self.scale_format]
        if self.scale_format == DQ8 and (self.state2 is None or self.offset is None):
            raise QuantInputError("state.state2: scale_format 'dq8' needs the nested state and offset")
        if self.scales.numel() != nb or self.scales.dtype != want_dtype:
            raise QuantInputError(f"state.scales: expected {nb} values of {want_dtype} "
                                  f"({self.scale_format}), got {self.scales.numel()} of {self.scales.dtype}")
        if self.tensor_scale.numel() != (1 if self.scale_format == "e4m3" else 0):
            raise QuantInputError("state.tensor_scale: e4m3 needs exactly one float32 per-tensor scale, "
                                  "other formats none")
        _codebook_tensor(self.codebook, self.k)


# ------------------------------------------------------------------ validation

def _check_k(k) -> int:
    if isinstance(k, bool) or not isinstance(k, int) or not 2 <= k <= 8:
        raise QuantInputError(f"k: expected an int in 2..8 (bits per code), got {k!r}")
    return k


def _check_blocksize(blocksize) -> int:
    if isinstance(blocksize, bool) or not isinstance(blocksize, int) or blocksize not in KBIT_BLOCKSIZES:
        raise QuantInputError(f"blocksize: expected a power of two in 16..4096, got {blocksize!r}")
    return blocksize


def _check_layout(layout) -> str:
    if layout not in LAYOUTS:
        raise QuantInputError(f"layout: expected one of {LAYOUTS}, got {layout!r}")
    return layout


def _check_scale_format(fmt, blocksize) -> str:
    if fmt not in PUBLIC_SCALE_FORMATS:
        raise QuantInputError(f"scale_format: expected one of {PUBLIC_SCALE_FORMATS}, got {fmt!r}")
    need = _REQUIRED_BLOCKSIZE.get(fmt)
    if need is not None and blocksize != need:
        raise QuantInputError(f"scale_format: {fmt!r} needs blocksize={need} "
                              f"({'MXFP4' if fmt == 'e8m0' else 'NVFP4'} scale), got blocksize={blocksize}")
    return fmt


def _codebook_tensor(codebook, k: int) -> torch.Tensor:
    """A float32 CPU tensor of 2**k sorted (non-decreasing), finite values, not all zero."""
    if isinstance(codebook, (str, cbs.Codebook)):
        cb = cbs.get(codebook)
        t = torch.from_numpy(np.asarray(cb.table, np.float32).copy())
    elif isinstance(codebook, torch.Tensor):
        t = codebook.detach().to("cpu", torch.float32).reshape(-1)
    else:
        try:
            t = torch.as_tensor(np.asarray(codebook, dtype=np.float32)).reshape(-1)
        except (TypeError, ValueError) as e:
            raise QuantInputError(f"codebook: expected a tensor, sequence of floats, Codebook or name ({e})") from None
    if t.numel() != 2 ** k:
        raise QuantInputError(f"codebook: has {t.numel()} entries; k={k} needs exactly {2 ** k}")
    if not bool(torch.isfinite(t).all()):
        raise QuantInputError("codebook: values must be finite")
    if bool((t[1:] < t[:-1]).any()):
        i = int(torch.nonzero(t[1:] < t[:-1])[0, 0])
        raise QuantInputError(f"codebook: values must be sorted ascending; entry {i + 1} ({float(t[i + 1])!r}) "
                              f"< entry {i} ({float(t[i])!r})")
    if float(t.abs().max()) == 0.0:
        raise QuantInputError("codebook: all values are zero")
    return t.contiguous()


def kbit_codebook_tensor(codebook, k: int) -> torch.Tensor:
    """The validated float32 codebook tensor the ops take (None -> create_normal_float_codebook(k))."""
    _check_k(k)
    if codebook is None:
        return cbs.create_normal_float_codebook(k)
    return _codebook_tensor(codebook, k)


def _device(t: torch.Tensor) -> str:
    if t.device.type not in ("cpu", "cuda"):
        raise QuantInputError(f"A: device {t.device} not supported; expected cpu or cuda")
    return t.device.type


# ------------------------------------------------------------------ the public ops

def quantize_kbit(A: torch.Tensor, k: int = 4, codebook=None, blocksize: int = 32, layout: str = "bitplane",
                  scale_format: str = "e4m4", codes_against: str = "exact", *, backend: str = "auto"):
    """K-bit blockwise quantization. Returns ``(packed int32 words, KbitState)``.

    ``codebook``: 2**k sorted values (tensor, sequence, Codebook or registered name); default the
    normal-float codebook of bitsandbytes' ``create_normal_float_codebook(k)``.
    ``codes_against``: ``"exact"`` picks codes against the block's absmax (bitsandbytes),
    ``"decoded"`` against the scale as stored (what dequantization will multiply by).
    """
    check_tensor("A", A)
    _check_k(k)
    _check_blocksize(blocksize)
    _check_layout(layout)
    _check_scale_format(scale_format, blocksize)
    if codes_against not in CODES_AGAINST:
        raise QuantInputError(f"codes_against: expected one of {CODES_AGAINST}, got {codes_against!r}")
    if scale_format == DQ8 and codes_against != "exact":
        raise QuantInputError("codes_against: scale_format 'dq8' codes against the exact absmax only "
                              "(its 8-bit scales exist after the codes)")
    cb = kbit_codebook_tensor(codebook, k)
    check_finite("A", A, "raise")
    dev = _device(A)
    name = resolve(backend, "quantize_kbit", dev, str(A.dtype).removeprefix("torch."))
    a = A.detach().reshape(-1)
    if not a.is_contiguous():
        a = a.contiguous()
    op_format = "fp32" if scale_format == DQ8 else scale_format
    packed, scales, ts = _ops.quantize_kbit(a, cb.to(A.device), k, blocksize, layout, op_format, codes_against,
                                            name)
    offset = state2 = None
    if scale_format == DQ8:   # bitsandbytes' double quantization of the fp32 absmax (workbench.ops)
        from .ops import _quantize_absmax
        scales, offset, state2 = _quantize_absmax(scales, backend)
    state = KbitState(k=k, codebook=cb.to(A.device), blocksize=blocksize, layout=layout, scale_format=scale_format,
                      codes_against=codes_against, scales=scales, tensor_scale=ts, shape=A.shape, dtype=A.dtype,
                      offset=offset, state2=state2)
    return packed, state


def dequantize_kbit(packed: torch.Tensor, state: KbitState, *, dtype: torch.dtype | None = None,
                    backend: str = "auto") -> torch.Tensor:
    """``dtype(codebook[code] * decoded scale)``, shaped like the quantized tensor."""
    if not isinstance(state, KbitState):
        raise QuantInputError(f"state: expected a KbitState, got {type(state).__name__}")
    check_tensor("packed", packed, dtypes=None)
    state.validate(packed)
    out_dtype = check_dtype("dtype", dtype or state.dtype, FLOAT_DTYPES)
    name = resolve(backend, "dequantize_kbit", _device(packed), None)
    dev = packed.device
    scales, fmt = state.scales, state.scale_format
    if fmt == DQ8:            # decode the 8-bit absmax first: dequantize_blockwise + offset, in float32
        from .ops import dequantize_blockwise
        scales = dequantize_blockwise(scales.to(dev), state.state2, backend=backend) + state.offset.to(dev, torch.float32)
        fmt = "fp32"
    out = _ops.dequantize_kbit(packed.detach().reshape(-1).contiguous(), scales.to(dev).contiguous(),
                               state.tensor_scale.to(dev), state.codebook.to(dev, torch.float32).contiguous(),
                               state.k, state.blocksize, state.n, state.layout, fmt, out_dtype, name)
    return out.view(state.shape)


# ------------------------------------------------------------------ study hook

def bits_per_param(k: int, blocksize: int, scale_format: str) -> float:
    """Storage cost per element: k code bits plus the block scale's bits spread over the block
    (dq8: 8 bits plus a float32 per 256 scales; the per-tensor float32s are not counted)."""
    return k + _SCALE_BITS[scale_format] / blocksize


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
