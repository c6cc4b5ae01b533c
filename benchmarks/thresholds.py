"""Per-profile thresholds at small support sizes: how many of a generator's own new images each
estimator rejects (FRR, target ``--fraction``) and how many images of the other generators it
accepts (FAR), over random support draws.

    python benchmarks/thresholds.py --set benchmarks/data/dev-sim --crops 1 4

Estimators, both from the support images' leave-one-out scores (``ofa_sdk.evaluation.support.leave_one_out_scores``):
* ``quantile``  the empirical ``fraction`` quantile of the scores (the SDK's rule before);
* ``bound``     ``support_threshold``: a normal prediction bound on log(1 - score)
  (``ofa_sdk.scoring.self_threshold``), the SDK's rule now.
Each draw: n support images of a class, ``--queries`` other images of it, and ``--queries``
images of every other class, all scored by ``support_scores``.
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch


from common import set_parser, write
from eval_wild import load_classes
from ofa_sdk import Attributor
from ofa_sdk.evaluation.runner import embed_items
from ofa_sdk.evaluation.support import leave_one_out_scores, support_scores, support_threshold


def run(att, emb, ns, draws, queries, fraction, seed=0):
    rng = np.random.default_rng(seed)
    classes = sorted(emb)
    k = att.crops
    out = {}
    for n in ns:
        rows = {"quantile": [], "bound": []}
        for _ in range(draws):
            for t in classes:
                perm = rng.permutation(len(emb[t]))
                sup = np.concatenate([emb[t][i] for i in perm[:n]])
                own = support_scores(att, [emb[t][i] for i in perm[n:n + queries]], sup, k)
                oth = np.concatenate([support_scores(att, [emb[c][i] for i in rng.permutation(len(emb[c]))[:queries]], sup, k)
                                      for c in classes if c != t])
                loo = leave_one_out_scores(att, sup, k)
                loo = att.rule.to_prob(loo)
                for name, thr in (("quantile", float(np.quantile(loo, fraction))),
                                  ("bound", support_threshold(att, sup, k))):
                    rows[name].append(((own < thr).mean(), (oth >= thr).mean()))
        out[n] = {m: {"frr": float(np.mean([r[0] for r in v])), "frr_sd": float(np.std([r[0] for r in v])),
                      "far": float(np.mean([r[1] for r in v])), "far_sd": float(np.std([r[1] for r in v]))}
                  for m, v in rows.items()}
    return out


def main(argv=None):
    ap = set_parser(__doc__)
    ap.add_argument("--scores", nargs="+", default=["prototype", "pair"])
    ap.add_argument("--support", type=int, nargs="+", default=[3, 5, 10, 20, 50])
    ap.add_argument("--draws", type=int, default=20)
    ap.add_argument("--queries", type=int, default=60)
    ap.add_argument("--fraction", type=float, default=0.05)
    a = ap.parse_args(argv)
    torch.set_num_threads(2)
    classes = load_classes(Path(a.set))
    report, t0 = {"set": a.set, "fraction": a.fraction, "draws": a.draws, "runs": {}}, time.time()
    for k in a.crops:
        base = Attributor(model=a.model, crops=k, batch_size=64)
        emb = {c: embed_items(base, items, None, False).z for c, items in classes.items()}
        for rule in a.scores:
            att = Attributor(model=a.model, crops=k, batch_size=64, rule=rule, profile_quantile=a.fraction)
            res = run(att, emb, a.support, a.draws, a.queries, a.fraction)
            report["runs"][f"{rule}-crops{k}"] = res
            for n, r in res.items():
                print(f"{rule:9s} crops {k} n={n:3d}  " + "  ".join(
                    f"{m}: FRR {100 * v['frr']:5.1f} (sd {100 * v['frr_sd']:4.1f}) FAR {100 * v['far']:5.1f}"
                    for m, v in r.items()) + f"  [{time.time() - t0:.0f}s]", flush=True)
    write(report, a.out)


if __name__ == "__main__":
    main()
