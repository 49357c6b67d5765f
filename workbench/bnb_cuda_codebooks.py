"""Codebooks that reproduce bitsandbytes 0.50.2's *CUDA* rounding rules (csrc/kernels.cu).

bitsandbytes' CUDA kernels do not round like its torch backend (which the spec follows):

* NF4 (``dQuantizeNF4``): a decision tree with literal thresholds (e.g. 0.03979014977812767f)
  and strict ``x > t``. The literals are float32 roundings of float64 midpoints, not the float32
  midpoints ``(v[i] + v[i+1]) / 2`` of the spec; where the two differ, a value between them gets
  different codes. :func:`nf4_bnb_cuda` uses the literals as bounds.
* FP4 (``dQuantizeFP4``): ``sign = x < 0 ? 8 : 0`` and the thresholds compare ``|x| > t``.
  Small negatives (-t0 <= x < 0) get code 8 (-0.0), +-0.0 and small positives code 0; bnb's
  torch backend (a bucketize over a stable sort of the table) does the opposite. On the negative
  side ties also go the other way (x = -t belongs to the smaller magnitude), so the negative
  bounds are ``nextafter(-t, -inf)``, and the split between code 8 and code 0 is the largest
  negative float, -2**-149 (a subnormal: kernels must not flush it). See :func:`fp4_bnb_cuda`.
* 8-bit (``dQuantize``): a binary search whose final pivot is always even; a value exactly on
  the midpoint between table[k] and table[k+1] rounds down for even k (like bucketize) but *up*
  for odd k. :func:`blockwise_bnb_cuda` moves the odd-k bounds one float down.

Scaling differs too, which no codebook can express: bnb's CUDA build uses ``--use_fast_math``,
so its ``1.0f / absmax`` is an approximate reciprocal (rcp.approx.ftz) and the multiply flushes
subnormals; it has no 1e-38 clamp (an all-zero block gives NaN and code 0) and the tail block
multiplies instead of dividing. The CUDA backend's ``flags=FLAG_BNB_SCALE`` reproduces that
scaling for parity studies.
"""
from __future__ import annotations

import numpy as np

from . import codebooks as cbs
from .codebooks import Codebook

__all__ = ["nf4_bnb_cuda", "fp4_bnb_cuda", "blockwise_bnb_cuda", "dynamic_bnb_cuda", "NF4_CUDA_THRESHOLDS",
           "FP4_CUDA_THRESHOLDS"]

# dQuantizeNF4's thresholds, in ascending order, as the float literals in kernels.cu
NF4_CUDA_THRESHOLDS = (-0.8480964004993439, -0.6106329262256622, -0.4599952697753906, -0.33967943489551544,
                       -0.23460740596055984, -0.13791173323988914, -0.045525018125772476, 0.03979014977812767,
                       0.1202552504837513, 0.2035212516784668, 0.2920137718319893, 0.3893125355243683,
                       0.5016634166240692, 0.6427869200706482, 0.8614784181118011)
# dQuantizeFP4's thresholds on |x|, ascending, and the code emitted just above each (sign bit 0)
FP4_CUDA_THRESHOLDS = (0.00260417, 0.0859375, 0.20833333, 0.29166667, 0.4166667, 0.583333, 0.8333333)
_FP4_POS_CODES = (0, 1, 6, 7, 4, 5, 2, 3)  # |x| <= t0, (t0, t1], ..., > t6


def _f32(x) -> np.ndarray:
    return np.asarray(x, dtype=np.float32)


def nf4_bnb_cuda() -> Codebook:
    nf4 = cbs.get("nf4")
    return Codebook("nf4-bnb-cuda", nf4.table.copy(), _f32(NF4_CUDA_THRESHOLDS), np.arange(16, dtype=np.uint8),
                    {"bnb": "dQuantizeNF4 (CUDA decision tree)"})


def fp4_bnb_cuda() -> Codebook:
    fp4 = cbs.get("fp4")
    t = _f32(FP4_CUDA_THRESHOLDS)
    neg = np.nextafter(-t[::-1], np.float32(-np.inf)).astype(np.float32)   # x < -t  <=>  x <= nextafter(-t, -inf)
    split = np.nextafter(np.float32(0), np.float32(-1))                     # -2**-149: negatives below, +-0 above
    bounds = np.concatenate([neg, [split], t]).astype(np.float32)
    pos = list(_FP4_POS_CODES)
    codes = [c + 8 for c in pos[::-1]] + pos                                 # 11,10,13,12,15,14,9,8, 0,1,6,7,4,5,2,3
    return Codebook("fp4-bnb-cuda", fp4.table.copy(), bounds, np.asarray(codes, np.uint8),
                    {"bnb": "dQuantizeFP4 (CUDA, sign then |x| thresholds)"})


def blockwise_bnb_cuda(cb: Codebook | str = "dynamic") -> Codebook:
    """An 8-bit sorted 256-entry codebook with dQuantize's tie rule (odd-k midpoints round up)."""
    cb = cbs.get(cb)
    if cb.size != 256 or not np.array_equal(cb.bucket_codes, np.arange(256)):
        raise ValueError(f"codebook: dQuantize searches a sorted 256-entry table; {cb.name!r} is not one")
    v = cb.table.astype(np.float32)
    mid = ((v[:-1] + v[1:]) * np.float32(0.5)).astype(np.float32)
    k = np.arange(255)
    bounds = np.where(k % 2 == 1, np.nextafter(mid, np.float32(-np.inf)), mid).astype(np.float32)
    return Codebook(f"{cb.name}-bnb-cuda", v.copy(), bounds, np.arange(256, dtype=np.uint8),
                    {"bnb": "dQuantize (CUDA binary search, even final pivot)"})


def dynamic_bnb_cuda() -> Codebook:
    return blockwise_bnb_cuda("dynamic")


def for_bnb(cb: Codebook) -> Codebook:
    """The bnb-CUDA twin of a spec codebook bitsandbytes knows (nf4, fp4, sorted 256-entry tables)."""
    if cb.size == 16:
        for name, twin in (("nf4", nf4_bnb_cuda), ("fp4", fp4_bnb_cuda)):
            ref = cbs.get(name)
            if np.array_equal(cb.table, ref.table) and np.array_equal(cb.bounds, ref.bounds):
                return twin()
        raise ValueError(f"codebook: bitsandbytes' CUDA 4-bit kernels know nf4 and fp4 only, not {cb.name!r}")
    return blockwise_bnb_cuda(cb)
