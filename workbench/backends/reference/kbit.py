"""k-bit family, the executable spec: plain torch, one obvious line per rule (CPU and CUDA tensors).

K-bit blockwise quantization, K = 2..8, any sorted codebook of 2**K float32 values, blocksizes
16..4096 (powers of two), two storage layouts and six scale formats. bitsandbytes' in-development
k-bit quantizer (K = 2..5, blocksize 32, bit-plane packing, E4M4 absmax) is the special case
``layout="bitplane", scale_format="e4m4" or "fp32", codes_against="exact", blocksize=32``: its
codes, packed words and scales are these, bit for bit (tests/kbit_oracle.py, tests/test_kbit.py).

Contract (every backend must give exactly this; inputs are finite -- the public API refuses NaN/Inf):

  codebook   c[0..2**K-1] float32, sorted non-decreasing (duplicates allowed: the lower index wins)
  absmax[b]  = max |float32(A[i])| over block b (the tail block: its real elements only)
  scales     the stored per-block scale in ``scale_format`` (below), D[b] its decoded float32 value
  divisor    q[b] = max(absmax[b], 1e-8)   codes_against="exact"   (bitsandbytes' rule)
             q[b] = max(D[b], 1e-8)        codes_against="decoded"
             q[b] = D[b]                   scale_format="e8m0" (the MX rule defines the scale itself)
  s          = float32(A[i]) / q[b]                         (an IEEE float32 division, no reciprocal)
  code[i]    = argmin_j fl(|s - c[j]|), the first (lowest) j on ties   (bitsandbytes' brute-force rule:
               torch.argmin over float32 distances / its CUDA kernel's strict ``dist < best``)
  dequant    out[i] = dtype(c[code[i]] * D[b])                  (one float32 multiply, one rounding)

Scale formats (a >= 0 is absmax[b]; floor(log2 a) is exact, from the float's bits):

  fp32   stored a; D = a
  fp16   stored fp16(a), round to nearest even, saturating at 65504; D = float32(stored)
  bf16   stored bf16(a), round to nearest even, saturating at the largest finite bf16; D = float32(stored)
  e4m4   one byte e<<4|m, bias 11 (bitsandbytes' encode_absmax_e4m4): a == 0 -> 0; e = floor(log2 a);
         e + 11 <= 0: subnormal, m = min(rint(a * 2**14), 15), byte = m;  e + 11 > 15: byte 0xFF (31.0,
         saturation: bitsandbytes' encoder mixes a clamped exponent with an unclamped mantissa there);
         else m = min(rint((a / 2**e - 1) * 16), 15) (no carry into the exponent: bitsandbytes' clamp),
         byte = (e + 11) << 4 | m.  D = 2**(e-11) * (1 + m/16), or 2**-10 * m/16 for e == 0.
         rint = round half to even (torch.round).
  e8m0   one byte E (OCP MX scale, blocksize 32): E = clamp(floor(log2 a) - floor(log2 cmax) + 127, 0, 254),
         cmax = max |c[j]| (the element format's emax); a == 0 -> E = 0.  D = 2**(E - 127).
         With the E2M1 values as codebook (``workbench.codebooks.kbit_e2m1_mx()``, emax 2) this is OCP
         MXFP4: the byte is the MX scale, codes the E2M1 values (ties: lower entry; MX: half to even).
  e4m3   one byte, float8 e4m3fn of a / t (round to nearest even, saturating at 448), with one float32
         per-tensor scale t = max_b absmax[b] / 448 (1.0 for an all-zero tensor); D = float32(e4m3) * t.
         blocksize 16: the NVFP4 layout (with an E2M1 codebook).

Storage layouts (packed words are uint32 bit patterns, held in an int32 tensor):

  bitplane  ceil(n/32) groups of K words; word g*K + b holds bit b of the codes of elements
            32g .. 32g+31 (element 32g+i in bit i).  bitsandbytes' layout.
  dense     a little-endian bit-stream: code i occupies stream bits [i*K, i*K + K), bit j of the stream
            is bit j % 32 of word j // 32; ceil(n*K/32) words.
  In both, the bits past the last element are zero (bitsandbytes' Python reference pads code 0; its
  CUDA kernel writes the code of 0.0 there -- a difference in unused bits only).
"""
from __future__ import annotations

import torch

EPS = 1e-8
SCALE_FORMATS = ("fp32", "fp16", "bf16", "e4m4", "e8m0", "e4m3")
LAYOUTS = ("bitplane", "dense")
E4M3_MAX = 448.0
E4M4_BIAS = 11
SCALE_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16,
                "e4m4": torch.uint8, "e8m0": torch.uint8, "e4m3": torch.uint8}


def nblocks(n: int, blocksize: int) -> int:
    return -(-n // blocksize)


def packed_words(n: int, k: int, layout: str) -> int:
    """Number of 32-bit words that hold n k-bit codes in ``layout``."""
    return nblocks(n, 32) * k if layout == "bitplane" else nblocks(n * k, 32)


def flat_on(t: torch.Tensor, device, dtype: torch.dtype | None = None) -> torch.Tensor:
    """``t`` flat and contiguous on ``device`` (in ``dtype``): ``t`` itself when it already is (no tensor call)."""
    if t.dim() == 1 and t.is_contiguous() and t.device == device and (dtype is None or t.dtype == dtype):
        return t
    return t.to(device=device, dtype=dtype or t.dtype).reshape(-1).contiguous()


def kernel_codebook(codebook: torch.Tensor, k: int, device) -> torch.Tensor:
    """The codebook as the compiled kernels take it: 2**k contiguous float32 values on ``device``."""
    cb = flat_on(codebook, device, torch.float32)
    if cb.numel() != 2 ** k:     # the kernels search and index a 2**k-entry table
        raise ValueError(f"codebook: expected {2 ** k} entries for k={k}, got {cb.numel()}")
    return cb


def dequantize_operands(packed, scales, tensor_scale, k, blocksize, n, layout, scale_format):
    """(words, scales, tensor scale or None) checked against each other for a dequantize kernel: flat contiguous
    words and scales in their storage dtype, both (and e4m3's float32 tensor scale) on the words' device."""
    s = flat_on(scales, packed.device)
    if s.dtype != SCALE_DTYPES[scale_format] or s.numel() != nblocks(n, blocksize):
        raise ValueError(f"scales: expected {nblocks(n, blocksize)} x {SCALE_DTYPES[scale_format]} for "
                         f"scale_format {scale_format!r}, got {s.numel()} x {s.dtype}")
    ts = None
    if scale_format == "e4m3":
        ts = flat_on(tensor_scale, packed.device, torch.float32)[:1]
        if ts.numel() != 1:
            raise ValueError("tensor_scale: e4m3 scales need the float32 per-tensor scale")
    words = flat_on(packed, packed.device)
    if words.numel() != packed_words(n, k, layout):
        raise ValueError(f"packed: expected {packed_words(n, k, layout)} words, got {words.numel()}")
    return words, s, ts


# ------------------------------------------------------------------ exact helpers

def floor_log2(a: torch.Tensor) -> torch.Tensor:
    """floor(log2 a) for finite a > 0, exact (frexp: a = m * 2**e with m in [0.5, 1))."""
    return torch.frexp(a)[1].to(torch.int32) - 1


def block_absmax(A: torch.Tensor, blocksize: int) -> torch.Tensor:
    a = A.reshape(-1).float()
    n = a.numel()
    nb = nblocks(n, blocksize)
    pad = nb * blocksize - n
    if pad:
        a = torch.nn.functional.pad(a, (0, pad))  # zeros never raise a max of |x|
    return a.view(nb, blocksize).abs().amax(dim=1)


def _pow2(e: torch.Tensor) -> torch.Tensor:
    return torch.ldexp(torch.ones_like(e, dtype=torch.float32), e.to(torch.int32))


# ------------------------------------------------------------------ scale formats

def encode_e4m4(a: torch.Tensor) -> torch.Tensor:
    a = a.float()
    out = torch.zeros_like(a, dtype=torch.uint8)
    pos = a > 0
    e = torch.where(pos, floor_log2(torch.where(pos, a, torch.ones_like(a))), torch.zeros_like(a, dtype=torch.int32))
    eb = e + E4M4_BIAS
    m_norm = torch.round((torch.ldexp(a, -e) - 1.0) * 16.0).clamp(0, 15).to(torch.int32)
    m_sub = torch.round(a * 16384.0).clamp(0, 15).to(torch.int32)       # a / 2**-10 * 16
    byte = torch.where(eb <= 0, m_sub, (eb.clamp(0, 15) << 4) | m_norm)
    byte = torch.where(eb > 15, torch.full_like(byte, 0xFF), byte)
    return torch.where(pos, byte.to(torch.uint8), out)


def decode_e4m4(b: torch.Tensor) -> torch.Tensor:
    r = b.to(torch.int32)
    e, m = r >> 4, (r & 0xF).float()
    normal = _pow2(e - E4M4_BIAS) * (1.0 + m / 16.0)
    sub = m * (2.0 ** -14)
    return torch.where(e == 0, sub, normal)


def codebook_emax(codebook: torch.Tensor) -> int:
    cmax = codebook.float().abs().max().reshape(1)
    return int(floor_log2(cmax)[0])


def encode_e8m0(a: torch.Tensor, emax: int) -> torch.Tensor:
    a = a.float()
    pos = a > 0
    e = floor_log2(torch.where(pos, a, torch.ones_like(a)))
    E = (e - emax + 127).clamp(0, 254)
    return torch.where(pos, E, torch.zeros_like(E)).to(torch.uint8)


def decode_e8m0(b: torch.Tensor) -> torch.Tensor:
    return _pow2(b.to(torch.int32) - 127)


def _sat(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    y = x.to(dtype)
    return torch.where(torch.isinf(y), torch.full_like(y, torch.finfo(dtype).max), y)


def tensor_scale(absmax: torch.Tensor) -> torch.Tensor:
    g = absmax.amax().reshape(1) if absmax.numel() else absmax.new_zeros(1)
    # a tensor divisor: torch on CUDA turns division by a Python scalar into a reciprocal multiply (1 ulp off)
    return torch.where(g > 0, g / torch.full_like(g, E4M3_MAX), torch.ones_like(g))


def encode_scales(absmax: torch.Tensor, fmt: str, codebook: torch.Tensor):
    """(stored scales, per-tensor scale: float32[1] for e4m3 else float32[0])."""
    ts = absmax.new_zeros(0)
    if fmt == "fp32":
        return absmax.clone(), ts
    if fmt in ("fp16", "bf16"):
        return _sat(absmax, SCALE_DTYPES[fmt]), ts
    if fmt == "e4m4":
        return encode_e4m4(absmax), ts
    if fmt == "e8m0":
        return encode_e8m0(absmax, codebook_emax(codebook)), ts
    if fmt == "e4m3":
        ts = tensor_scale(absmax)
        ratio = (absmax / ts).clamp(max=E4M3_MAX)  # RNE to e4m3 saturates at 448 (torch would give NaN above 464)
        return ratio.to(torch.float8_e4m3fn).view(torch.uint8), ts
    raise ValueError(f"scale_format: {fmt!r}")


def decode_scales(scales: torch.Tensor, fmt: str, ts: torch.Tensor) -> torch.Tensor:
    """D[b]: the float32 value of each stored scale."""
    if fmt in ("fp32", "fp16", "bf16"):
        return scales.float()
    if fmt == "e4m4":
        return decode_e4m4(scales)
    if fmt == "e8m0":
        return decode_e8m0(scales)
    if fmt == "e4m3":
        return scales.view(torch.float8_e4m3fn).float() * ts.float()
    raise ValueError(f"scale_format: {fmt!r}")


def divisors(absmax: torch.Tensor, D: torch.Tensor, fmt: str, codes_against: str) -> torch.Tensor:
    if fmt == "e8m0":
        return D
    base = D if codes_against == "decoded" else absmax
    return base.clamp(min=EPS)


# ------------------------------------------------------------------ codes

def nearest_codes(s: torch.Tensor, codebook: torch.Tensor, chunk: int = 1 << 16) -> torch.Tensor:
    """argmin_j fl(|s - c[j]|), first index on ties (torch.argmin's rule), as int64."""
    cb = codebook.float().view(1, -1)
    out = torch.empty(s.numel(), dtype=torch.int64, device=s.device)
    for i in range(0, s.numel(), chunk):
        out[i:i + chunk] = (s[i:i + chunk].view(-1, 1) - cb).abs().argmin(dim=1)
    return out


def pack_bitplane(codes: torch.Tensor, k: int) -> torch.Tensor:
    n = codes.numel()
    g = nblocks(n, 32)
    c = torch.nn.functional.pad(codes.long(), (0, g * 32 - n)).view(g, 1, 32)
    bits = (c >> torch.arange(k, device=codes.device).view(1, k, 1)) & 1          # (g, k, 32)
    words = (bits << torch.arange(32, device=codes.device).view(1, 1, 32)).sum(dim=2)
    return _to_int32(words.reshape(-1))


def unpack_bitplane(packed: torch.Tensor, k: int, n: int) -> torch.Tensor:
    w = packed.long().reshape(-1, k, 1) & 0xFFFFFFFF
    bits = (w >> torch.arange(32, device=packed.device).view(1, 1, 32)) & 1          # (g, k, 32)
    codes = (bits << torch.arange(k, device=packed.device).view(1, k, 1)).sum(dim=1)
    return codes.reshape(-1)[:n]


def pack_dense(codes: torch.Tensor, k: int) -> torch.Tensor:
    n = codes.numel()
    bits = (codes.long().view(-1, 1) >> torch.arange(k, device=codes.device).view(1, k)) & 1   # stream order
    nw = nblocks(n * k, 32)
    bits = torch.nn.functional.pad(bits.reshape(-1), (0, nw * 32 - n * k)).view(nw, 32)
    return _to_int32((bits << torch.arange(32, device=codes.device).view(1, 32)).sum(dim=1))


def unpack_dense(packed: torch.Tensor, k: int, n: int) -> torch.Tensor:
    w = packed.long().view(-1, 1) & 0xFFFFFFFF
    bits = ((w >> torch.arange(32, device=packed.device).view(1, 32)) & 1).reshape(-1)[: n * k].view(n, k)
    return (bits << torch.arange(k, device=packed.device).view(1, k)).sum(dim=1)


def _to_int32(words: torch.Tensor) -> torch.Tensor:
    return torch.where(words >= 2 ** 31, words - 2 ** 32, words).to(torch.int32)


def pack(codes, k, layout):
    return pack_bitplane(codes, k) if layout == "bitplane" else pack_dense(codes, k)


def unpack(packed, k, n, layout):
    return unpack_bitplane(packed, k, n) if layout == "bitplane" else unpack_dense(packed, k, n)


# ------------------------------------------------------------------ the two ops

def quantize_kbit(A, codebook, k, blocksize, layout, scale_format, codes_against):
    """-> (packed int32[packed_words(n, k, layout)], scales[nblocks] in the format's dtype, tensor_scale,
    nonfinite int32[1]: 1 if A holds NaN/Inf; the other outputs are then undefined)."""
    a = A.reshape(-1).float()
    n = a.numel()
    cb = codebook.to(device=A.device, dtype=torch.float32)
    absmax = block_absmax(a, blocksize)
    scales, ts = encode_scales(absmax, scale_format, cb)
    D = decode_scales(scales, scale_format, ts)
    q = divisors(absmax, D, scale_format, codes_against)
    s = a / q.repeat_interleave(blocksize)[:n]
    nonfinite = (~torch.isfinite(a)).any().to(torch.int32).reshape(1)
    return pack(nearest_codes(s, cb), k, layout), scales, ts, nonfinite


def dequantize_kbit(packed, scales, tensor_scale, codebook, k, blocksize, n, layout, scale_format, dtype):
    cb = codebook.to(device=packed.device, dtype=torch.float32)
    codes = unpack(packed.reshape(-1), k, n, layout)
    D = decode_scales(scales.reshape(-1), scale_format, tensor_scale)
    return (cb[codes] * D.repeat_interleave(blocksize)[:n]).to(dtype)


from ..registry import register_kernel  # noqa: E402

register_kernel("workbench::quantize_kbit", "reference")(quantize_kbit)
register_kernel("workbench::dequantize_kbit", "reference")(dequantize_kbit)

from . import kbit_affine  # noqa: E402,F401  (affine groups: same family, registers its two ops)
