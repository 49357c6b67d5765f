"""k-bit affine groups, the executable spec: scale + zero point, int-k codes (plain torch, CPU and CUDA tensors).

torchao's asymmetric affine quantization (``MappingType.ASYMMETRIC``, integer zero point, ``preserve_zero``)
in float32, with the k-bit family's packing (bit-plane or dense, reference/kbit.py) and any group size.

Contract (every backend gives exactly this; inputs finite -- the public API refuses NaN/Inf):

  groups     group b = flat elements b*G .. min((b+1)*G, n) - 1, G any int >= 1 (a block, a row, 384 columns)
  range      lo[b] = min(0, min x), hi[b] = max(0, max x) over the group's real elements (0 always inside:
             torchao's preserve_zero, so zero is coded exactly; padding a group with zeros changes nothing)
  clip       "minmax": (lo, hi).  "mse": (p*lo, p*hi) (float32 products, p = float32(CLIP_GRID[i]): 1.0, 0.95,
             .., 0.5) for the p whose quantize-dequantize (the rules below) has the least error sum
             E = sum over the group's elements, in element order, of float64(e)**2, e = float32 error
             ((q - z) * D - x) -- each square is exact in float64 and the order is fixed, so a compiled kernel
             gets the same E bit for bit; the first (largest) p on ties (a strictly smaller E wins).
  scale      s = max((hi - lo) / (2**k - 1), EPS)  float32, EPS = float32 machine epsilon (torchao's clamp)
  zero point z = clamp(-rint(lo / s), 0, 2**k - 1)  from the float32 s (torchao), stored uint8
  stored     S = s in scale_format: fp32, or fp16 / bf16 round to nearest even, saturating;  D = float32(S)
  code       q = clamp(rint(x * r) + z, 0, 2**k - 1),  r = 1 / D  (one float32 division per group, then a
             float32 multiply per element: torchao's ``round(input * (1.0 / scale))``); rint = half to even
  dequant    out = dtype(float32(q - z) * D)            (one float32 multiply, one rounding)
"""
from __future__ import annotations

import torch

from .kbit import nblocks, pack, packed_words, unpack

AFFINE_SCALE_FORMATS = ("fp32", "fp16", "bf16")
CLIPS = ("minmax", "mse")
CLIP_GRID = tuple(1.0 - i / 20 for i in range(11))       # 1.0 .. 0.5
EPS = torch.finfo(torch.float32).eps
_STORE = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def _groups(a: torch.Tensor, G: int) -> torch.Tensor:
    """(nblocks, G) float32 view, the tail padded with zeros (neutral for range, codes and error)."""
    n = a.numel()
    nb = nblocks(n, G)
    return torch.nn.functional.pad(a.reshape(-1).float(), (0, nb * G - n)).view(nb, G)


def group_range(a: torch.Tensor, G: int):
    """(lo, hi): min(0, min x) and max(0, max x) per group, float32."""
    x = _groups(a, G)
    return x.amin(dim=1).clamp(max=0.0), x.amax(dim=1).clamp(min=0.0)


def store_scale(s: torch.Tensor, fmt: str) -> torch.Tensor:
    y = s.to(_STORE[fmt])
    return torch.where(torch.isinf(y), torch.full_like(y, torch.finfo(y.dtype).max), y)   # saturate


def qparams(lo: torch.Tensor, hi: torch.Tensor, k: int, fmt: str):
    """(stored scales, zero points uint8, D float32, r = 1/D float32) for the ranges (lo, hi)."""
    qmax = float(2 ** k - 1)
    # a tensor divisor: torch on CUDA divides by a Python scalar as a multiply by its reciprocal (another rounding)
    s = ((hi - lo) / torch.full_like(hi, qmax)).clamp(min=EPS)
    z = (-torch.round(lo / s)).clamp(0, qmax)
    S = store_scale(s, fmt)
    D = S.float()
    return S, z.to(torch.uint8), D, 1.0 / D


def group_codes(x: torch.Tensor, z: torch.Tensor, r: torch.Tensor, k: int) -> torch.Tensor:
    """q = clamp(rint(x * r) + z, 0, 2**k - 1) for x (nb, G), z and r per group."""
    return (torch.round(x * r.view(-1, 1)) + z.float().view(-1, 1)).clamp(0, 2 ** k - 1)


def _error_sums(e: torch.Tensor) -> torch.Tensor:
    """Per row of e (nb, G) float32: float64(e)**2 summed in element order (a loop over columns: the order the
    compiled kernels use; padded zeros add +0)."""
    d = e.double()
    e2 = d * d                       # exact: a float32 squared fits float64's mantissa
    acc = torch.zeros(e.shape[0], dtype=torch.float64, device=e.device)
    for j in range(e.shape[1]):
        acc += e2[:, j]
    return acc


def mse_clip_range(a: torch.Tensor, k: int, G: int, fmt: str):
    """The "mse" clip: per group the (p*lo, p*hi), p in CLIP_GRID, of least error sum (first p on ties)."""
    x = _groups(a, G)
    lo, hi = x.amin(dim=1).clamp(max=0.0), x.amax(dim=1).clamp(min=0.0)
    best = torch.full_like(lo, float("inf"), dtype=torch.float64)
    best_lo, best_hi = lo.clone(), hi.clone()
    for p in CLIP_GRID:
        p32 = torch.tensor(p, dtype=torch.float32, device=lo.device)
        plo, phi = lo * p32, hi * p32
        _, z, D, r = qparams(plo, phi, k, fmt)
        err = _error_sums((group_codes(x, z, r, k) - z.float().view(-1, 1)) * D.view(-1, 1) - x)
        better = err < best
        best = torch.where(better, err, best)
        best_lo, best_hi = torch.where(better, plo, best_lo), torch.where(better, phi, best_hi)
    return best_lo, best_hi


def clip_range(a: torch.Tensor, k: int, G: int, fmt: str, clip: str):
    return group_range(a, G) if clip == "minmax" else mse_clip_range(a, k, G, fmt)


# ------------------------------------------------------------------ the two ops

def quantize_kbit_affine(A, k, groupsize, layout, scale_format, clip):
    """-> (packed int32 words, scales [nblocks] in scale_format's dtype, zero points uint8 [nblocks])."""
    a = A.reshape(-1).float()
    n = a.numel()
    lo, hi = clip_range(a, k, groupsize, scale_format, clip)
    S, z, D, r = qparams(lo, hi, k, scale_format)
    codes = group_codes(_groups(a, groupsize), z, r, k).reshape(-1)[:n].long()
    return pack(codes, k, layout), S, z


_GRIDS: dict = {}             # device -> CLIP_GRID as a float32 tensor there (the compiled GPU backends)


def clip_grid(device) -> torch.Tensor:
    key = str(device)
    g = _GRIDS.get(key)
    if g is None:
        g = _GRIDS[key] = torch.tensor(CLIP_GRID, dtype=torch.float32).to(device)
    return g


def dequantize_operands(packed, scales, zeros, k, groupsize, n, layout, device):
    """(words, D float32, z uint8) on ``device``, contiguous, their counts checked (the compiled backends)."""
    nb = nblocks(n, groupsize)
    D = scales.reshape(-1).to(device, torch.float32).contiguous()
    z = zeros.reshape(-1).to(device).contiguous()
    if D.numel() != nb or z.numel() != nb or z.dtype != torch.uint8:
        raise ValueError(f"scales / zeros: expected {nb} scales and {nb} uint8 zero points, got "
                         f"{D.numel()} and {z.numel()} x {z.dtype}")
    words = packed.reshape(-1).contiguous()
    if words.numel() != packed_words(n, k, layout):
        raise ValueError(f"packed: expected {packed_words(n, k, layout)} words, got {words.numel()}")
    return words, D, z


def dequantize_kbit_affine(packed, scales, zeros, k, groupsize, n, layout, dtype):
    codes = unpack(packed.reshape(-1), k, n, layout)
    D = scales.reshape(-1).float().repeat_interleave(groupsize)[:n]
    z = zeros.reshape(-1).float().repeat_interleave(groupsize)[:n]
    return ((codes.float() - z) * D).to(dtype)


from ..registry import register_kernel  # noqa: E402

register_kernel("workbench::quantize_kbit_affine", "reference")(quantize_kbit_affine)
register_kernel("workbench::dequantize_kbit_affine", "reference")(dequantize_kbit_affine)
