"""The Attributor: fingerprint, enroll, verify, attribute, scan.

    from ofa_sdk import Attributor
    att = Attributor(gallery="gallery.db")
    att.enroll("model-a", "samples/model-a/")          # support set (paper: 100 images)
    att.verify("query.png", "model-a")                  # P(made by model-a)
    att.attribute(["q1.png", "q2.png"])                  # best enrolled model or unknown
    for r in att.scan("incoming/"): ...                 # streaming, bounded memory

Scores (see :mod:`ofa_sdk.scoring`): ``score="prototype"`` (the default when the model file
carries a calibration, as the shipped one does) is the calibrated cosine between the query's
crop-averaged fingerprint and the support's mean fingerprint. ``score="pair"`` is the paper's
score (Sec. 4.1): the mean pair-head probability g([z_s; z_q]) over the support set and over
crops; the support half of g's first layer is computed once at enroll time and stored in the
gallery. Both give a probability-like score in [0, 1]. The prototype rule was chosen on a
development set of unseen simulator architectures (benchmarks/RESULTS.md).

Open set: ``attribute`` answers "unknown" when the best score is below the best profile's
threshold. The default, ``threshold="profile"``, gives each profile its own, set so that about
5% (``profile_quantile``) of the generator's own new images fall below it: a normal prediction
bound on the log-distances of its support images' leave-one-out scores
(:func:`ofa_sdk.scoring.self_threshold`; a profile with fewer than 3 support images gets 0.5).
Images scoring below what the generator's own images reach are rejected. It was
chosen over a fixed 0.5 on the development set of unseen simulator architectures (unknown
generators accepted: 21% against 61%, known ones correct: 90.4% against 90.8%;
benchmarks/RESULTS.md). A number sets one threshold for every profile: 0.5 is each score rule's
own decision point (balanced BCE for the pair head, a class-balanced logistic fit for the
prototype rule); ``calibrate_threshold(images_from_other_sources, fpr=0.05)`` sets it to the
(1 - fpr) quantile of their best scores.
"""
from __future__ import annotations

import math
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any, Dict, Iterable, Iterator, List, NamedTuple, Optional, Sequence, Tuple, Union

import numpy as np

from . import images as imio
from . import scoring
from .closed_set import OpenSetResult
from .gallery import Gallery, GalleryError, Profile

DEFAULT_THRESHOLD = "profile"   # per-profile thresholds (see Attributor.profile_threshold)
FALLBACK_THRESHOLD = 0.5        # for profiles with fewer than MIN_PROFILE_IMAGES support images
MIN_PROFILE_IMAGES = 3


class EmbeddedItem(NamedTuple):
    source: str
    z: Optional[np.ndarray]          # (k, d) crop fingerprints, None when unusable
    error: str                       # "" when usable
    note: str                        # e.g. the small-image policy applied
    spectrum: Optional[np.ndarray]   # (3, h, w) mean residual log-spectrum (spectra=True)


class InputError(ValueError):
    """Some inputs could not be used. Nothing else was lost: ``partial`` holds the result for
    every input (NaN rows where an input failed) and ``errors`` lists (index, source, reason)."""

    def __init__(self, errors: List[Tuple[int, str, str]], partial: Any = None):
        self.errors, self.partial = errors, partial
        lines = "; ".join(f"#{i} {src}: {why}" for i, src, why in errors[:5])
        more = f" (+{len(errors) - 5} more)" if len(errors) > 5 else ""
        super().__init__(f"{len(errors)} input(s) could not be used: {lines}{more}. "
                         f"Pass errors='nan' to get NaN rows instead of this exception.")


@dataclass
class Attribution:
    source: str
    model: Optional[str]                 # best enrolled model at or above threshold, else None
    score: float                         # best score over enrolled models (NaN on error)
    scores: Dict[str, float] = field(default_factory=dict)
    error: Optional[str] = None
    note: str = ""

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def label(self) -> str:
        return "error" if self.error else (self.model or "unknown")

    def to_dict(self) -> Dict:
        d = asdict(self)
        d["label"] = self.label
        if isinstance(self.score, float) and math.isnan(self.score):
            d["score"] = None
        return d


class Attributor:
    def __init__(self, model=None, backend: str = "auto", device: Optional[str] = None,
                 gallery=None, strict: bool = False, *, batch_size: int = 32, crops: int = 1,
                 small: str = "reject", threshold: Union[float, str, None] = None,
                 workers: int = 2, score: Optional[str] = None, profile_quantile: float = 0.05):
        from .backends import select_backend
        from .weights import ModelBundle, load_default_model, load_model

        if model is None:
            self.bundle = load_default_model()
        elif isinstance(model, ModelBundle):
            self.bundle = model
        else:
            self.bundle = load_model(model)
        if small not in imio.SMALL_POLICIES:
            raise ValueError(f"small must be one of {imio.SMALL_POLICIES}, got {small!r}")
        if crops < 1 or batch_size < 1:
            raise ValueError("crops and batch_size must be >= 1")
        self.crop = self.bundle.config.crop
        self.crops, self.small, self.batch_size, self.workers = crops, small, batch_size, workers
        self.threshold = scoring.parse_threshold(DEFAULT_THRESHOLD if threshold is None else threshold)
        if not 0 < profile_quantile < 1:
            raise ValueError(f"profile_quantile must be in (0, 1), got {profile_quantile!r}")
        self.profile_quantile = float(profile_quantile)
        self._self_thresholds: Dict[Tuple, float] = {}
        self.calibration = scoring.Calibration.from_meta(self.bundle.meta)
        if score is None:
            score = "prototype" if self.calibration is not None else "pair"
        if score not in scoring.SCORES:
            raise ValueError(f"score must be one of {scoring.SCORES}, got {score!r}")
        if score == "prototype" and self.calibration is None:
            raise ValueError(f"score='prototype' needs a calibrated model: {self.bundle.path} has no "
                             "calibration (run 'ofa-train calibrate'), or use score='pair'")
        self.score = score
        self.strict = strict
        self._backend, self.backend_note = select_backend(backend, self.bundle, device, strict)
        self.gallery = gallery if isinstance(gallery, Gallery) else Gallery(gallery)
        self._heads: Dict[str, Any] = {}

    # -- properties ------------------------------------------------------------------------------
    @property
    def backend(self) -> str:
        """The backend actually in use."""
        return self._backend.name

    @property
    def model_id(self) -> str:
        return self.bundle.model_id

    @property
    def dim(self) -> int:
        return self.bundle.config.extractor.dim

    def info(self) -> Dict:
        return {"model_id": self.model_id, "model_path": str(self.bundle.path),
                "config": self.bundle.config.name, "crop": self.crop, "dim": self.dim,
                "backend": self.backend, "backend_note": self.backend_note,
                "score": self.score, "threshold": self.threshold, "crops": self.crops, "small": self.small,
                "gallery": str(self.gallery.path) if self.gallery.path else "memory",
                "profiles": self.gallery.names()}

    def __repr__(self):
        return (f"Attributor(model={self.model_id}, backend={self.backend!r}, "
                f"gallery={self.gallery!r})")

    # -- embedding ---------------------------------------------------------------------------------
    def _prepared(self, items: Iterable[Any]) -> Iterator[Union[imio.Prepared, imio.ImageError]]:
        """Decode and crop in a small thread pool (PIL releases the GIL), order preserved,
        at most a few batches in flight."""
        def prep(it):
            return imio.prepare(it, self.crop, self.crops, self.small)
        if self.workers <= 1:
            yield from map(prep, items)
            return
        chunk: List[Any] = []
        with ThreadPoolExecutor(self.workers) as pool:
            for it in items:
                chunk.append(it)
                if len(chunk) >= self.batch_size:
                    yield from pool.map(prep, chunk)
                    chunk = []
            if chunk:
                yield from pool.map(prep, chunk)

    @property
    def engine(self):
        """The execution backend (the seam a compiled engine replaces): ``embed(crops)``,
        ``embed_with_spectrum(crops)``, ``support_part(z)``, ``pair_probs(z, support_part)``
        on uint8 crops / float32 fingerprints. See :mod:`ofa_sdk.backends`."""
        return self._backend

    def embed_stream(self, items: Iterable[Any], spectra: bool = False) -> Iterator["EmbeddedItem"]:
        """Yields one :class:`EmbeddedItem` (source, z of the crops (k,d) or None, error, note,
        spectrum) per input, in order, batching crops across inputs. With ``spectra=True`` the
        spectrum is the input's mean residual log-spectrum over its crops, (3,h,w), computed in
        the same pass as z (None otherwise). Unusable inputs have z None and the reason in
        ``error``; they never stop the stream."""
        pending: List[Union[imio.Prepared, imio.ImageError]] = []
        n_crops = 0

        def flush():
            nonlocal pending, n_crops
            good = [p for p in pending if isinstance(p, imio.Prepared)]
            z = spec = None
            if good:
                crops = np.concatenate([p.crops for p in good])
                if spectra:
                    z, spec = self._backend.embed_with_spectrum(crops)
                else:
                    z = self._backend.embed(crops)
            k = 0
            for p in pending:
                if isinstance(p, imio.ImageError):
                    yield EmbeddedItem(p.source, None, p.reason, "", None)
                else:
                    n = len(p.crops)
                    yield EmbeddedItem(p.source, z[k:k + n], "", p.note,
                                       spec[k:k + n].mean(0) if spectra else None)
                    k += n
            pending, n_crops = [], 0

        for p in self._prepared(items):
            pending.append(p)
            n_crops += len(p.crops) if isinstance(p, imio.Prepared) else 0
            if n_crops >= self.batch_size:
                yield from flush()
        if pending:
            yield from flush()

    def fingerprint(self, images, errors: str = "raise") -> np.ndarray:
        """(N, d) float32 L2-normalised fingerprints (mean over crops, re-normalised).
        A bad input raises :class:`InputError` (with every other row in ``.partial``), or gives
        a NaN row with ``errors='nan'``."""
        rows, errs = [], []
        for i, (src, z, err, _, _) in enumerate(self.embed_stream(imio.iter_items(images))):
            if z is None:
                errs.append((i, src, err))
                rows.append(np.full(self.dim, np.nan, np.float32))
            else:
                rows.append(scoring.prototype(z).astype(np.float32))
        out = np.stack(rows) if rows else np.zeros((0, self.dim), np.float32)
        return self._finish(out, errs, errors)

    @staticmethod
    def _finish(out, errs, errors):
        if errors not in ("raise", "nan"):
            raise ValueError(f"errors must be 'raise' or 'nan', got {errors!r}")
        if errs and errors == "raise":
            raise InputError(errs, out)
        return out

    # -- gallery -----------------------------------------------------------------------------------
    def enroll(self, name: str, images, *, overwrite: bool = False,
               metadata: Optional[Dict] = None, min_images: int = 1) -> Profile:
        """Make a generator profile from a support set and store it. Unusable support images are
        skipped and counted in the profile's metadata; fewer than ``min_images`` usable ones
        raise :class:`InputError`."""
        if not overwrite and name in self.gallery:
            raise GalleryError(f"profile {name!r} exists; pass overwrite=True to replace it")
        zs, skipped, sources = [], [], 0
        items = imio.iter_items(images)
        specs = []
        for i, (src, z, err, _, spec) in enumerate(self.embed_stream(items, spectra=True)):
            sources += 1
            if z is None:
                skipped.append((i, src, err))
            else:
                zs.append(z)
                specs.append(spec)
        if len(zs) < max(1, min_images):
            if skipped:
                raise InputError(skipped)
            raise ValueError(f"enroll {name!r}: no images given")
        support = np.concatenate(zs).astype(np.float32)
        meta = {"images": sources, "used": len(zs), "skipped": len(skipped),
                "skipped_examples": [f"{s}: {r}" for _, s, r in skipped[:10]],
                "crops": self.crops, "crop": self.crop, "enrolled_at": time.time()}
        meta.update(metadata or {})
        spectrum = np.mean(specs, axis=0).astype(np.float32)  # every image has the same crops
        prof = Profile(name, self.model_id, support, self._backend.support_part(support), meta,
                       time.time(), spectrum)
        self.gallery.put(prof, overwrite=overwrite)
        return prof

    def profiles(self) -> List[Dict]:
        return self.gallery.info()

    def _profile(self, name: str) -> Profile:
        return self.gallery.get(name, model_id=self.model_id)

    def _scorer(self, profiles: Sequence[Profile]):
        """A function (k, d) crop fingerprints -> scores against ``profiles``, with the
        per-profile work (prototypes) done once."""
        if self.score == "pair":
            return lambda z: [float(self._pair_scores([z], p.support_part)[0]) for p in profiles]
        if not profiles:
            return lambda z: []
        protos = np.stack([p.prototype for p in profiles])
        return lambda z: [float(v) for v in self.calibration(protos @ scoring.prototype(z))]

    def support_scores(self, query_z: Sequence[np.ndarray], support_z: np.ndarray,
                       chunk: int = 256, score: Optional[str] = None) -> np.ndarray:
        """Scores of many queries against one support set, with ``self.score`` (or ``score``):
        ``query_z`` is a list of (k, d) crop fingerprints (one per image, as ``embed_stream``
        yields them), ``support_z`` the (S, d) support fingerprints. Used by the evaluation
        runner."""
        score = score or self.score
        if score == "prototype":
            if self.calibration is None:
                raise ValueError("score='prototype' needs a calibrated model")
            q = np.stack([scoring.prototype(z) for z in query_z])
            return self.calibration(q @ scoring.prototype(support_z))
        return self._pair_scores(query_z, self._backend.support_part(support_z), chunk)

    def _pair_scores(self, query_z: Sequence[np.ndarray], support_part: np.ndarray,
                     chunk: int = 256) -> np.ndarray:
        """The paper's rule: per query image, the mean pair probability over its crops and the
        support, queries batched ``chunk`` crops at a time."""
        flat = np.concatenate(query_z)
        owner = np.repeat(np.arange(len(query_z)), [len(q) for q in query_z])
        per_crop = np.concatenate([self._backend.pair_probs(flat[i:i + chunk], support_part).mean(1)
                                   for i in range(0, len(flat), chunk)])
        return np.bincount(owner, per_crop) / np.bincount(owner)

    def verify(self, images, name: str, errors: str = "raise") -> np.ndarray:
        """(N,) probability that each image was made by the enrolled model ``name``."""
        score_of = self._scorer([self._profile(name)])
        out, errs = [], []
        for i, (src, z, err, _, _) in enumerate(self.embed_stream(imio.iter_items(images))):
            if z is None:
                errs.append((i, src, err))
                out.append(np.nan)
            else:
                out.append(score_of(z)[0])
        return self._finish(np.asarray(out, dtype=np.float32), errs, errors)

    def same_source(self, a, b) -> float:
        """Probability that images a and b come from the same generator: with ``score='pair'``
        g averaged over both orders and over crops, with ``'prototype'`` the calibrated cosine
        of their crop-averaged fingerprints."""
        za, zb = [self._one(x) for x in (a, b)]
        if self.score == "prototype":
            return float(self.calibration(scoring.prototype(za) @ scoring.prototype(zb)))
        pa = self._backend.support_part(za)
        pb = self._backend.support_part(zb)
        return float((self._backend.pair_probs(zb, pa).mean() + self._backend.pair_probs(za, pb).mean()) / 2)

    def _one(self, x) -> np.ndarray:
        if not imio.is_single(x):
            raise TypeError("same_source takes one image for each argument")
        src, z, err, _, _ = next(self.embed_stream([x]))
        if z is None:
            raise InputError([(0, src, err)])
        return z

    def attribute(self, images, threshold: Union[float, str, None] = None,
                  models: Optional[Sequence[str]] = None) -> List[Attribution]:
        """Per image: the best enrolled model and its score, or unknown (None) below the
        threshold. Bad inputs give results with ``error`` set; nothing raises per item."""
        return list(self._attribute_stream(imio.iter_items(images), threshold, models))

    def profile_threshold(self, name: str) -> float:
        """The per-profile threshold used with ``threshold="profile"``: a threshold below which
        about ``profile_quantile`` of the generator's new images should fall, estimated from
        its support images' leave-one-out scores (:func:`ofa_sdk.scoring.self_threshold`: a
        normal prediction bound on their log-distance, which stays near its target for small
        support sets). Profiles with fewer than 3 support images get 0.5."""
        return self._threshold_of(self._profile(name))

    def _threshold_of(self, prof: Profile) -> float:
        """``profile_threshold`` for a loaded profile, cached per (name, enrollment time)."""
        key = (prof.name, prof.created, self.score, self.profile_quantile)
        if key not in self._self_thresholds:
            self._self_thresholds[key] = self.support_threshold(
                prof.support, int(prof.metadata.get("crops", 1)), support_part=prof.support_part)
        return self._self_thresholds[key]

    def support_threshold(self, support_z: np.ndarray, crops: int,
                          support_part: Optional[np.ndarray] = None) -> float:
        """What :meth:`profile_threshold` returns for a support set of (S * crops, d)
        fingerprints, on the score scale of ``self.score``."""
        if crops < 1 or len(support_z) % crops or len(support_z) // crops < MIN_PROFILE_IMAGES:
            return FALLBACK_THRESHOLD
        own = self.leave_one_out_scores(support_z, crops, support_part=support_part)
        raw = scoring.self_threshold(own, self.profile_quantile)
        return float(self.calibration(raw)) if self.score == "prototype" else raw

    def leave_one_out_scores(self, support_z: np.ndarray, crops: int,
                             support_part: Optional[np.ndarray] = None) -> np.ndarray:
        """(S,) each support image scored against the *other* S - 1, on the rule's raw scale
        (``self.score``): the cosine to their prototype, or the mean pair probability over
        their crops. ``support_z`` is (S * crops, d), image by image. ``support_part`` (the
        pair head's support half, as stored in a profile) saves recomputing it."""
        if self.score == "prototype":
            return scoring.leave_one_out_cosines(support_z, crops)
        z = np.asarray(support_z, np.float32)
        if crops < 1 or len(z) % crops or len(z) // crops < 2:
            raise ValueError(f"leave-one-out needs at least 2 whole {crops}-crop images, got {len(z)} fingerprints")
        part = self._backend.support_part(z) if support_part is None else support_part
        p = self._backend.pair_probs(z, part)                              # (S*k, S*k)
        img = np.arange(len(z)) // crops
        other = img[:, None] != img[None, :]
        per_crop = (p * other).sum(1) / other.sum(1)
        return np.bincount(img, per_crop) / crops

    def _attribute_stream(self, items, threshold, models) -> Iterator[Attribution]:
        thr = self.threshold if threshold is None else scoring.parse_threshold(threshold)
        names = list(models) if models is not None else self.gallery.names()
        profiles = [self._profile(n) for n in names]
        score_of = self._scorer(profiles)
        if thr == "profile":
            per_name = {p.name: self._threshold_of(p) for p in profiles}
        else:
            per_name = dict.fromkeys(names, thr)
        for src, z, err, note, _ in self.embed_stream(items):
            if z is None:
                yield Attribution(src, None, float("nan"), {}, err, note)
                continue
            scores = dict(zip(names, score_of(z)))
            best = max(scores, key=scores.get) if scores else None
            score = scores[best] if best else float("nan")
            yield Attribution(src, best if best and score >= per_name[best] else None, score,
                              scores, None, note)

    def scan(self, sources, threshold: Union[float, str, None] = None, *, progress: bool = True,
             skip: Optional[set] = None, models: Optional[Sequence[str]] = None,
             recursive: bool = True) -> Iterator[Attribution]:
        """Stream attributions for directories, globs or file lists with bounded memory.
        ``skip``: sources (as strings) to leave out, e.g. rows already written by a resumed
        scan. Every input yields exactly one result (an error result when unreadable)."""
        from tqdm import tqdm
        skip = skip or set()
        paths = (p for p in imio.expand_paths(sources, recursive) if str(p) not in skip)
        bar = tqdm(desc="scan", unit="img", disable=not progress, dynamic_ncols=True,
                   mininterval=1.0)
        try:
            for r in self._attribute_stream(paths, threshold, models):
                bar.update(1)
                yield r
        finally:
            bar.close()

    def calibrate_threshold(self, negatives, fpr: float = 0.05) -> float:
        """Set ``threshold`` so that about ``fpr`` of images from sources *not* in the gallery
        would be attributed to an enrolled model."""
        if not 0 < fpr < 1:
            raise ValueError("fpr must be in (0, 1)")
        best = [r.score for r in self.attribute(negatives, threshold=2.0) if r.ok]
        if not best:
            raise ValueError("calibrate_threshold needs at least one usable negative image")
        self.threshold = float(np.quantile(best, 1 - fpr))
        return self.threshold

    # -- closed/open-set head (paper Tables 4-5) -------------------------------------------------
    def fit_closed_set(self, real_images, models: Optional[Sequence[str]] = None, *,
                       name: str = "default", recon_per_image: int = 2, epochs: int = 300,
                       seed: int = 0, hidden: int = 128) -> Dict:
        """Fit a (T+1)-way head on the support fingerprints of T enrolled models (default: all)
        plus a rejection class of simulator reconstructions of ``real_images``; store it in the
        gallery under ``name``. Returns training statistics."""
        from . import closed_set as cs
        names = list(models) if models is not None else self.gallery.names()
        if not names:
            raise ValueError("fit_closed_set needs at least one enrolled model")
        known = {n: self._profile(n).support for n in names}
        preps = [p for p in self._prepared(imio.iter_items(real_images)) if isinstance(p, imio.Prepared)]
        if not preps:
            raise ValueError("fit_closed_set needs usable real photos for the rejection class")
        recon = cs.reconstruct_real(self.bundle.simulator(), np.concatenate([p.crops for p in preps]),
                                    recon_per_image, seed)
        reject = np.concatenate([self._backend.embed(recon[i:i + self.batch_size])
                                 for i in range(0, len(recon), self.batch_size)])
        head, classes, stats = cs.fit_head(known, reject, epochs=epochs, hidden=hidden, seed=seed)
        stats.update({"real_images": len(preps), "reconstructions": len(recon), "epochs": epochs,
                      "seed": seed})
        self.gallery.put_head(name, self.model_id, classes, self.dim, hidden, cs.head_to_bytes(head), stats)
        self._heads.pop(name, None)
        return stats

    def open_set(self, images, name: str = "default",
                 threshold: Optional[float] = None) -> List["OpenSetResult"]:
        """Closed/open-set attribution with the head ``name``: per image the predicted known
        model, the max known-class probability, and a label that is None (unknown) when the
        rejection class wins or the probability is below ``threshold``."""
        from . import closed_set as cs
        if name not in self._heads:
            h = self.gallery.get_head(name, self.model_id)
            self._heads[name] = (cs.head_from_bytes(h["weights"], h["dim"], len(h["classes"]), h["hidden"]),
                                 h["classes"])
        head, classes = self._heads[name]
        known = classes[:-1]
        out = []
        for src, z, err, _, _ in self.embed_stream(imio.iter_items(images)):
            if z is None:
                out.append(cs.OpenSetResult(src, None, None, float("nan"), {}, err))
                continue
            p = cs.predict(head, z).mean(0)
            k = int(np.argmax(p[:-1]))
            rejected = int(np.argmax(p)) == len(known) or (threshold is not None and p[k] < threshold)
            out.append(cs.OpenSetResult(src, None if rejected else known[k], known[k], float(p[k]),
                                        {c: float(v) for c, v in zip(classes, p)}))
        return out
