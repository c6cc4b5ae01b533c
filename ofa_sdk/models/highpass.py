"""The fixed high-pass residual: a 3x3 Laplacian, nothing learned.

Used as the model's residual when ``spectrum.residual == "highpass"``, and by the evaluation's
non-learned baseline. One definition for both, so they cannot drift apart.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

LAPLACIAN = ((0.0, -1.0, 0.0), (-1.0, 4.0, -1.0), (0.0, -1.0, 0.0))


def highpass(x: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> (B, C, H-2, W-2): the Laplacian of each channel, valid part, in the
    input's dtype and units."""
    k = x.new_tensor(LAPLACIAN).expand(x.shape[1], 1, 3, 3)
    return F.conv2d(x, k, groups=x.shape[1])
