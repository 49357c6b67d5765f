"""What quantization to apply to a layer (``QuantSpec``), how to run it, and its honest bits per parameter.

A spec names a code and where its scales come from:

* a **codebook** (registered name, ``nfK`` for bitsandbytes' k-bit normal float, a Codebook, or 2**k values) or
  **affine** int-k groups (``affine="minmax"`` / ``"mse"``: a scale and a uint8 zero point per group, torchao's
  asymmetric rule), ``bits`` = k in 2..8 (from the codebook when it is given);
* a **group** (``blocksize``): a power of two, ``"row"`` (one scale per output channel) or any size dividing the row;
* a **scale format**: None = float32 absmax (the blockwise kernels; ``double_quant`` = bitsandbytes' 8-bit
  absmax), or one of the k-bit formats fp32 / fp16 / bf16 / e4m4 / e8m0 (MXFP4: group 32) / e4m3 (NVFP4:
  group 16) / dq8;
* **rotation** (``rotate=R``: randomized Hadamard over blocks of R flat elements, seed ``rotate_seed``).

Each spec runs on one *route* (:attr:`QuantSpec.route`), always through the public API, no kernels of its own:

* ``"linear4bit"``: 16-entry codes with float32 absmax scales -> :class:`workbench.nn.Linear4bit` (the module
  a user deploys; :func:`fake_quantize` gives its weight, ``dequantize_4bit``, bit for bit);
* ``"blockwise"``: any other table of <= 256 entries with float32 absmax -> ``quantize_blockwise`` (a 2**k-entry
  code through the 8-bit kernel still carries k bits; it would pack into k);
* ``"kbit"``: a scale format, affine groups, rotation, or a group that is not a power of two 32..4096 ->
  ``workbench.kbit.quantize_kbit`` / ``dequantize_kbit`` (packed k-bit codes);
* ``"gptq"``: Hessian-aware rounding (``workbench.model_eval.gptq_quantize``), float32 absmax scales only.

Bits per parameter count what is stored per weight tensor: codes plus scales plus zero points (plus the nested
absmax and offset of double quantization, the e4m3 per-tensor float32). A shared codebook of 2**k values and
a rotation seed are per-model constants and not counted. The text form (:attr:`QuantSpec.name`,
:meth:`QuantSpec.parse`) is ``CODE@GROUP[+dq][/FORMAT][/rotR[sSEED]][/gptq][/a8tT]``, e.g.
``nf3@64/e4m4/rot64`` or ``int4-minmax@32/fp16``.
"""
from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass

import numpy as np
import torch

from .validation import BLOCKSIZES, QuantInputError

__all__ = ["QuantSpec", "resolve_codebook", "kbit_codebook", "fake_quantize", "code_bits", "levels", "scale_bits",
           "spec_dict", "absmax_bits", "stored_bits", "ROUTES"]

ROUTES = ("linear4bit", "blockwise", "kbit", "gptq")
METHODS = ("rtn", "gptq")
_AFFINE_NAME = re.compile(r"int([2-8])-(minmax|mse)")


# ------------------------------------------------------------------ codebooks

def kbit_codebook(bits: int):
    """bitsandbytes' k-bit normal-float code (``create_normal_float_codebook``): 2**bits sorted entries."""
    from . import codebooks as cbs
    return cbs.from_values(cbs.create_normal_float_codebook(int(bits)).numpy(), name=f"nf{int(bits)}-kbit",
                           meta={"levels": 1 << int(bits)})


def resolve_codebook(cb):
    """A Codebook from a registered name, ``'nf2'``/``'nf3'``..``'nf8'``-style k-bit normal-float names
    (``'nfk:3'`` too), a Codebook, or a sorted tensor/array of 2**k values in [-1, 1]."""
    from . import codebooks as cbs
    if isinstance(cb, cbs.Codebook):
        return cb
    if isinstance(cb, str):
        m = re.fullmatch(r"nf(?:k:)?([2-8])(?:-kbit)?", cb)
        if m and not (cb in cbs.names()):
            return kbit_codebook(int(m.group(1)))
        return cbs.get(cb)
    v = np.asarray(cb.detach().cpu().numpy() if isinstance(cb, torch.Tensor) else cb, np.float64).ravel()
    k = int(round(math.log2(v.size))) if v.size else 0
    if v.size < 2 or (1 << k) != v.size:
        raise ValueError(f"codebook: expected 2**k values, got {v.size}")
    return cbs.from_values(np.unique(v.astype(np.float32)), name=f"custom{k}", pad_to_pow2=True)


def levels(cb) -> int:
    return int(cb.bucket_codes.size)


def code_bits(cb) -> int:
    return max(1, math.ceil(math.log2(max(2, levels(cb)))))


def scale_bits(n: int, blocksize: int, double_quant: bool) -> float:
    """Bits of float32 block scales (or bitsandbytes' double quantization of them) for ``n`` weights."""
    nb = math.ceil(n / blocksize)
    if not double_quant:
        return 32.0 * nb
    return 8.0 * nb + 32.0 * math.ceil(nb / 256) + 32.0


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


# ------------------------------------------------------------------ the spec

@dataclass(frozen=True)
class QuantSpec:
    """How to quantize a layer (see the module doc); impossible combinations raise QuantInputError naming the
    argument at construction. ``act_threshold``: None = float activations, 0.0 = int8 W8A8, > 0 = LLM.int8()."""
    codebook: object = None              # None: nf{bits} (NF4 by default); must stay None with ``affine``
    blocksize: int | str = 64
    double_quant: bool = False
    act_threshold: float | None = None
    method: str = "rtn"                  # "rtn" (round to nearest) or "gptq" (Hessian-aware, calibration sentences)
    bits: int | None = None              # k; None: the codebook's (4 when no codebook is given)
    scale_format: str | None = None      # None: float32 absmax; else a k-bit scale format (routes to workbench.kbit)
    affine: str | None = None            # "minmax" / "mse": int-k with a zero point per group
    rotate: int | None = None            # randomized Hadamard block (power of two 32..4096)
    rotate_seed: int = 0

    def __post_init__(self):
        from .hadamard import check_rotate
        from .kbit_state import check_affine, check_scale_format
        if self.method not in METHODS:
            raise QuantInputError(f"method: expected one of {METHODS}, got {self.method!r}")
        if self.bits is not None and (not _is_int(self.bits) or not 2 <= self.bits <= 8):
            raise QuantInputError(f"bits: expected an int in 2..8 or None, got {self.bits!r}")
        if self.act_threshold is not None and not (isinstance(self.act_threshold, (int, float))
                                                   and math.isfinite(self.act_threshold) and self.act_threshold >= 0):
            raise QuantInputError(f"act_threshold: expected None or a finite number >= 0, got {self.act_threshold!r}")
        bs = self.blocksize
        if not (bs == "row" or (_is_int(bs) and bs >= 16)):
            raise QuantInputError(f"blocksize: expected an int >= 16 (a power of two, or a group dividing the row) "
                                  f"or 'row', got {bs!r}")
        check_affine(self.affine)
        check_rotate(self.rotate, self.rotate_seed)
        if self.scale_format == "dq8":      # one spelling of double quantization: +dq
            object.__setattr__(self, "scale_format", None)
            object.__setattr__(self, "double_quant", True)
        if self.affine is not None:
            if self.codebook is not None:
                raise QuantInputError(f"codebook: affine groups use the int-k levels 0..2**k-1; leave codebook=None "
                                      f"(got {self.codebook!r})")
            if self.double_quant:
                raise QuantInputError("double_quant: affine groups store their scale as fp32/fp16/bf16; "
                                      "bitsandbytes' 8-bit double quantization applies to codebook absmax only")
        if self.scale_format is not None:
            check_scale_format(self.scale_format, bs, self.affine)
            if self.double_quant:
                raise QuantInputError(f"double_quant: is the scale format 'dq8'; it cannot be combined with "
                                      f"scale_format={self.scale_format!r}")
        if self.affine is None:
            try:
                cb = self.cb
            except (KeyError, ValueError) as e:
                raise QuantInputError(f"codebook: {e}") from None
            if self.bits is not None and self.codebook is not None and code_bits(cb) != self.bits:
                raise QuantInputError(f"bits: the codebook {cb.name!r} has {levels(cb)} levels ({code_bits(cb)} "
                                      f"bits), not bits={self.bits}")
            if self.route == "kbit" and not (cb.size == 1 << code_bits(cb) and 2 <= code_bits(cb) <= 8):
                raise QuantInputError(f"codebook: the k-bit route (scale_format / rotate / group {bs!r}) takes "
                                      f"2**k entries, k in 2..8; {cb.name!r} has {cb.size}")
        if self.method == "gptq" and (self.scale_format or self.affine or self.rotate or bs not in BLOCKSIZES):
            raise QuantInputError("method: 'gptq' fixes float32 absmax scales over power-of-two blocks of a "
                                  "codebook; it does not take scale_format, affine, rotate or a row/odd group")

    # --- derived
    @property
    def k(self) -> int:
        if self.bits is not None:
            return self.bits
        return 4 if self.affine or self.codebook is None else code_bits(self.cb)

    @property
    def cb(self):
        """The Codebook (None for affine groups)."""
        if self.affine is not None:
            return None
        return resolve_codebook(self.codebook if self.codebook is not None else f"nf{self.k}")

    @property
    def route(self) -> str:
        if self.method == "gptq":
            return "gptq"
        if self.affine or self.scale_format or self.rotate or self.blocksize not in BLOCKSIZES:
            return "kbit"
        cb = self.cb
        return "linear4bit" if (cb.size == 16 and levels(cb) <= 16 and cb.bits == 4) else "blockwise"

    @property
    def effective_scale_format(self) -> str:
        """How the scales are stored: the k-bit format, or fp32 / dq8 (float32 absmax, double-quantized)."""
        if self.scale_format:
            return self.scale_format
        if self.double_quant:
            return "dq8"
        return "fp16" if (self.affine and self.route == "kbit") else "fp32"

    @property
    def code_name(self) -> str:
        if self.affine:
            return f"int{self.k}-{self.affine}"
        if self.codebook is None:
            return f"nf{self.k}"
        return self.codebook if isinstance(self.codebook, str) else self.cb.name

    @property
    def name(self) -> str:
        s = f"{self.code_name}@{self.blocksize}" + ("+dq" if self.double_quant else "")
        if self.scale_format:
            s += f"/{self.scale_format}"
        if self.rotate:
            s += f"/rot{self.rotate}" + (f"s{self.rotate_seed}" if self.rotate_seed else "")
        if self.method != "rtn":
            s += f"/{self.method}"
        if self.act_threshold is not None:
            s += f"/a8t{self.act_threshold:g}"
        return s

    @classmethod
    def parse(cls, text: str) -> "QuantSpec":
        """The spec of a :attr:`name` (``CODE@GROUP[+dq][/FORMAT][/rotR[sSEED]][/gptq][/a8tT]``)."""
        from .kbit_state import PUBLIC_SCALE_FORMATS
        head, *opts = str(text).strip().split("/")
        code, _, group = head.partition("@")
        kw: dict = {}
        if group.endswith("+dq"):
            group, kw["double_quant"] = group[:-3], True
        if group:
            kw["blocksize"] = "row" if group == "row" else _parse_int("blocksize", group, text)
        m = _AFFINE_NAME.fullmatch(code)
        if m:
            kw.update(bits=int(m.group(1)), affine=m.group(2))
        elif code:
            kw["codebook"] = code
        for o in opts:
            if o in PUBLIC_SCALE_FORMATS:
                kw["scale_format"] = o
            elif o in METHODS:
                kw["method"] = o
            elif (r := re.fullmatch(r"rot(\d+)(?:s(\d+))?", o)):
                kw["rotate"] = int(r.group(1))
                kw["rotate_seed"] = int(r.group(2) or 0)
            elif o.startswith("a8t"):
                try:
                    kw["act_threshold"] = float(o[3:])
                except ValueError:
                    raise QuantInputError(f"spec: {o!r} in {text!r}: expected a8t<threshold>") from None
            else:
                raise QuantInputError(f"spec: unknown option {o!r} in {text!r}; expected a scale format "
                                      f"{PUBLIC_SCALE_FORMATS}, rotR[sSEED], gptq or a8tT")
        return cls(**kw)

    def columns(self) -> dict:
        cb = self.cb
        return {"spec": self.name, "codebook": self.code_name if cb is None else cb.name,
                "levels": 1 << self.k if cb is None else levels(cb), "code_bits": self.k,
                # blocksize stays numeric for the tables (NaN for "row"); group says it in words
                "blocksize": np.nan if self.blocksize == "row" else int(self.blocksize), "group": str(self.blocksize),
                "double_quant": bool(self.double_quant),
                "act_threshold": (np.nan if self.act_threshold is None else float(self.act_threshold)),
                "method": self.method, "route": self.route, "scale_format": self.effective_scale_format,
                "affine": self.affine or "", "rotate": int(self.rotate or 0),
                # the code by value, so a stored row says exactly what ran (fitted codes have no registry name)
                "codebook_values": "" if cb is None else " ".join(f"{v:.8g}" for v in cb.values)}

    def linear4bit_kwargs(self) -> dict:
        """Arguments of ``Linear4bit.from_linear`` / ``quantize_model`` for the ``linear4bit`` route."""
        return dict(codebook=self.cb, blocksize=int(self.blocksize), compress_statistics=bool(self.double_quant))


def _parse_int(arg: str, s: str, text: str) -> int:
    try:
        return int(s)
    except ValueError:
        raise QuantInputError(f"{arg}: {s!r} in {text!r} is not an int or 'row'") from None


def spec_dict(spec: QuantSpec) -> dict:
    d = asdict(spec)
    if spec.codebook is not None and not isinstance(spec.codebook, str):
        d["codebook"] = spec.cb.to_dict()
    return d


# ------------------------------------------------------------------ running a spec on one weight

def fake_quantize(W: torch.Tensor, spec: QuantSpec, cb=None) -> tuple[torch.Tensor, float]:
    """Quantize -> dequantize ``W`` through the public API of the spec's route -> (float32 like W, bits per
    parameter). On the ``linear4bit`` route this is ``Linear4bit.dequantize()`` bit for bit."""
    import workbench as wb
    cb = cb if cb is not None else spec.cb
    x = W.detach().float().contiguous()
    n = x.numel()
    route = spec.route
    if route == "kbit":
        return _kbit_roundtrip(x, spec, cb)
    if route == "gptq":
        raise QuantInputError("method: 'gptq' needs the layer's Hessian; use model_eval.gptq_quantize")
    if route == "linear4bit":
        packed, qs = wb.quantize_4bit(x, blocksize=spec.blocksize, compress_statistics=spec.double_quant, codebook=cb)
        y = wb.dequantize_4bit(packed, qs)
    else:
        codes, qs = wb.quantize_blockwise(x, codebook=cb, blocksize=spec.blocksize, nested=spec.double_quant)
        y = wb.dequantize_blockwise(codes, qs)
    return y.float().reshape(W.shape), absmax_bits(cb, n, spec)


def absmax_bits(cb, n: int, spec: QuantSpec) -> float:
    """Bits per parameter of the float32-absmax routes (linear4bit, blockwise, gptq): code bits + block scales."""
    return code_bits(cb) + scale_bits(n, spec.blocksize, spec.double_quant) / n


def _kbit_roundtrip(x: torch.Tensor, spec: QuantSpec, cb) -> tuple[torch.Tensor, float]:
    from . import kbit
    # the k-bit ops take the code as sorted values (FP4's table is in bit-pattern order, with +0 and -0)
    values = None if spec.affine else torch.from_numpy(np.sort(np.asarray(cb.table, np.float32)))
    packed, st = kbit.quantize_kbit(x, k=spec.k, codebook=values, blocksize=spec.blocksize,
                                    scale_format=spec.effective_scale_format, affine=spec.affine,
                                    rotate=spec.rotate or None, rotate_seed=spec.rotate_seed)
    y = kbit.dequantize_kbit(packed, st, dtype=torch.float32)
    return y.reshape(x.shape), stored_bits(packed, st) / x.numel()


def stored_bits(packed: torch.Tensor, st) -> float:
    """Bits a KbitState's tensor occupies: the packed code words (whole int32 words, rotation padding included),
    the scales in their format, the zero points, the e4m3 tensor scale and dq8's nested absmax and offset."""
    bits = packed.numel() * 32.0 + st.scales.numel() * st.scales.element_size() * 8.0
    bits += st.tensor_scale.numel() * 32.0
    if st.zeros is not None:
        bits += st.zeros.numel() * 8.0
    if st.state2 is not None:
        bits += st.state2.absmax.numel() * 32.0 + 32.0
    return bits
