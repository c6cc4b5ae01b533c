"""Run the image-to-model protocol with an Attributor, side by side with a non-learned baseline.

Ours: a query's score for target t is the mean pair-head probability over t's support set
(and over crops), exactly what ``Attributor.verify`` returns.
Baseline (non-learned): cosine similarity between the query's residual log-spectrum and the mean
residual log-spectrum of t's support set -- the same denoiser residual and crops as ours, with
no learned extractor or head.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

from .. import images as imio
from .protocol import image_to_model, split_support_query


@dataclass
class Embedded:
    z: List[np.ndarray]          # per usable item: (k, d) crop fingerprints
    spec: List[np.ndarray]       # per usable item: flattened mean residual log-spectrum
    skipped: List[str]           # "source: reason" for unusable items


def embed_items(att, items: Sequence[Any], jpeg_quality: Optional[int] = None,
                with_spectra: bool = True) -> Embedded:
    """Fingerprints (and mean residual spectra, from the same forward pass) of the usable
    items; ``jpeg_quality`` re-compresses every image first."""
    def source(it):
        if jpeg_quality is None:
            return it
        try:
            return imio.jpeg(imio.to_rgb(it), jpeg_quality)
        except Exception:
            return it  # unreadable: prepare() reports it with its reason
    zs, specs, skipped = [], [], []
    for src, z, err, _, spec in att._embedded(map(source, items), spectra=with_spectra):
        if z is None:
            skipped.append(f"{src}: {err}")
            continue
        zs.append(z)
        if with_spectra:
            specs.append(spec.ravel())
    return Embedded(zs, specs, skipped)


def pair_scores(att, support_z: np.ndarray, query_z: List[np.ndarray], chunk: int = 256) -> np.ndarray:
    """Mean pair probability over the support for each query (crops averaged)."""
    sp = att._backend.support_part(support_z)
    flat = np.concatenate(query_z)
    owner = np.repeat(np.arange(len(query_z)), [len(q) for q in query_z])
    per_crop = np.concatenate([att._backend.pair_probs(flat[i:i + chunk], sp).mean(1)
                               for i in range(0, len(flat), chunk)])
    return np.bincount(owner, per_crop) / np.bincount(owner)


def cosine_to_mean(support: np.ndarray, queries: np.ndarray) -> np.ndarray:
    m = support.mean(0)
    m = m / max(np.linalg.norm(m), 1e-12)
    q = queries / np.maximum(np.linalg.norm(queries, axis=1, keepdims=True), 1e-12)
    return q @ m


def evaluate(att, classes: Dict[str, Sequence[Any]], support: int = 100, queries: int = 100,
             seed: int = 0, jpeg_quality: Optional[int] = None, baseline: bool = True,
             aligned: bool = False) -> Dict:
    """Returns {"ours": ImageToModelResult, "baseline": ..., "skipped": {...}, "split": ...}."""
    emb = {c: embed_items(att, items, jpeg_quality, baseline) for c, items in classes.items()}
    counts = {c: len(e.z) for c, e in emb.items()}
    empty = [c for c, n in counts.items() if n < 2]
    if empty:
        raise ValueError(f"classes with fewer than 2 usable images: {empty}")
    split = split_support_query(counts, support, queries, seed, aligned)
    names = sorted(classes)
    cache: Dict = {}

    def ours(t, c):
        key = ("o", t, c)
        if key not in cache:
            sz = np.concatenate([emb[t].z[i] for i in split.support[t]])
            cache[key] = pair_scores(att, sz, [emb[c].z[i] for i in split.query[c]])
        return cache[key]

    def base(t, c):
        s = np.stack([emb[t].spec[i] for i in split.support[t]])
        return cosine_to_mean(s, np.stack([emb[c].spec[i] for i in split.query[c]]))

    out = {"ours": image_to_model(names, split, ours),
           "skipped": {c: e.skipped for c, e in emb.items() if e.skipped},
           "counts": counts}
    if baseline:
        out["baseline"] = image_to_model(names, split, base)
    return out
