"""The smallest model that runs every SDK path, for tests and soak runs: one home for its
configuration and for writing one with random weights. It exercises the mechanics (decode, crop,
engines, galleries, scans), not attribution quality."""
from __future__ import annotations

from pathlib import Path

# Overrides of the compact configuration (``compact().replace(**TINY)``, or ``--set`` on the
# training CLI). The denoiser residual keeps the denoiser on the inference path, so tests cover it.
TINY = {"crop": 32, "denoiser.depth": 3, "denoiser.width": 8, "extractor.width": 8,
        "extractor.layers": (1, 1), "extractor.dim": 16, "heads.pair_hidden": (16, 16),
        "simulator.enc_channels": (8, 16, 16), "simulator.stem_channels": 8,
        "simulator.router_hidden": 8, "spectrum.residual": "denoiser"}


def write_tiny_model(path, seed: int = 0, **overrides) -> Path:
    """Write a random-weight model file of the TINY configuration (``overrides`` on top) to
    ``path``; the same ``seed`` and overrides give the same weights."""
    import torch
    from .config import compact
    from .models import FingerprintSimulator, OFAModel
    from .weights import save_model
    torch.manual_seed(seed)
    cfg = compact().replace(**{**TINY, **overrides})
    path = Path(path)
    save_model(path, OFAModel(cfg).eval(), FingerprintSimulator(cfg.simulator),
               {"config": cfg.to_dict()}, dtype="float32")
    return path
