"""Run the image-to-model protocol with an Attributor, side by side with a non-learned baseline.

Ours: a query's score for target t is exactly what ``Attributor.verify`` returns with the
Attributor's score rule (``att.rule``: the calibrated prototype cosine, or the paper's mean
pair-head probability over t's support set and over crops).
Baselines, cosine similarity between the query's residual log-spectrum and the mean residual
log-spectrum of t's support set, on the same crops as ours, with no learned extractor or head:
* ``baseline``: the residual of the model's own (trained) denoiser;
* ``baseline:highpass``: a fixed 3x3 Laplacian high-pass residual -- nothing learned at all
  (:func:`highpass_spectrum`).
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

from .. import images as imio
from .protocol import image_to_model, split_support_query
from .support import support_scores


@dataclass
class Embedded:
    z: List[np.ndarray]          # per usable item: (k, d) crop fingerprints
    spec: List[np.ndarray]       # per usable item: flattened mean residual log-spectrum
    skipped: List[str]           # "source: reason" for unusable items
    highpass: List[np.ndarray] = field(default_factory=list)  # per usable item, with highpass=True


def highpass_spectrum(crops: np.ndarray) -> np.ndarray:
    """(k, h, w, 3) uint8 crops -> flattened (3 * (h-2) * (w-2),) mean over the crops of
    log(1 + |FFT2|) of the fixed Laplacian high-pass residual (``ofa_sdk.kernels.reference.highpass``,
    valid part, grey levels), per channel: the representation of the fully non-learned
    baseline."""
    import torch
    from ..kernels.reference import highpass
    x = torch.from_numpy(np.asarray(crops, np.float64)).permute(0, 3, 1, 2)   # (k, 3, h, w)
    spec = torch.log1p(torch.fft.fft2(highpass(x)).abs()).mean(0)
    return spec.numpy().astype(np.float32).ravel()


def embed_items(att, items: Sequence[Any], jpeg_quality: Optional[int] = None,
                with_spectra: bool = True, highpass: bool = False) -> Embedded:
    """Fingerprints (and mean residual spectra, from the same forward pass) of the usable
    items; ``jpeg_quality`` re-compresses every image first; ``highpass`` adds
    :func:`highpass_spectrum` of the same crops."""
    hp: Dict[int, np.ndarray] = {}   # item index -> high-pass spectrum, filled as items decode

    def source(i, it):
        if jpeg_quality is None and not highpass:
            return it
        try:
            a = imio.to_rgb(it)
            if jpeg_quality is not None:
                a = imio.jpeg(a, jpeg_quality)
        except Exception:
            return it  # unreadable: prepare() reports it with its reason
        if highpass:
            p = att.policy(a)
            if not isinstance(p, imio.Prepared):
                return it
            hp[i] = highpass_spectrum(p.crops)
        return a
    zs, specs, skipped, hps = [], [], [], []
    sources = (source(i, it) for i, it in enumerate(items))
    for i, e in enumerate(att.embed_stream(sources, spectra=with_spectra)):
        if not e.ok:
            skipped.append(f"{e.source}: {e.error}")
            continue
        zs.append(e.z)
        if with_spectra:
            specs.append(e.spectrum.ravel())
        if highpass:
            hps.append(hp.pop(i))
    return Embedded(zs, specs, skipped, hps)


def cosine_to_mean(support: np.ndarray, queries: np.ndarray) -> np.ndarray:
    m = support.mean(0)
    m = m / max(np.linalg.norm(m), 1e-12)
    q = queries / np.maximum(np.linalg.norm(queries, axis=1, keepdims=True), 1e-12)
    return q @ m


def evaluate(att, classes: Dict[str, Sequence[Any]], support: int = 100, queries: int = 100,
             seed: int = 0, jpeg_quality: Optional[int] = None, baseline: bool = True,
             aligned: bool = False, also: Sequence[str] = ()) -> Dict:
    """Returns {"ours": ImageToModelResult, "baseline": ..., "baseline:highpass": ...,
    "skipped": {...}, "counts": ...}.
    ``also``: other score rules to report from the same embeddings, as out["ours:RULE"]."""
    emb = {c: embed_items(att, items, jpeg_quality, baseline, highpass=baseline)
           for c, items in classes.items()}
    counts = {c: len(e.z) for c, e in emb.items()}
    dropped = sorted(c for c, n in counts.items() if n < 2)   # e.g. one stray image at the root
    if dropped:
        warnings.warn(f"evaluation skips classes with fewer than 2 usable images: {dropped}",
                      RuntimeWarning, stacklevel=2)
        counts = {c: n for c, n in counts.items() if c not in dropped}
    if len(counts) < 2:
        raise ValueError(f"evaluation needs at least 2 classes with 2 or more usable images; "
                         f"usable: {sorted(counts)}, skipped: {dropped}")
    split = split_support_query(counts, support, queries, seed, aligned)
    names = sorted(counts)
    cache: Dict = {}

    def ours(t, c, rule=None):
        key = ("o", rule, t, c)
        if key not in cache:
            sz = np.concatenate([emb[t].z[i] for i in split.support[t]])
            cache[key] = support_scores(att, [emb[c].z[i] for i in split.query[c]], sz,
                                        [len(emb[t].z[i]) for i in split.support[t]], rule=rule)
        return cache[key]

    def base(t, c, kind="spec"):
        s = np.stack([getattr(emb[t], kind)[i] for i in split.support[t]])
        return cosine_to_mean(s, np.stack([getattr(emb[c], kind)[i] for i in split.query[c]]))

    out = {"ours": image_to_model(names, split, ours),
           "skipped": {c: e.skipped for c, e in emb.items() if e.skipped},
           "skipped_classes": dropped,
           "counts": counts}
    for rule in also:
        if rule != att.rule.name:
            out[f"ours:{rule}"] = image_to_model(names, split, lambda t, c, r=rule: ours(t, c, r))
    if baseline:
        out["baseline"] = image_to_model(names, split, base)
        out["baseline:highpass"] = image_to_model(names, split, lambda t, c: base(t, c, "highpass"))
    return out
