"""Metrics: ROC AUC (rank statistic, ties counted half), OSCR and CCR at a false-positive rate
(POSE / Dhamija et al. definitions), closed-set accuracy. numpy only."""
from __future__ import annotations

import numpy as np


def _ranks(x: np.ndarray) -> np.ndarray:
    """1-based ranks with ties averaged."""
    order = np.argsort(x, kind="mergesort")
    xs = x[order]
    ranks = np.empty(len(x), dtype=np.float64)
    i = 0
    while i < len(xs):
        j = i
        while j + 1 < len(xs) and xs[j + 1] == xs[i]:
            j += 1
        ranks[order[i:j + 1]] = (i + j) / 2 + 1
        i = j + 1
    return ranks


def roc_auc(pos_scores, neg_scores) -> float:
    """P(score(pos) > score(neg)) + 0.5 P(equal) (Mann-Whitney U / (n_pos n_neg))."""
    pos = np.asarray(pos_scores, dtype=np.float64).ravel()
    neg = np.asarray(neg_scores, dtype=np.float64).ravel()
    if len(pos) == 0 or len(neg) == 0:
        raise ValueError("roc_auc needs at least one positive and one negative score")
    if not (np.isfinite(pos).all() and np.isfinite(neg).all()):
        raise ValueError("roc_auc got non-finite scores")
    r = _ranks(np.concatenate([pos, neg]))
    u = r[: len(pos)].sum() - len(pos) * (len(pos) + 1) / 2
    return float(u / (len(pos) * len(neg)))


def roc_auc_labels(y_true, scores) -> float:
    y = np.asarray(y_true).astype(bool)
    s = np.asarray(scores)
    return roc_auc(s[y], s[~y])


def closed_set_accuracy(known_pred, known_true) -> float:
    kp, kt = np.asarray(known_pred), np.asarray(known_true)
    return float((kp == kt).mean())


def oscr(known_scores, known_correct, unknown_scores) -> float:
    """Area under the curve of correct-classification rate (known samples scored at or above a
    threshold *and* classified right) against false-positive rate (unknown samples at or above
    the threshold), sweeping the threshold over all scores."""
    ks = np.asarray(known_scores, dtype=np.float64)
    kc = np.asarray(known_correct, dtype=bool)
    us = np.asarray(unknown_scores, dtype=np.float64)
    if len(ks) == 0 or len(us) == 0:
        raise ValueError("oscr needs known and unknown samples")
    ccr, fpr = _ccr_fpr_curve(ks, kc, us)
    return float(np.trapezoid(ccr, fpr) if hasattr(np, "trapezoid") else np.trapz(ccr, fpr))


def _ccr_fpr_curve(ks, kc, us):
    thr = np.unique(np.concatenate([ks, us]))[::-1]            # descending thresholds
    ccr = [(kc & (ks >= t)).sum() / len(ks) for t in thr]
    fpr = [(us >= t).sum() / len(us) for t in thr]
    return np.array([0.0] + ccr), np.array([0.0] + fpr)


def ccr_at_fpr(known_scores, known_correct, unknown_scores, target_fpr: float = 0.05) -> float:
    """Highest CCR whose FPR does not exceed ``target_fpr``."""
    ccr, fpr = _ccr_fpr_curve(np.asarray(known_scores, float), np.asarray(known_correct, bool),
                              np.asarray(unknown_scores, float))
    ok = fpr <= target_fpr + 1e-12
    return float(ccr[ok].max())
