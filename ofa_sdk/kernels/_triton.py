"""What every Triton kernel file shares: the guarded import (the references beside each kernel
import without Triton; the kernels need it), the matmul precisions, the device guard of every
launch, and small helpers."""
from __future__ import annotations

try:  # the references below import without Triton; the kernels need it
    import triton
    import triton.language as tl
    _jit = triton.jit
except ImportError:  # pragma: no cover - exercised only where Triton is absent
    triton = tl = None

    def _jit(fn):
        return fn

PRECISIONS = ("ieee", "tf32x3", "tf32")


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def _next_pow2(n: int) -> int:
    return 1 << (max(1, n) - 1).bit_length()


def _pow2(n: int, lo: int = 16, hi: int = 64) -> int:
    """A tile size: the power of two at or above ``n``, clamped to [lo, hi]."""
    return max(lo, min(hi, _next_pow2(max(1, n))))


def _need_triton():
    if triton is None:
        raise RuntimeError("Triton is not installed (pip install triton); use ofa_sdk.kernels.dispatch")


def on_device(t):
    """The context every kernel launch runs in: Triton launches on the *current* CUDA device,
    so a tensor on ``cuda:1`` is launched with device 1 current (nothing to do on the CPU, where
    only the interpreter runs): the engines' :func:`ofa_sdk.backends.torch.device_guard`."""
    from ofa_sdk.backends.torch import device_guard     # lazily: the backend imports the kernels
    return device_guard(t.device)
