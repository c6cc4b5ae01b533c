"""Scores of support sets held in memory, for evaluation and benchmarks.

The evaluation protocol (:mod:`ofa_sdk.evaluation.runner`) and the benchmarks score query images
against support sets that are never enrolled: fingerprints split from a benchmark folder, scored
once per (target, class) pair. These helpers give them what the gallery path gives an enrolled
profile (the same rule objects, the same threshold) without a gallery, so they need only an
:class:`~ofa_sdk.Attributor` (its rule, model and profile quantile). They live here, not on the
Attributor, because a user attributing images never needs them.
"""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

from .. import decision, scoring


def rule_of(att, rule: Optional[str] = None):
    """``att``'s score rule, or the rule named ``rule`` made for ``att``'s model."""
    return att.rule if rule in (None, att.rule.name) else scoring.make_rule(rule, att.bundle)


def support_scores(att, query_z: Sequence[np.ndarray], support_z: np.ndarray, crops,
                   rule: Optional[str] = None) -> np.ndarray:
    """(Q,) scores of query images (each (k, d) crop fingerprints, as ``Attributor.embed_stream``
    yields them) against one support set of (sum k_i, d) crop fingerprints, image by image
    (``crops``: k for every support image, or each image's k_i), with ``att``'s rule or the
    named one: what ``Attributor.verify`` gives for the same images once the support set is
    enrolled alone (a rule that whitens by the gallery sees a gallery of this one profile)."""
    r = rule_of(att, rule)
    return r.scores(r.prepare([support_z], counts=[crops]), list(query_z))[:, 0]


def leave_one_out_scores(att, support_z: np.ndarray, crops,
                         support_part: Optional[np.ndarray] = None) -> np.ndarray:
    """(S,) each support image scored against the other S - 1 with ``att``'s rule, on the rule's
    raw scale (what a profile threshold is estimated from). ``crops``: k for every image, or
    each image's k_i."""
    return att.rule.leave_one_out(support_z, crops, support_part)


def support_threshold(att, support_z: np.ndarray, crops,
                      support_part: Optional[np.ndarray] = None) -> float:
    """What ``Attributor.profile_threshold`` returns for a profile of this support set of
    (sum k_i, d) fingerprints (a rule that does not whiten by the gallery)."""
    return decision.profile_threshold(att.rule, support_z, crops, att.profile_quantile,
                                      support_part)
