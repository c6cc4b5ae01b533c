"""The decision's two knobs on the development sets: the ambiguity margin m (``unknown`` when a
second accepting profile finds the image within m as typical as the chosen one,
``decision.rival``) and the share f of a generator's own images its profile refuses
(``profile_quantile``). benchmarks/own_rejection.py's open set (every class but 2 enrolled, 3
folds, the SDK's thresholds through the gallery's tail, the SDK's decision), 4- and 1-crop
queries; per setting: right / wrong / unknown among enrolled classes' images, never-enrolled
labelled (%). (f = 0.05, m = 0.005) is the default (decision.DEFAULT_MARGIN: a tie), m = 0 the
decision before it; m = 1 refuses every image two profiles accept. ``--margins``: the default f
with these margins only.

    OFA_BENCH_CACHE=benchmarks/data/cache-v2 python benchmarks/ambiguity.py --sets wild13 dev-sim
    OFA_BENCH_CACHE=benchmarks/data/cache-v2 python benchmarks/ambiguity.py --sets wild13 dev-sim \
        --sizes 10 20 100 --margins 0 0.003 0.005 0.0075 0.01 0.02 0.05
"""
import argparse
from dataclasses import replace

import numpy as np

from ofa_sdk import decision, scoring
from own_rejection import QUERIES, load, open_folds
from rules import GAUSS_DECISION, bench_snapshot

SETTINGS = [(0.05, m) for m in (0.0, 0.05, 0.1, 0.15, 0.3, 1.0)] + \
           [(f, 0.0) for f in (0.1, 0.2, 0.3, 0.5)]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--sets", nargs="+", default=["wild13", "dev-sim"])
    ap.add_argument("--sizes", nargs="+", type=int, default=[20, 100])
    ap.add_argument("--margins", nargs="+", type=float, default=None)
    a = ap.parse_args()
    settings = SETTINGS if a.margins is None else [(decision.DEFAULT_FRACTION, m) for m in a.margins]
    rule = scoring.GaussianRule(GAUSS_DECISION)
    print("| set | JPEG | support | query crops | " + " | ".join(f"f = {f:g}, m = {m:g}" for f, m in settings) + " |")
    print("|---|---|---|---|" + "---|" * len(settings))
    for s in a.sets:
        for q in (0, 90):
            c4, c1 = load(s, q, 4), load(s, q, 1)
            names = sorted(c4)
            for n in a.sizes:
                tally = {k: np.zeros((len(settings), 5)) for k in (4, 1)}
                for held, known, orders, state, own in open_folds(rule, c4, c1, n, 2, 3):
                    tails = scoring.Tails.pooled(own)
                    base = {fr: bench_snapshot(known, rule, state, own, fr, tails)
                            for fr in sorted({fr for fr, _ in settings})}
                    snaps = [replace(base[fr], margin=m) for fr, m in settings]
                    for k, cache in ((4, c4), (1, c1)):
                        for c in names:
                            qs = [cache[c][i] for i in orders[c][n:n + QUERIES]]
                            for row in rule.scores(state, qs):
                                for j, snap in enumerate(snaps):
                                    got = decision.decide("", row, snap.names, None, snapshot=snap,
                                                          crops=k).profile
                                    if c in held:
                                        tally[k][j, 3:] += [got is not None, 1]
                                    else:
                                        tally[k][j, :3] += [got == c, got not in (c, None), got is None]
                for k, t in tally.items():
                    cells = [f"{100 * v[0] / v[:3].sum():.1f} / {100 * v[1] / v[:3].sum():.1f} / "
                             f"{100 * v[2] / v[:3].sum():.1f} / {100 * v[3] / v[4]:.1f}" for v in t]
                    print(f"| {s} | {q or 'clean'} | {n} | {k} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
