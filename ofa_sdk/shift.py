"""Shift: do the images a profile accepted in a scan look like its support?

Image by image, a never-enrolled relative of an enrolled generator passes that profile's
threshold: to a one-class profile its images look like the generator's own (benchmarks/RESULTS.md
11.15). Together they do not: a supervised linear probe tells related generators apart along
directions that hold little of a generator's own spread (RESULTS 11). A scan holds both sides, so
this stage fits, per profile, a linear discriminant between the profile's support images
and the scan images it accepted, cross-fitted so that no image is scored by a discriminant that
saw it. A permutation test (of the share of accepted images above the support's own held-out
scores' ``1 - fraction`` quantile, or of the held-out AUC) says whether the accepted images
differ from the support at all; only where they do (p-value at most ``alpha``) are the accepted images scoring
above the support's own held-out images' ``1 - fraction`` quantile named ``unlike``: images the
profile accepted that its support does not account for (a relative, a new version, other
processing). A scan of the generator's own images alone passes the test at rate ``alpha`` and
names nothing otherwise.

Input: unit crop-mean fingerprints (``scoring.image_points``), support and accepted. The
discriminant is an L2-regularised logistic regression on standardised dimensions, fitted by
Newton's method in numpy (no package beyond it).
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from .evaluation.metrics import roc_auc

ALPHA = 0.01          # the test's level: a scan of a profile's own images fires this often
FRACTION = 0.05       # accepted images named unlike: above the support's own (1 - FRACTION) quantile
FOLDS = 5
PERMUTATIONS = 199
MIN_ACCEPTED = 10     # fewer accepted images: no test (too few to tell a shift from chance)
C = 0.1               # inverse L2 weight of the discriminant (scikit-learn's C, standardised inputs)


@dataclass(frozen=True)
class ShiftCheck:
    """One profile's accepted images against its support. ``scores``: each accepted image's
    held-out discriminant score (higher: less like the support); ``threshold``: the support's own
    held-out scores' ``1 - fraction`` quantile; ``unlike``: indices of the accepted images above
    it, empty unless ``p_value <= alpha``; ``auc``: held-out AUC of accepted against support
    (0.5: alike); ``p_value``: of that AUC under permuted labels (1.0 when not tested)."""
    accepted: int
    auc: float
    p_value: float
    threshold: float
    scores: np.ndarray
    unlike: np.ndarray
    tested: bool

    @property
    def shifted(self) -> bool:
        return bool(len(self.unlike))


def _logistic(x: np.ndarray, y: np.ndarray, c: float = C, iters: int = 25) -> np.ndarray:
    """Weights (d + 1, the last the intercept) of an L2-regularised logistic regression of ``y``
    (0/1) on the rows of ``x``, each class weighted to half the total: minimises
    c * sum_i w_i log(1 + exp(-s_i f_i)) + |beta|^2 / 2 (the intercept unpenalised) by Newton's
    method (d is small: the Hessian is solved directly)."""
    n, d = x.shape
    xa = np.hstack([x, np.ones((n, 1))])
    w = np.where(y == 1, n / (2 * max(1, y.sum())), n / (2 * max(1, n - y.sum())))
    reg = np.r_[np.full(d, 1.0 / c), 0.0]
    beta = np.zeros(d + 1)
    for _ in range(iters):
        p = 1 / (1 + np.exp(-(xa @ beta)))
        g = xa.T @ (w * (p - y)) + reg * beta
        h = (xa * (w * p * (1 - p))[:, None]).T @ xa + np.diag(reg + 1e-9)
        step = np.linalg.solve(h, g)
        beta -= step
        if np.abs(step).max() < 1e-8:
            break
    return beta


def _discriminant(x0: np.ndarray, x1: np.ndarray) -> Tuple[np.ndarray, float]:
    """(w, b): the log-odds x @ w + b that a row is of x1 rather than x0, by a logistic
    regression on dimensions standardised over both. Log-odds, not a bare direction: held-out
    scores of different folds are pooled, so each fold's must be on the same scale."""
    x = np.concatenate([x0, x1])
    mu, sd = x.mean(0), x.std(0) + 1e-12
    beta = _logistic((x - mu) / sd, np.r_[np.zeros(len(x0)), np.ones(len(x1))])
    w = beta[:-1] / sd
    return w, float(beta[-1] - mu @ w)


def _cross_fit(x: np.ndarray, y: np.ndarray, folds: np.ndarray, k: int) -> np.ndarray:
    s = np.empty(len(x))
    for f in range(k):
        out = folds == f
        tr = ~out
        w, b = _discriminant(x[tr & (y == 0)], x[tr & (y == 1)])
        s[out] = x[out] @ w + b
    return s


def check(support: np.ndarray, accepted: np.ndarray, *, alpha: float = ALPHA,
          fraction: float = FRACTION, folds: int = FOLDS, permutations: int = PERMUTATIONS,
          min_accepted: int = MIN_ACCEPTED, seed: int = 0, statistic: str = "tail") -> ShiftCheck:
    """Test whether ``accepted`` (A, d) differ from ``support`` (S, d), and name the accepted
    images the support does not account for (module docstring). ``statistic``: "tail", the
    share of accepted images above the support's held-out ``1 - fraction`` quantile (the
    default: a relative that is a minority of the accepted images shows there first), or "auc",
    the held-out AUC (benchmarks/RESULTS.md 11.18). Deterministic for a seed."""
    support = np.asarray(support, np.float64)
    accepted = np.asarray(accepted, np.float64)
    if support.ndim != 2 or accepted.ndim != 2 or support.shape[1] != accepted.shape[1]:
        raise ValueError(f"support {support.shape} and accepted {accepted.shape} must be (n, d) "
                         f"fingerprints of one dimension")
    if not 0 < fraction < 1 or not 0 < alpha < 1:
        raise ValueError(f"fraction and alpha must lie in (0, 1), got {fraction}, {alpha}")
    none = np.zeros(0, int)
    if len(accepted) < min_accepted or len(support) < folds or len(accepted) < folds:
        return ShiftCheck(len(accepted), 0.5, 1.0, np.inf, np.zeros(len(accepted)), none, False)
    rng = np.random.default_rng(seed)
    x = np.concatenate([support, accepted])
    y = np.r_[np.zeros(len(support), int), np.ones(len(accepted), int)]
    # stratified folds: each fold holds a share of both sides
    f = np.empty(len(x), int)
    f[y == 0] = rng.permutation(len(support)) % folds
    f[y == 1] = rng.permutation(len(accepted)) % folds
    s = _cross_fit(x, y, f, folds)
    auc = roc_auc(s[y == 1], s[y == 0])

    def stat(sc, yy):
        if statistic == "auc":
            return roc_auc(sc[yy == 1], sc[yy == 0])
        return float(np.mean(sc[yy == 1] > np.quantile(sc[yy == 0], 1 - fraction)))
    obs = stat(s, y)
    exceed = 0
    for _ in range(permutations):
        yp = rng.permutation(y)
        fp = np.empty(len(x), int)
        fp[yp == 0] = rng.permutation(len(support)) % folds
        fp[yp == 1] = rng.permutation(len(accepted)) % folds
        sp = _cross_fit(x, yp, fp, folds)
        exceed += stat(sp, yp) >= obs
    p = (1 + exceed) / (1 + permutations)
    thr = float(np.quantile(s[y == 0], 1 - fraction))
    scores = s[y == 1]
    unlike = np.flatnonzero(scores > thr) if p <= alpha else none
    return ShiftCheck(len(accepted), auc, float(p), thr, scores, unlike, True)


@dataclass
class ShiftReport:
    """A batch's attributions after the shift check, and the checks themselves: one per profile
    and support variant that accepted images (keyed "name" or "name @ variant", as notes name
    variants); ``unlike``: per check, the batch positions of the images it refused."""
    attributions: list
    checks: Dict[str, ShiftCheck] = field(default_factory=dict)
    unlike: Dict[str, List[int]] = field(default_factory=dict)


def review(results: Sequence, embedded: Sequence, snapshot, profile_of: Callable,
           **options) -> ShiftReport:
    """The shift check over a batch already decided: ``results`` (Attributions) and
    ``embedded`` (their :class:`~ofa_sdk.pipeline.EmbeddedItem`, same order), ``snapshot``
    they were decided against, ``profile_of(name)`` -> the gallery's Profile. The images a
    profile accepted are grouped by the support variant they were scored against (a JPEG query
    meets the profile's JPEG variant: checked against the support re-encoded alike, never
    against the support as generated), each group checked against that support
    (:func:`check`; ``options`` go there); the images named unlike lose their label (unknown),
    their note says why. Nothing else changes."""
    from .gallery import delivery_label
    from .scoring import image_points, unit
    from .snapshot import crop_counts
    out = list(results)
    groups: Dict[Tuple[str, Optional[tuple]], List[int]] = {}
    for i, (r, e) in enumerate(zip(out, embedded)):
        if r.profile is None or not e.ok:
            continue
        routed = snapshot.route(e.quality, e.size)
        v = routed.variant_of[routed.names.index(r.profile)] if routed.variant_of else None
        groups.setdefault((r.profile, v), []).append(i)
    report = ShiftReport(out)
    for (name, v), idx in groups.items():
        prof = profile_of(name).at(v)
        key = name if v is None else f"{name} @ {delivery_label(v)}"
        c = check(image_points(prof.support, crop_counts(prof)),
                  np.stack([unit(embedded[i].z.mean(0)) for i in idx]), **options)
        report.checks[key] = c
        report.unlike[key] = [idx[j] for j in c.unlike]
        why = f"unlike {key}'s support: the shift check (p = {c.p_value:.3g}) refused it"
        for j in c.unlike:
            r = out[idx[j]]
            out[idx[j]] = replace(r, profile=None, note="; ".join(x for x in (r.note, why) if x))
    return report
