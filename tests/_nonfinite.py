"""Inputs with NaN / +Inf / -Inf for the quantizer tests (GPU and CUDA simulator) and their comparison.

The spec (the reference backend): absmax[b] = max |A| over the block with NaN propagating (a NaN in the block ->
NaN, else an Inf -> +Inf); the tail block's stored max(absmax, 1e-38) keeps NaN; NaN scaled values take the top
bucket (torch.bucketize); an Inf block scales its finite elements to +-0 and its Infs to NaN; an odd 4-bit tail
pads s = 0. absmax is non-finite exactly where its block holds a NaN or an Inf (the public API's flag)."""
import torch

KINDS = {"nan": float("nan"), "inf": float("inf"), "-inf": float("-inf")}


def nonfinite_data(rng, bs: int, dtype, tail_kind=None, tail: int = 37) -> torch.Tensor:
    """6 full blocks and a tail of ``tail`` elements (odd n for odd tail): block 0 one NaN, 1 one +Inf,
    2 one -Inf, 3 NaN + both Infs, 4 all NaN, 5 all +-Inf, 6 finite; the tail block gets one ``tail_kind``
    (None: finite; 'nan-last': NaN as the very last element)."""
    n = 7 * bs + tail
    a = torch.randn(n, generator=rng) * 3
    a[torch.randint(0, n, (max(1, n // 97),), generator=rng)] *= 50

    def put(blk, v):
        lo = blk * bs
        hi = min(n, lo + bs)
        a[lo + int(torch.randint(0, hi - lo, (1,), generator=rng))] = v

    put(0, KINDS["nan"])
    put(1, KINDS["inf"])
    put(2, KINDS["-inf"])
    for k in ("nan", "inf", "-inf"):
        put(3, KINDS[k])
    a[4 * bs:5 * bs] = float("nan")
    a[5 * bs:6 * bs] = float("inf")
    a[5 * bs:6 * bs:2] = float("-inf")
    if tail_kind == "nan-last":
        a[-1] = float("nan")
    elif tail_kind is not None:
        put(7, KINDS[tail_kind])
    return a.to(dtype)


def same(x: torch.Tensor, y: torch.Tensor) -> bool:
    """Equal values, NaN where the other has NaN (payloads may differ between torch and the kernels)."""
    if x.shape != y.shape or x.dtype != y.dtype or not torch.equal(x.isnan(), y.isnan()):
        return False
    return torch.equal(torch.where(x.isnan(), torch.zeros_like(x), x), torch.where(y.isnan(), torch.zeros_like(y), y))


def flag_ok(A: torch.Tensor, absmax: torch.Tensor, bs: int) -> bool:
    """absmax is non-finite exactly for the blocks that hold a NaN or an Inf."""
    bad = ~torch.isfinite(A.float())
    n = bad.numel()
    pad = (-n) % bs
    per_block = torch.cat([bad, bad.new_zeros(pad)]).view(-1, bs).any(1)
    return torch.equal(per_block, ~torch.isfinite(absmax))


def check(Q, R, A, cb, bs, bits, table) -> None:
    """Q's quantizer (+ dequantizer) against the reference R on A: codes exact, absmax and values NaN-aware."""
    n = A.numel()
    if bits == 4:
        p, a = Q.quantize_4bit(A, cb, bs)
        p2, a2 = R.quantize_4bit(A, cb, bs)
    else:
        p, a = Q.quantize_blockwise(A, cb, bs)
        p2, a2 = R.quantize_blockwise(A, cb, bs)
    assert same(a, a2), (bs, n, a.tolist()[:9], a2.tolist()[:9])
    assert flag_ok(A, a, bs), (bs, n)
    assert torch.equal(p, p2), (bs, n, int((p != p2).sum()), torch.nonzero(p != p2).flatten()[:8].tolist())
    if bits == 4:
        d = Q.dequantize_4bit(p, a, table, bs, n, A.dtype)
        d2 = R.dequantize_4bit(p2, a2, table, bs, n, A.dtype)
    else:
        d = Q.dequantize_blockwise(p, a, table, bs, A.dtype)
        d2 = R.dequantize_blockwise(p2, a2, table, bs, A.dtype)
    assert same(d, d2), (bs, n)
