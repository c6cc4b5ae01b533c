"""Score rules: how a query's crop fingerprints are scored against enrolled support sets.

A rule is an object with one contract, so the facade, workers and kernels treat them alike:

* ``prepare(supports, parts=None, counts=None)`` -> a plain state (numpy arrays) computed once
  per set of profiles (``counts``: each support set's crops per image);
* ``scores(state, queries)`` -> (B, P) scores of B query images (each (k, d) crop fingerprints)
  against the P prepared profiles, in one call, on the probability scale;
* ``leave_one_out(support, crops, part=None, state=None)`` -> (S,) raw scores of each support
  image against the others (what per-profile thresholds are estimated from; ``state``, the
  snapshot's prepared state, matters only to a rule that whitens by the gallery);
* ``to_prob(raw)`` -> the probability scale.

Three rules, all in [0, 1], higher meaning "made by this generator":

* :class:`GaussianRule` (``"gaussian"``, the default of a model calibrated for it) -- each
  profile a Gaussian over its images' crop-mean fingerprints with a shrunk covariance; the
  query's squared Mahalanobis distance, calibrated (see the class).
* :class:`PrototypeRule` (``"prototype"``) -- the cosine between the query's crop-averaged
  fingerprint and the support's mean fingerprint (its prototype), mapped to a probability by a
  logistic calibration ``sigmoid(a * cos + b)`` stored in the model file (``ofa-train
  calibrate``: simulator architectures reconstructing *training* photos, positives and
  negatives weighted equally, so 0.5 is where the two are equally likely on that data; not
  calibrated on real generators). One dot product per (query, profile).
* :class:`PairRule` (``"pair"``) -- the paper's score (Sec. 4.1): the mean over the support and
  over crops of the pair head's probability g([z_s; z_q]). The head runs here, from its weights
  (:class:`PairHeadWeights`), not in the engine: an engine only produces fingerprints.

Rules hold only numpy arrays and floats, so they pickle (workers, Ray actors). Which rule won
on the development sets, and by how much, is in benchmarks/RESULTS.md (section 2).
"""
from __future__ import annotations

import contextlib
import functools
import math
from dataclasses import asdict, dataclass, field
from typing import Dict, Optional, Sequence, Tuple

import numpy as np

RULES = ("gaussian", "prototype", "pair")   # in order of preference when calibrated


@dataclass(frozen=True)
class Calibration:
    a: float
    b: float
    fitted_on: Dict = field(default_factory=dict, compare=False)

    def __call__(self, cos: np.ndarray) -> np.ndarray:
        return 1.0 / (1.0 + np.exp(-(self.a * np.asarray(cos, np.float64) + self.b)))

    def to_dict(self) -> Dict:
        return asdict(self)

    @classmethod
    def from_meta(cls, meta: Dict, rule: str = "prototype") -> Optional["Calibration"]:
        d = (meta or {}).get("calibration", {}).get(rule)
        return cls(float(d["a"]), float(d["b"]), d.get("fitted_on", {})) if d else None


def unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def prototype(z: np.ndarray) -> np.ndarray:
    """(n, d) fingerprints (crops and/or images) -> (d,) unit mean direction."""
    return unit(np.asarray(z, np.float64).mean(0))


def fit_logistic(pos: Sequence[float], neg: Sequence[float], iters: int = 100,
                 ridge: float = 1e-4) -> tuple:
    """Class-balanced 1-D logistic regression p = sigmoid(a x + b) by Newton's method.
    Positives and negatives carry equal total weight; a small ridge keeps separable data
    finite. Returns (a, b)."""
    pos, neg = np.asarray(pos, np.float64), np.asarray(neg, np.float64)
    if len(pos) == 0 or len(neg) == 0:
        raise ValueError("fit_logistic needs positives and negatives")
    x = np.concatenate([pos, neg])
    y = np.concatenate([np.ones(len(pos)), np.zeros(len(neg))])
    w = np.concatenate([np.full(len(pos), 0.5 / len(pos)), np.full(len(neg), 0.5 / len(neg))])
    X = np.stack([x, np.ones_like(x)], 1)
    theta = np.zeros(2)
    for _ in range(iters):
        p = 1 / (1 + np.exp(-(X @ theta)))
        grad = X.T @ (w * (p - y)) + ridge * theta
        hess = (X * (w * p * (1 - p))[:, None]).T @ X + ridge * np.eye(2)
        step = np.linalg.solve(hess, grad)
        theta -= step
        if np.abs(step).max() < 1e-10:
            break
    return float(theta[0]), float(theta[1])


def image_ids(n: int, crops) -> np.ndarray:
    """The image each of ``n`` support rows belongs to: ``crops`` is the number of crops of
    every image (an int) or each image's own count (a sequence, in order)."""
    if isinstance(crops, (int, np.integer)):
        counts = np.full(n // crops if crops >= 1 else 0, crops)
    else:
        counts = np.asarray(list(crops), int)
    if counts.sum() != n or (counts < 1).any():
        raise ValueError(f"support of {n} fingerprints is not a whole number of images of {crops} crops")
    return np.repeat(np.arange(len(counts)), counts)


def image_sums(support: np.ndarray, crops) -> np.ndarray:
    """(sum k_i, d) crop fingerprints, image by image (``crops`` as in :func:`image_ids`) ->
    (S, d) float64 sum of each image's crop fingerprints."""
    z = np.asarray(support, np.float64)
    img = image_ids(len(z), crops)
    if not len(img):
        return np.zeros((0, z.shape[-1]))
    # an image's rows are consecutive: one reduction per run (as np.add.at, in row order)
    return np.add.reduceat(z, np.flatnonzero(np.r_[True, img[1:] != img[:-1]]), axis=0)


def image_points(support: np.ndarray, crops) -> np.ndarray:
    """(sum k_i, d) crop fingerprints -> (S, d) unit crop-mean fingerprint of each image."""
    return unit(image_sums(support, crops))


def leave_one_out_cosines(support: np.ndarray, crops) -> np.ndarray:
    """(sum k_i, d) support crop fingerprints, image by image (``crops``: k for every image, or
    each image's k_i) -> (S,) cosine of each support image's crop-averaged fingerprint to the
    prototype of the *other* images."""
    per_image = image_sums(support, crops)                        # (S, d) crop sums
    if len(per_image) < 2:
        raise ValueError("leave-one-out needs at least 2 support images")
    rest = unit(per_image.sum(0, keepdims=True) - per_image)     # prototype without image i
    return np.einsum("sd,sd->s", unit(per_image), rest)


def _t_cdf_nonneg(x, dof: int):
    """Student's t CDF for x >= 0 (a number or an array) and integer ``dof``, in closed form
    (Abramowitz & Stegun 26.7.3-4): with theta = atan(x / sqrt(dof)), P(|T| <= x) is a
    polynomial in cos(theta)^2 of about dof / 2 terms whose coefficients are one numpy
    cumulative product, so it is exact to rounding."""
    th = np.arctan(np.asarray(x, np.float64) / math.sqrt(dof))
    s, c2 = np.sin(th), np.cos(th) ** 2
    if dof % 2:                      # odd: 2/pi (theta + sin cos (1 + 2/3 c^2 + 2*4/(3*5) c^4 ...))
        k = np.arange(1, (dof - 1) // 2)
        coef = np.cumprod(2 * k / (2 * k + 1))
    else:                            # even: sin (1 + 1/2 c^2 + 1*3/(2*4) c^4 ...)
        k = np.arange(1, dof // 2)
        coef = np.cumprod((2 * k - 1) / (2 * k))
    total = 1.0 + c2 * np.polyval(coef[::-1], c2) if len(coef) else np.ones_like(c2)
    if dof % 2 == 0:
        a = s * total
    else:
        a = 2 / math.pi * (th + s * np.cos(th) * total) if dof > 1 else 2 / math.pi * th
    out = 0.5 + 0.5 * np.minimum(a, 1.0)
    return float(out) if np.ndim(out) == 0 else out


def student_t_sf(x, dof: int):
    """Upper tail P(T > x) of Student's t with integer ``dof`` >= 1, for an array ``x``."""
    x = np.asarray(x, np.float64)
    v = _t_cdf_nonneg(np.abs(x), int(dof))
    return np.where(x >= 0, 1.0 - v, v)


def student_t_cdf(x: float, dof: int) -> float:
    """CDF of Student's t distribution with integer ``dof`` >= 1 (closed form)."""
    if dof < 1 or int(dof) != dof:
        raise ValueError(f"student_t_cdf needs an integer dof >= 1, got {dof!r}")
    v = _t_cdf_nonneg(abs(float(x)), int(dof))
    return v if x >= 0 else 1.0 - v


@functools.lru_cache(maxsize=4096)
def student_t_quantile(p: float, dof: int) -> float:
    """Quantile of Student's t distribution (bisection on :func:`student_t_cdf`), accurate to
    about 1e-12 relative; memoised (every profile of one size and fraction asks the same)."""
    if not 0 < p < 1 or dof < 1 or int(dof) != dof:
        raise ValueError(f"student_t_quantile needs 0 < p < 1 and an integer dof >= 1, got {p!r}, {dof!r}")
    if p < 0.5:
        return -student_t_quantile(1 - p, dof)
    dof = int(dof)
    lo, hi = 0.0, 1.0
    while _t_cdf_nonneg(hi, dof) < p:
        lo, hi = hi, hi * 2
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if _t_cdf_nonneg(mid, dof) < p else (lo, mid)
    return (lo + hi) / 2


MIN_DISTANCE = 1e-6
FIT_SIZE_FOLDS = 2   # the second, smaller fit size whose held-out scores extrapolate to n points


def _to_scale(dist, power: float):
    """Distances 1 - s on the scale that is taken as normal: log for ``power`` 0, else the
    Box-Cox power ``dist ** power`` (1/3: Wilson-Hilferty, which makes chi-square-like squared
    distances nearly normal, where the log leaves them left-skewed and overstates their upper
    tail)."""
    d = np.maximum(np.asarray(dist, np.float64), MIN_DISTANCE if power == 0 else 0.0)
    return np.log(d) if power == 0 else d ** power


def _from_scale(y: float, power: float) -> float:
    return math.exp(y) if power == 0 else max(y, 0.0) ** (1 / power)


MIN_TAIL = 100   # pooled held-out values below which a gallery's tail is not estimated


def jackknife_survival(y: np.ndarray) -> np.ndarray:
    """Each of N >= 4 held-out values' upper-tail probability under the Student-t prediction
    from the other N - 1 (their mean and sd, N - 2 degrees of freedom): uniform on (0, 1) when
    the values are normal, so pooled over many profiles they show how the t bound's tail
    differs from the real one. Fewer values: an empty array."""
    y = np.asarray(y, np.float64)
    N = len(y)
    if N < 4:
        return np.empty(0)
    dev = y - y.mean()
    var = ((dev ** 2).sum() - dev ** 2 * N / (N - 1)) / (N - 2)      # sd without value i
    z = dev * N / (N - 1) / np.sqrt(np.maximum(var, 1e-300) * (1 + 1 / (N - 1)))
    return student_t_sf(z, N - 2)


TAIL_POINTS = 4096   # a pool of more values keeps this many of its quantiles


@dataclass(frozen=True, eq=False)      # arrays: compared by identity
class Tail:
    """The real upper tail of the t bound at one query crop count, from the held-out values of
    many profiles (:func:`jackknife_survival`, pooled by :meth:`Tails.pooled`): a monotone map
    between the t model's tail probability ``p`` and the share of own images beyond it
    (``share``, the pooled values' empirical distribution, from (0, 0) to (1, 1)). Real
    generators' held-out distances have heavier tails than the normal model
    (benchmarks/RESULTS.md, sections 10.3 and 10.5), so at a nominal 5% the t bound alone
    refuses more."""
    p: np.ndarray
    share: np.ndarray

    @classmethod
    def of_values(cls, values: Sequence[float]) -> "Tail":
        v = np.sort(np.asarray(values, np.float64))
        if len(v) > TAIL_POINTS:
            # np.quantile's linear quantiles, read off the sorted values (its partition is
            # slow at thousands of quantiles: most of a snapshot route's preparation)
            q = (np.arange(TAIL_POINTS) + 0.5) / TAIL_POINTS
            v = np.interp(q * (len(v) - 1), np.arange(len(v)), v)
        n = len(v)
        return cls(np.concatenate([[0.0], v, [1.0]]),
                   np.concatenate([[0.0], (np.arange(n) + 0.5) / n, [1.0]]))

    def nominal(self, fraction: float) -> float:
        """The t model's tail probability beyond which ``fraction`` of own images fall."""
        return float(np.interp(fraction, self.share, self.p))

    def share_at(self, p: float) -> float:
        """The share of own images beyond the t model's tail probability ``p``."""
        return float(np.interp(p, self.p, self.share))


@dataclass(frozen=True)
class OwnScores:
    """How a generator's own new images score against its profile, from the held-out scores of
    its n >= 3 support images (raw scale, at most 1): the distance 1 - s on the rule's scale
    (:func:`_to_scale`, ``power``) is taken as normal, and a new image's then follows a Student
    t with n - 1 degrees of freedom, centred on ``mean``, scaled by sd * sqrt(1 + 1/n) (the
    prediction interval). ``mean`` and ``sd`` are those of the n-point fit that queries meet
    (:func:`held_out_stats` extrapolates them from smaller refits); ``dof`` (None: n - 1) is
    more when the sd was taken over more held-out values than images (runs of crops).
    ``held``: the held-out values' :func:`jackknife_survival`, which a gallery pools into the
    real shape of the tail (:class:`Tail`); with a ``tail``, the threshold and the typicality
    read the t model's tail probabilities through it."""
    mean: float
    sd: float
    n: int
    power: float = 0.0
    dof: Optional[int] = None
    held: np.ndarray = field(default_factory=lambda: np.empty(0), compare=False, repr=False)

    @property
    def _dof(self) -> int:
        return self.n - 1 if self.dof is None else max(int(self.dof), 1)

    @classmethod
    def from_scores(cls, own: Sequence[float], power: float = 0.0) -> "OwnScores":
        s = np.asarray(own, np.float64)
        if s.ndim != 1 or len(s) < 3:
            raise ValueError(f"self_threshold needs at least 3 leave-one-out scores, got {s.shape}")
        d = _to_scale(1.0 - s, power)
        return cls(float(d.mean()), float(d.std(ddof=1)), len(d), power)

    @property
    def _scale(self) -> float:
        return self.sd * math.sqrt(1 + 1 / self.n)

    def threshold(self, fraction: float, tail: Optional[Tail] = None) -> float:
        """The raw score below which about ``fraction`` of the generator's new images fall."""
        if not 0 < fraction < 1:
            raise ValueError(f"fraction must be in (0, 1), got {fraction!r}")
        p = fraction if tail is None else min(max(tail.nominal(fraction), 1e-12), 1 - 1e-12)
        bound = self.mean + student_t_quantile(1 - p, self._dof) * self._scale
        return float(1.0 - _from_scale(bound, self.power))

    def typicality(self, raw: float, tail: Optional[Tail] = None) -> float:
        """The share of the generator's own new images expected to score *below* ``raw``: 0.5
        for a typical image of it, ``fraction`` exactly at :meth:`threshold` (with the same
        ``tail``), near 0 for an image unlike any it makes. The per-profile threshold and this
        read on one scale."""
        d = float(_to_scale(1.0 - float(raw), self.power))
        if self._scale <= 0:
            return 1.0 if d <= self.mean else 0.0
        p = 1.0 - student_t_cdf((d - self.mean) / self._scale, self._dof)
        return p if tail is None else tail.share_at(p)


@dataclass(frozen=True)
class OwnByCrops:
    """A profile's :class:`OwnScores` for queries of 1, 2, ... crops (``levels[k - 1]``): a
    query of fewer crops than the support images averages less crop noise away and lands
    farther from the profile, so it is held to the spread of held-out *crops* of that count,
    not of whole images. Queries of more crops than the last level use the last (whole
    support images). ``tails``: a gallery's :class:`Tails` (None: the t model's own)."""
    levels: Tuple[OwnScores, ...]

    def level(self, crops: Optional[int] = None) -> int:
        """The level (1-based) a query of ``crops`` crops is held to (None: whole images)."""
        return len(self.levels) if crops is None else min(max(int(crops), 1), len(self.levels))

    def at(self, crops: Optional[int] = None) -> OwnScores:
        """The level of a query of ``crops`` crops (None: whole support images)."""
        return self.levels[self.level(crops) - 1]

    def threshold(self, fraction: float, crops: Optional[int] = None,
                  tails: Optional["Tails"] = None) -> float:
        return self.at(crops).threshold(fraction, None if tails is None else tails.of(self, crops))

    def typicality(self, raw: float, crops: Optional[int] = None,
                   tails: Optional["Tails"] = None) -> float:
        return self.at(crops).typicality(raw, None if tails is None else tails.of(self, crops))


@dataclass(frozen=True)
class Tails:
    """A gallery's :class:`Tail` per query level, pooled over the profiles that share a level
    structure (the same number of levels, i.e. of crops per support image): the held-out
    values of one profile are too few to show a 5% tail, those of a gallery are not. A level
    pooling fewer than :data:`MIN_TAIL` values keeps the t model's tail."""
    by_level: Dict[Tuple[int, int], Tail] = field(default_factory=dict)

    @classmethod
    def pooled(cls, owns: Sequence[Optional[OwnByCrops]]) -> "Tails":
        pools: Dict[Tuple[int, int], list] = {}
        for o in owns:
            if o is None:
                continue
            for k, lv in enumerate(o.levels, 1):
                pools.setdefault((k, len(o.levels)), []).append(np.asarray(lv.held, np.float64))
        pools = {key: np.concatenate(v) for key, v in pools.items()}
        return cls({key: Tail.of_values(v) for key, v in pools.items() if len(v) >= MIN_TAIL})

    def of(self, own: OwnByCrops, crops: Optional[int] = None) -> Optional[Tail]:
        """The tail that ``own``'s level for a ``crops``-crop query is read through."""
        return self.by_level.get((own.level(crops), len(own.levels)))


def crop_groups(counts: Sequence[int], level: int) -> Tuple[np.ndarray, list]:
    """Pseudo-queries of ``level`` crops cut from support images of ``counts`` crops each: per
    image, its disjoint runs of ``level`` consecutive crops (the whole image when it has fewer).
    Returns the image of each group and each group's support rows."""
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(int)
    img, rows = [], []
    for i, (s, k) in enumerate(zip(starts, counts)):
        if k < level:
            img.append(i)
            rows.append(np.arange(s, s + k))
            continue
        for j in range(k // level):
            img.append(i)
            rows.append(np.arange(s + j * level, s + (j + 1) * level))
    return np.asarray(img, int), rows


def held_out_stats(rule, support: np.ndarray, crops, part=None, state=None,
                   centre: Optional[np.ndarray] = None) -> OwnByCrops:
    """How a generator's own new images score against the profile of its n >= 3 support images,
    for queries of every crop count up to the support's (:class:`OwnByCrops`).

    Each support image (or each run of k of its crops) is scored against the rule refitted
    without it. Those refits hold fewer points than the n-point profile that queries meet, so
    their scores read lower; the held-out scale's mean and sd are computed at two fit sizes,
    m1 (the rule's own folds: n - 1, or n - n/10 for the Gaussian rule) and m2 (2 folds, n/2),
    and extrapolated to n as ``a + b / m`` (the form of a mean's error in m points; from 8
    images up, where the n/2-image fits have a shape of their own).

    ``centre``: (n, d) each support image's centre-crop fingerprint, the crop a 1-crop query
    takes (:func:`ofa_sdk.images.make_crops`). A k-crop support's grid crops lie elsewhere
    (the corners, at 4 crops), and a centre crop scores farther from the profile than a held-out
    grid crop does, so with ``centre`` the 1-crop level is held out on the centre crops; rules
    that score only their own support rows (the pair rule) ignore it. Measured against nominal
    on synthetic Gaussians in tests/test_thresholds.py and on the development sets in
    benchmarks/RESULTS.md."""
    z = np.asarray(support)
    img = image_ids(len(z), crops)
    counts = np.bincount(img)
    n = len(counts)
    if n < 3:
        raise ValueError(f"held-out scores need at least 3 support images, got {n}")
    if centre is not None and np.shape(centre) != (n, z.shape[1]):
        raise ValueError(f"centre crops must be ({n}, {z.shape[1]}), one per support image, "
                         f"got {np.shape(centre)}")
    use_centre = centre is not None and getattr(rule, "scores_points", False)
    power = getattr(rule, "own_power", 0.0)
    folds1 = min(n, getattr(rule, "loo_folds", n))
    groups, level_of = [], []
    for level in range(2 if use_centre else 1, int(counts.max()) + 1):
        gi, rows = crop_groups(counts, level)
        groups += list(zip(gi, rows))
        level_of += [level] * len(gi)
    points = None
    if use_centre:
        points = np.concatenate([_group_points(z, groups), unit(np.asarray(centre, np.float64))]) \
            if groups else unit(np.asarray(centre, np.float64))
        groups += [(i, None) for i in range(n)]
        level_of += [1] * n
    level_of = np.asarray(level_of)
    m1, m2 = n - n / folds1, n - n / FIT_SIZE_FOLDS
    # the smaller fits must have a shape of their own (more than MIN_POINTS images), else none
    second = m2 < m1 and n - math.ceil(n / FIT_SIZE_FOLDS) > MIN_POINTS
    more = {"points": points} if use_centre else {}
    y1 = _to_scale(1.0 - rule.held_out(z, crops, folds1, groups, part, state, **more), power)
    y2 = _to_scale(1.0 - rule.held_out(z, crops, FIT_SIZE_FOLDS, groups, part, state, **more),
                   power) if second else y1
    c = (1 / n - 1 / m1) / (1 / m1 - 1 / m2) if second else 0.0
    levels = []
    for level in range(1, int(counts.max()) + 1):
        a, b = y1[level_of == level], y2[level_of == level]
        sd1, sd2 = a.std(ddof=1), b.std(ddof=1)
        mean = a.mean() + (a.mean() - b.mean()) * c
        sd = max(sd1 + (sd1 - sd2) * c, 0.5 * sd1)
        levels.append(OwnScores(float(mean), float(sd), n, power, len(a) - 1,
                                jackknife_survival(a)))
    return OwnByCrops(tuple(levels))


def self_threshold(own: Sequence[float], fraction: float) -> float:
    """A threshold below which about ``fraction`` of a generator's *new* images fall, from the
    leave-one-out similarities ``own`` of its n >= 3 support images (raw scale: cosine for the
    prototype rule, mean pair probability for the pair rule): :meth:`OwnScores.threshold`, the
    one-sided (1 - fraction) prediction bound mean + t_{1-fraction, n-1} * sd * sqrt(1 + 1/n)
    on the log-distance, mapped back to the similarity scale. Unlike the empirical ``fraction``
    quantile of n scores, it does not sit near the minimum of a small support set (measured in
    docs/experiment-log.md, section 5.2)."""
    if not 0 < fraction < 1:
        raise ValueError(f"fraction must be in (0, 1), got {fraction!r}")
    return OwnScores.from_scores(own).threshold(fraction)


# -- the rules -------------------------------------------------------------------------------------

@dataclass(frozen=True)
class PairHeadWeights:
    """The pair head g as numpy arrays: first layer W [z_s; z_q] + b split into its support
    half (``support_part``: W_s z_s + b, stored per profile at enroll time) and query half
    (W_q z_q), then the rest of the MLP (ReLU between linear layers, sigmoid at the end)."""
    w_support: np.ndarray                 # (h, d)
    w_query: np.ndarray                   # (h, d)
    bias: np.ndarray                      # (h,)
    rest: Tuple[Tuple[np.ndarray, np.ndarray], ...]   # (W (out, in), b (out,)) per layer

    @classmethod
    def from_arrays(cls, first_w, first_b, rest, dim: int) -> "PairHeadWeights":
        """From the first layer's (h, 2d) weight and (h,) bias, then (W, b) per later linear
        layer, as :class:`ofa_sdk.models.PairHead` stores them
        (:meth:`ofa_sdk.weights.ModelBundle.pair_head` reads them from a model file)."""
        w = np.asarray(first_w, np.float32)
        return cls(np.ascontiguousarray(w[:, :dim]), np.ascontiguousarray(w[:, dim:]),
                   np.asarray(first_b, np.float32),
                   tuple((np.asarray(a, np.float32), np.asarray(b, np.float32)) for a, b in rest))

    def support_part(self, z: np.ndarray) -> np.ndarray:
        """(S, d) -> (S, h) float32."""
        return (np.asarray(z, np.float32) @ self.w_support.T + self.bias).astype(np.float32)

    def query_part(self, z: np.ndarray) -> np.ndarray:
        return (np.asarray(z, np.float32) @ self.w_query.T).astype(np.float32)

    def probs(self, query_part: np.ndarray, support_part: np.ndarray) -> np.ndarray:
        """(Q, h), (S, h) -> (Q, S) pair probabilities."""
        q, s = len(query_part), len(support_part)
        h = np.maximum(query_part[:, None, :] + support_part[None, :, :], 0).reshape(q * s, -1)
        for i, (w, b) in enumerate(self.rest):    # 2-D products: one BLAS call per layer
            h = h @ w.T + b
            if i < len(self.rest) - 1:
                np.maximum(h, 0, out=h)
        return (1.0 / (1.0 + np.exp(-h[:, 0]))).astype(np.float32).reshape(q, s)

    def mean_probs(self, query_part: np.ndarray, support_part: np.ndarray, chunk: int = 256
                   ) -> np.ndarray:
        """(Q, h), (S, h) -> (Q,) mean pair probability of each query row over the supports,
        ``chunk`` query rows at a time (bounds the (chunk * S, h) temporary). The reference of
        the fused C++ kernel (``ofa_sdk.kernels.dispatch.pair_crop_means``)."""
        return np.concatenate([self.probs(query_part[i:i + chunk], support_part).mean(1)
                               for i in range(0, len(query_part), chunk)] or [np.zeros(0, np.float32)])

    @property
    def fusable(self) -> bool:
        """The shape the fused kernels cover: rest = Linear(h, h2), ReLU, Linear(h2, 1)."""
        return len(self.rest) == 2 and self.rest[1][0].shape[0] == 1


def _owners(queries: Sequence[np.ndarray]) -> Tuple[np.ndarray, np.ndarray]:
    """Flattened (sum k, d) crop fingerprints of B query images and the image of each row."""
    flat = np.concatenate([np.asarray(q, np.float32) for q in queries])
    return flat, np.repeat(np.arange(len(queries)), [len(q) for q in queries])


def _group_images(groups) -> np.ndarray:
    return np.asarray([i for i, _ in groups], int)


def _group_points(support: np.ndarray, groups) -> np.ndarray:
    """(G, d) unit crop-mean fingerprint of each group of support rows."""
    z = np.asarray(support, np.float64)
    return unit(np.stack([z[r].sum(0) for _, r in groups]))


@dataclass(frozen=True)
class PrototypeRule:
    calibration: Calibration
    name: str = "prototype"
    own_power = 1 / 3        # 1 - cos of a noisy unit vector is chi-square-like (OwnScores)
    scores_points = True     # held_out scores given points (a support's centre crops)

    def prepare(self, supports: Sequence[np.ndarray], parts=None, counts=None) -> np.ndarray:
        """(P, d) unit prototypes (of every crop: ``counts`` is not needed)."""
        return np.stack([prototype(s) for s in supports]) if len(supports) else np.zeros((0, 0))

    def select(self, state: np.ndarray, idx: Sequence[int]) -> np.ndarray:
        return state[list(idx)]

    def gather(self, states: Sequence[np.ndarray], which: Sequence[int]) -> np.ndarray:
        """As :meth:`GaussianRule.gather`."""
        return np.stack([states[w][i] for i, w in enumerate(which)]) if len(which) else \
            np.zeros((0, 0))

    def raw_scores(self, state: np.ndarray, queries: Sequence[np.ndarray]) -> np.ndarray:
        """(B, P) cosines of the queries' crop-averaged fingerprints to the prototypes."""
        if not len(queries) or not len(state):
            return np.zeros((len(queries), len(state)))
        return np.stack([prototype(q) for q in queries]) @ state.T

    def scores(self, state: np.ndarray, queries: Sequence[np.ndarray]) -> np.ndarray:
        return self.to_prob(self.raw_scores(state, queries))

    def leave_one_out(self, support: np.ndarray, crops, part=None, state=None) -> np.ndarray:
        """(S,) leave-one-out cosines (``state`` is not needed)."""
        return leave_one_out_cosines(support, crops)

    def held_out(self, support: np.ndarray, crops, folds: int, groups, part=None, state=None,
                 points: Optional[np.ndarray] = None) -> np.ndarray:
        """(G,) cosine of each group of one image's crops (``groups``: (image, rows) pairs;
        ``points``: (G, d) the groups' unit points, when they are not support rows) to the
        prototype of the images outside that image's fold (image i is in fold i % folds)."""
        sums = image_sums(support, crops)
        fold = np.arange(len(sums)) % folds
        fold_sums = np.zeros((folds, sums.shape[1]))
        np.add.at(fold_sums, fold, sums)
        rest = unit(sums.sum(0) - fold_sums)
        q = _group_points(support, groups) if points is None else points
        return np.einsum("gd,gd->g", q, rest[fold[_group_images(groups)]])

    def to_prob(self, raw):
        return self.calibration(raw)

    def from_prob(self, p: float) -> float:
        """The raw cosine of a calibrated score (the inverse of :meth:`to_prob`)."""
        p = min(max(float(p), 1e-15), 1 - 1e-15)
        return (math.log(p / (1 - p)) - self.calibration.b) / self.calibration.a


@dataclass(frozen=True)
class PairState:
    parts: Tuple[np.ndarray, ...]     # per profile, (S, h) support parts
    prototypes: np.ndarray            # (P, d), for the prefilter

    def __len__(self):
        return len(self.parts)


@dataclass(frozen=True)
class PairRule:
    head: PairHeadWeights
    name: str = "pair"
    own_power = 0.0          # log(1 - p): the distance scale measured for it (experiment-log 5.2)
    chunk: int = 256            # query crops per block (bounds the (chunk, S, h) temporary)
    # With prefilter=K > 0, each query image is pair-scored only against the K profiles whose
    # prototypes are nearest its fingerprint (cosine); the others get 0.0 ("not scored"). An
    # approximation for large galleries: its top-1 agreement with exhaustive scoring is
    # measured by benchmarks/harness.py.
    prefilter: int = 0

    def prepare(self, supports: Sequence[np.ndarray], parts: Optional[Sequence[np.ndarray]] = None,
                counts=None) -> PairState:
        """Per profile, the (S, h) support part (the stored one when given), and prototypes."""
        if parts is None:
            parts = [self.head.support_part(s) for s in supports]
        protos = np.stack([prototype(s) for s in supports]) if len(supports) else np.zeros((0, 0))
        return PairState(tuple(np.asarray(p, np.float32) for p in parts), protos)

    def select(self, state: PairState, idx: Sequence[int]) -> PairState:
        return PairState(tuple(state.parts[i] for i in idx), state.prototypes[list(idx)])

    def gather(self, states: Sequence[PairState], which: Sequence[int]) -> PairState:
        """As :meth:`GaussianRule.gather`."""
        if not len(which):
            return PairState((), np.zeros((0, 0)))
        return PairState(tuple(states[w].parts[i] for i, w in enumerate(which)),
                         np.stack([states[w].prototypes[i] for i, w in enumerate(which)]))

    def _crop_means(self, qpart: np.ndarray, parts: Sequence[np.ndarray]) -> np.ndarray:
        """(n, h) query parts x P support parts -> (n, P) mean pair probabilities (the fused
        C++ kernel when built, else :meth:`PairHeadWeights.mean_probs`; one switch decides)."""
        from .kernels.dispatch import pair_crop_means
        return pair_crop_means(qpart, parts, self.head, chunk=self.chunk)

    def scores(self, state: PairState, queries: Sequence[np.ndarray]) -> np.ndarray:
        """Per query image: the mean pair probability over its crops and each support set."""
        P = len(state)
        if not len(queries) or not P:
            return np.zeros((len(queries), P))
        if 0 < self.prefilter < P:
            return self._prefiltered(state, queries)
        flat, owner = _owners(queries)
        qpart = self.head.query_part(flat)
        per_crop = self._crop_means(qpart, state.parts)                     # (sum k, P)
        counts = np.bincount(owner)
        return np.stack([np.bincount(owner, per_crop[:, p]) / counts for p in range(P)], 1)

    def _prefiltered(self, state: PairState, queries: Sequence[np.ndarray]) -> np.ndarray:
        out = np.zeros((len(queries), len(state)))
        cos = np.stack([prototype(q) for q in queries]) @ state.prototypes.T
        for b, q in enumerate(queries):
            qpart = self.head.query_part(q)
            top = np.argpartition(-cos[b], self.prefilter)[:self.prefilter]
            out[b, top] = self._crop_means(qpart, [state.parts[p] for p in top]).mean(0)
        return out

    def leave_one_out(self, support: np.ndarray, crops, part=None, state=None) -> np.ndarray:
        """(S,) each support image's mean pair probability against the other images' crops
        (``crops`` as in :func:`image_ids`; ``state`` is not needed)."""
        img = image_ids(len(support), crops)
        return np.bincount(img, self._per_crop_held_out(support, crops, None, part)) / np.bincount(img)

    def held_out(self, support: np.ndarray, crops, folds: int, groups, part=None, state=None
                 ) -> np.ndarray:
        """(G,) mean pair probability of each group of one image's crops against the crops of
        the images outside that image's fold (image i is in fold i % folds)."""
        per_crop = self._per_crop_held_out(support, crops, folds, part)
        return np.asarray([per_crop[r].mean() for _, r in groups])

    def _per_crop_held_out(self, support, crops, folds, part) -> np.ndarray:
        """(sum k,) each support crop's mean pair probability against the crops of the images
        outside its image's fold (None: outside its image)."""
        z = np.asarray(support, np.float32)
        img = image_ids(len(z), crops)
        if len(img) == 0 or img.max() < 1:
            raise ValueError(f"leave-one-out needs at least 2 support images, got {len(z)} fingerprints")
        part = np.asarray(self.head.support_part(z) if part is None else part, np.float32)
        if len(part) != len(z):
            raise ValueError(f"support part has {len(part)} rows for {len(z)} fingerprints")
        k = np.bincount(img)                                                 # crops per image
        # each crop's mean pair probability against each support image's crops (the gallery
        # kernel, images as profiles), then the sum over the *other* images
        means = self._crop_means(self.head.query_part(z), np.split(part, np.cumsum(k)[:-1]))
        sums = means * k                                                     # (sum k, S)
        fold = np.arange(len(k)) % (folds or len(k))
        out_sums = np.stack([sums[:, fold == f].sum(1) for f in range(fold.max() + 1)], 1)
        mine = fold[img]
        rows = np.arange(len(z))
        return (sums.sum(1) - out_sums[rows, mine]) / (len(z) - np.bincount(fold, k)[mine])

    def to_prob(self, raw):
        return np.asarray(raw, np.float64) if np.ndim(raw) else float(raw)

    def from_prob(self, p: float) -> float:
        return float(p)


# -- the Gaussian rule ----------------------------------------------------------------------------

SHRINKAGE = ("ledoit-wolf", "oas")
WHITEN = (None, "gallery")
RANK = 32          # eigenpairs kept per profile beyond the isotropic remainder
MIN_POINTS = 3     # support images below which a profile's covariance is isotropic
LOO_FOLDS = 10     # held-out folds for a profile's own scores (leave-one-out below this many images)


def shrinkage(x: np.ndarray, method: str = "ledoit-wolf") -> float:
    """The weight alpha of the scaled identity in (1 - alpha) S + alpha (tr S / d) I for the
    maximum-likelihood covariance S of the rows of ``x`` (n, d), in closed form: Ledoit-Wolf
    (2004) or the oracle approximating shrinkage (Chen et al. 2010), both as scikit-learn
    computes them. One row gives 1 (nothing but the isotropic part can be estimated)."""
    x = np.asarray(x, np.float64)
    n, d = x.shape
    if method not in SHRINKAGE:
        raise ValueError(f"shrinkage must be one of {SHRINKAGE}, got {method!r}")
    if n < 2:
        return 1.0
    xc = x - x.mean(0)
    cov = xc.T @ xc / n
    mu = np.trace(cov) / d
    if mu <= 0:
        return 1.0
    if method == "oas":
        alpha = np.mean(cov ** 2)
        den = (n + 1) * (alpha - mu ** 2 / d)
        return 1.0 if den <= 0 else float(min((alpha + mu ** 2) / den, 1.0))
    x2 = xc ** 2
    beta = (np.sum(x2.T @ x2) / n - np.sum(cov ** 2)) / (d * n)
    delta = (np.sum(cov ** 2) - 2 * mu * np.trace(cov) + d * mu ** 2) / d
    beta = min(beta, delta)
    return 0.0 if beta <= 0 else float(beta / delta)


@dataclass(frozen=True)
class GaussianFit:
    """A shrunk covariance kept as its top eigenpairs and an isotropic remainder:
    cov ~= sum_j lam_j v_j v_j^T + sigma2 (I - sum_j v_j v_j^T), so that
    D^2(x) = |r|^2 / sigma2 + sum_j (1/lam_j - 1/sigma2) (v_j . r)^2 with r = x - mean.
    The remainder is the mean of the dropped eigenvalues (the trace is kept); with no more
    than ``rank`` + 1 points nothing is dropped and the form is exact."""
    mean: np.ndarray      # (d,)
    basis: np.ndarray     # (k, d) orthonormal rows
    lam: np.ndarray       # (k,)
    sigma2: float
    alpha: float          # the shrinkage used


def _eig_desc(xc: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Nonzero eigenvalues (descending) and eigenvectors (rows) of the covariance xc^T xc / n of
    centred rows ``xc`` (n, d), from the smaller of the n x n Gram matrix and the d x d
    covariance (a symmetric eigensolver: several times faster than an SVD at these sizes)."""
    n, d = xc.shape
    if n <= d:
        w, u = np.linalg.eigh(xc @ xc.T)
        w, u = w[::-1], u[:, ::-1]
        keep = w > 1e-10 * max(w[0], 1e-300)
        w, u = w[keep], u[:, keep]
        return w / n, (u / np.sqrt(w)).T @ xc
    w, v = np.linalg.eigh(xc.T @ xc / n)
    w, v = w[::-1], v[:, ::-1]
    keep = w > 1e-10 * max(w[0], 1e-300)
    return w[keep], v[:, keep].T


def one_blas_thread():
    """A context in which BLAS/LAPACK use one thread. The Gaussian rule's per-profile fits are
    small eigenproblems run by the hundred: a multi-threaded BLAS spends more time synchronising
    its threads than computing them, many times more on a busy machine (benchmarks/RESULTS.md
    section 5)."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:                 # not installed: the BLAS keeps its own setting
        return contextlib.nullcontext()
    return threadpool_limits(1, user_api="blas")


def fit_gaussian(x: np.ndarray, method: str = "ledoit-wolf", rank: int = RANK,
                 prior_var: Optional[float] = None, isotropic: bool = False) -> GaussianFit:
    """Mean and shrunk covariance of the rows of ``x`` (n >= 1, d) in the low-rank form.
    Below :data:`MIN_POINTS` points no shape can be estimated (Ledoit-Wolf gives no shrinkage
    for two points, a singular covariance), nor is one with ``isotropic``: the covariance is
    isotropic with ``prior_var`` per dimension, or with the points' own mean variance (unbiased)
    without a prior."""
    x = np.asarray(x, np.float64)
    n, d = x.shape
    mean = x.mean(0)
    xc = x - mean
    if n < MIN_POINTS or isotropic:
        var = prior_var if prior_var is not None else float((xc ** 2).sum() / (max(n - 1, 1) * d))
        if not var > 0:
            raise ValueError(f"a Gaussian of {n} point(s) with no spread needs a prior variance")
        return GaussianFit(mean, np.zeros((0, d)), np.zeros(0), float(var), 1.0)
    alpha = shrinkage(x, method)
    ev, vt = _eig_desc(xc)                              # eigenpairs of S, descending
    mu = ev.sum() / d
    floor = max(mu, 1e-12) * 1e-6                       # keeps identical support points finite
    k = int(min(rank, len(ev)))
    lam = (1 - alpha) * ev[:k] + alpha * mu
    lam = np.maximum(lam, floor)
    if k < d:
        rest = ((1 - alpha) * (ev.sum() - ev[:k].sum()) + alpha * mu * (d - k)) / (d - k)
    else:       # a complete basis leaves no remainder; its smallest eigenvalue avoids cancellation
        rest = lam[-1]
    return GaussianFit(mean, vt[:k], lam, float(max(rest, floor)), alpha)


def fit_profile(x: np.ndarray, method: str = "ledoit-wolf", rank: int = RANK,
                prior_var: Optional[float] = None) -> GaussianFit:
    """A profile's Gaussian: shaped only when its held-out refits (one image fewer) can be too,
    so the threshold is fitted on distances of the kind queries meet. A profile of
    :data:`MIN_POINTS` images would otherwise be shaped while its (MIN_POINTS - 1)-image refits
    are isotropic: its threshold then refused most of its own new images (tests/test_thresholds.py)."""
    return fit_gaussian(x, method, rank, prior_var, isotropic=len(x) <= MIN_POINTS)


def mahalanobis(fit: GaussianFit, x: np.ndarray) -> np.ndarray:
    """(n, d) -> (n,) squared Mahalanobis distances under ``fit`` (float64 reference of the
    batched form in :class:`GaussianRule`)."""
    r = np.asarray(x, np.float64) - fit.mean
    proj = r @ fit.basis.T
    return (r * r).sum(-1) / fit.sigma2 + (proj ** 2 * (1 / fit.lam - 1 / fit.sigma2)).sum(-1)


def pooled_whitener(points: Sequence[np.ndarray], method: str = "ledoit-wolf"
                    ) -> Tuple[Optional[np.ndarray], Optional[float]]:
    """(W^{-1/2}, tr W / d) for the pooled within-profile covariance W of several profiles'
    (S_p, d) points, each centred on its own mean and shrunk as :func:`shrinkage` does. The
    whitener is scaled so that the whitened pooled covariance is (tr W / d) I: it changes
    directions, not the scale of distances. (None, None) when the profiles hold fewer than
    :data:`MIN_POINTS` residuals with any spread (nothing to estimate W from)."""
    xs = [np.asarray(p, np.float64) for p in points if len(p) > 1]
    if not xs or sum(len(p) - 1 for p in xs) < MIN_POINTS:
        return None, None
    r = np.concatenate([p - p.mean(0) for p in xs])
    d = r.shape[1]
    cov = r.T @ r / len(r)
    mu = np.trace(cov) / d
    if not mu > 0:
        return None, None
    alpha = shrinkage(r, method)
    ev, v = np.linalg.eigh((1 - alpha) * cov + alpha * mu * np.eye(d))
    ev = np.maximum(ev, ev.max() * 1e-9)
    return (v / np.sqrt(ev / ev.mean())) @ v.T, float(ev.mean())


@dataclass(frozen=True)
class GaussianState:
    """Per profile the low-rank Gaussian of its support images (stacked, zero-padded to one
    rank), and the whitening applied to every fingerprint first (None: none)."""
    means: np.ndarray     # (P, d) float32
    basis: np.ndarray     # (P, k, d) float32
    coef: np.ndarray      # (P, k) float32: 1/lam - 1/sigma2 (0 in padded rows)
    inv_sigma2: np.ndarray  # (P,) float32
    whitener: Optional[np.ndarray] = None   # (d, d)
    prior_var: Optional[float] = None       # what profiles of fewer than MIN_POINTS images used

    def __len__(self):
        return len(self.means)

    @property
    def nbytes(self) -> int:
        """Bytes of per-profile state (the whitener is shared)."""
        return int(self.means.nbytes + self.basis.nbytes + self.coef.nbytes + self.inv_sigma2.nbytes)


def _stack(fits: Sequence[GaussianFit], d: int, whitener=None, prior=None) -> GaussianState:
    k = max([len(f.lam) for f in fits], default=0)
    P = len(fits)
    basis = np.zeros((P, k, d), np.float32)
    coef = np.zeros((P, k), np.float32)
    for p, f in enumerate(fits):
        basis[p, :len(f.lam)] = f.basis
        coef[p, :len(f.lam)] = 1 / f.lam - 1 / f.sigma2
    return GaussianState(np.array([f.mean for f in fits], np.float32).reshape(P, d), basis, coef,
                         np.array([1 / f.sigma2 for f in fits], np.float32), whitener, prior)


@dataclass(frozen=True)
class GaussianRule:
    """Each profile is a Gaussian over its support images' crop-mean fingerprints: the mean and
    a covariance shrunk towards a scaled identity with a data-chosen weight (Ledoit-Wolf by
    default), kept as its top ``rank`` eigenpairs plus an isotropic remainder. A query image's
    crop-mean fingerprint is scored by its squared Mahalanobis distance D^2 to each profile,
    per dimension: the raw score is 1 - D^2 / d (at most 1, like a cosine; 1 - raw is the
    distance that per-profile thresholds model), and the probability is a logistic of
    log(D^2 / d) fitted on simulator architectures (``ofa-train calibrate``).

    ``whiten="gallery"`` first whitens every fingerprint by the pooled within-profile
    covariance of all the profiles in the snapshot (LDA-style), so each profile's own
    covariance is shrunk towards what the gallery says generators vary like. The whitener is
    recomputed whenever the snapshot's profiles change (it belongs to the snapshot); with one
    profile it is that profile's own covariance."""
    calibration: Calibration
    shrink: str = "ledoit-wolf"
    whiten: Optional[str] = None
    rank: int = RANK
    # per-dimension variance of a profile of fewer than MIN_POINTS images (a one-image profile
    # cannot estimate its own): the simulator architectures' pooled within-class variance,
    # fitted with the calibration, or the gallery's when the rule whitens by it
    prior_var: Optional[float] = None
    name: str = "gaussian"
    own_power = 1 / 3        # D^2 / d is chi-square-like (OwnScores)
    scores_points = True     # held_out scores given points (a support's centre crops)
    loo_folds = LOO_FOLDS

    def __post_init__(self):
        if self.shrink not in SHRINKAGE:
            raise ValueError(f"shrink must be one of {SHRINKAGE}, got {self.shrink!r}")
        if self.whiten not in WHITEN:
            raise ValueError(f"whiten must be one of {WHITEN}, got {self.whiten!r}")

    def prepare(self, supports: Sequence[np.ndarray], parts=None, counts=None,
                fits: Optional[Sequence[Optional[GaussianFit]]] = None) -> GaussianState:
        """One Gaussian per support set; ``counts``: each set's crops (see :func:`image_ids`;
        None: one crop per image). ``fits``: per set, a fit already made (:meth:`fit_one`,
        persisted by the gallery) or None; used only when the rule does not whiten."""
        pts = [image_points(s, 1 if counts is None else counts[i]) for i, s in enumerate(supports)]
        d = pts[0].shape[1] if pts else 0
        with one_blas_thread():
            w, prior = pooled_whitener(pts, self.shrink) if self.whiten == "gallery" else (None, None)
            if w is not None:
                pts, fits = [p @ w for p in pts], None
            prior = self.prior_var if prior is None else prior
            fits = [f if fits is not None and f is not None else
                    fit_profile(p, self.shrink, self.rank, prior) for p, f in
                    zip(pts, fits if fits is not None else [None] * len(pts))]
        return _stack(fits, d, w, prior)

    def fit_one(self, support: np.ndarray, crops) -> GaussianFit:
        """The Gaussian of one support set as :meth:`prepare` fits it without whitening (what a
        gallery persists per profile)."""
        if self.whiten is not None:
            raise ValueError("fit_one: a rule that whitens by the gallery fits profiles together")
        with one_blas_thread():
            return fit_profile(image_points(support, crops), self.shrink, self.rank, self.prior_var)

    def select(self, state: GaussianState, idx: Sequence[int]) -> GaussianState:
        # the whitener stays the one of the gallery the snapshot was made from
        i = list(idx)
        return GaussianState(state.means[i], state.basis[i], state.coef[i], state.inv_sigma2[i],
                             state.whitener, state.prior_var)

    def gather(self, states: Sequence[GaussianState], which: Sequence[int]) -> GaussianState:
        """Profile i's row of ``states[which[i]]``, for states prepared over one list of
        profiles, each from another support set of them (a profile and its variants): how a
        snapshot routes a query to each profile's nearest variant without preparing again.
        Rows are padded to the largest rank among them (padded rows weigh nothing). States
        whitened by a gallery do not combine: each one's whitener is its own gallery's."""
        if any(s.whitener is not None for s in states):
            raise ValueError("gather: states whitened by a gallery cannot be combined")
        d = states[0].means.shape[1] if states else 0
        k = max((s.basis.shape[1] for s in states), default=0)
        P = len(which)
        basis = np.zeros((P, k, d), np.float32)
        coef = np.zeros((P, k), np.float32)
        for i, w in enumerate(which):
            r = states[w].basis.shape[1]
            basis[i, :r], coef[i, :r] = states[w].basis[i], states[w].coef[i]
        means = np.array([states[w].means[i] for i, w in enumerate(which)], np.float32).reshape(P, d)
        inv = np.array([states[w].inv_sigma2[i] for i, w in enumerate(which)], np.float32)
        return GaussianState(means, basis, coef, inv, None,
                             states[which[0]].prior_var if P else None)

    def distances(self, state: GaussianState, x: np.ndarray, block: int = 256) -> np.ndarray:
        """(B, d) image points -> (B, P) squared Mahalanobis distances, per dimension. The state
        is stored in float32 (memory per profile); the sums run in float64, ``block`` profiles
        at a time, since a near query's distance is a small difference of large terms."""
        x = np.asarray(x, np.float64)
        if state.whitener is not None:
            x = x @ state.whitener
        P, k, d = state.basis.shape
        out = np.empty((len(x), P), np.float64)
        x2 = (x * x).sum(1)[:, None]
        for lo in range(0, P, block):
            m = state.means[lo:lo + block].astype(np.float64)                 # (p, d)
            v = state.basis[lo:lo + block].astype(np.float64)                 # (p, k, d)
            r2 = x2 - 2 * (x @ m.T) + (m * m).sum(1)                          # (B, p)
            proj = (x @ v.reshape(-1, d).T).reshape(len(x), len(m), k) - np.einsum("pkd,pd->pk", v, m)
            out[:, lo:lo + block] = np.maximum(
                r2 * state.inv_sigma2[lo:lo + block] + (proj ** 2 * state.coef[lo:lo + block]).sum(-1), 0)
        return out / max(d, 1)

    def raw_scores(self, state: GaussianState, queries: Sequence[np.ndarray]) -> np.ndarray:
        """(B, P) raw scores 1 - D^2 / d of the queries' crop-mean fingerprints."""
        if not len(queries) or not len(state):
            return np.zeros((len(queries), len(state)))
        return 1.0 - self.distances(state, np.stack([prototype(q) for q in queries]))

    def scores(self, state: GaussianState, queries: Sequence[np.ndarray]) -> np.ndarray:
        return self.to_prob(self.raw_scores(state, queries))

    def leave_one_out(self, support: np.ndarray, crops, part=None,
                      state: Optional[GaussianState] = None) -> np.ndarray:
        """(S,) raw score of each support image against a Gaussian fitted without it: exact
        leave-one-out up to :data:`LOO_FOLDS` images, else that many interleaved folds, each
        image held out once. ``state``: the snapshot's prepared state, whose whitener and prior
        variance apply when the rule whitens by the gallery."""
        counts = np.bincount(image_ids(len(support), crops))
        if len(counts) < 2:
            raise ValueError(f"leave-one-out needs at least 2 support images, got {len(counts)}")
        groups = list(zip(*crop_groups(counts, int(counts.max()))))
        return self.held_out(support, crops, min(len(counts), LOO_FOLDS), groups, part, state)

    def held_out(self, support: np.ndarray, crops, folds: int, groups, part=None,
                 state: Optional[GaussianState] = None, points: Optional[np.ndarray] = None
                 ) -> np.ndarray:
        """(G,) raw score of each group of one image's crops (``groups``: (image, rows) pairs;
        its crop-mean point, or ``points``' row when given) against a Gaussian fitted without
        the images of that image's fold (image i is in fold i % folds)."""
        whitener = None if state is None else state.whitener
        prior_var = self.prior_var if state is None or state.prior_var is None else state.prior_var
        pts = image_points(support, crops)
        q = _group_points(support, groups) if points is None else points
        if whitener is not None:
            pts, q = pts @ whitener, q @ whitener
        n, fold = len(pts), _group_images(groups) % folds
        out = np.empty(len(q))
        with one_blas_thread():
            for f in range(folds):
                fit = fit_gaussian(np.delete(pts, np.arange(f, n, folds), 0), self.shrink,
                                   self.rank, prior_var)
                out[fold == f] = 1.0 - mahalanobis(fit, q[fold == f]) / pts.shape[1]
        return out

    def to_prob(self, raw):
        """sigmoid(a * log(D^2/d) + b), the model's calibration of this rule."""
        p = self.calibration(np.log(np.maximum(1.0 - np.asarray(raw, np.float64), MIN_DISTANCE)))
        return p if np.ndim(raw) else float(p)

    def from_prob(self, p: float) -> float:
        """The raw score of a probability (the inverse of :meth:`to_prob`)."""
        cal = self.calibration
        p = min(max(float(p), 1e-15), 1 - 1e-15)
        return 1.0 - math.exp((math.log(p / (1 - p)) - cal.b) / cal.a)


def make_rule(name: Optional[str], bundle, whiten: Optional[str] = None):
    """The rule ``name`` for a loaded model (``None``: the first of :data:`RULES` the model is
    calibrated for; the pair rule needs no calibration). ``whiten``: the Gaussian rule's
    whitening (see :class:`GaussianRule`)."""
    meta = (bundle.meta or {}).get("calibration", {})
    if name is None:
        name = next(r for r in RULES if r == "pair" or r in meta)
    if name not in RULES:
        raise ValueError(f"rule must be one of {RULES}, got {name!r}")
    if whiten is not None and name != "gaussian":
        raise ValueError(f"whiten={whiten!r} applies to rule='gaussian' only, not {name!r}")
    if name == "pair":
        return PairRule(bundle.pair_head())
    cal = Calibration.from_meta(bundle.meta, name)
    if cal is None:
        raise ValueError(f"rule={name!r} needs a model calibrated for it: {bundle.path} has no "
                         f"{name!r} calibration (run 'ofa-train calibrate'), or use rule='pair'")
    if name == "prototype":
        return PrototypeRule(cal)
    prior = meta[name].get("prior_var")
    return GaussianRule(cal, whiten=whiten, prior_var=None if prior is None else float(prior))
