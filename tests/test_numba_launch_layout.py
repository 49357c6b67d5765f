"""The packed parameter buffer of the Numba direct launch (workbench/backends/numba_cuda/_launch.py):
values land at the offsets the driver reports, and any disagreement sends the kernel to Numba's own
launch instead of packing a wrong buffer. No GPU needed."""
import struct

import pytest
import torch

import _cudasim  # noqa: F401  (first: importing the numba_cuda backend fixes its devices, simulator or not)
from workbench.backends.numba_cuda._launch import _layout


def test_natural_alignment_without_driver_offsets():
    # u64, bool, u64, f32, i32, f32: the bool is padded to 8, the last float follows the int
    lay = _layout(["q", "?", "Q", "f", "i", "f"], None)
    buf = lay.pack(-3, True, 2**64 - 1, 1.5, -7, 2.0)
    assert lay.size == 8 + 8 + 8 + 4 + 4 + 4
    assert struct.unpack_from("<q", buf, 0)[0] == -3 and buf[8] == 1
    assert struct.unpack_from("<Q", buf, 16)[0] == 2**64 - 1
    assert struct.unpack_from("<fif", buf, 24) == (1.5, -7, 2.0)


def test_driver_offsets_are_followed():
    info = [(0, 8), (8, 1), (16, 8), (24, 4), (28, 4)]
    lay = _layout(["q", "?", "q", "f", "f"], info)
    buf = lay.pack(5, False, 6, 0.25, -1.0)
    assert lay.size == 32
    assert struct.unpack_from("<q?", buf, 0) == (5, False)
    assert struct.unpack_from("<qff", buf, 16) == (6, 0.25, -1.0)


def test_disagreement_with_the_driver_gives_no_layout():
    assert _layout(["q", "q"], [(0, 8)]) is None                 # parameter count
    assert _layout(["q", "f"], [(0, 8), (8, 8)]) is None         # a float32 where the kernel has 8 bytes
    assert _layout(["q", "q"], [(0, 8), (4, 8)]) is None         # overlapping offsets


@pytest.mark.parametrize("dtype", (torch.float32, torch.float16, torch.bfloat16))
@pytest.mark.parametrize("bits", (4, 8))
def test_quantizer_values_from_pointers_equal_the_flattened_views(dtype, bits, monkeypatch):
    """The Numba quantizer's fast lane builds its launch values from pointers; they must equal what the
    generic launch flattens from the tensor views, for every length, alignment and dtype."""
    from workbench.backends.numba_cuda import _launch
    from workbench.backends.numba_cuda import quant as Q
    monkeypatch.setattr(Q, "as_array", lambda t: t)                       # CPU tensors stand in for CUDA ones
    monkeypatch.setattr(Q, "_words", Q._word_view)
    fine = torch.arange(37, dtype=torch.int64)
    for n in (1, 3, 7, 8, 64, 1001, 4097, 12345):
        for shift in (0, 1):                                              # 8-byte aligned input or not
            A = torch.randn(n + shift).to(dtype)[shift:]
            vec = A.data_ptr() % 8 == 0
            out = torch.empty((n + 1) // 2 if bits == 4 else n, dtype=torch.uint8)
            absmax = torch.empty(-(-n // 64), dtype=torch.float32)
            scalars, table = (n, vec, 4, 2, absmax.numel(), -1, 9), (37, 19, 5, 6, -7, 8)
            kinds, vals = _launch._flatten(Q._fine_args(A, out, absmax, vec, scalars, fine, table))
            assert vals == Q._fine_values(A, out, absmax, vec, scalars, fine, table), (n, shift)
            assert all(k[1:] == (1, True) for k in kinds if isinstance(k, tuple) and k[0] != "T")


@pytest.mark.parametrize("name", ("adam", "ademamix", "momentum"))
def test_optimizer_values_from_pointers_equal_the_flattened_views(name, monkeypatch):
    """The same for the 8-bit optimizer kernel: every state layout, lengths with and without a tail
    block, aligned and misaligned grad/param (all-element views then)."""
    from workbench.backends.numba_cuda import _launch
    from workbench.backends.numba_cuda import optim as O
    from workbench.optim import _gpu_plan as G
    from workbench.optim import functional as W
    monkeypatch.setattr(O, "as_array", lambda t: t)
    monkeypatch.setattr(O, "_words", lambda t, dtype: t.view(dtype))
    P1, P2 = G.plan(W.qmap(True)), G.plan(W.qmap(False))
    k = tuple(float(i) for i in range(17))
    for n in (100, 256, 301, 1069, 4096):
        for shift in (0, 1):
            nb = -(-n // 256)
            g = torch.randn(n + shift)[shift:]
            p = torch.randn(n + shift)[shift:]
            s1 = torch.zeros(2 * n if name == "ademamix" else n, dtype=torch.uint8)
            am1 = torch.zeros(2 * nb if name == "ademamix" else nb)
            if name == "ademamix":
                c1, c1b, a1, a1b = s1.view(2, n)[0], s1.view(2, n)[1], am1.view(2, nb)[0], am1.view(2, nb)[1]
            else:
                c1, c1b, a1, a1b = s1, None, am1, O._dummy(p, torch.float32)
            two = name != "momentum"
            c2 = torch.zeros(n, dtype=torch.uint8) if two else None
            a2 = torch.zeros(nb) if two else O._dummy(p, torch.float32)
            parts = (g, p, c1, c1b, c2, a1, a1b, a2, P1, P2 if two else P1)
            head = (shift == 0, True)
            kinds, vals = _launch._flatten(O._args8(head, parts, n, nb, k))
            assert vals == O._values8(head, parts, n, nb, k), (n, shift)
            assert all(kd[1:] == (1, True) for kd in kinds if isinstance(kd, tuple) and kd[0] != "T")
