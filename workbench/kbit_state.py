"""KbitState (what dequantize_kbit needs besides the packed words) and the k-bit family's argument checks.

Every check raises QuantInputError whose message starts with the argument's name (``k:``, ``blocksize:``,
``state.scales:``), from metadata only: no pass over the data.
"""
from __future__ import annotations

import math
import weakref
from dataclasses import dataclass, field

import numpy as np
import torch

from . import codebooks as cbs
from .backends.reference.kbit import LAYOUTS, SCALE_DTYPES, SCALE_FORMATS, nblocks, packed_words
from .backends.reference.kbit_affine import AFFINE_SCALE_FORMATS, CLIPS
from .hadamard import check_rotate, padded_size
from .validation import QuantInputError, check_shape

KBIT_BLOCKSIZES = tuple(2 ** e for e in range(4, 13))   # 16 .. 4096
MIN_GROUP = 16                                          # the smallest group that divides a row
CODES_AGAINST = ("exact", "decoded")
DQ8 = "dq8"   # the existing 8-bit double quantization of fp32 absmax (offset + dynamic map, blocksize 256)
PUBLIC_SCALE_FORMATS = SCALE_FORMATS + (DQ8,)
REQUIRED_BLOCKSIZE = {"e8m0": 32, "e4m3": 16}           # MXFP4: block 32; NVFP4: block 16


@dataclass
class KbitState:
    """Everything dequantize_kbit needs besides the packed words.

    ``blocksize`` is the scale group's size in elements (a power of two, a row, or a group dividing the row);
    ``affine`` ("minmax" / "mse") marks int-k codes with a zero point per group (``zeros``; ``codebook`` is
    then None); ``rotate`` > 0 is the Hadamard block of a rotated tensor (``rotate_seed`` its signs): the
    codes then cover the rotated, zero-padded tensor of ``n_coded`` elements."""
    k: int
    codebook: torch.Tensor | None   # float32[2**k], sorted; None for affine groups
    blocksize: int
    layout: str
    scale_format: str
    codes_against: str
    scales: torch.Tensor            # [nblocks], dtype of the format (uint8 for e4m4/e8m0/e4m3/dq8)
    tensor_scale: torch.Tensor      # float32[1] for e4m3, else float32[0]
    shape: torch.Size
    dtype: torch.dtype
    offset: torch.Tensor | None = None      # dq8: the mean subtracted before the 8-bit quantization
    state2: object = None                   # dq8: the QuantState of the 8-bit absmax codes
    affine: str | None = None               # None (codebook), "minmax" or "mse" (the clip rule)
    zeros: torch.Tensor | None = None       # affine: uint8 zero point per group
    rotate: int = 0                         # 0, or the randomized-Hadamard block size
    rotate_seed: int = 0
    meta: dict = field(default_factory=dict)
    # dequantize_kbit's validated operands and the fields they were checked against (workbench/kbit.py)
    memo: object = field(default=None, repr=False, compare=False)

    @property
    def n(self) -> int:
        return math.prod(self.shape)

    @property
    def n_coded(self) -> int:
        """Elements the codes cover: n, or n padded to whole Hadamard blocks."""
        return padded_size(self.n, self.rotate) if self.rotate else self.n

    def as_dict(self, packed: bool = False) -> dict:
        """The state as plain items and tensors (``packed``: tensors + one JSON uint8 tensor, for a state_dict);
        :meth:`from_dict` reads either back (workbench/kbit_state_dict.py)."""
        from .kbit_state_dict import as_dict
        return as_dict(self, packed)

    @classmethod
    def from_dict(cls, state_dict, device="cpu") -> "KbitState":
        """The state of :meth:`as_dict`; every item checked, errors name the key (``state_dict['scales']: ...``)."""
        from .kbit_state_dict import from_dict
        return from_dict(state_dict, device)

    def validate_fields(self) -> None:
        """The state's own consistency (types, dtypes, counts); errors name the field."""
        for name in ("scales", "tensor_scale"):
            if not isinstance(getattr(self, name), torch.Tensor):
                raise QuantInputError(f"state.{name}: expected a torch.Tensor, got {type(getattr(self, name)).__name__}")
        check_shape("state.shape", self.shape)
        if self.rotate:
            try:
                check_rotate(self.rotate, self.rotate_seed)
            except QuantInputError as e:
                raise QuantInputError(f"state.{e}") from None
        check_k(self.k)
        check_layout(self.layout)
        if isinstance(self.blocksize, bool) or not isinstance(self.blocksize, int) or self.blocksize < 1:
            raise QuantInputError(f"state.blocksize: expected a positive int, got {self.blocksize!r}")
        check_affine(self.affine)
        check_scale_format(self.scale_format, self.blocksize, self.affine)
        if self.codes_against not in CODES_AGAINST:
            raise QuantInputError(f"codes_against: expected one of {CODES_AGAINST}, got {self.codes_against!r}")
        nb = nblocks(self.n_coded, self.blocksize)
        want_dtype = torch.uint8 if self.scale_format == DQ8 else SCALE_DTYPES[self.scale_format]
        if self.scale_format == DQ8 and (self.state2 is None or self.offset is None):
            raise QuantInputError("state.state2: scale_format 'dq8' needs the nested state and offset")
        if self.scales.numel() != nb or self.scales.dtype != want_dtype:
            raise QuantInputError(f"state.scales: expected {nb} values of {want_dtype} "
                                  f"({self.scale_format}), got {self.scales.numel()} of {self.scales.dtype}")
        if self.tensor_scale.numel() != (1 if self.scale_format == "e4m3" else 0):
            raise QuantInputError("state.tensor_scale: e4m3 needs exactly one float32 per-tensor scale, "
                                  "other formats none")
        if self.affine is None:
            check_codebook(self.codebook, self.k)
        else:
            z = self.zeros
            if not isinstance(z, torch.Tensor) or z.dtype != torch.uint8 or z.numel() != nb:
                raise QuantInputError(f"state.zeros: affine groups need {nb} uint8 zero points, got "
                                      f"{'None' if z is None else f'{z.numel()} of {z.dtype}'}")
        if self.state2 is not None:
            s2 = self.state2
            want2 = nblocks(nb, s2.blocksize) if isinstance(s2.blocksize, int) and s2.blocksize > 0 else -1
            if want2 < 0 or s2.absmax.numel() != want2:
                raise QuantInputError(f"state.nested_absmax: {nb} dq8 scales in blocks of {s2.blocksize!r} need "
                                      f"{want2} nested absmax, got {s2.absmax.numel()}")

    def validate(self, packed: torch.Tensor) -> None:
        self.validate_fields()
        n = self.n_coded
        want = packed_words(n, self.k, self.layout)
        if packed.numel() != want:
            raise QuantInputError(f"packed: {packed.numel()} words, but {n} {self.k}-bit codes in the "
                                  f"{self.layout!r} layout need {want}")
        if packed.dtype != torch.int32:
            raise QuantInputError(f"packed: dtype {packed.dtype}; expected torch.int32 words")


# ------------------------------------------------------------------ argument checks

def check_k(k) -> int:
    if isinstance(k, bool) or not isinstance(k, int) or not 2 <= k <= 8:
        raise QuantInputError(f"k: expected an int in 2..8 (bits per code), got {k!r}")
    return k


def resolve_blocksize(blocksize, shape) -> int:
    """The scale group size in elements: a power of two 16..4096 (any tensor), ``"row"`` (per row: the last
    dimension), or any int >= 16 that divides the row length (groups never straddle rows)."""
    row = shape[-1] if len(shape) else 1
    if blocksize == "row":
        if row < 1:
            raise QuantInputError(f"blocksize: 'row' needs rows of at least one element, got shape {tuple(shape)}")
        return int(row)
    if isinstance(blocksize, bool) or not isinstance(blocksize, int):
        raise QuantInputError(f"blocksize: expected an int or 'row', got {blocksize!r}")
    if blocksize in KBIT_BLOCKSIZES:
        return blocksize
    if blocksize >= MIN_GROUP and len(shape) and row % blocksize == 0:
        return blocksize
    raise QuantInputError(f"blocksize: expected a power of two in 16..4096, 'row', or a group size >= {MIN_GROUP} "
                          f"that divides the row length {row} (A.shape[-1]); got {blocksize!r}")


def check_layout(layout) -> str:
    if layout not in LAYOUTS:
        raise QuantInputError(f"layout: expected one of {LAYOUTS}, got {layout!r}")
    return layout


def check_affine(affine) -> str | None:
    if affine is not None and affine not in CLIPS:
        raise QuantInputError(f"affine: expected None (a codebook) or one of {CLIPS} (int-k with a zero point; "
                              f"min-max range or an MSE-searched clip), got {affine!r}")
    return affine


def check_scale_format(fmt, blocksize, affine=None) -> str:
    if affine is not None:
        if fmt not in AFFINE_SCALE_FORMATS:
            raise QuantInputError(f"scale_format: affine groups store their scale as one of {AFFINE_SCALE_FORMATS}, "
                                  f"got {fmt!r}")
        return fmt
    if fmt not in PUBLIC_SCALE_FORMATS:
        raise QuantInputError(f"scale_format: expected one of {PUBLIC_SCALE_FORMATS}, got {fmt!r}")
    need = REQUIRED_BLOCKSIZE.get(fmt)
    if need is not None and blocksize != need:
        raise QuantInputError(f"scale_format: {fmt!r} needs blocksize={need} "
                              f"({'MXFP4' if fmt == 'e8m0' else 'NVFP4'} scale), got blocksize={blocksize}")
    return fmt


_checked: dict[int, tuple] = {}   # id(tensor) -> (weakref, _version, k) of codebook tensors that passed the checks


def remember_checked(t: torch.Tensor, k: int) -> None:
    if len(_checked) >= 512:
        _checked.clear()
    try:
        _checked[id(t)] = (weakref.ref(t), t._version, k)
    except TypeError:      # tensors that take no weak reference (fake/functional wrappers): checked every time
        pass


def check_codebook(t, k: int) -> None:
    """:func:`codebook_tensor`'s checks, remembered for a tensor while it is unchanged: a CUDA codebook is not
    copied to the host on every call (a weak reference and the version counter catch reuse and in-place edits)."""
    if isinstance(t, torch.Tensor) and not torch.compiler.is_compiling():
        hit = _checked.get(id(t))
        if hit is not None and hit[0]() is t and hit[1] == t._version and hit[2] == k:
            return
        codebook_tensor(t, k)
        remember_checked(t, k)
        return
    codebook_tensor(t, k)


def codebook_tensor(codebook, k: int) -> torch.Tensor:
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
