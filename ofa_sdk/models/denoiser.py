"""DnCNN-style residual denoiser (Corvi et al. 2023; paper Sec. 3.2 preprocessing).

The network predicts the noise, so its output is the noise residual r of the input image.
Paper/Corvi: 17 3x3 conv layers, 64 channels, BatchNorm on layers 2..depth-1, ReLU, unpadded
(a 256 crop gives a 256 - 2*17 = 222 residual). Configurable depth, width and padding.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from ..config import DenoiserConfig


class DnCNN(nn.Module):
    def __init__(self, cfg: DenoiserConfig):
        super().__init__()
        if cfg.depth < 2:
            raise ValueError("DnCNN depth must be at least 2")
        self.cfg = cfg
        p = 1 if cfg.padding else 0
        layers = [nn.Conv2d(3, cfg.width, 3, padding=p), nn.ReLU(inplace=True)]
        for _ in range(cfg.depth - 2):
            layers += [nn.Conv2d(cfg.width, cfg.width, 3, padding=p, bias=False),
                       nn.BatchNorm2d(cfg.width), nn.ReLU(inplace=True)]
        last = nn.Conv2d(cfg.width, 3, 3, padding=p)
        # Start as the zero predictor (MSE = sigma^2) and improve from there: a random last layer
        # starts far worse than predicting no noise at all, and at sigma = 1 grey level the
        # network can spend its whole budget just getting back to that baseline.
        nn.init.normal_(last.weight, std=1e-3)
        nn.init.zeros_(last.bias)
        layers.append(last)
        self.body = nn.Sequential(*layers)

    @property
    def shrink(self) -> int:
        """Pixels lost on each side (0 when padded)."""
        return 0 if self.cfg.padding else self.cfg.depth

    def output_size(self, size: int) -> int:
        return size - 2 * self.shrink

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x in [0,1], (B,3,H,W) -> predicted noise residual (B,3,H-2s,W-2s), same units."""
        if min(x.shape[-2:]) <= 2 * self.shrink:
            raise ValueError(f"input {tuple(x.shape[-2:])} too small for an unpadded "
                             f"depth-{self.cfg.depth} denoiser")
        return self.body(x)

    def crop_like(self, x: torch.Tensor) -> torch.Tensor:
        """Centre part of x aligned with this denoiser's output."""
        s = self.shrink
        return x[..., s:x.shape[-2] - s, s:x.shape[-1] - s] if s else x
