"""Image-to-model attribution protocol (paper Tables 1-3; METHOD.md Sec. 4).

For each target model t: a support set S_t (default 100 images) and its held-out queries; a
query's score for t is a scoring function of (S_t, query) -- the pair head's mean probability
for the SDK, or any baseline. 1-vs-1 AUC: for each other model c, AUC of t's queries
(positives) against c's queries (negatives); report per target the mean +- std over c, and the
mean over targets. 1-vs-rest (the authors' script): all other models' queries pooled.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Dict, Sequence

import numpy as np

from .metrics import roc_auc


@dataclass
class Split:
    support: Dict[str, np.ndarray]   # class -> indices into that class's items
    query: Dict[str, np.ndarray]


def split_support_query(counts: Dict[str, int], support: int = 100, queries: int = 100,
                        seed: int = 0, aligned: bool = False) -> Split:
    """Fixed-seed split per class. ``aligned=True`` uses one permutation for every class (the
    classes share content item by item, as in the project's wild set), so supports and queries
    hold the same content across classes."""
    rng = np.random.default_rng(seed)
    sup, qry = {}, {}
    if aligned:
        n = min(counts.values())
        perm = rng.permutation(n)
    for c in sorted(counts):
        n = counts[c]
        p = perm if aligned else rng.permutation(n)
        s = min(support, max(1, len(p) // 2))
        sup[c] = np.sort(p[:s])
        qry[c] = np.sort(p[s:s + queries])
    return Split(sup, qry)


@dataclass
class ImageToModelResult:
    per_target: Dict[str, Dict[str, float]] = field(default_factory=dict)
    matrix: Dict[str, Dict[str, float]] = field(default_factory=dict)  # target -> other -> AUC

    @property
    def mean_1v1(self) -> float:
        return float(np.mean([v["auc_1v1_mean"] for v in self.per_target.values()]))

    @property
    def mean_1vrest(self) -> float:
        return float(np.mean([v["auc_1vrest"] for v in self.per_target.values()]))

    def to_dict(self) -> Dict:
        return {"mean_auc_1v1": self.mean_1v1, "mean_auc_1vrest": self.mean_1vrest,
                "per_target": self.per_target, "matrix": self.matrix}


def image_to_model(classes: Sequence[str], split: Split,
                   score: Callable[[str, str], np.ndarray]) -> ImageToModelResult:
    """``score(target, other)`` returns the target-support scores of ``other``'s queries."""
    res = ImageToModelResult()
    for t in classes:
        pos = score(t, t)
        aucs, negs = {}, []
        for c in classes:
            if c == t:
                continue
            neg = score(t, c)
            negs.append(neg)
            aucs[c] = roc_auc(pos, neg)
        vals = np.array(list(aucs.values()))
        res.per_target[t] = {"auc_1v1_mean": float(vals.mean()), "auc_1v1_std": float(vals.std()),
                             "auc_1vrest": roc_auc(pos, np.concatenate(negs)),
                             "support": int(len(split.support[t])),
                             "queries": int(len(split.query[t]))}
        res.matrix[t] = aucs
    return res


def format_table(res: ImageToModelResult, title: str = "") -> str:
    lines = [title] if title else []
    lines.append(f"{'target':24s} {'1v1 AUC mean':>12s} {'± std':>7s} {'1-vs-rest':>10s}")
    for t, v in res.per_target.items():
        lines.append(f"{t:24s} {100 * v['auc_1v1_mean']:12.2f} {100 * v['auc_1v1_std']:7.2f} "
                     f"{100 * v['auc_1vrest']:10.2f}")
    lines.append(f"{'mean':24s} {100 * res.mean_1v1:12.2f} {'':7s} {100 * res.mean_1vrest:10.2f}")
    return "\n".join(lines)
