"""Gallery scoring: how a query's fingerprints are scored against an enrolled support set.

Two rules, both returning a probability-like score in [0, 1] where higher means "made by this
model":

* ``"pair"`` -- the paper's score (Sec. 4.1): the mean over the support (and over crops) of the
  pair head's probability g([z_s; z_q]).
* ``"prototype"`` -- the cosine between the query's crop-averaged fingerprint and the support's
  mean fingerprint (its prototype), mapped to a probability by a logistic calibration
  ``sigmoid(a * cos + b)`` stored in the model file. The calibration is fitted by
  ``ofa-train calibrate`` on simulator architectures reconstructing *training* photos, with
  positives and negatives weighted equally, so 0.5 is the point where the two are equally
  likely on that data. It is not calibrated on real generators: for a target false-positive
  rate on your traffic, use ``Attributor.calibrate_threshold``.

The rule is a seam: a compiled engine only has to produce fingerprints; both rules run on them.
The prototype rule costs one dot product per (query, profile), whatever the support size.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Dict, Optional, Sequence

import numpy as np

SCORES = ("prototype", "pair")


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
    def from_meta(cls, meta: Dict) -> Optional["Calibration"]:
        d = (meta or {}).get("calibration", {}).get("prototype")
        return cls(float(d["a"]), float(d["b"]), d.get("fitted_on", {})) if d else None


def parse_threshold(t):
    """A threshold is a number or "profile" (per-profile thresholds, see
    ``Attributor.profile_threshold``). Strings of numbers are accepted (command line)."""
    if isinstance(t, str) and t != "profile":
        try:
            return float(t)
        except ValueError:
            raise ValueError(f"threshold must be a number or 'profile', got {t!r}") from None
    return t if t == "profile" else float(t)


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


def leave_one_out_cosines(support: np.ndarray, crops: int) -> np.ndarray:
    """(S*k, d) support crop fingerprints, k crops per image -> (S,) cosine of each support
    image's crop-averaged fingerprint to the prototype of the *other* images."""
    z = np.asarray(support, np.float64)
    if crops < 1 or len(z) % crops:
        raise ValueError(f"support of {len(z)} fingerprints is not a whole number of {crops}-crop images")
    per_image = z.reshape(-1, crops, z.shape[-1]).sum(1)          # (S, d) crop sums
    if len(per_image) < 2:
        raise ValueError("leave-one-out needs at least 2 support images")
    rest = unit(per_image.sum(0, keepdims=True) - per_image)     # prototype without image i
    return np.einsum("sd,sd->s", unit(per_image), rest)


def student_t_quantile(p: float, dof: int) -> float:
    """Quantile of Student's t distribution (numpy only: bisection on the CDF, the CDF by
    Simpson's rule on the density after the substitution x = tan(theta), which keeps the
    heavy tails of small ``dof`` on a finite interval). Accurate to about 1e-6."""
    if not 0 < p < 1 or dof < 1:
        raise ValueError(f"student_t_quantile needs 0 < p < 1 and dof >= 1, got {p!r}, {dof!r}")
    if p < 0.5:
        return -student_t_quantile(1 - p, dof)
    log_c = math.lgamma((dof + 1) / 2) - math.lgamma(dof / 2) - 0.5 * math.log(dof * math.pi)

    def cdf(x: float) -> float:                       # x >= 0
        th = np.linspace(0.0, math.atan(x), 2049)
        t = np.tan(th)
        f = np.exp(log_c - (dof + 1) / 2 * np.log1p(t * t / dof)) / np.cos(th) ** 2
        h = th[1] - th[0]
        return 0.5 + h / 3 * (f[0] + f[-1] + 4 * f[1:-1:2].sum() + 2 * f[2:-1:2].sum())

    lo, hi = 0.0, 1.0
    while cdf(hi) < p:
        lo, hi = hi, hi * 2
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if cdf(mid) < p else (lo, mid)
    return (lo + hi) / 2


MIN_DISTANCE = 1e-6


def self_threshold(own: Sequence[float], fraction: float) -> float:
    """A threshold below which about ``fraction`` of a generator's *new* images fall, from the
    leave-one-out similarities ``own`` of its n >= 3 support images (raw scale: cosine for the
    prototype rule, mean pair probability for the pair rule; at most 1).

    The log-distance log(1 - s) of each support image is taken as normal, and the threshold is
    the one-sided (1 - fraction) prediction bound for one new image:
    mean + t_{1-fraction, n-1} * sd * sqrt(1 + 1/n), mapped back to the similarity scale.
    Unlike the empirical ``fraction`` quantile of n scores, it does not sit near the minimum
    of a small support set: on the development set (benchmarks/thresholds.py), with the
    prototype score, the share of a generator's own images it rejects stays near ``fraction``
    from n = 3 to 50 (5.6-7.3% for a 5% target), where the empirical quantile rejected 19% at
    n = 5 and 11% at n = 10. The pair score's probabilities fit this model less well (15-18%
    at n = 3)."""
    s = np.asarray(own, np.float64)
    if s.ndim != 1 or len(s) < 3:
        raise ValueError(f"self_threshold needs at least 3 leave-one-out scores, got {s.shape}")
    if not 0 < fraction < 1:
        raise ValueError(f"fraction must be in (0, 1), got {fraction!r}")
    d = np.log(np.maximum(1.0 - s, MIN_DISTANCE))
    n = len(d)
    bound = d.mean() + student_t_quantile(1 - fraction, n - 1) * d.std(ddof=1) * math.sqrt(1 + 1 / n)
    return float(1.0 - math.exp(bound))
