"""GallerySnapshot: what scoring needs of a gallery, as one plain, picklable value.

The SQLite :class:`~ofa_sdk.gallery.Gallery` is the store; a snapshot is read from it once
(``Attributor.snapshot()``) and then used without it: by the facade for a batch or a scan, by
worker processes and Ray actors (it pickles: numpy arrays, strings, floats and the rule object),
and by kernels. It holds the profile names, the rule with its prepared state, each profile's
threshold for the chosen threshold setting, how each profile's own images score (for the typicality of a score), and the
model id it was made with.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional, Sequence, Tuple

import numpy as np

from .scoring import OwnScores


@dataclass(frozen=True)
class GallerySnapshot:
    model_id: str
    names: Tuple[str, ...]
    rule: Any                      # scoring.PrototypeRule | scoring.PairRule
    state: Any                     # rule.prepare(...) of the profiles, in ``names`` order
    thresholds: Tuple[float, ...]  # per profile, on the rule's probability scale
    own: Tuple[Optional[OwnScores], ...] = ()   # per profile, how its own images score

    def typicality(self, i: int, score: float) -> Optional[float]:
        """The share of profile i's own images expected to score below ``score``."""
        o = self.own[i] if i < len(self.own) else None
        return None if o is None else o.typicality(self.rule.from_prob(score))

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
                               tuple(self.own[i] for i in idx) if self.own else ())
