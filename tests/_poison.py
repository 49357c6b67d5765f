"""Poisoned outputs and bit-pattern comparison for the kernel tests.

Every tensor allocated with ``torch.empty`` while a test runs starts as garbage (NaN for floats, 0xAB bytes, -1
for wider integers), so an element a kernel forgets to write shows up in a bit-exact comparison."""
import torch


def poison_empty(monkeypatch, device_type: str | None = None) -> None:
    """Poison ``torch.empty`` (only tensors on ``device_type`` when given) for the rest of the test."""
    real = torch.empty

    def empty(*a, **kw):
        t = real(*a, **kw)
        if device_type is None or t.device.type == device_type:
            if t.is_floating_point():
                t.fill_(float("nan"))
            else:
                t.fill_(0xAB if t.dtype == torch.uint8 else -1)
        return t

    monkeypatch.setattr(torch, "empty", empty)


def bits(t: torch.Tensor) -> torch.Tensor:
    """The tensor's bit patterns, so NaN == NaN and -0 != +0 in comparisons."""
    return t.view({1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}[t.element_size()])
