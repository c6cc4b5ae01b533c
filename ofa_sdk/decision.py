"""The last stage of the data flow: scores -> decisions (threshold, label).

``attribute`` answers with the profile the image is most typical of among those whose threshold
it meets (:func:`decide`), or "unknown" when it meets none, or when another accepting profile is
about as typical (:func:`rival`: within the ambiguity margin, a tie by default). The default,
``threshold="profile"``, gives each profile its own (:func:`profile_threshold`): a threshold
below which about ``fraction`` (5% by default) of the generator's own new images should fall,
estimated from its support images' held-out scores with :func:`ofa_sdk.scoring.held_out_stats`,
for the query's crop count (a 1-crop query is held to how single crops of the support images
score, not whole images), read through the tail shape the held-out scores of the gallery's
profiles show together (:class:`ofa_sdk.scoring.Tails`, which a snapshot pools;
:func:`profile_threshold` of one support set alone keeps the t model's tail). A number sets one
threshold for every profile; 0.5 is each rule's own decision point. How these choices were made
and what they cost is in docs/experiment-log.md (sections 5.1-5.2) and, for the Gaussian rule,
benchmarks/RESULTS.md (sections 3 and 10).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np

from . import scoring
from .gallery import delivery_label, delivery_order

DEFAULT_THRESHOLD = "profile"   # per-profile thresholds
FALLBACK_THRESHOLD = 0.5        # for profiles with fewer than MIN_PROFILE_IMAGES support images
MIN_PROFILE_IMAGES = 3          # scoring.held_out_stats needs 3 held-out images
DEFAULT_FRACTION = 0.05         # share of a generator's own images a profile threshold rejects
# ambiguity margin in typicality where the decision chooses by it (per-profile thresholds, no
# head): two accepting profiles within this of each other are a tie, answered ``unknown``. Chosen
# on both development sets (benchmarks/RESULTS.md 10.7): it puts ``unknown`` among enrolled
# generators' images at 4-11% where 0 left it at 0.5-7.5%, for at most 1.3 points of right
# labels and up to 2.8 points fewer wrong ones.
DEFAULT_MARGIN = 0.005

Threshold = Union[float, str]

# The columns of a result row (Attribution.to_dict), in the order scans write them; the last two
# hold JSON objects (CSV and Parquet store them as JSON text).
RESULT_FIELDS = ("source", "label", "profile", "score", "threshold", "typicality", "error", "note",
                 "scores", "provenance")
JSON_FIELDS = ("scores", "provenance")


def parse_threshold(t) -> Threshold:
    """A threshold is a number or "profile". Strings of numbers are accepted (command line)."""
    if isinstance(t, str) and t != "profile":
        try:
            return float(t)
        except ValueError:
            raise ValueError(f"threshold must be a number or 'profile', got {t!r}") from None
    return t if t == "profile" else float(t)


def check_fraction(q, name: str = "profile_quantile") -> float:
    """A share of a generator's own images a profile threshold refuses: a number in (0, 1)."""
    try:
        v = float(q)
    except (TypeError, ValueError):
        v = float("nan")
    if not 0 < v < 1:
        raise ValueError(f"{name} must be in (0, 1), got {q!r}")
    return v


def check_margin(m) -> float:
    """An ambiguity margin is a typicality difference in [0, 1] (0: never ambiguous; 1: any
    second accepting profile makes an image ``unknown``)."""
    try:
        v = float(m)
    except (TypeError, ValueError):
        v = float("nan")
    if not 0 <= v <= 1:
        raise ValueError(f"the ambiguity margin must be a number in [0, 1], got {m!r}")
    return v


def margin_for(margin, policy: Threshold = DEFAULT_THRESHOLD, chooser=None) -> float:
    """The ambiguity margin a decision uses: ``margin`` when given (checked), else
    :data:`DEFAULT_MARGIN` where the choice among accepting profiles is by typicality
    (``policy`` "profile" and no ``chooser``), 0 otherwise: one threshold for all chooses by
    score and a head by its own probabilities, so a tie in typicality says nothing of their
    choice."""
    if margin is not None:
        return check_margin(margin)
    return DEFAULT_MARGIN if policy == "profile" and chooser is None else 0.0


def own_scores(rule, support: np.ndarray, crops, part: Optional[np.ndarray] = None,
               state=None, centre: Optional[np.ndarray] = None) -> Optional[scoring.OwnByCrops]:
    """How a support set's own images score at each query crop count
    (:class:`~ofa_sdk.scoring.OwnByCrops`, :func:`~ofa_sdk.scoring.held_out_stats`); None
    below :data:`MIN_PROFILE_IMAGES` images. ``crops``: k for every
    image, or each image's k_i; ``state``: the snapshot's prepared state, for a rule whose
    leave-one-out depends on the other profiles (the Gaussian rule whitened by the gallery);
    ``centre``: each support image's centre-crop fingerprint (``Profile.centre``), for the
    1-crop level."""
    if len(np.unique(scoring.image_ids(len(support), crops))) < MIN_PROFILE_IMAGES:
        return None
    return scoring.held_out_stats(rule, support, crops, part, state, centre)


def threshold_of(rule, own: Optional[scoring.OwnByCrops], fraction: float = DEFAULT_FRACTION,
                 crops: Optional[int] = None, tails: Optional[scoring.Tails] = None) -> float:
    """A profile's threshold on the rule's probability scale for a query of ``crops`` crops
    (None: whole support images), from how its own images score (:data:`FALLBACK_THRESHOLD`
    when too few support images to tell) and, with ``tails``, the gallery's tail shape."""
    return FALLBACK_THRESHOLD if own is None else \
        float(rule.to_prob(own.threshold(fraction, crops, tails)))


def profile_threshold(rule, support: np.ndarray, crops, fraction: float = DEFAULT_FRACTION,
                      part: Optional[np.ndarray] = None, query_crops: Optional[int] = None) -> float:
    """The per-profile threshold of a support set of (sum k_i, d) fingerprints."""
    return threshold_of(rule, own_scores(rule, support, crops, part), fraction, query_crops)


@dataclass
class Attribution:
    source: str
    profile: Optional[str]               # the chosen profile among those accepting (decide), else None
    score: float                         # its score; the best score when none accepts (NaN on error)
    scores: Dict[str, float] = field(default_factory=dict)
    error: Optional[str] = None
    note: str = ""
    threshold: Optional[float] = None    # the threshold that profile's score was held to
    # What the file itself declares about its origin (C2PA, IPTC, generator text chunks;
    # ofa_sdk.provenance), reported beside the verdict and never used to make it: metadata is
    # stripped by most platforms and trivially forged. {} when the file declares nothing.
    provenance: Dict = field(default_factory=dict)
    # The share of that profile's own images expected to score below this one (0.5: a
    # typical image of that generator; the default threshold sits at 0.05). None when the
    # profile has fewer than MIN_PROFILE_IMAGES support images.
    typicality: Optional[float] = None

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def label(self) -> str:
        return "error" if self.error else (self.profile or "unknown")

    def to_dict(self) -> Dict:
        d = asdict(self)
        d["label"] = self.label
        if isinstance(self.score, float) and math.isnan(self.score):
            d["score"] = None
        return d


def decide(source: str, row: np.ndarray, names, thresholds, note: str = "",
           provenance: Optional[Dict] = None, snapshot=None, crops: Optional[int] = None,
           z: Optional[np.ndarray] = None) -> Attribution:
    """One image's scores against ``names`` -> its :class:`Attribution`. With ``snapshot``, the
    thresholds are the snapshot's for a query of ``crops`` crops (``thresholds`` is then not
    read) and the typicality of the chosen profile's score is reported too.

    One decision across profiles: of the profiles whose threshold the image meets, the one it
    is most typical of (:func:`choose`), not the highest raw score held to its own threshold
    alone (an image a loose profile accepts but that scores higher on a tight one was
    ``unknown``), or, with a snapshot's chooser (a fitted head), the one the head finds most
    probable for the image's fingerprints ``z``. When none accepts: ``unknown``, reported with
    the highest score. With the snapshot's ambiguity margin above 0, an image that another
    accepting profile finds about as typical (:func:`rival`) is ``unknown`` too, reported with
    the chosen profile's score and a note naming both."""
    if not len(names):
        return Attribution(source, None, float("nan"), {}, None, note, None, provenance or {})
    if snapshot is not None:
        thresholds = snapshot.thresholds_at(crops)
    thr_all = np.asarray(thresholds, np.float64)
    accepted = np.flatnonzero(np.asarray(row, np.float64) >= thr_all)
    typ_of = _typicality_of(snapshot, row, crops)
    best, typ = choose(row, thr_all, accepted, snapshot, crops, z, typ_of) if len(accepted) else \
        (int(np.argmax(row)), None)
    score, thr = float(row[best]), float(thr_all[best])
    if typ is None and snapshot is not None:
        typ = typ_of(best)
    label = names[best] if len(accepted) else None
    if label is not None and typ is not None and getattr(snapshot, "margin", 0.0) > 0:
        other = rival(row, accepted, best, typ, snapshot, crops, typ_of)
        if other is not None:
            label = None
            note = "; ".join(x for x in (note, f"ambiguous: {names[best]} (typicality {typ:.3f}) "
                                               f"or {names[other[0]]} ({other[1]:.3f})") if x)
    return Attribution(source, label, score,
                       {n: float(v) for n, v in zip(names, row)}, None, note, thr, provenance or {},
                       typ)


def _typicality_of(snapshot, row: np.ndarray, crops: Optional[int]):
    """profile index -> the image's typicality there (None without a snapshot or a profile's
    own scores), each computed once: :func:`choose` and :func:`rival` read the same ones."""
    memo: Dict[int, Optional[float]] = {}

    def typ(p: int) -> Optional[float]:
        if p not in memo:
            memo[p] = None if snapshot is None else snapshot.typicality(p, float(row[p]), crops)
        return memo[p]
    return typ


def choose(row: np.ndarray, thresholds: np.ndarray, accepted: np.ndarray, snapshot=None,
           crops: Optional[int] = None, z: Optional[np.ndarray] = None, typ_of=None
           ) -> Tuple[int, Optional[float]]:
    """Which of the ``accepted`` profiles an image goes to, by a measure comparable across
    profiles: its typicality (the share of each generator's own images expected to score
    lower, the scale every per-profile threshold is set on) when every accepted profile has
    one, else its margin over each threshold on the probability scale (with one threshold for
    all, the highest score). Ties go to the higher score. With the snapshot's ``chooser`` (a
    fitted head, :class:`ofa_sdk.closed_set.HeadChooser`) and the image's fingerprints ``z``:
    the accepting profile the head finds most probable. Returns the profile's index and its
    typicality when it was computed here (else None)."""
    if len(accepted) == 1:
        return int(accepted[0]), None
    chooser = getattr(snapshot, "chooser", None)
    if chooser is not None and z is not None:
        return int(accepted[int(np.argmax(chooser.probs(z)[accepted]))]), None
    typ_of = typ_of or _typicality_of(snapshot, row, crops)
    typ = [typ_of(int(p)) for p in accepted] \
        if snapshot is not None and snapshot.policy == "profile" else [None]
    if all(t is not None for t in typ):
        key = [(t, row[p]) for t, p in zip(typ, accepted)]
    else:
        key = [(row[p] - thresholds[p], row[p]) for p in accepted]
    i = max(range(len(accepted)), key=key.__getitem__)
    return int(accepted[i]), (typ[i] if typ[0] is not None else None)


def rival(row: np.ndarray, accepted: np.ndarray, best: int, typ: float, snapshot,
          crops: Optional[int] = None, typ_of=None) -> Optional[Tuple[int, float]]:
    """The accepting profile other than ``best`` that the image is most typical of, with its
    typicality, when that comes within ``snapshot.margin`` of ``typ`` (the chosen profile's);
    else None. Profiles without a typicality (fewer than :data:`MIN_PROFILE_IMAGES` support
    images) are not compared. Where profiles' acceptance regions overlap, the typicality is the
    one measure comparable across them, and two close ones mean the fingerprint cannot tell
    the two generators apart for this image: answering ``unknown`` trades right labels for
    fewer wrong ones and fewer labels on never-enrolled generators (benchmarks/RESULTS.md 10.6)."""
    typ_of = typ_of or _typicality_of(snapshot, row, crops)
    others = [(int(p), typ_of(int(p))) for p in accepted if int(p) != best]
    others = [(p, t) for p, t in others if t is not None]
    if not others:
        return None
    p, t = max(others, key=lambda x: x[1])
    return (p, t) if t >= typ - snapshot.margin else None


def attribute_stream(snapshot, embedded: Iterable, chunk: int = 64) -> Iterator[Attribution]:
    """Attributions for a stream of :class:`~ofa_sdk.pipeline.EmbeddedItem`, scored ``chunk``
    items at a time: the items of one route (:meth:`~ofa_sdk.snapshot.GallerySnapshot.route`,
    by the JPEG quality and size each arrived at) against every profile of it in one call."""
    buf: List = []

    def flush():
        rows = scored(snapshot, buf)
        for e, (snap, row) in zip(buf, rows):
            if not e.ok:
                yield Attribution(e.source, None, float("nan"), {}, e.error, e.note)
            else:
                note = e.note if snap is snapshot else \
                    "; ".join(x for x in (e.note, _routed(e.quality, snap.variant_of)) if x)
                yield decide(e.source, row, snap.names, None, note, e.provenance, snap,
                             len(e.z), e.z)

    for e in embedded:
        buf.append(e)
        if len(buf) >= chunk:
            yield from flush()
            buf = []
    if buf:
        yield from flush()


def _routed(quality: Optional[int], variant_of: Sequence) -> str:
    """The note of a query scored against variants (scale, JPEG quality) of the profiles."""
    used = sorted({v for v in variant_of if v is not None}, key=delivery_order)
    names = "/".join(delivery_label(k) for k in used)
    return (f"JPEG q{quality}: " if quality else "") + f"scored against the {names} variants"


def scored(snapshot, items: Sequence) -> List[Tuple[Any, Optional[np.ndarray]]]:
    """Per item (:class:`~ofa_sdk.pipeline.EmbeddedItem`): the snapshot it is routed to by how
    it arrived (JPEG quality, size), and its row of scores there (None for an unusable item); one
    scoring call per route."""
    out: List[Tuple[Any, Optional[np.ndarray]]] = [(snapshot, None)] * len(items)
    groups: Dict[int, List[int]] = {}
    snaps: Dict[int, Any] = {}
    for i, e in enumerate(items):
        if e.ok:
            s = snapshot.route(getattr(e, "quality", None), getattr(e, "size", None))
            snaps[id(s)] = s
            groups.setdefault(id(s), []).append(i)
    for key, idx in groups.items():
        s = snaps[key]
        for i, row in zip(idx, s.scores([items[i].z for i in idx])):
            out[i] = (s, row)
    return out
