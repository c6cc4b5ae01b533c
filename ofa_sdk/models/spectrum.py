"""Spectrum of the noise residual: T(r) = log(1 + |FFT2(r)|) per channel (paper Sec. 3.2).

No fftshift and no normalisation (authors' scripts). The full spectrum of a real signal is
Hermitian, |X[k1,k2]| = |X[-k1 mod H, -k2 mod W]|, so rfft2 plus mirroring gives it exactly at
about a third of the cost of fft2. ``log_spectrum`` is the seam: it goes through
``ofa_sdk.kernels.dispatch``, which runs a fused kernel where one applies (CUDA + Triton; the C++
module on CPU only when asked) and otherwise ``log_spectrum_torch``, the PyTorch path
(``ofa_sdk.kernels.reference``; on CPU the default, so results there are bit-identical to it).
``log_spectrum_ref`` (there too) is the fft2 definition both must equal.
"""
from __future__ import annotations

import torch

from ..kernels import dispatch
from ..kernels.reference import log_spectrum_ref, log_spectrum_torch  # noqa: F401  (the references)


def log_spectrum(r: torch.Tensor) -> torch.Tensor:
    """(..., H, W) real -> (..., H, W) float32 log1p(|FFT2|): the dispatched op (see module doc)."""
    return dispatch.log_spectrum(r, 1.0)
