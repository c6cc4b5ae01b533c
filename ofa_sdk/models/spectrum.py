"""Spectrum of the noise residual: T(r) = log(1 + |FFT2(r)|) per channel (paper Sec. 3.2).

No fftshift and no normalisation (authors' scripts). The full spectrum of a real signal is
Hermitian, |X[k1,k2]| = |X[-k1 mod H, -k2 mod W]|, so rfft2 plus mirroring gives it exactly at
about a third of the cost of fft2. ``log_spectrum`` is the seam: it goes through
``ofa_sdk.kernels.dispatch``, which runs a fused kernel where one applies (CUDA + Triton; the C++
module on CPU only when asked) and otherwise ``log_spectrum_torch``, this file's PyTorch path,
unchanged (on CPU the default, so results there are bit-identical to it).
``log_spectrum_ref`` is the fft2 definition both must equal.
"""
from __future__ import annotations

from functools import lru_cache

import torch

from ..kernels import dispatch


def _mirror_index(h: int, w: int):
    """Indices into the rfft2 half-spectrum that fill the missing columns W//2+1 .. W-1.
    Cached for eager calls only: index tensors made while tracing (ONNX or torch.export)
    belong to that trace and must not be reused outside it."""
    if dispatch.exporting():
        return _mirror_index_uncached(h, w)
    return _mirror_index_cached(h, w)


def _mirror_index_uncached(h: int, w: int):
    rows = (-torch.arange(h)) % h
    cols = w - torch.arange(w // 2 + 1, w)
    return rows, cols


_mirror_index_cached = lru_cache(maxsize=32)(_mirror_index_uncached)


def log_spectrum(r: torch.Tensor) -> torch.Tensor:
    """(..., H, W) real -> (..., H, W) float32 log1p(|FFT2|): the dispatched op (see module doc)."""
    return dispatch.log_spectrum(r, 1.0)


def log_spectrum_torch(r: torch.Tensor) -> torch.Tensor:
    """The PyTorch path: (..., H, W) -> float32 log1p(|FFT2|) via rfft2 + Hermitian mirroring."""
    r = r.float()  # FFT in float32 even under autocast
    h, w = r.shape[-2:]
    half = torch.fft.rfft2(r).abs()                       # (..., H, W//2+1)
    rows, cols = _mirror_index(h, w)
    rest = half.index_select(-1, cols.to(half.device)).index_select(-2, rows.to(half.device))
    return torch.log1p(torch.cat([half, rest], dim=-1))


def log_spectrum_ref(r: torch.Tensor) -> torch.Tensor:
    """The definition, with the full complex fft2."""
    return torch.log1p(torch.fft.fft2(r.double()).abs()).to(torch.float32)
