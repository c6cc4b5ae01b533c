"""The inference model: denoiser -> residual spectrum -> ResNet -> fingerprint z, plus heads.

Seams (each replaceable by a fused kernel or a compiled engine, checked against this code):
``residual`` (denoiser), ``spectrum`` (residual -> FFT -> log-magnitude), ``extract``
(ResNet -> phi), ``embed`` (all of it, returning the L2-normalised z), and the heads.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..config import OFAConfig
from ..kernels.reference import highpass
from .denoiser import DnCNN
from .heads import PairHead, RealHead
from .resnet import ResNet
from .spectrum import log_spectrum


RESIDUALS = ("denoiser", "highpass")


class OFAModel(nn.Module):
    def __init__(self, cfg: OFAConfig):
        super().__init__()
        if cfg.spectrum.residual not in RESIDUALS:
            raise ValueError(f"spectrum.residual must be one of {RESIDUALS}, got {cfg.spectrum.residual!r}")
        self.cfg = cfg
        self.denoiser = DnCNN(cfg.denoiser)
        self.extractor = ResNet(cfg.extractor)
        self.pair_head = PairHead(cfg.extractor.dim, cfg.heads.pair_hidden)
        self.real_head = RealHead(cfg.extractor.dim, cfg.heads.real_hidden)

    def residual(self, x: torch.Tensor) -> torch.Tensor:
        """Images in [0,1] -> noise residual in grey levels (x residual_scale): the denoiser's,
        or with ``spectrum.residual="highpass"`` a fixed 3x3 Laplacian (valid part)."""
        kind, scale = self.cfg.spectrum.residual, self.cfg.spectrum.residual_scale
        if kind == "denoiser":
            return self.denoiser(x) * scale
        if kind == "highpass":
            return highpass(x) * scale
        raise ValueError(f"spectrum.residual must be one of {RESIDUALS}, got {kind!r}")

    def spectrum(self, x: torch.Tensor) -> torch.Tensor:
        return log_spectrum(self.residual(x))

    def extract(self, spec: torch.Tensor) -> torch.Tensor:
        return self.extractor(spec)

    def embed(self, x: torch.Tensor):
        """Images (B,3,H,W) in [0,1] -> (phi, z) with z = phi / ||phi||."""
        phi = self.extract(self.spectrum(x))
        return phi, F.normalize(phi.float(), dim=-1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.embed(x)[1]
