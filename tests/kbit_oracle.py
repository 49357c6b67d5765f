"""Test oracle: bitsandbytes' k-bit reference functions, re-implemented step for step.

Source: bitsandbytes-foundation/bitsandbytes, branch feature/kbit-quantization (newest test file
commit d1f3d75d, 2026-02-21): ``create_normal_float_codebook``, ``encode_absmax_e4m4`` and
``decode_absmax_e4m4`` in bitsandbytes/functional.py, ``quantize_kbit_ref``, ``dequantize_kbit_ref``,
``pack_kbit_ref`` and ``unpack_kbit_ref`` in tests/test_kbit_quantization.py (K = 2..5, blocksize 32).
Every arithmetic step is theirs, in the same order and precision (float32 tensors, torch.log2 and
floor for the exponent, float32 division by clamp(absmax, 1e-8), torch.argmin over float32
distances, codes of the padded tail packed as 0). Written independently of the workbench's
implementation, which tests/test_kbit.py holds to this.
"""
from __future__ import annotations

import torch
from scipy.stats import norm

BLOCKSIZE = 32


def create_normal_float_codebook(k: int) -> torch.Tensor:
    levels = 1 << k
    probs = torch.linspace(0.5 / levels, 1.0 - 0.5 / levels, levels)          # bin midpoints, float32
    vals = torch.tensor(norm.ppf(probs.numpy()), dtype=torch.float32)
    return vals / vals.abs().max()


def _padded_blocks(x: torch.Tensor, blocksize: int) -> torch.Tensor:
    pad = (-x.numel()) % blocksize
    if pad:
        x = torch.nn.functional.pad(x, (0, pad))
    return x.reshape(-1, blocksize)


def quantize_kbit_ref(A: torch.Tensor, codebook: torch.Tensor, blocksize: int = BLOCKSIZE):
    """-> (uint8 indices[n], float32 absmax[nblocks]); absmax is stored unclamped."""
    flat = A.float().reshape(-1)
    n = flat.numel()
    blocks = _padded_blocks(flat, blocksize)
    absmax = blocks.abs().max(dim=1).values
    normalized = blocks / absmax.clamp(min=1e-8).unsqueeze(1)
    dist = (normalized.unsqueeze(2) - codebook.float().view(1, 1, -1)).abs()
    idx = dist.argmin(dim=2).to(torch.uint8)
    return idx.reshape(-1)[:n], absmax


def dequantize_kbit_ref(indices, absmax, codebook, dtype=torch.float32, blocksize: int = BLOCKSIZE):
    n = indices.numel()
    idx = _padded_blocks(indices.long(), blocksize)
    vals = codebook.float()[idx] * absmax.unsqueeze(1)
    return vals.reshape(-1)[:n].to(dtype)


def pack_kbit_ref(indices: torch.Tensor, k: int, blocksize: int = BLOCKSIZE) -> torch.Tensor:
    """Bit-plane words (int32 bit patterns): per block, word `bit` holds bit `bit` of each element."""
    blocks = _padded_blocks(indices.int(), blocksize)
    words = []
    for row in blocks.tolist():
        for bit in range(k):
            w = 0
            for i, code in enumerate(row):
                w |= ((code >> bit) & 1) << i
            words.append(w - (1 << 32) if w >= (1 << 31) else w)
    return torch.tensor(words, dtype=torch.int32)


def unpack_kbit_ref(packed: torch.Tensor, k: int, n: int, blocksize: int = BLOCKSIZE) -> torch.Tensor:
    out = []
    words = [w & 0xFFFFFFFF for w in packed.tolist()]
    for b in range(len(words) // k):
        plane = words[b * k:(b + 1) * k]
        for i in range(blocksize):
            out.append(sum(((plane[bit] >> i) & 1) << bit for bit in range(k)))
    return torch.tensor(out[:n], dtype=torch.uint8)


def encode_absmax_e4m4(absmax: torch.Tensor, bias: int = 11) -> torch.Tensor:
    out = torch.zeros_like(absmax, dtype=torch.uint8)
    nz = absmax > 0
    if not nz.any():
        return out
    a = absmax[nz]
    e = torch.floor(torch.log2(a)).to(torch.int32)
    eb = (e + bias).clamp(0, 15)
    sub = (e + bias) <= 0
    eb[sub] = 0
    m = torch.zeros_like(a, dtype=torch.int32)
    norm_ = ~sub
    if norm_.any():
        m[norm_] = ((a[norm_] / torch.exp2(e[norm_].float()) - 1.0) * 16.0).round().to(torch.int32).clamp(0, 15)
    if sub.any():
        m[sub] = (a[sub] / 2.0 ** (1 - bias) * 16.0).round().to(torch.int32).clamp(0, 15)
    out[nz] = (eb << 4 | m).to(torch.uint8)
    return out


def decode_absmax_e4m4(encoded: torch.Tensor, bias: int = 11) -> torch.Tensor:
    raw = encoded.to(torch.int32)
    e, m = raw >> 4, raw & 0xF
    sub = e == 0
    out = torch.zeros_like(encoded, dtype=torch.float32)
    if (~sub).any():
        out[~sub] = torch.exp2(e[~sub].float() - bias) * (1.0 + m[~sub].float() / 16.0)
    if sub.any():
        out[sub] = 2.0 ** (1 - bias) * (m[sub].float() / 16.0)
    return out
