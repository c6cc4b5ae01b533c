"""Pictures drawn with PIL only (no plotting dependency): the target x other AUC matrix, and a
centred residual spectrum like the paper's Figure 1."""
from __future__ import annotations

from pathlib import Path
from typing import Dict

import numpy as np

# A perceptually ordered dark-blue -> yellow ramp (viridis-like anchor colours).
_RAMP = np.array([[68, 1, 84], [59, 82, 139], [33, 145, 140], [94, 201, 98], [253, 231, 37]], float)


def colorize(v: np.ndarray) -> np.ndarray:
    """Values in [0,1] -> uint8 RGB."""
    v = np.clip(np.nan_to_num(v, nan=0.0), 0, 1) * (len(_RAMP) - 1)
    i = np.minimum(v.astype(int), len(_RAMP) - 2)
    f = (v - i)[..., None]
    return (_RAMP[i] * (1 - f) + _RAMP[i + 1] * f).round().astype(np.uint8)


def auc_matrix_png(matrix: Dict[str, Dict[str, float]], path, title: str = "1-vs-1 AUC") -> Path:
    from PIL import Image, ImageDraw
    names = list(matrix)
    n, cell, left, top = len(names), 56, 170, 40
    img = Image.new("RGB", (left + n * cell + 10, top + n * cell + 150), "white")
    d = ImageDraw.Draw(img)
    d.text((10, 10), f"{title} (row: target, column: other)", fill="black")
    for i, t in enumerate(names):
        d.text((5, top + i * cell + cell // 2 - 5), t[:26], fill="black")
        for j, c in enumerate(names):
            x, y = left + j * cell, top + i * cell
            if t == c:
                d.rectangle([x, y, x + cell - 2, y + cell - 2], fill=(230, 230, 230))
                continue
            v = matrix[t].get(c, float("nan"))
            col = tuple(int(u) for u in colorize(np.array((v - 0.5) * 2)))
            d.rectangle([x, y, x + cell - 2, y + cell - 2], fill=col)
            d.text((x + 8, y + cell // 2 - 5), f"{100 * v:.1f}",
                   fill="black" if v > 0.8 else "white")
    for j, c in enumerate(names):  # column labels, vertical text via a rotated strip
        strip = Image.new("RGB", (140, 14), "white")
        ImageDraw.Draw(strip).text((0, 0), c[:22], fill="black")
        img.paste(strip.rotate(90, expand=True), (left + j * cell + cell // 2 - 7, top + n * cell + 5))
    path = Path(path)
    img.save(path)
    return path


def spectrum_png(spec: np.ndarray, path, title: str = "", scale: int = 4) -> Path:
    """spec (C,h,w) or (h,w) log1p|FFT| of residuals -> centred (fftshift) picture. The image is
    enlarged by pixel repetition for viewing only."""
    from PIL import Image, ImageDraw
    s = spec.mean(0) if spec.ndim == 3 else spec
    s = np.fft.fftshift(s)
    lo, hi = np.percentile(s, 1), np.percentile(s, 99.5)
    v = (s - lo) / max(hi - lo, 1e-12)
    rgb = colorize(v).repeat(scale, 0).repeat(scale, 1)
    img = Image.new("RGB", (rgb.shape[1], rgb.shape[0] + 20), "white")
    img.paste(Image.fromarray(rgb), (0, 20))
    ImageDraw.Draw(img).text((4, 4), title[:60], fill="black")
    path = Path(path)
    img.save(path)
    return path
