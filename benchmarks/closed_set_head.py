"""The closed/open-set head (``ofa_sdk.closed_set``, paper Sec. 4.2) on the development sets,
from the embedding caches of benchmarks/rules.py: with every class enrolled, the share of new
images whose best known class is their own (closed-set top-1); with 2 classes held out (3
folds), the share of known classes' images labelled right and of held-out classes' images given
a known label (the rejection class or a known one winning, no probability threshold). Support:
the first 100 images of each class (4 crops each), queries: up to 75 of the rest, each image's
class probabilities the mean over its crops, as ``closed_set.open_set`` does. The rejection class
here is dev-sim's simulated generators' fingerprints (30 images each), standing in for the
simulator reconstructions of real photos that ``fit_closed_set`` makes.

    OFA_BENCH_CACHE=benchmarks/data/cache-v2 python benchmarks/closed_set_head.py --sets related wild13

``--with-profiles``: instead, the default decision against ``choose_head``'s: the
profiles' thresholds decide whether an image gets a label at all (the SDK's Gaussian profiles,
own_rejection.py's open set: 2 held out, 3 folds, 100 support images, the first grid crop as
the 1-crop level), and the head chooses among the accepting profiles instead of the
typicality (the SDK's ``choose_head``, ``decision.choose`` with a ``closed_set.HeadChooser``);
right / wrong / ``unknown`` among known classes' images and never-enrolled labelled.
"""
import argparse
import json
from dataclasses import replace
from pathlib import Path

import numpy as np

from ofa_sdk import decision, scoring
from ofa_sdk.closed_set import HeadChooser, fit_head, predict
from own_rejection import QUERIES, load, open_folds
from rules import GAUSS_DECISION, bench_snapshot

SUPPORT = 100


def stand_in_reject(q):
    """The rejection class here: 30 images of each dev-sim generator, at JPEG quality q."""
    return np.concatenate([z for d in load("dev-sim", q, 4).values() for z in list(d.values())[:30]])


def run(c4, reject, epochs, held=(), seed=0):
    """(known right, held-out labelled) for one fit; known right is the closed-set top-1 when
    nothing is held out."""
    rng = np.random.default_rng(seed)
    orders = {c: rng.permutation(sorted(c4[c])) for c in sorted(c4)}
    known = {c: np.concatenate([c4[c][i] for i in orders[c][:SUPPORT]]) for c in c4 if c not in held}
    head, classes, _ = fit_head(known, reject, epochs=epochs, seed=seed)
    right, n_k, labelled, n_h = 0, 0, 0, 0
    for c, order in orders.items():
        for i in order[SUPPORT:SUPPORT + QUERIES]:
            p = predict(head, c4[c][i]).mean(0)
            k = int(np.argmax(p))
            if c in held:
                labelled += k < len(classes) - 1
                n_h += 1
            else:   # closed set: the best known class; open set: the best of all, rejection too
                right += classes[int(np.argmax(p[:-1])) if not held else k] == c
                n_k += 1
    return 100 * right / n_k, (100 * labelled / n_h if n_h else float("nan"))


def with_profiles(s, q):
    """{"profiles", "head chooses"}: (right, wrong, unknown, never-enrolled labelled) in %."""
    rule = scoring.GaussianRule(GAUSS_DECISION)
    c4, reject = load(s, q, 4), stand_in_reject(q)
    c1 = {c: {i: z[:1] for i, z in d.items()} for c, d in c4.items()}
    t = {"profiles": np.zeros(5), "head chooses": np.zeros(5)}
    for held, known, orders, state, own in open_folds(rule, c4, c1, SUPPORT, 2, 3):
        tails = scoring.Tails.pooled(own)
        snap = bench_snapshot(known, rule, state, own, tails=tails)
        head, classes, _ = fit_head({c: np.concatenate([c4[c][i] for i in orders[c][:SUPPORT]])
                                     for c in known}, reject)
        chosen = replace(snap, chooser=HeadChooser("bench", head, tuple(classes.index(c) for c in known)))
        for c, order in orders.items():
            qs = [c4[c][i] for i in order[SUPPORT:SUPPORT + QUERIES]]
            for z, row in zip(qs, rule.scores(state, qs)):
                for w, lab in ((w, decision.decide("", row, sn.names, None, snapshot=sn, crops=len(z),
                                                   z=z).profile)
                               for w, sn in (("profiles", snap), ("head chooses", chosen))):
                    if c in held:
                        t[w][3:] += [lab is not None, 1]
                    else:
                        t[w][:3] += [lab == c, lab not in (c, None), lab is None]
    return {w: tuple(100 * v[:3] / v[:3].sum()) + (100 * v[3] / v[4],) for w, v in t.items()}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--sets", nargs="+", default=["related", "wild13"])
    ap.add_argument("--epochs", type=int, nargs="+", default=[300, 1000])
    ap.add_argument("--out", default=None)
    ap.add_argument("--with-profiles", action="store_true", help="see above")
    a = ap.parse_args()
    rep = {}
    if a.with_profiles:
        print("| set | JPEG | the default decision | `choose_head`: profiles accept, the head chooses |\n|---|---|---|---|")
        for s in a.sets:
            for q in (0, 90):
                r = rep[f"{s}_q{q}"] = with_profiles(s, q)
                print(f"| {s} | {q or 'clean'} | " + " | ".join(" / ".join(f"{x:.1f}" for x in r[w])
                                                          for w in r) + " |", flush=True)
        if a.out:
            Path(a.out).write_text(json.dumps(rep, indent=1))
        return
    print("| set | JPEG | epochs | every class enrolled: top-1 | 2 held out: known right | 2 held out: held-out labelled |")
    print("|---|---|---|---|---|---|")
    for s in a.sets:
        for q in (0, 90):
            c4, reject = load(s, q, 4), stand_in_reject(q)
            names = sorted(c4)
            for ep in a.epochs:
                top1 = run(c4, reject, ep)[0]
                rng = np.random.default_rng(1)
                folds = [run(c4, reject, ep, set(rng.permutation(names)[:2]), seed=f) for f in range(3)]
                r, u = np.mean(folds, 0)
                rep[f"{s}_q{q}_e{ep}"] = {"top1": top1, "known_right": r, "held_out_labelled": u}
                print(f"| {s} | {q or 'clean'} | {ep} | {top1:.1f} | {r:.1f} | {u:.1f} |", flush=True)
    if a.out:
        Path(a.out).write_text(json.dumps(rep, indent=1))


if __name__ == "__main__":
    main()
