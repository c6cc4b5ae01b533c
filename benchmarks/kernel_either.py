"""Two resize kernels' variants at one factor, the better fit chosen per query (issue 31,
RESULTS 11.30): a query resized by a kernel nobody named meets a bicubic and a box variant of
each profile; each gives the SDK's decision, and the query takes the label whose profile finds
it more typical (either one's label where the other refuses). Against one kernel's variants
alone, on queries resized with each kernel. Cached fingerprints (``rules.py embed --kernel``),
the protocol of ``jpeg_matched.py``'s labels: 2 classes never enrolled per fold, 3 folds, 100
support images, the SDK's default fraction and tie margin.

    python benchmarks/kernel_either.py --factor 0.75 --out benchmarks/results/kernel_either_75.json
    python benchmarks/kernel_either.py --factor 0.5 --out benchmarks/results/kernel_either_50.json
"""
import argparse
import json
from dataclasses import replace
from pathlib import Path

import numpy as np

from ofa_sdk import decision
from rules import Cached, _decision_scale, _enrolled, bench_snapshot, cache_path, rule_objects

RULE = "gaussian-lw"


def verdicts(support: Cached, queries: Cached, known, held, seed):
    """Per query of the known then the held-out classes: (label index or -1, typicality)."""
    rule = _decision_scale(rule_objects()[RULE])
    state, own, tails = _enrolled(rule, [support.support(c, 100, seed) for c in known])
    snap = replace(bench_snapshot(known, rule, state, own, decision.DEFAULT_FRACTION, tails),
                   margin=decision.DEFAULT_MARGIN)
    qs = [x for c in known + held for x in queries.query(c)]
    out = []
    for q, row in zip(qs, rule.scores(state, qs)):
        a = decision.decide("", row, snap.names, None, snapshot=snap, crops=len(q))
        out.append((-1, -np.inf) if a.profile is None else (known.index(a.profile), a.typicality))
    return out


def rates(labels, truth, n_known):
    lk, lu, t = labels[:n_known], labels[n_known:], truth[:n_known]
    return {"right": float(np.mean(lk == t)), "wrong": float(np.mean((lk >= 0) & (lk != t))),
            "unknown": float(np.mean(lk < 0)), "unknown_labelled": float(np.mean(lu >= 0))}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sets", nargs="+", default=["wild13", "related"])
    ap.add_argument("--factor", type=float, default=0.75)
    ap.add_argument("--kernels", nargs=2, default=["bicubic", "box"])
    ap.add_argument("--out", default=None)
    a = ap.parse_args(argv)
    rep = {}
    print("| set | queries | variants | right / wrong / unknown / never-enrolled labelled |\n|---|---|---|---|")
    for s in a.sets:
        sup = {k: Cached(cache_path(s, 0, 4, a.factor, kernel=k)) for k in a.kernels}
        names = sup[a.kernels[0]].names
        rng = np.random.default_rng(0)
        held_out = [sorted(rng.permutation(names)[:2]) for _ in range(3)]    # the same folds
        for qk in a.kernels:                                                    # for each kernel
            queries = Cached(cache_path(s, 0, 4, a.factor, kernel=qk))
            folds = {}
            for f, held in enumerate(held_out):
                known = [c for c in names if c not in held]
                truth = np.array([known.index(c) for c in known for _ in queries.query(c)] +
                                 [-1 for c in held for _ in queries.query(c)])
                n_known = int(np.sum(truth >= 0))
                v = {k: verdicts(sup[k], queries, known, held, f) for k in a.kernels}
                lab = {k: np.array([x[0] for x in v[k]]) for k in a.kernels}
                lab["either"] = np.array([x[0] if x[1] >= y[1] else y[0]
                                          for x, y in zip(*(v[k] for k in a.kernels))])
                for k, lb in lab.items():
                    folds.setdefault(k, []).append(rates(lb, truth, n_known))
            for k, rows in folds.items():
                r = {m: float(np.mean([x[m] for x in rows])) for m in rows[0]}
                rep[f"{s}/{qk} queries/{k}"] = r
                print(f"| {s} | {a.factor:g}x {qk} | {k} | " + " / ".join(f"{100 * x:.1f}" for x in r.values())
                      + " |", flush=True)
    if a.out:
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.out).write_text(json.dumps(rep, indent=1))


if __name__ == "__main__":
    main()
