"""The Attributor: the facade that composes the stages of the data flow.

    from ofa_sdk import Attributor
    att = Attributor(gallery="gallery.db")
    att.enroll("model-a", "samples/model-a/")          # support set (paper: 100 images)
    att.verify("query.png", "model-a")                  # P(made by model-a)
    att.attribute(["q1.png", "q2.png"])                  # best enrolled profile or unknown
    for r in att.scan("incoming/"): ...                 # streaming, bounded memory

    input policy (pipeline.InputPolicy: decode, crop; prefetched in worker threads)
      -> engine (backends: uint8 crops -> unit fingerprints)
      -> score rule (scoring: batch x profiles, via a GallerySnapshot)
      -> decision (decision: threshold, label)

Each stage lives in its own module; this class wires them, holds the gallery (the store of
profiles) and caches per-profile thresholds. It does little else.
"""
from __future__ import annotations

import dataclasses
import os
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np

from . import decision, scoring
from . import images as imio
from .decision import Attribution  # noqa: F401  (public)
from .gallery import Delivery, Gallery, GalleryError, Profile, delivery_label
from .pipeline import (EmbeddedItem, InputError, InputPolicy, embed_prepared,  # noqa: F401
                       embed_stream, finish)
from .snapshot import GallerySnapshot, SnapshotCache, crop_counts, make_snapshot  # noqa: F401

USER = "user"   # the profile metadata key under which enroll(metadata=...) is kept, apart from ours


def _added(old: Profile, new: Dict, spectrum: np.ndarray) -> Dict:
    """Metadata of ``old`` extended by a new enrollment's: counts summed, crop counts appended,
    user metadata updated, the mean spectrum weighted by images (returned under ``_spectrum``)."""
    counts = crop_counts(old)
    counts = list(counts) if not isinstance(counts, int) else [counts] * (len(old.support) // counts)
    # the support's JPEG quality and size stay the first enrollment's, like its delivery
    meta = {**old.metadata, **{k: v for k, v in new.items()
                               if k not in ("images", "used", "skipped", "support_jpeg_quality",
                                            "support_size")}}
    meta[USER] = {**old.metadata.get(USER, {}), **new.get(USER, {})}
    for k in ("images", "used", "skipped"):
        meta[k] = int(old.metadata.get(k, 0)) + int(new[k])
    meta["crop_counts"] = counts + new["crop_counts"]
    meta["added"] = list(old.metadata.get("added", [])) + [
        {"at": new["enrolled_at"], **{k: new[k] for k in ("images", "used", "skipped")}}]
    meta["enrolled_at"] = old.metadata.get("enrolled_at", new["enrolled_at"])
    n_old, n_new = len(counts), len(new["crop_counts"])
    meta["_spectrum"] = spectrum if old.spectrum is None or old.spectrum.shape != spectrum.shape \
        else ((old.spectrum * n_old + spectrum * n_new) / (n_old + n_new)).astype(np.float32)
    return meta


# enroll's transforms, in the order applied, and the variants it adds
DELIVERY = ("rescale", "jpeg_quality", "jpeg_variants", "rescale_variants", "resize_kernel")

# The variants a profile is enrolled with by default: its support also re-encoded at each of
# JPEG_VARIANTS, and resized by each of RESCALE_VARIANTS (bicubic unless enroll's resize_kernel
# names the platform's) and then stored lossless and re-encoded at each of JPEG_VARIANTS, so
# that a query that arrives resized or re-encoded is scored against the variant delivered
# nearest it (snapshot.nearest_variant) instead of a support it no longer resembles
# (benchmarks/RESULTS.md 11.10-11.11: the choice and what they recover; 11.24: the resize
# grid, a variant within a few percent of a query's factor is what keeps its labels; 11.28: one
# upscale variant, for images stored larger than generated; 11.29: resize kernels)
JPEG_VARIANTS = (95, 90, 75)
RESCALE_VARIANTS = (1.2, 0.9, 0.75, 0.6, 0.5)


def delivery_of(meta: Dict) -> Dict:
    """A profile's delivery (:data:`DELIVERY`) from its metadata (``Profile.metadata``): how
    its support was resized and re-encoded (None: as given), its variants (none before they
    were recorded) and the kernel it resized with (None: bicubic)."""
    out = {k: meta.get(k) for k in DELIVERY}
    return {**out, "jpeg_variants": tuple(out["jpeg_variants"] or ()),
            "rescale_variants": tuple(out["rescale_variants"] or ())}


def _variant_keys(delivery: Dict) -> List[Delivery]:
    """The (scale, JPEG quality; None: lossless) of each variant a delivery asks for: every
    scale (1 and the rescale variants) with every quality (lossless and the JPEG variants),
    but the profile itself (1, lossless)."""
    return [(sc, q) for sc in (1.0, *delivery["rescale_variants"])
            for q in (None, *delivery["jpeg_variants"]) if (sc, q) != (1.0, None)]


def _same_delivery(old: Profile, new: Dict) -> None:
    """An add keeps a profile's support of one kind: resized and re-encoded as its first
    enrollment was, with the same variants, or as given."""
    was = delivery_of(old.metadata)
    if was != new:
        def say(d):
            return ", ".join(f"{k}={v!r}" for k, v in d.items() if v not in (None, ())) \
                or "as given"
        raise GalleryError(f"profile {old.name!r} holds images {say(was)}; these would be "
                           f"{say(new)}: add them with {say(was)}, or enroll them as another "
                           f"profile")


def _merged(old: Optional[Profile], new: Profile, meta: Dict, spectrum) -> Profile:
    """``new`` (a profile or a variant) added to ``old`` (None: ``new`` as it is)."""
    if old is None:
        return new
    # a profile enrolled before centre crops were stored has none for its old images: the
    # merged profile then has none either (its 1-crop level uses grid crops)
    both = None if old.centre is None or new.centre is None else \
        np.concatenate([old.centre, new.centre])
    return Profile(new.name, new.model_id, np.concatenate([old.support, new.support]),
                   np.concatenate([old.support_part, new.support_part]), meta, new.created,
                   spectrum, both, variant=new.variant)


# The share of support images that must have one size for it to be the profile's (a resized
# query's factor is read against it; generators emit fixed sizes, photos do not)
SHARED_SIZE = 0.8


@dataclass
class _Support:
    """A support set as embedded: per usable image its crops' fingerprints, spectrum and centre
    crop's fingerprint; the unusable ones (index, source, reason); how many items there were;
    the JPEG quality it arrived at (the median of those read when at least half the usable
    images have one; else None: lossless) and the (h, w) at least :data:`SHARED_SIZE` of them
    share (else None), which routing reads (:func:`ofa_sdk.snapshot.nearest_variant`)."""
    zs: List[np.ndarray]
    specs: List[np.ndarray]
    centres: List[np.ndarray]
    skipped: List[Tuple[int, str, str]]
    sources: int
    quality: Optional[int]
    size: Optional[Tuple[int, int]]


class Attributor:
    """Fingerprint, enroll, score, attribute and scan images with one model and one gallery.

    ``model``: a model file, a shipped model's name (``"compact-v2"``, the default, or
    ``"compact"``, the previous one; :data:`ofa_sdk.weights.MODELS`), a loaded
    :class:`~ofa_sdk.weights.ModelBundle`, or None for the default. ``backend``: "auto" or an
    engine name (:mod:`ofa_sdk.backends`); ``device``:
    0, "cuda:1", "cpu" or a ``torch.device`` (:func:`ofa_sdk.backends.resolve_device`);
    ``strict`` raises instead of falling back. ``gallery``: a SQLite file, a
    :class:`~ofa_sdk.gallery.Gallery`, or None (in memory). ``crops``: crops per image, an int
    or "auto" (tiles covering the image up to a cap, :func:`ofa_sdk.images.crop_count`);
    ``small``: the policy for images smaller than the crop; ``max_pixels``: the
    decompression-bomb limit; ``max_bytes``: the largest file read (larger ones, and anything
    that is not a regular file, are per-item errors, never read); ``provenance``: read what
    encoded files declare about their origin. ``rule``: "gaussian", "prototype" or "pair"
    (default: the first the model is calibrated for, in that order; :mod:`ofa_sdk.scoring`);
    ``whiten="gallery"``: the Gaussian rule whitened by the gallery's pooled covariance;
    ``threshold``: "profile" (default) or a number; ``profile_quantile``: the share of a
    generator's own images a profile threshold rejects; ``ambiguity_margin``: ``attribute``
    and ``scan`` answer ``unknown`` when a second accepting profile finds the image within this
    much as typical as the chosen one (:func:`ofa_sdk.decision.rival`; None, the default:
    :data:`ofa_sdk.decision.DEFAULT_MARGIN`, a tie, with per-profile thresholds and no head, 0
    otherwise; 0: never; a larger margin gives fewer wrong labels and fewer labels on
    never-enrolled generators for fewer right ones, benchmarks/RESULTS.md 10.6-10.7);
    ``choose_head``: the name of a closed-set head (:func:`ofa_sdk.closed_set.fit_closed_set`)
    that chooses among the profiles whose thresholds an image meets, instead of the
    typicality (which images get a label is unchanged; benchmarks/RESULTS.md 3.1).
    ``batch_size``: crops per engine call;
    ``workers``: decoding threads; ``engine_options``: per engine, constructor keywords.
    ``verbose``: progress bars (on stderr) for scans and enrollment; off by default in the
    library, on in the CLI.
    """

    def __init__(self, model=None, backend: str = "auto", device: Union[int, str, Any, None] = None,
                 gallery=None, strict: bool = False, *, batch_size: int = 32,
                 crops: Union[int, str] = imio.AUTO,
                 small: str = "reject", threshold: Union[float, str, None] = None,
                 workers: int = 2, rule: Optional[str] = None,
                 profile_quantile: float = decision.DEFAULT_FRACTION,
                 ambiguity_margin: Optional[float] = None,
                 choose_head: Optional[str] = None,
                 max_pixels: int = imio.MAX_PIXELS, provenance: bool = True,
                 max_bytes: int = imio.MAX_BYTES,
                 engine_options: Optional[Dict[str, Dict]] = None, whiten: Optional[str] = None,
                 verbose: bool = False):
        from .backends import select_engine
        from .weights import as_bundle

        self.bundle = as_bundle(model)
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size!r}")
        self.policy = InputPolicy(self.bundle.config.crop, crops, small, max_pixels, provenance,
                                  max_bytes)
        self.batch_size, self.workers = batch_size, workers
        self.threshold = decision.parse_threshold(
            decision.DEFAULT_THRESHOLD if threshold is None else threshold)
        self.profile_quantile = decision.check_fraction(profile_quantile)
        self.ambiguity_margin = None if ambiguity_margin is None else \
            decision.check_margin(ambiguity_margin)      # None: decision.margin_for's default
        self.choose_head = choose_head
        self.rule = scoring.make_rule(rule, self.bundle, whiten)
        self.strict = strict
        self.verbose = bool(verbose)
        self._engine, self.backend_note = select_engine(backend, self.bundle, device, strict,
                                                        engine_options)
        self.gallery = gallery if isinstance(gallery, Gallery) else Gallery(gallery)
        self._snapshots = SnapshotCache()   # prepared state and own scores, kept between calls

    # -- what runs -------------------------------------------------------------------------------
    @property
    def engine(self):
        """The engine (:class:`ofa_sdk.backends.Engine`): uint8 crops -> unit fingerprints."""
        return self._engine

    @property
    def backend(self) -> str:
        """The name of the engine actually in use."""
        return self._engine.name

    @property
    def model_id(self) -> str:
        return self.bundle.model_id

    @property
    def dim(self) -> int:
        return self.bundle.config.extractor.dim

    @property
    def crop(self) -> int:
        return self.policy.crop

    @property
    def crops(self) -> Union[int, str]:
        return self.policy.crops

    @property
    def small(self) -> str:
        return self.policy.small

    def info(self) -> Dict:
        return {"model_id": self.model_id, "model_path": str(self.bundle.path),
                "config": self.bundle.config.name, "crop": self.crop, "dim": self.dim,
                "backend": self.backend, "backend_note": self.backend_note,
                "rule": self.rule.name, "threshold": self.threshold,
                "profile_quantile": self.profile_quantile,
                "ambiguity_margin": self.margin(), "choose_head": self.choose_head,
                "crops": self.crops,
                "small": self.small,
                "gallery": str(self.gallery.path) if self.gallery.path else "memory",
                "profiles": self.gallery.names()}

    def __repr__(self):
        return (f"Attributor(model={self.model_id}, backend={self.backend!r}, "
                f"gallery={self.gallery!r})")

    # -- input policy + engine -------------------------------------------------------------------
    def embed_stream(self, items: Iterable[Any], spectra: bool = False) -> Iterator[EmbeddedItem]:
        """One :class:`~ofa_sdk.pipeline.EmbeddedItem` per input, in order (see
        :func:`ofa_sdk.pipeline.embed_stream`); unusable inputs carry their reason."""
        return embed_stream(self._engine, items, self.policy, self.batch_size, self.workers, spectra)

    def embed_prepared(self, prepared: Iterable) -> Iterator[EmbeddedItem]:
        """:meth:`embed_stream` on inputs the input policy already decoded and cropped
        (``self.policy(item)``: :class:`~ofa_sdk.images.Prepared` or
        :class:`~ofa_sdk.images.ImageError`), batched as ``embed_stream`` batches them."""
        return embed_prepared(self._engine, prepared, self.batch_size)

    def _embedded(self, images) -> Iterator[EmbeddedItem]:
        return self.embed_stream(imio.iter_items(images))

    def fingerprint(self, images, errors: str = "raise") -> np.ndarray:
        """(N, d) float32 L2-normalised fingerprints (mean over crops, re-normalised).
        A bad input raises :class:`InputError` (with every other row in ``.partial``), or gives
        a NaN row with ``errors='nan'``."""
        rows, errs = [], []
        for i, e in enumerate(self._embedded(images)):
            if e.ok:
                rows.append(scoring.prototype(e.z).astype(np.float32))
            else:
                errs.append((i, e.source, e.error))
                rows.append(np.full(self.dim, np.nan, np.float32))
        out = np.stack(rows) if rows else np.zeros((0, self.dim), np.float32)
        return finish(out, errs, errors)

    # -- gallery ---------------------------------------------------------------------------------
    def enroll(self, name: str, images, *, overwrite: bool = False, add: bool = False,
               metadata: Optional[Dict] = None, min_images: int = 1,
               jpeg_quality: Optional[int] = None, rescale: Optional[float] = None,
               jpeg_variants: Optional[Sequence[int]] = None,
               rescale_variants: Optional[Sequence[float]] = None,
               resize_kernel: Optional[str] = None) -> Profile:
        """Make a generator profile from a support set and store it. Unusable support images are
        skipped and counted in the profile's metadata; fewer than ``min_images`` usable ones
        raise :class:`InputError`. ``add=True`` adds the images to an existing profile's
        support instead (every rule's state is rebuilt from the support, so the profile's
        mean, covariance and threshold follow); the merge reads and writes the profile in one
        transaction (:meth:`~ofa_sdk.gallery.Gallery.update`), so concurrent adds all land and
        an add never brings back a profile removed while it embedded. ``metadata`` (yours) is
        kept under ``profile.metadata["user"]``, apart from the SDK's own fields.

        ``rescale``, ``jpeg_quality``: each support image is resized by this factor (with
        ``resize_kernel``) and re-encoded at this JPEG quality before it is embedded, for
        queries that a platform delivers resized and re-encoded about so: a support as
        generated holds them to thresholds fitted on images they no longer resemble and
        refuses most of them (benchmarks/RESULTS.md 11.9). Recorded in the profile's metadata;
        an ``add`` must use the profile's.

        ``jpeg_variants``, ``rescale_variants``: JPEG qualities and resize factors at which
        the support is also delivered and embedded: every factor (and 1) with every quality
        (and lossless), but the support itself (None: :data:`JPEG_VARIANTS` and
        :data:`RESCALE_VARIANTS` for a new profile, the profile's own for an ``add``; ``()``:
        none). A query is scored against the variant delivered nearest it (its JPEG quality
        read from its quantisation tables or pixels, its resize factor from its size against
        the support's, :meth:`~ofa_sdk.snapshot.GallerySnapshot.route`), a query as generated
        against the support itself, so a profile enrolled as generated keeps its promise on
        resized and re-encoded queries too (benchmarks/RESULTS.md 11.10-11.11). Each variant
        costs one more embedding pass over the support; ``jpeg_quality`` and ``rescale`` fix
        the support's one delivery and make none.

        ``resize_kernel``: the kernel ``rescale`` and ``rescale_variants`` resize with, one of
        :data:`~ofa_sdk.images.KERNELS` (None: bicubic; an ``add``: the profile's). A resized
        query keeps its labels best against a variant resized as the platform resized it
        (``"box"`` for area averaging, OpenCV's INTER_AREA; benchmarks/RESULTS.md 11.29), so
        pass the platform's kernel when it is known."""
        return self._enroll(name, images, overwrite, add, metadata, {}, min_images,
                            {"rescale": rescale, "jpeg_quality": jpeg_quality,
                             "jpeg_variants": jpeg_variants,
                             "rescale_variants": rescale_variants,
                             "resize_kernel": resize_kernel})

    def _enroll(self, name: str, images, overwrite: bool, add: bool, user: Optional[Dict],
                internal: Dict, min_images: int, delivery: Optional[Dict] = None) -> Profile:
        if overwrite and add:
            raise ValueError("enroll: overwrite=True replaces a profile, add=True extends it; pass one")
        delivery = self._delivery(name, add, delivery or {})
        existed = add and name in self.gallery
        if existed:                             # another model's profile, or another delivery:
            _same_delivery(self._profile(name), delivery)     # refused before embedding
        if not (overwrite or add) and name in self.gallery:
            raise GalleryError(f"profile {name!r} exists; pass overwrite=True to replace it "
                               f"or add=True to add these images to it")
        keys = _variant_keys(delivery)
        items = imio.iter_items(images)
        if keys:                                # one pass over the items per variant
            items = list(items)
        transform = {k: delivery[k] for k in ("rescale", "jpeg_quality")}
        kernel = {"resize_kernel": delivery["resize_kernel"] or "bicubic"}
        base = self._embed_support(name, items, {**transform, **kernel})
        zs, skipped = base.zs, base.skipped
        if len(zs) < max(1, min_images):
            if skipped:
                raise InputError(skipped)
            raise ValueError(f"enroll {name!r}: no images given")
        now = time.time()
        meta = {"images": base.sources, "used": len(zs), "skipped": len(skipped),
                "skipped_examples": [f"{s}: {r}" for _, s, r in skipped[:10]],
                "crops": self.crops, "crop_counts": [len(z) for z in zs], "crop": self.crop,
                **{k: list(v) if isinstance(v, tuple) else v for k, v in delivery.items()},
                "support_jpeg_quality": base.quality,
                "support_size": None if base.size is None else
                [round(x * (transform["rescale"] or 1.0)) for x in base.size],
                "enrolled_at": now, **internal, USER: dict(user or {})}
        spectrum = np.mean(base.specs, axis=0).astype(np.float32)
        prof = self._profile_of(name, zs, base.centres, meta, spectrum, now)
        # a resized query is told by its size against the support's: without one shared size,
        # no resized variant could be chosen, so none is made
        for sc, q in [k for k in keys if k[0] == 1.0 or base.size is not None]:
            # (variants only with no fixed delivery: the support itself is as given)
            v = self._embed_support(f"{name} {delivery_label((sc, q))}", items,
                                    {"rescale": None if sc == 1.0 else sc, "jpeg_quality": q,
                                     **kernel})
            if v.zs:
                vmeta = {"crop_counts": [len(z) for z in v.zs], "jpeg_quality": q, "rescale": sc}
                prof.variants[(sc, q)] = self._profile_of(name, v.zs, v.centres, vmeta, None, now,
                                                          (sc, q))
        if not add:
            self.gallery.put(prof, overwrite=overwrite)
            return prof

        def merge(old: Optional[Profile]) -> Profile:      # inside the write transaction
            if old is None:
                return prof
            if old.model_id not in self.bundle.ids:
                self._profile(name)                       # raises ModelMismatch
            _same_delivery(old, delivery)
            m = _added(old, meta, spectrum)
            out = _merged(old, prof, m, m.pop("_spectrum"))
            for key, v in prof.variants.items():
                was = old.variants.get(key)
                vm = {**v.metadata, "crop_counts": list(crop_counts(was)) + v.metadata[
                    "crop_counts"]} if was is not None else v.metadata
                out.variants[key] = _merged(was, v, vm, None)
            return out
        return self.gallery.update(name, merge, must_exist=existed)

    def _delivery(self, name: str, add: bool, given: Dict) -> Dict:
        """enroll's delivery (:data:`DELIVERY`), checked; variants by default as
        :meth:`enroll` says."""
        checks = {"rescale": imio.check_rescale, "jpeg_quality": imio.check_quality}
        out = {k: None if given.get(k) is None else checks[k](given[k]) for k in checks}
        if isinstance(given.get("rescale_variants"), (int, float, str)):
            raise ValueError(f"rescale_variants must be a sequence of resize factors, got "
                             f"{given['rescale_variants']!r}")
        if isinstance(given.get("jpeg_variants"), (int, str)):
            raise ValueError(f"jpeg_variants must be a sequence of JPEG qualities, got "
                             f"{given['jpeg_variants']!r}")
        kinds = {"jpeg_variants": (imio.check_quality, JPEG_VARIANTS),
                 "rescale_variants": (imio.check_rescale, RESCALE_VARIANTS)}
        had = delivery_of(self._profile(name).metadata) if add and name in self.gallery else None
        fixed = {k: v for k, v in out.items() if v is not None}     # one delivery, no variants
        for k, (check, default) in kinds.items():
            v = given.get(k)
            if v is not None:
                v = tuple(sorted({check(x) for x in v}, reverse=True))
                if 1.0 in v and k == "rescale_variants":
                    raise ValueError("rescale_variants: a factor of 1 is the support itself")
                if v and fixed:
                    what = ", ".join(f"{f}={x}" for f, x in fixed.items())
                    raise ValueError(f"enroll: {what} fixes the support's one delivery; "
                                     f"{k}={v} adds others: pass one")
            else:       # an add keeps the profile's (checked against the rest after)
                v = had[k] if had is not None else () if fixed else default
            out[k] = v
        k = given.get("resize_kernel")
        if k is not None and imio.check_kernel(k) != "bicubic" \
                and out["rescale"] is None and not out["rescale_variants"]:
            raise ValueError(f"enroll: resize_kernel={k!r} with nothing to resize (no rescale, "
                             f"no rescale_variants)")
        # None: bicubic (a profile enrolled before kernels were recorded was resized so)
        out["resize_kernel"] = (had["resize_kernel"] if k is None and had is not None
                                else None if k in (None, "bicubic") else k)
        return out

    def _embed_support(self, name: str, items, transform: Dict) -> "_Support":
        """A support set through the input policy with ``transform`` (rescale, jpeg_quality):
        :class:`_Support`."""
        from tqdm import tqdm
        out = _Support([], [], [], [], 0, None, None)
        read, sizes = [], []
        # each image's centre crop is embedded too (one more crop per image), so the 1-crop
        # level of the profile's own scores is held out where a 1-crop query looks
        embedded = embed_stream(self._engine, items,
                                dataclasses.replace(self.policy, centre=True, **transform),
                                self.batch_size, self.workers, spectra=True)
        stream = tqdm(embedded, desc=f"enroll {name}", unit="img", disable=not self.verbose,
                      dynamic_ncols=True, mininterval=1.0)
        for i, e in enumerate(stream):
            out.sources += 1
            if e.ok:
                out.zs.append(e.z)
                out.specs.append(e.spectrum)
                out.centres.append(e.centre)
                read += [e.quality] if e.quality is not None else []
                sizes.append(e.size)
            else:
                out.skipped.append((i, e.source, e.error))
        n = len(out.zs)
        if read and 2 * len(read) >= n:
            out.quality = int(np.median(read))
        if sizes:
            size, k = Counter(sizes).most_common(1)[0]
            out.size = size if k >= SHARED_SIZE * n else None
        return out

    def _profile_of(self, name: str, zs, centres, meta: Dict, spectrum, created: float,
                    variant: Optional[Delivery] = None) -> Profile:
        support = np.concatenate(zs).astype(np.float32)
        centre = np.stack(centres).astype(np.float32)
        part = self.bundle.pair_head().support_part(support)
        return Profile(name, self.model_id, support, part, meta, created, spectrum, centre,
                       variant=variant)

    def profiles(self) -> List[Dict]:
        return self.gallery.info()

    def _profile(self, name: str) -> Profile:
        return self.gallery.get(name, model_id=self.bundle.ids)

    def profile_threshold(self, name: str, crops: Optional[int] = None) -> float:
        """The threshold ``threshold="profile"`` holds profile ``name``'s scores to (see
        :mod:`ofa_sdk.decision`) for a query of ``crops`` crops (None: whole support images):
        the one a snapshot of the gallery holds it to (the gallery's tail shape and, for a rule
        that whitens, its whitener are the whole gallery's)."""
        return self.snapshot([name], threshold="profile", chooser=False).thresholds_at(crops)[0]

    def snapshot(self, profiles: Optional[Sequence[str]] = None,
                 threshold: Union[float, str, None] = None, *,
                 chooser: bool = True) -> GallerySnapshot:
        """The profiles (default: all), prepared for this Attributor's rule, with their
        thresholds (default: ``self.threshold``): a picklable value that scores without the
        gallery (:func:`~ofa_sdk.snapshot.make_snapshot`, with this Attributor's caches).
        ``chooser=False``: without ``choose_head``'s head (scores need none)."""
        head = self.choose_head if chooser else None
        return make_snapshot(self.bundle, self.gallery, self.rule,
                             self.threshold if threshold is None else threshold, profiles,
                             self.profile_quantile, cache=self._snapshots,
                             margin=self.margin(threshold), chooser=head)

    def margin(self, threshold: Union[float, str, None] = None) -> float:
        """The ambiguity margin ``attribute`` and ``scan`` use with ``threshold`` (default:
        ``self.threshold``): :func:`ofa_sdk.decision.margin_for`."""
        thr = self.threshold if threshold is None else decision.parse_threshold(threshold)
        return decision.margin_for(self.ambiguity_margin, thr, self.choose_head)

    # -- scores ------------------------------------------------------------------------------------
    def scores(self, images, profiles: Optional[Sequence[str]] = None,
               errors: str = "raise", names: bool = False):
        """(N, P) scores of N images against the profiles ``profiles`` (default: every profile,
        in ``gallery.names()`` order), on the rule's probability scale, no threshold applied.
        Unusable inputs: :class:`InputError` (``errors='raise'``) or NaN rows (``'nan'``).
        ``names=True``: (scores, the profile names of its columns), read in one snapshot."""
        snap = self.snapshot(profiles, chooser=False)
        items = list(self._embedded(images))
        errs = [(i, e.source, e.error) for i, e in enumerate(items) if not e.ok]
        out = np.full((len(items), len(snap)), np.nan, np.float32)
        for i, (_, row) in enumerate(decision.scored(snap, items)):   # each by its route
            if row is not None:
                out[i] = row
        out = finish(out, errs, errors)
        return (out, snap.names) if names else out

    def verify(self, images, name: str, errors: str = "raise") -> np.ndarray:
        """(N,) score that each image was made by the generator of profile ``name``."""
        return self.scores(images, [name], errors)[:, 0]

    def same_source(self, a, b) -> float:
        """Score that images a and b come from the same generator: each image scored as a
        one-image profile for the other, averaged over both orders."""
        za, zb = self._one(a), self._one(b)
        ab = self.rule.scores(self.rule.prepare([za], counts=[len(za)]), [zb])[0, 0]
        ba = self.rule.scores(self.rule.prepare([zb], counts=[len(zb)]), [za])[0, 0]
        return float((ab + ba) / 2)

    def _one(self, x) -> np.ndarray:
        if not imio.is_single(x):
            raise TypeError("same_source takes one image for each argument")
        e = next(self.embed_stream([x]))
        if not e.ok:
            raise InputError([(0, e.source, e.error)])
        return e.z

    # -- decisions ---------------------------------------------------------------------------------
    def attribute(self, images, threshold: Union[float, str, None] = None,
                  profiles: Optional[Sequence[str]] = None) -> List[Attribution]:
        """Per image: the best profile and its score, or unknown (None) below that profile's
        threshold. Bad inputs give results with ``error`` set; nothing raises per item."""
        return list(self._attribute_stream(imio.iter_items(images), threshold, profiles))

    def _attribute_stream(self, items, threshold, profiles) -> Iterator[Attribution]:
        snap = self.snapshot(profiles, threshold)
        return decision.attribute_stream(snap, self.embed_stream(items), chunk=self.batch_size)

    def scan(self, sources, threshold: Union[float, str, None] = None, *,
             progress: Optional[bool] = None,
             skip: Optional[set] = None, profiles: Optional[Sequence[str]] = None,
             recursive: bool = True, output=None, allow_mismatch: bool = False,
             retry_errors: bool = False):
        """Attributions for directories, globs or file lists, streamed with bounded memory.
        Every input gives exactly one result (an error result when unreadable). ``skip``:
        sources to leave out, matched by resolved absolute path; ``progress``: a progress bar
        (None: ``verbose``).

        Without ``output``: an iterator of :class:`Attribution`. With ``output`` (a ``.jsonl``,
        ``.csv`` or ``.parquet`` file): one row per input written there, resuming what the file
        holds (its sources skipped, a torn last row repaired), as ``ofa-sdk scan`` does
        (:func:`ofa_sdk.scan_output.write_scan`); returns its
        :class:`~ofa_sdk.scan_output.ScanSummary`, or raises
        :class:`~ofa_sdk.scan_output.ScanInterrupted` (a KeyboardInterrupt carrying the
        summary) on Ctrl-C or SIGTERM, every row written so far kept. The output's rows name
        files by absolute path; what made them is recorded beside it
        (:func:`ofa_sdk.scan_output.run_record`: model id, rule, threshold policy, gallery
        digest), and resuming with another model, rule, threshold policy or gallery raises
        :class:`~ofa_sdk.scan_output.ScanMismatch` unless ``allow_mismatch``.
        ``retry_errors``: the files of error rows already there are scanned again."""
        def results(done=frozenset()):
            return self._scan(sources, threshold, self.verbose if progress is None else progress,
                              set(skip or ()) | set(done),
                              profiles, recursive, absolute=output is not None)
        if output is None:
            return results()
        from .scan_output import write_scan
        return write_scan(output, results, run=self.run_info(threshold, profiles),
                          allow_mismatch=allow_mismatch, retry_errors=retry_errors)

    def run_info(self, threshold: Union[float, str, None] = None,
                 profiles: Optional[Sequence[str]] = None) -> Dict:
        """What a scan's verdicts depend on (recorded beside its output):
        :func:`ofa_sdk.scan_output.describe_run`."""
        from .scan_output import describe_run
        return describe_run(self.model_id, self.rule, self.threshold if threshold is None else
                            decision.parse_threshold(threshold), self.profile_quantile,
                            self.crops, self.gallery, profiles, self.margin(threshold),
                            self.choose_head)

    def _scan(self, sources, threshold, progress: bool, skip: set, profiles,
              recursive: bool, absolute: bool = False) -> Iterator[Attribution]:
        from tqdm import tqdm
        done = {os.path.realpath(s) for s in skip}
        paths = (Path(os.path.abspath(p)) if absolute else p
                 for p in imio.expand_paths(sources, recursive)
                 if os.path.realpath(p) not in done)
        bar = tqdm(desc="scan", unit="img", disable=not progress, dynamic_ncols=True,
                   mininterval=1.0)
        try:
            for r in self._attribute_stream(paths, threshold, profiles):
                bar.update(1)
                yield r
        finally:
            bar.close()

    def calibrate_threshold(self, negatives, fpr: float = 0.05) -> float:
        """Set ``threshold`` so that about ``fpr`` of images from sources *not* in the gallery
        would be attributed to an enrolled profile: the (1 - fpr) quantile of their best
        scores."""
        if not 0 < fpr < 1:
            raise ValueError("fpr must be in (0, 1)")
        s = self.scores(negatives, errors="nan")
        best = s.max(1)[~np.isnan(s).any(1)] if s.shape[1] else np.zeros(0)
        if not len(best):
            raise ValueError("calibrate_threshold needs at least one usable negative image "
                             "and one enrolled profile")
        self.threshold = float(np.quantile(best, 1 - fpr))
        return self.threshold

    # -- discovery of new generators -----------------------------------------------------------
    def discovery_setup(self, profiles: Optional[Sequence[str]] = None) -> Dict:
        """What :func:`ofa_sdk.discovery.discover` needs from this Attributor: the feature map
        of its score rule (the rule's ``feature_map(snapshot)`` where it defines one, else unit
        fingerprints and the cosine), the enrolled profiles' spread in that space, and a scorer
        of fingerprints against the profiles."""
        from . import discovery
        snap = self.snapshot(profiles, chooser=False)
        fmap = getattr(self.rule, "feature_map", None)
        transform = fmap(snap) if callable(fmap) else None
        per_image = {}
        for n in snap.names:
            prof = self._profile(n)
            per_image[n] = scoring.image_points(prof.support, crop_counts(prof))

        def score_fn(x: np.ndarray) -> np.ndarray:
            return snap.scores([r[None, :].astype(np.float32) for r in np.asarray(x)])

        return {"transform": transform,
                "reference": discovery.reference_from(per_image, transform),
                "score_fn": score_fn if len(snap) else None, "profile_names": snap.names,
                "thresholds": snap.thresholds}

    def discover(self, items, out=None, *, sources: Optional[Sequence[str]] = None,
                 profiles: Optional[Sequence[str]] = None, pictures: bool = True,
                 label: str = "unknown", **options):
        """Cluster unattributed images into candidate new generators
        (:func:`ofa_sdk.discovery.discover`; ``options`` go there). ``items``: images (paths,
        folders, arrays), a scan's output (JSONL, CSV or Parquet; its rows labelled ``label``
        are taken), or stored (N, d) fingerprints with their ``sources``. Inputs that cannot be
        fingerprinted are listed in the result's ``skipped``. With ``out``, the report folder
        is written too (:func:`ofa_sdk.discovery.write_report`)."""
        from . import discovery
        skipped: List[str] = []
        if isinstance(items, np.ndarray) and items.ndim == 2 and items.dtype != np.uint8:
            x = items
        else:
            if isinstance(items, (str, os.PathLike)) and discovery.is_scan_output(items):
                items = discovery.unknown_sources(items, label)
            x, src = [], []
            for e in self._embedded(items):
                if e.ok:
                    x.append(scoring.prototype(e.z))
                    src.append(e.source)
                else:
                    skipped.append(f"{e.source}: {e.error}")
            x = np.stack(x) if x else np.zeros((0, self.dim))
            sources = src
        setup = self.discovery_setup(profiles)
        res = discovery.discover(x, sources, **{**setup, **options})
        res.skipped = skipped
        if out is not None:
            discovery.write_report(res, out, self._mean_spectrum, pictures)
        return res

    def _mean_spectrum(self, sources):
        specs = [e.spectrum for e in self.embed_stream(sources, spectra=True) if e.ok]
        return (np.mean(specs, axis=0), len(specs)) if specs else None

    def enroll_cluster(self, name: str, cluster_dir, *, overwrite: bool = False,
                       metadata: Optional[Dict] = None) -> Profile:
        """Enroll the images of a cluster folder written by :meth:`discover` (``DIR/cluster-<id>``)
        as profile ``name``, recording in its metadata that it came from discovery, from which
        cluster and which images."""
        from . import discovery
        meta = discovery.read_cluster(cluster_dir)
        origin = {"origin": "discovery",
                  "discovery": {"cluster_dir": str(Path(cluster_dir).resolve()),
                                "cluster": meta.get("cluster"), "summary": meta.get("summary"),
                                "method": meta.get("method"), "sources": meta["sources"]}}
        if not meta["sources"]:
            raise ValueError(f"cluster {cluster_dir} has no members")
        return self._enroll(name, meta["sources"], overwrite, False, metadata, origin, 1)
