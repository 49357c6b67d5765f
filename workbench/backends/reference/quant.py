"""The executable spec: plain torch, one obvious line per rule. Works on CPU and CUDA tensors.

Rounding rules follow bitsandbytes 0.50.2's default (torch) backend bit for bit:
  * absmax per block in float32; the scale is 1 / max(absmax, 1e-38);
  * full blocks multiply by that reciprocal, the tail block (n % blocksize) *divides*
    by max(absmax, 1e-38) -- bitsandbytes does it this way, and a 1-ulp difference in the
    scaled value can move a code, so the spec keeps it;
  * the tail block's stored absmax is the clamped one;
  * scaled values are clamped to [-1, 1] and bucketized: code = bucket_codes[#(bounds < s)];
  * 4-bit packing: element 2i in the high nibble, 2i+1 in the low; an odd tail is padded
    with the code of 0.0;
  * dequantization multiplies table[code] * absmax in float32 and rounds once to the output dtype;
  * a double-quantized absmax (bitsandbytes' ``compress_statistics``: uint8 codes ``absmax_8bit`` of a 256-entry
    ``absmax_code``, one float32 ``absmax`` per 256 blocks, a float32 ``absmax_offset``) decodes as
    ``s[b] = float32(absmax_code[absmax_8bit[b]] * absmax[b // 256]) + absmax_offset``: a float32 multiply and a
    float32 add, two roundings, no fused multiply-add (``dequantize_blockwise(...) + offset``, bitsandbytes'
    ``dequantize_4bit``), in every kernel that takes it.

Non-finite inputs (``nan_policy="propagate"``) -- every backend must give exactly this:
  * absmax[b] = max |A[i]| over the block with NaN propagating (torch's amax/max): a NaN anywhere
    in the block -> NaN; otherwise an Inf -> Inf. The tail's clamp(min=1e-38) keeps both
    (torch.clamp propagates NaN). So absmax is non-finite exactly when its block holds a NaN or an
    Inf: the public API uses it as the non-finite flag instead of a pass over the data.
  * scaled values: NaN absmax -> every s is NaN. Inf absmax -> full blocks multiply by
    1/Inf = 0 and the tail divides by Inf: a finite x gives +-0, +-Inf gives NaN (Inf * 0, Inf / Inf).
    clamp(s, -1, 1) keeps NaN.
  * torch.bucketize(NaN, bounds) == len(bounds), for right=False and right=True alike: its binary
    search tests ``!(bound >= s)`` (``!(bound > s)``), true for NaN, so NaN sorts after every bound.
    Code of a NaN s = bucket_codes[-1] (the bucket of the largest values); +-0 gets the code of 0.0.
    (The ``#(bounds < s)`` above would give 0 for NaN; the spec is torch's count, ``#!(bounds >= s)``.)
  * stochastic rounding of a NaN s: k = len(bounds), ``s >= values[k]`` is false -> lo = m - 2,
    p = NaN, ``rand < NaN`` is false -> bucket_codes[m - 2] (m = number of values).
  * dequantization: table[c] * NaN -> the whole block is NaN; under an Inf absmax, +-Inf where
    table[c] != 0 and NaN (0 * Inf) where the code's value is 0 -- every finite input of that block.
"""
from __future__ import annotations

import torch

TINY = 1e-38
NESTED_BLOCKSIZE = 256   # bitsandbytes' blocksize of the double-quantized absmax


def block_scale(A: torch.Tensor, blocksize: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(scaled values in [-1, 1], float32 absmax per block) for a flat tensor."""
    a = A.reshape(-1).float()
    n = a.numel()
    rem = n % blocksize
    full = n - rem
    body = a[:full].view(-1, blocksize)
    absmax = body.abs().amax(dim=1) if full else a.new_empty(0)
    scaled = torch.clamp(body * (1.0 / absmax.clamp(min=TINY)).view(-1, 1), -1, 1).reshape(-1)
    if rem:
        am = a[full:].abs().max().clamp(min=TINY)
        absmax = torch.cat([absmax, am.view(1)])
        scaled = torch.cat([scaled, torch.clamp(a[full:] / am, -1, 1)])
    return scaled, absmax


def _codes(scaled: torch.Tensor, bounds: torch.Tensor, bucket_codes: torch.Tensor) -> torch.Tensor:
    return bucket_codes[torch.bucketize(scaled, bounds, out_int32=True)]


def quantize_blockwise(A, codebook, blocksize):
    _, bounds, bucket_codes = codebook.tensors(A.device)
    scaled, absmax = block_scale(A, blocksize)
    return _codes(scaled, bounds, bucket_codes), absmax


def _expand_absmax(absmax: torch.Tensor, n: int, blocksize: int) -> torch.Tensor:
    return absmax.repeat_interleave(blocksize)[:n]


def dequantize_blockwise(codes, absmax, table, blocksize, dtype):
    n = codes.numel()
    vals = table[codes.reshape(-1).long()]
    return (vals * _expand_absmax(absmax, n, blocksize)).to(dtype)


def quantize_4bit(A, codebook, blocksize):
    _, bounds, bucket_codes = codebook.tensors(A.device)
    scaled, absmax = block_scale(A, blocksize)
    if scaled.numel() % 2:
        scaled = torch.nn.functional.pad(scaled, (0, 1))
    q = _codes(scaled, bounds, bucket_codes)
    return (q[::2] << 4) | q[1::2], absmax


def unpack_4bit(packed: torch.Tensor, n: int) -> torch.Tensor:
    p = packed.reshape(-1)
    q = torch.stack([p >> 4, p & 0xF], dim=1).reshape(-1)
    return q[:n]


def resolve_absmax(absmax, absmax_8bit=None, absmax_code=None, absmax_offset=None) -> torch.Tensor:
    """The float32 block scales: ``absmax`` itself, or the double-quantized absmax decoded (module docstring)."""
    if absmax_8bit is None:
        return absmax.reshape(-1).float()
    q = absmax_8bit.reshape(-1).long()
    nested = absmax.reshape(-1).float().repeat_interleave(NESTED_BLOCKSIZE)[: q.numel()]
    return (absmax_code.float()[q] * nested) + absmax_offset.float()


def dequantize_4bit(packed, absmax, table, blocksize, n, dtype, absmax_8bit=None, absmax_code=None,
                    absmax_offset=None):
    vals = table[unpack_4bit(packed, n).long()]
    s = resolve_absmax(absmax, absmax_8bit, absmax_code, absmax_offset)
    return (vals * _expand_absmax(s, n, blocksize)).to(dtype)


def quantize_blockwise_stochastic(A, codebook, blocksize, rand):
    """Stochastic rounding: between the representable values lo <= s < hi that bracket s, round
    up iff rand < (s - lo) / (hi - lo) (float32). Unbiased: E[value] = s inside the code's range."""
    _, bounds, bucket_codes = codebook.tensors(A.device)
    values = torch.from_numpy(codebook.values.copy()).to(A.device)
    scaled, absmax = block_scale(A, blocksize)
    k = torch.bucketize(scaled, bounds).long()
    lo = torch.where(scaled >= values[k], k, k - 1)
    last = values.numel() - 1
    inside = (lo >= 0) & (lo < last)
    lo_c = lo.clamp(0, last - 1)
    p = (scaled - values[lo_c]) / (values[lo_c + 1] - values[lo_c])
    pick = torch.where(rand.reshape(-1) < p, lo_c + 1, lo_c)
    return bucket_codes[torch.where(inside, pick, k)], absmax


from ..registry import register_kernel


# Importing this module registers its kernels against the declarations in workbench/library.py.
register_kernel("workbench::quantize_blockwise", "reference")(quantize_blockwise)
register_kernel("workbench::dequantize_blockwise", "reference")(dequantize_blockwise)
register_kernel("workbench::quantize_4bit", "reference")(quantize_4bit)
register_kernel("workbench::dequantize_4bit", "reference")(dequantize_4bit)
register_kernel("workbench::quantize_blockwise_stochastic", "reference")(quantize_blockwise_stochastic)
