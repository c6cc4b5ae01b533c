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
from .protocol import ImageToModelResult, Split, image_to_model, split_support_query


@dataclass
class Embedded:
    z: List[np.ndarray]          # per usable item: (k, d) crop fingerprints
    spec: List[np.ndarray]       # per usable item: flattened mean residual log-spectrum
    skipped: List[str]           # "source: reason" for unusable items


def embed_items(att, items: Sequence[Any], jpeg_quality: Optional[int] = None,
                with_spectra: bool = True) -> Embedded:
    import torch
    zs, specs, skipped = [], [], []
    model = att.bundle.model
    batch: List[imio.Prepared] = []

    def flush():
        crops = np.concatenate([p.crops for p in batch])
        z = att._backend.embed(crops)
        if with_spectra:
            with torch.inference_mode():
                x = torch.from_numpy(crops).permute(0, 3, 1, 2).float().div(255)
                s = model.spectrum(x).flatten(1).numpy()
        k = 0
        for p in batch:
            n = len(p.crops)
            zs.append(z[k:k + n])
            if with_spectra:
                specs.append(s[k:k + n].mean(0))
            k += n
        batch.clear()

    for it in items:
        if jpeg_quality is not None:
            try:
                it = imio.jpeg(imio.to_rgb(it), jpeg_quality)
            except Exception as e:
                skipped.append(f"{imio.describe(it)}: unreadable: {e}")
                continue
        p = imio.prepare(it, att.crop, att.crops, att.small)
        if isinstance(p, imio.ImageError):
            skipped.append(str(p))
            continue
        batch.append(p)
        if sum(len(b.crops) for b in batch) >= att.batch_size:
            flush()
    if batch:
        flush()
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
