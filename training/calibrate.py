"""Calibrate the prototype score of an exported model (see ``ofa_sdk.scoring``).

Simulator architectures (random draws, seeded) reconstruct random crops of *training* photos.
For each architecture, ``support`` reconstructions make a prototype and ``queries`` other ones
are scored against every prototype: same architecture = positive, different = negative. A
class-balanced logistic fit maps the cosine to a probability; (a, b) and what they were fitted on
go into the model file's metadata. Nothing from evaluation sets is used.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ofa_sdk.images import from_tensor
from ofa_sdk.scoring import Calibration, fit_logistic, prototype, unit
from ofa_sdk.weights import load_model, update_meta

from .common import PhotoSet


def fit(bundle, data: PhotoSet, archs: int = 32, support: int = 25, queries: int = 20,
        seed: int = 0, log=print) -> dict:
    from ofa_sdk.backends.torch import TorchEngine
    sim = bundle.simulator()
    engine = TorchEngine(bundle)
    g = torch.Generator().manual_seed(seed)
    crop = bundle.config.crop
    protos, qs = [], []
    with torch.inference_mode():
        for k in range(archs):
            arch = sim.sample(g)
            x = data.batch(support + queries, crop, g)
            z = engine.embed(from_tensor(sim(x, arch)))
            protos.append(prototype(z[:support]))
            qs.append(unit(z[support:]))
            if log and (k + 1) % 8 == 0:
                log(f"calibrate: {k + 1}/{archs} architectures")
    cos = np.stack(qs) @ np.stack(protos).T                        # (archs, queries, archs)
    same = np.eye(archs, dtype=bool)[:, None, :].repeat(queries, 1)
    pos, neg = cos[same], cos[~same]
    a, b = fit_logistic(pos, neg)
    p = Calibration(a, b)
    return {"a": a, "b": b, "fitted_on": {
        "architectures": archs, "support": support, "queries": queries, "seed": seed,
        "photos": data.describe(), "positives": int(pos.size), "negatives": int(neg.size),
        "true_positive_rate_at_0.5": float((p(pos) >= 0.5).mean()),
        "false_positive_rate_at_0.5": float((p(neg) >= 0.5).mean())}}


def run(model: Path, data: PhotoSet, seed: int = 0, **kw) -> dict:
    bundle = load_model(model)
    cal = fit(bundle, data, seed=seed, **kw)
    calib = dict(bundle.meta.get("calibration", {}))
    calib["prototype"] = cal
    cal["model_id"] = update_meta(model, {"calibration": calib})
    return cal
