"""GallerySnapshot: what scoring needs of a gallery, as one plain, picklable value.

The SQLite :class:`~ofa_sdk.gallery.Gallery` is the store; a snapshot is read from it once
(:func:`make_snapshot`, which ``Attributor.snapshot()`` and the distributed scan's driver both
call: it needs the gallery and the loaded model, not an engine) and then used without it: by the facade for a batch or a scan, by
worker processes and Ray actors (it pickles: numpy arrays, strings, floats and the rule object),
and by kernels. It holds the profile names, the rule with its prepared state, each profile's
threshold for the chosen threshold setting, how each profile's own images score (for the typicality of a score), and the
model id it was made with.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any, Dict, Optional, Sequence, Tuple, Union

import numpy as np

from . import decision, scoring
from .scoring import OwnByCrops


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
    _at: Dict = field(default_factory=dict, compare=False, repr=False)   # crops -> thresholds

    def typicality(self, i: int, score: float, crops: Optional[int] = None) -> Optional[float]:
        """The share of profile i's own images of ``crops`` crops (None: whole support images)
        expected to score below ``score``."""
        o = self.own[i] if i < len(self.own) else None
        return None if o is None else o.typicality(self.rule.from_prob(score), crops)

    def thresholds_at(self, crops: Optional[int] = None) -> Tuple[float, ...]:
        """Per profile, the threshold a query of ``crops`` crops is held to (None: whole
        support images, :attr:`thresholds`)."""
        if crops is None or self.policy != "profile":
            return self.thresholds
        if crops not in self._at:
            self._at[crops] = tuple(decision.threshold_of(self.rule, o, self.fraction, crops)
                                    for o in self.own)
        return self._at[crops]

    def __len__(self) -> int:
        return len(self.names)

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
                               self.policy, self.fraction)


def crop_counts(prof) -> Union[int, Sequence[int]]:
    """Each support image's number of crops (profiles from 0.1 record one count for all)."""
    counts = prof.metadata.get("crop_counts")
    return counts if counts is not None else int(prof.metadata.get("crops", 1))


class SnapshotCache:
    """What successive snapshots of one gallery can reuse, so that a scan, a batch or a
    threshold query after the first costs no refit: the rule's prepared state of the last set
    of profiles (``state``: (rule, ((name, created), ...), prepared state)), and how each
    profile's own images score (``own``), keyed by (name, enrollment time, rule name, and the
    whitener's digest when the rule whitens by the gallery). A profile re-enrolled has another
    enrollment time and another set of profiles another whitener, so neither goes stale."""

    def __init__(self):
        self.own: Dict[Tuple, Any] = {}
        self.state: Tuple[Any, Any, Any] = (None, None, None)

    def own_of(self, rule, prof, state=None) -> Optional[OwnByCrops]:
        """How a loaded profile's own images score under ``rule`` (``state``: the snapshot's
        prepared state, which the leave-one-out of a rule that whitens by the gallery needs)."""
        w = getattr(state, "whitener", None)
        wkey = None if w is None else hashlib.sha256(w.tobytes()).hexdigest()
        key = (prof.name, prof.created, rule.name, wkey)
        if key not in self.own:
            self.own[key] = decision.own_scores(rule, prof.support, crop_counts(prof),
                                                prof.support_part, state)
        return self.own[key]

    def prepared(self, rule, profs) -> Any:
        """``rule.prepare`` of the profiles ``profs``, made once per rule and set of profiles."""
        key = tuple((p.name, p.created) for p in profs)
        known_rule, known, state = self.state
        if known_rule is not rule or known != key:
            state = rule.prepare([p.support for p in profs], [p.support_part for p in profs],
                                 counts=[crop_counts(p) for p in profs])
            self.state = (rule, key, state)
        return state


def make_snapshot(bundle, gallery, rule=None, threshold: Union[float, str, None] = None,
                  profiles: Optional[Sequence[str]] = None,
                  quantile: float = decision.DEFAULT_FRACTION, *, whiten: Optional[str] = None,
                  cache: Optional[SnapshotCache] = None) -> GallerySnapshot:
    """A :class:`GallerySnapshot` of ``gallery``'s profiles ``profiles`` (default: all, in
    ``gallery.names()`` order) for the model ``bundle`` (a loaded
    :class:`~ofa_sdk.weights.ModelBundle`; no engine is built).

    ``gallery``: a :class:`~ofa_sdk.gallery.Gallery` or a SQLite file; ``rule``: a rule object
    (:mod:`ofa_sdk.scoring`) or a rule name (None: the model's default; ``whiten`` as for
    :func:`ofa_sdk.scoring.make_rule`); ``threshold``: "profile" (the default) or a number;
    ``quantile``: the share of a generator's own images its profile threshold rejects;
    ``cache``: a :class:`SnapshotCache` kept between calls. Profiles enrolled with another
    model raise :class:`~ofa_sdk.gallery.ModelMismatch` naming them."""
    from .gallery import Gallery
    if rule is None or isinstance(rule, str):
        rule = scoring.make_rule(rule, bundle, whiten)
    elif whiten is not None:
        raise ValueError("make_snapshot: whiten= names how a rule is made; pass it with a rule "
                         "name, not with a rule object")
    if not 0 < quantile < 1:
        raise ValueError(f"quantile must be in (0, 1), got {quantile!r}")
    thr = decision.parse_threshold(decision.DEFAULT_THRESHOLD if threshold is None else threshold)
    gallery = gallery if isinstance(gallery, Gallery) else Gallery(gallery)
    cache = SnapshotCache() if cache is None else cache
    # one read transaction: a concurrent enroll or remove is seen wholly or not at all
    whiten = getattr(rule, "whiten", None) is not None
    every = gallery.read(None if whiten or profiles is None else list(profiles), bundle.ids)
    if whiten:   # the whitener is the whole gallery's, whichever profiles are asked for
        by_name = {p.name: p for p in every}
        names = list(profiles) if profiles is not None else list(by_name)
        missing = [n for n in names if n not in by_name]
        if missing:
            from .gallery import ProfileNotFound
            raise ProfileNotFound(f"no profile named {missing[0]!r} in {gallery!r}")
        profs = [by_name[n] for n in names]
        full = cache.prepared(rule, every)
        state = rule.select(full, [list(by_name).index(n) for n in names])
    else:
        profs, names = every, [p.name for p in every]
        state = full = cache.prepared(rule, profs)
    own = tuple(cache.own_of(rule, p, full) for p in profs)
    thresholds = tuple(decision.threshold_of(rule, o, quantile) if thr == "profile" else float(thr)
                       for o in own)
    return GallerySnapshot(bundle.model_id, tuple(names), rule, state, thresholds, own, thr,
                           quantile)
