"""Perceptual terms for the simulator's image loss (paper Eq. 3: 1.0 MSE + 0.25 LPIPS).

LPIPS needs ImageNet VGG/AlexNet weights, which cannot be downloaded here. Two options:

* ``SSIMLoss`` -- the weight-free default: 1 - multi-scale SSIM (3 scales, 11x11 Gaussian window,
  Wang et al. 2003/2004). Like LPIPS it compares local structure rather than raw pixels, which is
  what keeps reconstructions sharp; it needs no learned weights.
* ``LPIPS`` -- the real metric (Zhang et al. 2018, VGG variant) when the user supplies weights:
  ``vgg_path`` a torchvision-layout VGG16 state dict (``features.N.weight``...), ``lin_path`` the
  LPIPS linear layers (``lin0.model.1.weight``... as the ``lpips`` package ships them). Both load
  with ``torch.load(weights_only=True)`` or from safetensors; nothing is downloaded.

Checkpoint metadata records which one stage 1 used.
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict

import torch
import torch.nn as nn
import torch.nn.functional as F


def _gauss(size: int = 11, sigma: float = 1.5) -> torch.Tensor:
    x = torch.arange(size, dtype=torch.float32) - size // 2
    g = torch.exp(-x ** 2 / (2 * sigma ** 2))
    return g / g.sum()


class SSIMLoss(nn.Module):
    """1 - MS-SSIM on images in [0,1] (channels averaged); weight-free."""

    def __init__(self, scales: int = 3, window: int = 11):
        super().__init__()
        g = _gauss(window)
        self.register_buffer("win", (g[:, None] * g[None, :])[None, None])
        self.scales = scales
        self.weights = torch.tensor([0.0448, 0.2856, 0.3001, 0.2363, 0.1333][:scales])
        self.weights = self.weights / self.weights.sum()

    def _ssim(self, x, y):
        c = x.shape[1]
        w = self.win.expand(c, 1, -1, -1).to(x.dtype)
        pad = self.win.shape[-1] // 2

        def blur(t):
            return F.conv2d(F.pad(t, [pad] * 4, mode="reflect"), w, groups=c)

        mx, my = blur(x), blur(y)
        sxx, syy, sxy = blur(x * x) - mx ** 2, blur(y * y) - my ** 2, blur(x * y) - mx * my
        c1, c2 = 0.01 ** 2, 0.03 ** 2
        cs = (2 * sxy + c2) / (sxx + syy + c2)
        lum = (2 * mx * my + c1) / (mx ** 2 + my ** 2 + c1)
        return (lum * cs).mean(dim=(1, 2, 3)), cs.mean(dim=(1, 2, 3))

    def forward(self, x, y):
        vals = []
        for s in range(self.scales):
            ssim, cs = self._ssim(x, y)
            vals.append(ssim if s == self.scales - 1 else cs)
            if s < self.scales - 1:
                x, y = F.avg_pool2d(x, 2), F.avg_pool2d(y, 2)
        # Weighted arithmetic combination (stable for negative cs early in training).
        score = sum(w * v for w, v in zip(self.weights.tolist(), vals))
        return (1 - score).mean()


_VGG_CFG = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512]
_TAPS = (3, 8, 15, 22, 29)  # relu1_2, relu2_2, relu3_3, relu4_3, relu5_3 in torchvision indices
_CH = (64, 128, 256, 512, 512)


def _load_state(path: str | Path) -> Dict[str, torch.Tensor]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"LPIPS weight file {str(path)!r} not found")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file
        return load_file(str(path))
    return torch.load(str(path), map_location="cpu", weights_only=True)


class LPIPS(nn.Module):
    """LPIPS (VGG) with user-supplied weights. Inputs in [0,1]."""

    def __init__(self, vgg_path: str | Path, lin_path: str | Path):
        super().__init__()
        layers, cin = [], 3
        for v in _VGG_CFG:
            if v == "M":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                layers += [nn.Conv2d(cin, v, 3, padding=1), nn.ReLU(inplace=False)]
                cin = v
        self.features = nn.Sequential(*layers)
        sd = _load_state(vgg_path)
        sd = {k[len("features."):]: v for k, v in sd.items() if k.startswith("features.")}
        missing = self.features.load_state_dict(sd, strict=False).missing_keys
        if missing:
            raise ValueError(f"VGG16 weights in {vgg_path} lack {missing[:3]}...")
        self.lins = nn.ModuleList(nn.Conv2d(c, 1, 1, bias=False) for c in _CH)
        lin = _load_state(lin_path)
        for i, conv in enumerate(self.lins):
            key = f"lin{i}.model.1.weight"
            if key not in lin:
                raise ValueError(f"LPIPS linear weights in {lin_path} lack {key}")
            conv.weight.data.copy_(lin[key])
        self.register_buffer("shift", torch.tensor([-.030, -.088, -.188])[None, :, None, None])
        self.register_buffer("scale", torch.tensor([.458, .448, .450])[None, :, None, None])
        for p in self.parameters():
            p.requires_grad_(False)

    def _feats(self, x):
        h, out = (x * 2 - 1 - self.shift) / self.scale, []
        for i, layer in enumerate(self.features):
            h = layer(h)
            if i in _TAPS:
                out.append(h)
        return out

    def forward(self, x, y):
        total = 0
        for lin, fx, fy in zip(self.lins, self._feats(x), self._feats(y)):
            nx = fx / (fx.norm(dim=1, keepdim=True) + 1e-10)
            ny = fy / (fy.norm(dim=1, keepdim=True) + 1e-10)
            total = total + lin((nx - ny) ** 2).mean(dim=(1, 2, 3))
        return total.mean()


def make_perceptual(kind: str, vgg_path=None, lin_path=None) -> nn.Module:
    """The stage-1 perceptual term ``kind`` (``stage1.perceptual``). LPIPS weight files given with
    ``kind="ssim"`` are refused rather than ignored: the run would train with SSIM unnoticed."""
    if kind == "ssim":
        if vgg_path or lin_path:
            raise ValueError("LPIPS weights (--lpips-vgg/--lpips-lin) were given but "
                             "stage1.perceptual is 'ssim': add --set stage1.perceptual=lpips to "
                             "train with LPIPS, or drop the weight files")
        return SSIMLoss()
    if kind == "lpips":
        if not (vgg_path and lin_path):
            raise ValueError("perceptual='lpips' needs --lpips-vgg and --lpips-lin weight files "
                             "(they cannot be downloaded here); the default is 'ssim'")
        return LPIPS(vgg_path, lin_path)
    raise ValueError(f"unknown perceptual loss {kind!r}; choose 'ssim' or 'lpips'")
