"""Spectrum of the noise residual: T(r) = log(1 + |FFT2(r)|) per channel (paper Sec. 3.2).

No fftshift and no normalisation (authors' scripts). The full spectrum of a real signal is
Hermitian, |X[k1,k2]| = |X[-k1 mod H, -k2 mod W]|, so rfft2 plus mirroring gives it exactly at
about a third of the cost of fft2. ``log_spectrum`` is the seam a fused residual->FFT->log
kernel replaces later; ``log_spectrum_ref`` is the fft2 definition it must equal.
"""
from __future__ import annotations

from functools import lru_cache

import torch


@lru_cache(maxsize=32)
def _mirror_index(h: int, w: int):
    """Indices into the rfft2 half-spectrum that fill the missing columns W//2+1 .. W-1."""
    rows = (-torch.arange(h)) % h
    cols = w - torch.arange(w // 2 + 1, w)
    return rows, cols


def log_spectrum(r: torch.Tensor) -> torch.Tensor:
    """(..., H, W) real -> (..., H, W) float32 log1p(|FFT2|), via rfft2 + Hermitian mirroring."""
    r = r.float()  # FFT in float32 even under autocast
    h, w = r.shape[-2:]
    half = torch.fft.rfft2(r).abs()                       # (..., H, W//2+1)
    rows, cols = _mirror_index(h, w)
    rest = half.index_select(-1, cols.to(half.device)).index_select(-2, rows.to(half.device))
    return torch.log1p(torch.cat([half, rest], dim=-1))


def log_spectrum_ref(r: torch.Tensor) -> torch.Tensor:
    """The definition, with the full complex fft2."""
    return torch.log1p(torch.fft.fft2(r.double()).abs()).to(torch.float32)
