"""GallerySnapshot: what scoring needs of a gallery, as one plain, picklable value.

The SQLite :class:`~ofa_sdk.gallery.Gallery` is the store; a snapshot is read from it once
(:func:`make_snapshot`, which ``Attributor.snapshot()`` and the distributed scan's driver both
call: it needs the gallery and the loaded model, not an engine) and then used without it: by the facade for a batch or a scan, by
worker processes and Ray actors (it pickles: numpy arrays, strings, floats and the rule object),
and by kernels. It holds the profile names, the rule with its prepared state, each profile's
threshold for the chosen threshold setting, how each profile's own images score (for the
typicality of a score), the tail shape pooled over the whole gallery's profiles that both read
through (:class:`~ofa_sdk.scoring.Tails`), and the model id it was made with.
"""
from __future__ import annotations

import hashlib
import json
import threading
from collections import OrderedDict
from dataclasses import dataclass, field, replace
from typing import Any, Dict, NamedTuple, Optional, Sequence, Tuple, Union

import numpy as np

from . import decision, scoring
from .gallery import LOSSLESS, Delivery, GalleryError, delivery_order
from .scoring import OwnByCrops, Tails

_MISSING = object()     # no stored state under a key (unlike a stored None)
_PREPARING = threading.RLock()   # one thread prepares a snapshot's route at a time
MAX_CHOICES = 4096   # (quality, size) routing choices a snapshot remembers (a scan of photos
                     # meets many sizes)


@dataclass(frozen=True)
class GallerySnapshot:
    model_id: str
    names: Tuple[str, ...]
    rule: Any                      # scoring.PrototypeRule | scoring.PairRule
    state: Any                     # rule.prepare(...) of the profiles, in ``names`` order
    thresholds: Tuple[float, ...]  # per profile, on the rule's probability scale, whole images
    own: Tuple[Optional[OwnByCrops], ...] = ()   # per profile, how its own images score
    policy: Union[float, str] = decision.DEFAULT_THRESHOLD   # "profile" or one number
    fraction: float = decision.DEFAULT_FRACTION
    tails: Optional[Tails] = None   # the gallery's tail shape (all its profiles, not only these)
    margin: float = 0.0   # ambiguity margin of the decision (decision.rival; make_snapshot's default
                          # is decision.margin_for's)
    chooser: Any = None   # closed_set.HeadChooser: a head chooses among accepting profiles
    # per profile, what routing reads (Delivered: the JPEG quality and size its support arrived
    # at, its variants' deliveries); route() picks, per profile, the one nearest a query's
    deliveries: Tuple["Delivered", ...] = ()
    # a routed snapshot: per profile, the delivery (scale, JPEG quality) of the variant standing
    # for it (None: the profile itself)
    variant_of: Tuple[Optional[Delivery], ...] = ()
    # caches, each snapshot's own (not init fields: dataclasses.replace starts them empty)
    _at: Dict = field(default_factory=dict, init=False, compare=False, repr=False)  # crops -> thresholds
    # routed snapshots by their variant_of, prepared when a query first needs one (_prepare:
    # (quality, size, variant_of) -> the snapshot; what pickling keeps: __getstate__)
    _routes: Dict = field(default_factory=dict, init=False, compare=False, repr=False)
    # (quality, size) -> choice
    _choices: Dict = field(default_factory=dict, init=False, compare=False, repr=False)
    _prepare: Any = field(default=None, compare=False, repr=False)
    # () -> the _Assembly a pickled snapshot carries instead of its routes (None: the rule's
    # routes do not assemble from per-variant states; every route is then prepared and pickled)
    _assembly: Any = field(default=None, compare=False, repr=False)

    def typicality(self, i: int, score: float, crops: Optional[int] = None) -> Optional[float]:
        """The share of profile i's own images of ``crops`` crops (None: whole support images)
        expected to score below ``score``."""
        o = self.own[i] if i < len(self.own) else None
        return None if o is None else o.typicality(self.rule.from_prob(score), crops, self.tails)

    def thresholds_at(self, crops: Optional[int] = None) -> Tuple[float, ...]:
        """Per profile, the threshold a query of ``crops`` crops is held to (None: whole
        support images, :attr:`thresholds`)."""
        if crops is None or self.policy != "profile" or not self.own:
            return self.thresholds
        if crops not in self._at:
            self._at[crops] = _thresholds(self.rule, self.own, "profile", self.fraction,
                                          self.tails, crops)
        return self._at[crops]

    def __len__(self) -> int:
        return len(self.names)

    def route(self, quality: Optional[int], size: Optional[Tuple[int, int]] = None
              ) -> "GallerySnapshot":
        """The snapshot a query is scored and decided against, by how it arrived: ``quality``,
        the JPEG quality it was last encoded at (None: not a JPEG), and ``size``, its (h, w)
        (None: unknown). Each profile stands for itself or its variant of the nearest delivery
        (:func:`nearest_variant`). A profile enrolled as generated holds resized or re-encoded
        queries to thresholds fitted on images they no longer resemble and refuses most of
        them; its variant delivered alike does not (benchmarks/RESULTS.md 11.9-11.11)."""
        if not self.deliveries or (quality is None and size is None):
            return self
        choice = self._choices.get((quality, size))
        if choice is None:      # memoised: a scan meets few deliveries many times
            if len(self._choices) >= MAX_CHOICES:
                self._choices.clear()
            choice = self._choices[(quality, size)] = tuple(
                d.choose(quality, size) for d in self.deliveries)
        if all(c is None for c in choice):
            return self
        if choice not in self._routes:
            with _PREPARING:
                if choice not in self._routes:
                    if self._prepare is None:
                        raise RuntimeError(f"this snapshot cannot prepare the variants "
                                           f"{choice} (made without a gallery)")
                    self._routes[choice] = self._decided_alike(self._prepare(quality, size, choice))
        return self._routes[choice]

    def _decided_alike(self, routed: "GallerySnapshot") -> "GallerySnapshot":
        """``routed`` deciding as this snapshot does: its threshold policy, fraction, margin and
        chooser. A route is prepared with the settings the snapshot was made with; one made from
        it by ``dataclasses.replace`` with others must not decide its routed queries by the old
        ones."""
        if ((routed.policy, routed.fraction, routed.margin) == (self.policy, self.fraction, self.margin)
                and routed.chooser is self.chooser):
            return routed
        thresholds = routed.thresholds
        if (routed.policy, routed.fraction) != (self.policy, self.fraction):
            thresholds = _thresholds(routed.rule, routed.own, self.policy, self.fraction, routed.tails)
        return replace(routed, thresholds=thresholds, policy=self.policy, fraction=self.fraction,
                       margin=self.margin, chooser=self.chooser)

    def __getstate__(self) -> Dict:
        """What a worker process or Ray actor needs to route queries without the gallery: each
        profile's variants' prepared states and own scores (an :class:`_Assembly`), from which
        it assembles a route when a query first needs one, so the bytes grow with profiles x
        variants. Where the rule's states do not assemble so (a rule that whitens by the
        gallery), every route instead: each JPEG quality and lossless, at each profile's
        support size times each scale of its variants (profiles x routes)."""
        assembly = self._prepare if isinstance(self._prepare, _Assembly) else None
        if assembly is None and self._assembly is not None and self.deliveries:
            with _PREPARING:        # it shares the snapshot cache with routes being prepared
                assembly = self._assembly()
        if assembly is not None:
            return {**self.__dict__, "_prepare": assembly, "_assembly": None, "_routes": {}}
        sizes = {None} | {(round(d.size[0] * sc), round(d.size[1] * sc))
                          for d in self.deliveries if d.size is not None
                          for sc in {1.0} | {v[0] for v in d.variants}}
        for size in sizes:
            for q in [None, *range(1, 101)]:
                self.route(q, size)
        return {k: v for k, v in self.__dict__.items() if k not in ("_prepare", "_assembly")}

    def __setstate__(self, state: Dict) -> None:
        self.__dict__.update({"_prepare": None, "_assembly": None, **state})

    def scores(self, queries: Sequence[np.ndarray]) -> np.ndarray:
        """(B, P) scores of B images (each (k, d) crop fingerprints) against every profile."""
        if not len(self.names):
            return np.zeros((len(queries), 0))
        return np.asarray(self.rule.scores(self.state, queries), np.float64)

    def select(self, names: Sequence[str]) -> "GallerySnapshot":
        """The same snapshot restricted to ``names`` (in that order)."""
        idx = [self.names.index(n) for n in names]
        return GallerySnapshot(self.model_id, tuple(names), self.rule,
                               self.rule.select(self.state, idx), tuple(self.thresholds[i] for i in idx),
                               tuple(self.own[i] for i in idx) if self.own else (),
                               self.policy, self.fraction, self.tails, self.margin,
                               None if self.chooser is None else self.chooser.select(idx),
                               tuple(self.deliveries[i] for i in idx) if self.deliveries else (),
                               tuple(self.variant_of[i] for i in idx) if self.variant_of else (),
                               _prepare=lambda q, size, _: self.route(q, size).select(names))


@dataclass(frozen=True, eq=False)
class _Assembly:
    """Every variant's prepared state and own scores of a snapshot's profiles, from which any
    route is assembled without the gallery or a refit: what a pickled snapshot carries instead
    of its routes. ``states``: per delivery (None: the profiles themselves), the rule's state
    of ``names`` each at that variant (a profile without it: itself); ``own``: per delivery,
    the own scores of the gallery's profiles of this model (``pool``, which the tail pools),
    each at that variant; ``pool_deliveries``: what routing reads of each of them."""
    model_id: str
    names: Tuple[str, ...]
    rule: Any
    states: Dict[Optional[Delivery], Any]
    pool: Tuple[str, ...]
    pool_deliveries: Tuple["Delivered", ...]
    own: Dict[Optional[Delivery], Tuple[Optional[OwnByCrops], ...]]
    policy: Union[float, str]
    fraction: float
    margin: float
    chooser: Any

    def __call__(self, quality: Optional[int], size: Optional[Tuple[int, int]],
                 choice: Tuple) -> "GallerySnapshot":
        """The routed snapshot of ``choice`` (per profile, its variant's delivery or None), as
        :func:`make_snapshot`'s own assembly makes it from the gallery."""
        keys = list(dict.fromkeys(choice))
        state = self.rule.gather([self.states[k] for k in keys], [keys.index(c) for c in choice])
        chosen = dict(zip(self.names, choice))
        own_all = {n: self.own[chosen[n] if n in chosen else d.choose(quality, size)][j]
                   for j, (n, d) in enumerate(zip(self.pool, self.pool_deliveries))}
        return _decided(self.model_id, self.names, self.rule, state, own_all, self.policy,
                        self.fraction, self.margin, self.chooser, variant_of=tuple(choice))


def _decided(model_id: str, names: Sequence[str], rule, state, own_all: Dict[str, Any], policy,
             fraction: float, margin: float, chooser, **rest) -> "GallerySnapshot":
    """The snapshot of profiles ``names`` with the rule's ``state``: their own scores from
    ``own_all`` (every pooled profile's, by name) and the thresholds of ``policy`` read through
    the tail pooled over all of them. ``rest``: the remaining fields (deliveries, variant_of,
    _prepare, _assembly)."""
    own = tuple(own_all[n] for n in names)
    tails = scoring.Tails.pooled(list(own_all.values()))
    return GallerySnapshot(model_id, tuple(names), rule, state,
                           _thresholds(rule, own, policy, fraction, tails), own, policy, fraction,
                           tails, margin, chooser, **rest)


def _thresholds(rule, own, policy, fraction: float, tails, crops: Optional[int] = None
                ) -> Tuple[float, ...]:
    """Per profile (its own scores ``own``), the threshold of ``policy``: "profile", the one
    refusing ``fraction`` of its own images of ``crops`` crops (None: whole support images), read
    through ``tails``; else that number for every profile."""
    if policy != "profile":
        return tuple(float(policy) for _ in own)
    return tuple(decision.threshold_of(rule, o, fraction, crops, tails) for o in own)


# Two sides' resize factors agreeing this closely (relative) say a query was resized as a whole
# (not cropped); the factor is then their geometric mean
SCALE_AGREEMENT = 0.03


class Delivered(NamedTuple):
    """What routing reads of a profile: the JPEG quality its support arrived at (None: lossless),
    the (h, w) its support images share (None: sizes vary), its variants' deliveries."""
    quality: Optional[int]
    size: Optional[Tuple[int, int]]
    variants: Tuple[Delivery, ...]

    def choose(self, quality: Optional[int], size: Optional[Tuple[int, int]]
               ) -> Optional[Delivery]:
        """The variant a query that arrived as a JPEG of ``quality`` (None: not a JPEG) and of
        ``size`` meets (:func:`nearest_variant`); None: the profile itself."""
        return nearest_variant(quality, self.variants, self.quality, scale_of(size, self.size))


def delivered(prof) -> Delivered:
    """A profile's :class:`Delivered`, from its metadata (``support_jpeg_quality``, or for
    profiles from before it was recorded the quality enroll re-encoded the support at;
    ``support_size``) and its variants, largest scale and highest quality first."""
    meta = prof.metadata
    base = meta.get("support_jpeg_quality", meta.get("jpeg_quality"))
    size = meta.get("support_size")
    return Delivered(None if base is None else int(base),
                     None if not size else (int(size[0]), int(size[1])),
                     tuple(sorted(prof.variants, key=delivery_order)))


def scale_of(size: Optional[Tuple[int, int]], support: Optional[Tuple[int, int]]) -> float:
    """The factor a query of ``size`` (h, w) was resized by from a support of images of size
    ``support``: the geometric mean of the two sides' ratios when they agree within
    :data:`SCALE_AGREEMENT`; else (a crop, another aspect, either size unknown) 1.0."""
    if size is None or support is None:
        return 1.0
    fh, fw = size[0] / support[0], size[1] / support[1]
    return float(np.sqrt(fh * fw)) if abs(fh / fw - 1) <= SCALE_AGREEMENT else 1.0


def nearest_variant(quality: Optional[int], variants: Sequence[Delivery],
                    base: Optional[int] = None, scale: float = 1.0) -> Optional[Delivery]:
    """Which of a profile's ``variants`` (scale, JPEG quality; None: lossless) a query that
    arrived as a JPEG of ``quality`` (None: not a JPEG), resized by ``scale``, is scored
    against; None: the profile itself. First the scale nearest ``scale`` (by ratio; 1.0: the
    profile and its unscaled variants; ties to the larger), then among the deliveries at that
    scale the quality nearest the query's, a lossless one counting as :data:`LOSSLESS` and the
    profile itself as ``base``, the quality its support arrived at (ties to the higher quality,
    then to the profile itself). A query that is not a JPEG and not resized meets the profile."""
    scales = {1.0} | {sc for sc, _ in variants}
    sc = min(scales, key=lambda v: (abs(np.log(v / scale)), -v))
    if quality is None and sc == 1.0:
        return None
    own = [(None, LOSSLESS if base is None else base)] if sc == 1.0 else []
    cands = own + [((s, q), LOSSLESS if q is None else q) for s, q in variants if s == sc]
    if not cands:
        return None
    want = LOSSLESS if quality is None else quality
    key, _ = min(cands, key=lambda c: (abs(c[1] - want), -c[1], c[0] is not None))
    return key


def crop_counts(prof) -> Union[int, Sequence[int]]:
    """Each support image's number of crops (profiles from 0.1 record one count for all)."""
    counts = prof.metadata.get("crop_counts")
    return counts if counts is not None else int(prof.metadata.get("crops", 1))


STATE_VERSION = 3   # bump when what is persisted, or how it is computed, changes
MAX_SETS = 16       # prepared profile sets kept in memory (attribute's, verify's, ...; a set per
                    # route to the variants as well)
# bytes of per-profile Gaussian fits kept in memory, least recently used out past it (read back
# from the gallery's stored state when a set needs them again): one per profile and variant,
# 32 KiB at rank 32, so a process that met every delivery of a large gallery would otherwise
# hold them all beside its routes (benchmarks/RESULTS.md 6.6)
MAX_FIT_BYTES = 32 * 2 ** 20
_NOT_SETTINGS = ("calibration", "head", "name", "chunk", "prefilter")   # not in the state key


def _pack(arrays: Dict[str, np.ndarray], meta: Dict) -> bytes:
    """Arrays and a JSON-able dict as bytes: a JSON header line, then the raw float64 arrays
    (no pickle: a gallery file need not be trusted to run code)."""
    arrays = {k: np.ascontiguousarray(v, np.float64) for k, v in arrays.items()}
    head = {"meta": meta, "arrays": {k: list(v.shape) for k, v in arrays.items()}}
    return json.dumps(head).encode() + b"\n" + b"".join(v.tobytes() for v in arrays.values())


def _unpack(blob: bytes) -> Tuple[Dict[str, np.ndarray], Dict]:
    line, _, rest = blob.partition(b"\n")
    head = json.loads(line)
    out, off = {}, 0
    for k, shape in head["arrays"].items():
        n = int(np.prod(shape)) * 8
        out[k] = np.frombuffer(rest[off:off + n], np.float64).reshape(shape).copy()
        off += n
    return out, head["meta"]


def _rule_key(rule) -> list:
    """What of a rule its prepared state depends on (not its calibration: states are raw)."""
    from dataclasses import fields
    settings = {f.name: getattr(rule, f.name) for f in fields(rule) if f.name not in _NOT_SETTINGS}
    return [rule.name, settings, getattr(rule, "own_power", 0.0), getattr(rule, "loo_folds", None),
            scoring.FIT_SIZE_FOLDS]


class SnapshotCache:
    """What successive snapshots of one gallery can reuse, so that a scan, a batch or a
    threshold query after the first costs no refit: the rule's prepared state of the last
    :data:`MAX_SETS` sets of profiles (``verify`` on one profile does not evict what
    ``attribute`` prepared for all), how each profile's own images score (``own``, keyed by
    name, enrollment time, rule name and the whitener's digest when the rule whitens by the
    gallery), and each profile's Gaussian fit (the last :data:`MAX_FIT_BYTES` of them).

    When the rule does not whiten by the gallery, a profile's own scores and fit depend on
    that profile alone; they are also stored in the gallery (:meth:`Gallery.put_state`) under
    a key of model id, rule, its settings and the support's digest, so another process (a CLI
    call) reuses them, and only changed profiles are refitted."""

    def __init__(self, max_sets: int = MAX_SETS, max_fit_bytes: int = MAX_FIT_BYTES):
        self.own: Dict[Tuple, Any] = {}
        self.fits: "OrderedDict[Tuple, Any]" = OrderedDict()
        self.fit_bytes, self.max_fit_bytes = 0, int(max_fit_bytes)
        self._fits_lock = threading.Lock()
        self.sets: "OrderedDict[Tuple, Tuple[Any, Any]]" = OrderedDict()
        self.max_sets = max_sets
        self._digests: Dict[Tuple, str] = {}

    def _store_key(self, what: str, rule, prof, model_id: str) -> str:
        dkey = (prof.name, prof.created, prof.variant, prof.n_support)
        if dkey not in self._digests:
            h = hashlib.sha256(np.ascontiguousarray(prof.support, np.float32).tobytes())
            h.update(json.dumps(crop_counts(prof)).encode())
            if prof.centre is not None:
                h.update(np.ascontiguousarray(prof.centre, np.float32).tobytes())
            self._digests[dkey] = h.hexdigest()
        return hashlib.sha256(json.dumps([STATE_VERSION, what, model_id, _rule_key(rule),
                                          self._digests[dkey]], default=str).encode()).hexdigest()

    def _stored(self, what: str, rule, profs, gallery, model_id, compute, encode, decode) -> list:
        """Per profile: the value in the gallery under its key, else ``compute(prof)`` (then
        stored, in one write)."""
        keys = [self._store_key(what, rule, p, model_id) for p in profs]
        have = gallery.get_state(keys)
        out, new = [], {}
        for k, p in zip(keys, profs):
            try:            # a stored None is a value (a profile too small to have one)
                v = decode(have[k]) if k in have else _MISSING
            except (ValueError, KeyError, TypeError):
                v = _MISSING                # unreadable stored state: computed again
            if v is _MISSING:
                v = compute(p)
                new[k] = (p.name, encode(v))
            out.append(v)
        if new:
            try:
                gallery.put_state(new)
            except GalleryError:    # busy, locked or damaged: the state is only not kept
                pass
        return out

    def own_many(self, rule, profs, state=None, gallery=None, model_id=None) -> list:
        """How each loaded profile's own images score under ``rule`` (``state``: the snapshot's
        prepared state, which the held-out scores of a rule that whitens by the gallery
        need); persisted in ``gallery`` when the rule does not whiten."""
        w = getattr(state, "whitener", None)
        wkey = None if w is None else hashlib.sha256(w.tobytes()).hexdigest()
        rkey = json.dumps(_rule_key(rule), default=str)
        keys = [(p.name, p.created, p.variant, rkey, wkey) for p in profs]
        todo = [p for k, p in zip(keys, profs) if k not in self.own]
        if todo and gallery is not None and w is None:
            vals = self._stored("own", rule, todo, gallery, model_id,
                                lambda p: decision.own_scores(rule, p.support, crop_counts(p),
                                                              p.support_part, centre=p.centre),
                                _encode_own, _decode_own)
        else:
            vals = [decision.own_scores(rule, p.support, crop_counts(p), p.support_part, state,
                                        p.centre) for p in todo]
        for p, v in zip(todo, vals):
            self.own[(p.name, p.created, p.variant, rkey, wkey)] = v
        return [self.own[k] for k in keys]

    def prepared(self, rule, profs, gallery=None, model_id=None) -> Any:
        """``rule.prepare`` of the profiles ``profs``, made once per rule and set of profiles
        (the last :data:`MAX_SETS` sets kept); a Gaussian rule that does not whiten reuses each
        profile's fit, from memory or ``gallery``."""
        key = (id(rule), tuple((p.name, p.created, p.variant) for p in profs))
        hit = self.sets.get(key)
        if hit is not None and hit[0] is rule:
            self.sets.move_to_end(key)
            return hit[1]
        fits = None
        if callable(getattr(rule, "fit_one", None)) and getattr(rule, "whiten", None) is None:
            fits = self._fits(rule, profs, gallery, model_id)
        args = ([p.support for p in profs], [p.support_part for p in profs])
        counts = [crop_counts(p) for p in profs]
        state = rule.prepare(*args, counts=counts, fits=fits) if fits is not None else \
            rule.prepare(*args, counts=counts)
        self.sets[key] = (rule, state)
        while len(self.sets) > self.max_sets:
            self.sets.popitem(last=False)
        return state

    def _fits(self, rule, profs, gallery, model_id) -> list:
        rkey = json.dumps(_rule_key(rule), default=str)
        keys = [(p.name, p.created, p.variant, rkey) for p in profs]
        out = {}
        with self._fits_lock:       # snapshots are made while routes are prepared
            for k in keys:
                v = self.fits.get(k, _MISSING)
                if v is not _MISSING:
                    self.fits.move_to_end(k)
                    out[k] = v
        todo = [(k, p) for k, p in zip(keys, profs) if k not in out]
        if todo and gallery is not None:
            vals = self._stored("fit", rule, [p for _, p in todo], gallery, model_id,
                                lambda p: rule.fit_one(p.support, crop_counts(p)),
                                _encode_fit, _decode_fit)
        else:
            vals = [rule.fit_one(p.support, crop_counts(p)) for _, p in todo]
        with self._fits_lock:
            for (k, _), v in zip(todo, vals):
                out[k] = v
                if k not in self.fits:
                    self.fits[k] = v
                    self.fit_bytes += _fit_bytes(v)
            while self.fit_bytes > self.max_fit_bytes and self.fits:
                self.fit_bytes -= _fit_bytes(self.fits.popitem(last=False)[1])
        return [out[k] for k in keys]


def _fit_bytes(fit) -> int:
    return 0 if fit is None else fit.mean.nbytes + fit.basis.nbytes + fit.lam.nbytes


def _encode_own(own: Optional[OwnByCrops]) -> bytes:
    levels = None if own is None else [[o.mean, o.sd, o.n, o.power, o.dof] for o in own.levels]
    held = {} if own is None else {f"held{k}": np.asarray(o.held) for k, o in enumerate(own.levels)}
    return _pack(held, {"levels": levels})


def _decode_own(blob: bytes) -> Optional[OwnByCrops]:
    held, meta = _unpack(blob)
    levels = meta["levels"]
    return None if levels is None else OwnByCrops(tuple(
        scoring.OwnScores(float(m), float(s), int(n), float(pw), None if d is None else int(d),
                          held[f"held{k}"])
        for k, (m, s, n, pw, d) in enumerate(levels)))


def _encode_fit(f) -> bytes:
    return _pack({"mean": f.mean, "basis": f.basis, "lam": f.lam},
                 {"sigma2": f.sigma2, "alpha": f.alpha})


def _decode_fit(blob: bytes):
    a, m = _unpack(blob)
    return scoring.GaussianFit(a["mean"], a["basis"], a["lam"], float(m["sigma2"]), float(m["alpha"]))


def make_snapshot(bundle, gallery, rule=None, threshold: Union[float, str, None] = None,
                  profiles: Optional[Sequence[str]] = None,
                  quantile: float = decision.DEFAULT_FRACTION, *, whiten: Optional[str] = None,
                  cache: Optional[SnapshotCache] = None,
                  margin: Optional[float] = None,
                  chooser: Optional[str] = None) -> GallerySnapshot:
    """A :class:`GallerySnapshot` of ``gallery``'s profiles ``profiles`` (default: all, in
    ``gallery.names()`` order) for the model ``bundle`` (a loaded
    :class:`~ofa_sdk.weights.ModelBundle`; no engine is built).

    ``gallery``: a :class:`~ofa_sdk.gallery.Gallery` or a SQLite file; ``rule``: a rule object
    (:mod:`ofa_sdk.scoring`) or a rule name (None: the model's default; ``whiten`` as for
    :func:`ofa_sdk.scoring.make_rule`); ``threshold``: "profile" (the default) or a number;
    ``quantile``: the share of a generator's own images its profile threshold rejects;
    ``cache``: a :class:`SnapshotCache` kept between calls; ``margin``: the decision's
    ambiguity margin (:func:`ofa_sdk.decision.rival`; None: :func:`ofa_sdk.decision.margin_for`'s
    default for the threshold policy and chooser); ``chooser``: the name of a closed-set
    head stored in the gallery that chooses among accepting profiles
    (:func:`ofa_sdk.closed_set.load_chooser`). Profiles enrolled with another
    model raise :class:`~ofa_sdk.gallery.ModelMismatch` naming them."""
    from .gallery import Gallery, ProfileNotFound, check_model
    if rule is None or isinstance(rule, str):
        rule = scoring.make_rule(rule, bundle, whiten)
    elif whiten is not None:
        raise ValueError("make_snapshot: whiten= names how a rule is made; pass it with a rule "
                         "name, not with a rule object")
    quantile = decision.check_fraction(quantile, "quantile")
    thr = decision.parse_threshold(decision.DEFAULT_THRESHOLD if threshold is None else threshold)
    margin = decision.margin_for(margin, thr, chooser)
    gallery = gallery if isinstance(gallery, Gallery) else Gallery(gallery)
    cache = SnapshotCache() if cache is None else cache
    # one read transaction of every profile: a concurrent enroll or remove is seen wholly or
    # not at all. The whitener and the tail are the whole gallery's, whichever profiles are
    # asked for: a rule that whitens needs every profile to be of this model; otherwise only
    # the asked ones must be, and the tail pools this model's profiles.
    whiten = getattr(rule, "whiten", None) is not None
    every = gallery.read(None, bundle.ids if whiten else None)
    by_name = {p.name: p for p in every}
    names = list(profiles) if profiles is not None else list(by_name)
    missing = [n for n in names if n not in by_name]
    if missing:
        raise ProfileNotFound(f"no profile named {missing[0]!r} in {gallery!r}")
    profs = [check_model(by_name[n], bundle.ids) for n in names]
    mine = every if whiten else [p for p in every if p.model_id in bundle.ids]
    head = None
    if chooser is not None and len(names) > 1:     # one profile: nothing to choose among
        from .closed_set import load_chooser
        head = load_chooser(gallery, chooser, bundle.ids, names)

    def assemble(quality: Optional[int] = None, size: Optional[Tuple[int, int]] = None,
                 choice: Optional[Tuple] = None) -> GallerySnapshot:
        """The snapshot of the profiles, each standing for itself or (``choice``, routed for a
        query that arrived so) its chosen variant; the gallery's other profiles, which the
        tail and a whitener pool, stand for their own nearest variant."""
        chosen = dict(zip(names, choice or (None,) * len(names)))
        at = [p.at(chosen[p.name]) for p in profs]
        pool = [p.at(chosen[p.name] if p.name in chosen else
                     delivered(p).choose(quality, size)) for p in mine]
        if whiten:
            full = cache.prepared(rule, pool, gallery, bundle.model_id)
            state = rule.select(full, [list(by_name).index(n) for n in names])
        else:
            state = full = cache.prepared(rule, at, gallery, bundle.model_id)
        # every profile's own scores: the tail pools them, whatever the threshold policy, so a
        # profile's typicality is one number under a fixed threshold and a per-profile one
        own_all = dict(zip((p.name for p in pool),
                           cache.own_many(rule, pool, full if whiten else None, gallery,
                                          bundle.model_id)))
        if choice:      # a routed snapshot routes no further (no deliveries)
            return _decided(bundle.model_id, names, rule, state, own_all, thr, quantile, margin,
                            head, variant_of=tuple(choice))
        return _decided(bundle.model_id, names, rule, state, own_all, thr, quantile, margin,
                        head, deliveries=deliveries, _prepare=assemble, _assembly=assembly)

    def assembly() -> Optional[_Assembly]:
        """Every variant's state and own scores, for pickling (None: a rule that whitens by
        the gallery, whose states are the whole pool's and do not combine, or one that cannot
        gather states)."""
        if whiten or not callable(getattr(rule, "gather", None)):
            return None
        keys = [None, *sorted({k for p in mine for k in p.variants}, key=delivery_order)]
        states = {k: cache.prepared(rule, [p.at(k) for p in profs], gallery, bundle.model_id)
                  for k in keys}
        own = {k: tuple(cache.own_many(rule, [p.at(k) for p in mine], None, gallery,
                                       bundle.model_id)) for k in keys}
        return _Assembly(bundle.model_id, tuple(names), rule, states,
                         tuple(p.name for p in mine), tuple(delivered(p) for p in mine), own,
                         thr, quantile, margin, head)

    # each route (how a query arrived -> per profile a variant) is prepared when a query first
    # needs it: a scan of PNGs as generated never does
    deliveries = tuple(delivered(p) for p in profs) if any(p.variants for p in profs) else ()
    return assemble()
