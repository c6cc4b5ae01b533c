"""Per-profile thresholds on the development sets (issue 32): the share of a generator's own new
images its profile refuses, against the nominal share (decision.DEFAULT_FRACTION, 5%), by
support size, query crops (4 and 1, against 4-crop support images) and JPEG quality.

    python benchmarks/own_rejection.py --sets dev-sim wild13 --jpeg 0 90 \
        --out benchmarks/results/own_rejection.json

Fingerprints come from the embedding caches of benchmarks/rules.py
(``benchmarks/data/cache/<set>_q<Q>_c<crops>.npz``; ``rules.py embed ... --crops 4 1`` writes
them): support images and 4-crop queries from the 4-crop cache, 1-crop queries from the 1-crop
cache (the same images embedded with ``crops=1``: the centre crop). Per class and seed, one
permutation of its images: the first n are the support, up to 75 of the rest the queries.
Columns: the SDK's threshold now (``scoring.held_out_stats`` with the support's centre crops,
``Profile.centre``, read through the tail pooled over every class's profile of that seed and
size, ``scoring.Tails``: the set enrolled as one gallery) and the t bound alone (the previous
release), both on the Gaussian rule's raw scale (or ``--rule prototype``). Figures: means over
classes and seeds, in percent. (The release before that held 1-crop queries out on grid crops:
RESULTS.md 10.2 at git tag ``results-labels-before-gallery-tail``.)

``--open``: the label with every class but ``--unknown`` held-out ones enrolled at once (folds
rotate them): of the known classes' queries (4 and 1 crops) the share labelled right, wrong and
``unknown``, and of the held-out classes' queries the share given a label, for the SDK's
decision (decision.decide: per-crop-count thresholds; among the accepting profiles the one the
image is most typical of) with the thresholds now and with the t bound alone, and the share of
each whose score meets two or more profiles' thresholds.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from ofa_sdk import decision, scoring
# CACHE: the embedding caches (OFA_BENCH_CACHE: another model's)
from rules import CACHE, GAUSS_DECISION, bench_snapshot

QUERIES = 75
RAW = scoring.Calibration(1.0, 0.0)


def load(name: str, q: int, crops: int):
    """{class: {content index: (k, d) crop fingerprints}} of one cache file (None: missing)."""
    path = CACHE / f"{name}_q{q}_c{crops}.npz"
    if not path.exists():
        return None
    f = np.load(path)
    rows = np.split(f["z"], np.cumsum(f["counts"])[:-1])
    out = {}
    for c, i, r in zip(f["cls"], f["idx"], rows):
        out.setdefault(str(c), {})[int(i)] = r
    return out


def rejection(rule, c4, c1, sizes, seeds, fraction):
    """{n: {"now_4", "now_1", "t_4", "t_1", "profiles"}}: mean refused shares. Per seed and
    size every class of the set is enrolled at once (a gallery), so the SDK's thresholds
    ("now") read the t bound through the tail pooled over the gallery's profiles
    (``scoring.Tails``); "t": the t bound alone (the previous release)."""
    acc = {n: {k: [] for k in ("now_4", "now_1", "t_4", "t_1")} for n in sizes}
    for seed in range(seeds):
        for n in sizes:
            profiles = []
            for c in sorted(c4):
                order = np.random.default_rng(seed).permutation(sorted(set(c4[c]) & set(c1[c])))
                if len(order) < n + 10:
                    continue
                sup = [c4[c][i] for i in order[:n]]
                support, counts = np.concatenate(sup), [len(x) for x in sup]
                centre = np.concatenate([c1[c][i] for i in order[:n]])
                own = scoring.held_out_stats(rule, support, counts, centre=centre)
                state = rule.prepare([support], counts=[counts])
                queries = {k: [cache[c][i] for i in order[n:n + QUERIES]]
                           for k, cache in ((4, c4), (1, c1))}
                profiles.append((own, {k: (rule.raw_scores(state, qs)[:, 0], [len(q) for q in qs])
                                       for k, qs in queries.items()}))
            tails = scoring.Tails.pooled([own for own, _ in profiles])
            for own, raws in profiles:
                for k, (raw, crops) in raws.items():
                    for w, t in (("now", tails), ("t", None)):
                        thr = np.array([own.threshold(fraction, q, t) for q in crops])
                        acc[n][f"{w}_{k}"].append(float((raw < thr).mean()))
    return {n: {**{k: 100 * float(np.mean(v)) for k, v in a.items() if v},
                "profiles": len(a["now_4"])} for n, a in acc.items() if a["now_4"]}


def open_folds(rule, c4, c1, n, unknown, folds, seed=0):
    """Per fold: (held-out classes, known classes, each class's image order, the rule's
    prepared state of the known classes' first n images, their own scores), the known classes
    enrolled at once; the rest of each order are its queries."""
    names = sorted(c4)
    rng = np.random.default_rng(seed)
    for f in range(folds):
        held = set(rng.permutation(names)[:unknown])
        known = [c for c in names if c not in held]
        orders = {c: np.random.default_rng(seed + f).permutation(sorted(set(c4[c]) & set(c1[c])))
                  for c in names}
        sup = [[c4[c][i] for i in orders[c][:n]] for c in known]
        supports, counts = [np.concatenate(x) for x in sup], [[len(z) for z in x] for x in sup]
        state = rule.prepare(supports, counts=counts)
        centres = [np.concatenate([c1[c][i] for i in orders[c][:n]]) for c in known]
        own = tuple(scoring.held_out_stats(rule, s, k, centre=e)
                    for s, k, e in zip(supports, counts, centres))
        yield held, known, orders, state, own


def open_set(rule, c4, c1, n, unknown, folds, fraction, seed=0):
    """{crops: {"now"/"t": {right, wrong, unknown, held_out_labelled, known_multi,
    held_out_multi}}} in percent: the SDK's thresholds (the gallery's pooled tail) and the t bound
    alone; ``*_multi``: the share of known / held-out classes' queries whose score meets the
    thresholds of two or more profiles (how far the profiles' acceptance regions overlap)."""
    names = sorted(c4)
    tally = {k: {w: np.zeros(7) for w in ("now", "t")} for k in (4, 1)}
    for held, known, orders, state, own in open_folds(rule, c4, c1, n, unknown, folds, seed):
        snaps = {w: bench_snapshot(known, rule, state, own, fraction, tails)
                 for w, tails in (("now", scoring.Tails.pooled(own)), ("t", None))}
        for k, cache in ((4, c4), (1, c1)):
            for c in names:
                qs = [cache[c][i] for i in orders[c][n:n + QUERIES]]
                S = rule.scores(state, qs)
                for q, row in zip(qs, S):
                    for w, snap in snaps.items():
                        lab = decision.decide("", row, snap.names, None, snapshot=snap,
                                              crops=len(q)).profile
                        multi = int((row >= np.asarray(snap.thresholds_at(len(q)))).sum() >= 2)
                        if c in held:
                            tally[k][w][3:5] += [lab is not None, 1]
                            tally[k][w][6] += multi
                        else:
                            tally[k][w][:3] += [lab == c, lab not in (c, None), lab is None]
                            tally[k][w][5] += multi
    return {k: {w: {"right": 100 * v[0] / v[:3].sum(), "wrong": 100 * v[1] / v[:3].sum(),
                     "unknown": 100 * v[2] / v[:3].sum(),
                     "held_out_labelled": 100 * v[3] / max(v[4], 1),
                     "known_multi": 100 * v[5] / v[:3].sum(),
                     "held_out_multi": 100 * v[6] / max(v[4], 1)} for w, v in t.items()}
            for k, t in tally.items()}


def caches(sets, jpegs, one_crop: str = "centre"):
    """(set, quality, 4-crop cache, 1-crop cache) for each; both None when one is missing.
    ``one_crop="grid"``: the 1-crop queries (and the support's stored 1-crop fingerprints) are
    the first crop of the 4-crop grid instead of the ``crops=1`` (centre crop) embedding."""
    for s in sets:
        for q in jpegs:
            c4 = load(s, q, 4)
            c1 = load(s, q, 1) if one_crop == "centre" or c4 is None else \
                {c: {i: z[:1] for i, z in d.items()} for c, d in c4.items()}
            yield (s, q, c4, c1) if c4 is not None and c1 is not None else (s, q, None, None)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sets", nargs="+", default=["dev-sim", "wild13"])
    ap.add_argument("--jpeg", nargs="+", type=int, default=[0, 90])
    ap.add_argument("--sizes", nargs="+", type=int, default=[5, 10, 20, 50, 100])
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--rule", choices=["gaussian", "prototype"], default="gaussian")
    ap.add_argument("--out", default=None)
    ap.add_argument("--open", action="store_true", help="also the open-set labels (see above)")
    ap.add_argument("--open-sizes", nargs="+", type=int, default=[10, 20, 100])
    ap.add_argument("--unknown", type=int, default=2)
    ap.add_argument("--folds", type=int, default=3)
    ap.add_argument("--one-crop", choices=["centre", "grid"], default="centre",
                    help="1-crop queries: the crops=1 embedding (centre crop) or a grid crop")
    a = ap.parse_args()
    rule = scoring.GaussianRule(GAUSS_DECISION) if a.rule == "gaussian" else \
        scoring.PrototypeRule(RAW)
    fraction = decision.DEFAULT_FRACTION
    results = {}
    print(f"own-rejection (%), nominal {100 * fraction:g}%, rule {a.rule}: now (t bound alone)")
    print("| set | JPEG | support images | 4-crop queries | 1-crop queries | profiles |")
    print("|---|---|---|---|---|---|")
    for s, q, c4, c1 in caches(a.sets, a.jpeg, a.one_crop):
        if c4 is None:
            print(f"| {s} | {q or 'clean'} | missing cache ({CACHE}/{s}_q{q}_c4/c1.npz) | | | |")
            continue
        res = rejection(rule, c4, c1, a.sizes, a.seeds, fraction)
        results[f"{s}_q{q}"] = res
        for n, r in res.items():
            print(f"| {s} | {q or 'clean'} | {n} | {r['now_4']:.1f} ({r['t_4']:.1f}) | "
                  f"{r['now_1']:.1f} ({r['t_1']:.1f}) | {r['profiles']} |", flush=True)
    opened = {}
    if a.open:
        print(f"\nopen set: all but {a.unknown} classes enrolled ({a.folds} folds); known queries "
              f"right / wrong / unknown, held-out queries labelled (%): now (t bound alone)")
        print("| set | JPEG | support | query crops | right | wrong | unknown | held-out labelled "
              "| known, two or more accept | held-out, two or more accept |")
        print("|---|---|---|---|---|---|---|---|---|---|")
        for s, q, c4, c1 in caches(a.sets, a.jpeg, a.one_crop):
            m = 0 if c4 is None else min(len(set(c4[c]) & set(c1[c])) for c in c4)
            for n in (n for n in a.open_sizes if m >= n + 10):
                res = open_set(rule, c4, c1, n, a.unknown, a.folds, fraction)
                opened[f"{s}_q{q}_n{n}"] = res
                for k, r in res.items():
                    now, bef = r["now"], r["t"]
                    print(f"| {s} | {q or 'clean'} | {n} | {k} | " + " | ".join(
                        f"{now[x]:.1f} ({bef[x]:.1f})" for x in
                        ("right", "wrong", "unknown", "held_out_labelled", "known_multi",
                         "held_out_multi")) + " |", flush=True)
    if a.out:
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.out).write_text(json.dumps({"rule": a.rule, "fraction": fraction,
                                           "seeds": a.seeds, "results": results,
                                           "open": opened}, indent=1))


if __name__ == "__main__":
    main()
