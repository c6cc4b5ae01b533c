"""Where the per-profile threshold's tail model misses on real generators (issue 32): the
standardized scores of a profile's own new images against the Student-t bound the threshold
uses, and against the 95% quantile of the support images' own held-out scores pooled over many
profiles (a tail shape a gallery could estimate for all its profiles at once).

    OFA_BENCH_CACHE=benchmarks/data/cache-v2 python benchmarks/threshold_tails.py --sets wild13 dev-sim --sizes 20 50

Per class and seed, the first n images of a permutation (own_rejection.py's protocol, 4-crop
support and queries) make the profile; every held-out score of the support and every query's
score are standardized by the profile's own fitted mean and prediction scale
(``scoring.held_out_stats``, 4-crop level): the threshold refuses the queries above the t
quantile. Printed, per set and size: the share of queries above it (the realised own-rejection at
the nominal 5%), the queries' 95% quantile, the pooled held-out scores' 95% quantile, and the
share of queries above that one.
"""
from __future__ import annotations

import argparse

import numpy as np

from ofa_sdk import scoring
from own_rejection import QUERIES, load
from rules import GAUSS_DECISION


def standardized(rule, c4, n, seeds):
    """(held-out, query) standardized scores pooled over classes and seeds."""
    held, query = [], []
    for c in sorted(c4):
        for seed in range(seeds):
            order = np.random.default_rng(seed).permutation(sorted(c4[c]))
            if len(order) < n + 10:
                continue
            sup = [c4[c][i] for i in order[:n]]
            support, counts = np.concatenate(sup), [len(x) for x in sup]
            own = scoring.held_out_stats(rule, support, counts).at(4)
            gi, rows = scoring.crop_groups(np.bincount(scoring.image_ids(len(support), counts)), 4)
            y = scoring._to_scale(1.0 - rule.held_out(support, counts, min(n, rule.loo_folds),
                                                      list(zip(gi, rows)), None, None), rule.own_power)
            raw = rule.raw_scores(rule.prepare([support], counts=[counts]),
                                  [c4[c][i] for i in order[n:n + QUERIES]])[:, 0]
            held += list((y - own.mean) / own._scale)
            query += list((scoring._to_scale(1.0 - raw, rule.own_power) - own.mean) / own._scale)
    return np.array(held), np.array(query)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sets", nargs="+", default=["wild13", "dev-sim"])
    ap.add_argument("--sizes", nargs="+", type=int, default=[20, 50])
    ap.add_argument("--seeds", type=int, default=10)
    a = ap.parse_args()
    rule = scoring.GaussianRule(GAUSS_DECISION)
    print("| set | support images | t bound | queries above it (%) | queries' q95 | pooled held-out q95 "
          "| queries above that (%) |\n|---|---|---|---|---|---|---|")
    for s in a.sets:
        c4 = load(s, 0, 4)
        for n in a.sizes:
            held, query = standardized(rule, c4, n, a.seeds)
            t = scoring.student_t_quantile(0.95, n - 1)
            pooled = np.quantile(held, 0.95)
            print(f"| {s} | {n} | {t:.2f} | {100 * (query > t).mean():.1f} | {np.quantile(query, 0.95):.2f} "
                  f"| {pooled:.2f} | {100 * (query > pooled).mean():.1f} |", flush=True)


if __name__ == "__main__":
    main()
