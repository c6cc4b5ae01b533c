"""Small synthetic image sets on disk, for tests and benchmarks that need files but no real data:
two statistically different families, so two folders can be told apart."""
from __future__ import annotations

from pathlib import Path
from typing import List

import numpy as np

KINDS = ("noise", "blocky")


def write_images(folder, n: int, seed: int, size: int = 40, kind: str = "noise") -> List[Path]:
    """``n`` PNGs of ``size`` x ``size`` in ``folder`` (created): ``"noise"`` (uniform RGB noise)
    or ``"blocky"`` (noise upsampled 2x by pixel repetition). Seeded; returns their paths."""
    from PIL import Image
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, a in enumerate(_draw(n, seed, size, kind)):
        p = folder / f"{kind}_{i:05d}.png"
        Image.fromarray(a).save(p)
        paths.append(p)
    return paths


def png_images(n: int, seed: int, size: int = 40, kind: str = "noise") -> List[bytes]:
    """The images :func:`write_images` writes, as encoded PNG bytes in memory."""
    import io
    from PIL import Image
    out = []
    for a in _draw(n, seed, size, kind):
        buf = io.BytesIO()
        Image.fromarray(a).save(buf, format="PNG")
        out.append(buf.getvalue())
    return out


def _draw(n: int, seed: int, size: int, kind: str):
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    rng = np.random.default_rng(seed)
    for _ in range(n):
        if kind == "noise":
            yield rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
        else:
            h = (size + 1) // 2
            yield rng.integers(0, 256, (h, h, 3), dtype=np.uint8).repeat(2, 0).repeat(2, 1)[:size, :size]
