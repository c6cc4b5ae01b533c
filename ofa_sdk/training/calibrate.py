"""Calibrate the prototype and Gaussian scores of an exported model (see ``ofa_sdk.scoring``).

Simulator architectures (random draws, seeded) reconstruct random crops of *training* photos.
For each architecture, ``support`` reconstructions make a prototype and ``queries`` other ones
are scored against every prototype: same architecture = positive, different = negative. A
class-balanced logistic fit maps the cosine to a probability; (a, b) and what they were fitted on
go into the model file's metadata. The Gaussian rule is calibrated on the same reconstructions,
with each architecture's support as one profile of one gallery, on its log-distance
log(D^2 / d). Nothing from evaluation sets is used.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ofa_sdk.images import from_tensor
from ofa_sdk.scoring import Calibration, GaussianRule, fit_logistic, prototype, unit
from ofa_sdk.weights import load_model, update_meta

from .common import PhotoSet


def fit(bundle, data: PhotoSet, archs: int = 32, support: int = 25, queries: int = 20,
        seed: int = 0, log=print) -> dict:
    from ofa_sdk.backends.torch import TorchEngine
    sim = bundle.simulator()
    engine = TorchEngine(bundle)
    g = torch.Generator().manual_seed(seed)
    crop = bundle.config.crop
    protos, qs, sups = [], [], []
    with torch.inference_mode():
        for k in range(archs):
            arch = sim.sample(g)
            x = data.batch(support + queries, crop, g)
            z = engine.embed(from_tensor(sim(x, arch)))
            protos.append(prototype(z[:support]))
            sups.append(z[:support])
            qs.append(unit(z[support:]))
            if log and (k + 1) % 8 == 0:
                log(f"calibrate: {k + 1}/{archs} architectures")
    cos = np.stack(qs) @ np.stack(protos).T                        # (archs, queries, archs)
    gauss = GaussianRule(Calibration(1.0, 0.0))
    raw = gauss.raw_scores(gauss.prepare(sups), [q[None] for q in np.concatenate(qs)])
    logd = np.log(np.maximum(1 - raw, 1e-6)).reshape(archs, queries, archs)
    same = np.eye(archs, dtype=bool)[:, None, :].repeat(queries, 1)
    on = {"architectures": archs, "support": support, "queries": queries, "seed": seed,
          "photos": data.describe()}
    # a profile of fewer images than a covariance needs gets the architectures' pooled
    # within-class variance per dimension
    within = np.concatenate([unit(z) - unit(z).mean(0) for z in sups])
    prior_var = float((within ** 2).sum() / within.size)
    return {"prototype": _logistic(cos[same], cos[~same], on),
            "gaussian": {**_logistic(logd[same], logd[~same], dict(on, input="log(D^2/d)")),
                         "prior_var": prior_var}}


def _logistic(pos, neg, on: dict) -> dict:
    a, b = fit_logistic(pos, neg)
    p = Calibration(a, b)
    return {"a": a, "b": b, "fitted_on": {
        **on, "positives": int(pos.size), "negatives": int(neg.size),
        "true_positive_rate_at_0.5": float((p(pos) >= 0.5).mean()),
        "false_positive_rate_at_0.5": float((p(neg) >= 0.5).mean())}}


def run(model: Path, data: PhotoSet, seed: int = 0, rules=None, **kw) -> dict:
    """Fit the calibrations and write those of ``rules`` (default: all) into ``model``."""
    bundle = load_model(model)
    cal = fit(bundle, data, seed=seed, **kw)
    cal = {r: c for r, c in cal.items() if rules is None or r in rules}
    calib = dict(bundle.meta.get("calibration", {}))
    calib.update(cal)
    model_id = update_meta(model, {"calibration": calib})
    return {**cal, "model_id": model_id}
