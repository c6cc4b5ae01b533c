"""Closed/open-set attribution on the wild set (paper Tables 4-5 protocol).

Folds: the wild set's generators are split at random (fixed seeds) into T known and the rest
unknown. Known models are enrolled from their support images; the (T+1)-way head is fit on those
fingerprints plus simulator reconstructions of real *training* photos (the rejection class).
Test: the known models' query images (closed-set accuracy, known scores) and every unknown
model's query images (unknown scores). Metrics: closed-set accuracy, AUC (known vs unknown, max
known-class probability), OSCR, CCR at 5% FPR; mean over folds.

The same folds are also scored with the gallery alone, no head (``Attributor.attribute``, the
SDK's default score): open-set score = best profile score ("gallery"), or that score minus the
best profile's own threshold ("gallery-margin", ``threshold="profile"``). For each, the
operating point is reported too: the share of known queries attributed correctly and of
unknown queries attributed to anything, at threshold 0.5 and with per-profile thresholds.

    python benchmarks/open_set.py --wild benchmarks/data/wild --photos ../shared/data/real-photos
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]

from eval_wild import load_classes
from ofa_sdk import Attributor
from ofa_sdk.closed_set import fit_closed_set, open_set
from ofa_sdk.evaluation.metrics import ccr_at_fpr, oscr, roc_auc
from ofa_sdk.evaluation.protocol import split_support_query
from ofa_sdk.training.common import PhotoSet


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--wild", default=str(ROOT / "benchmarks" / "data" / "wild"))
    ap.add_argument("--photos", required=True)
    ap.add_argument("--model", default=None)
    ap.add_argument("--known", type=int, default=4)
    ap.add_argument("--folds", type=int, default=3)
    ap.add_argument("--support", type=int, default=75)
    ap.add_argument("--queries", type=int, default=100)
    ap.add_argument("--real", type=int, default=150, help="real training photos for the rejection class")
    ap.add_argument("--crops", type=int, default=1)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "open_set.json"))
    a = ap.parse_args(argv)
    import torch
    torch.set_num_threads(2)
    classes = load_classes(Path(a.wild))
    names = sorted(classes)
    split = split_support_query({c: len(v) for c, v in classes.items()}, a.support, a.queries, 0, aligned=True)
    photos = PhotoSet(a.photos, split="train")
    rng = np.random.default_rng(0)
    real = [photos.photos[i] for i in rng.choice(len(photos), min(a.real, len(photos)), replace=False)]
    base = Attributor(model=a.model, crops=a.crops, batch_size=64)
    folds = []
    for f in range(a.folds):
        known = sorted(np.random.default_rng(100 + f).choice(names, a.known, replace=False).tolist())
        unknown = [c for c in names if c not in known]
        att = Attributor(model=base.bundle, crops=a.crops, batch_size=64)
        for c in known:
            att.enroll(c, [classes[c][i] for i in split.support[c]])
        stats = fit_closed_set(att, real, seed=f)
        kq = [(c, classes[c][i]) for c in known for i in split.query[c]]
        uq = [classes[c][i] for c in unknown for i in split.query[c]]
        kr = open_set(att, [p for _, p in kq])
        ur = open_set(att, uq)
        ks = np.array([r.known_prob for r in kr])
        kc = np.array([r.predicted == c for r, (c, _) in zip(kr, kq)])
        us = np.array([r.known_prob for r in ur])
        fold = {"known": known, "unknown": unknown, "closed_acc": float(kc.mean()),
                "auc": roc_auc(ks, us), "oscr": oscr(ks, kc, us), "ccr_at_5fpr": ccr_at_fpr(ks, kc, us, 0.05),
                "head_train_acc": stats["train_acc"]}
        ka = att.attribute([p for _, p in kq], threshold=0.0)
        ua = att.attribute(uq, threshold=0.0)
        thr = {c: att.profile_threshold(c) for c in known}
        kcorr = np.array([r.profile == c for r, (c, _) in zip(ka, kq)])
        for name, f in (("gallery", lambda r: r.score),
                        ("gallery-margin", lambda r: r.score - thr[r.profile])):
            ksc, usc = np.array([f(r) for r in ka]), np.array([f(r) for r in ua])
            fold[name] = {"closed_acc": float(kcorr.mean()), "auc": roc_auc(ksc, usc),
                          "oscr": oscr(ksc, kcorr, usc), "ccr_at_5fpr": ccr_at_fpr(ksc, kcorr, usc, 0.05)}
        for name, cut in (("at_0.5", lambda r: 0.5), ("at_profile", lambda r: thr[r.profile])):
            fold[name] = {"known_correct": float(np.mean([r.profile == c and r.score >= cut(r)
                                                          for r, (c, _) in zip(ka, kq)])),
                          "unknown_accepted": float(np.mean([r.score >= cut(r) for r in ua]))}
        fold["profile_thresholds"] = thr
        folds.append(fold)
        print(json.dumps(fold), flush=True)
    summary = {k: float(np.mean([f[k] for f in folds])) for k in ("closed_acc", "auc", "oscr", "ccr_at_5fpr")}
    for name in ("gallery", "gallery-margin", "at_0.5", "at_profile"):
        summary[name] = {k: float(np.mean([f[name][k] for f in folds])) for k in folds[0][name]}
    out = {"model": base.model_id, "folds": folds, "mean": summary, "support": a.support,
           "queries": a.queries, "crops": a.crops, "rule": base.rule.name}
    print("mean:", json.dumps(summary))
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
