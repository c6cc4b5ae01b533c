"""Cohort score normalisation (issue 31), measured on cached fingerprints, no training: each
query's score against a profile standardised by its scores against a cohort of other
generators' profiles (T-norm, as in speaker verification), so that a query's content, which
makes it typical or atypical of every profile alike, no longer ranks it within a profile.

The score is the default Gaussian rule's -log(D^2 / d) (100 support images, 4 crops). Per query,
the cohort's scores give a mean and a standard deviation, over every cohort profile or over the
``k`` highest (adaptive T-norm); ``mean`` subtracts the mean only, ``z`` also divides by the
deviation. Cohorts: ``sim``, simulator architectures reconstructing *training* photos (a cohort
that could ship with the model: ``bank`` embeds it, 100 images per architecture, every image in
its profile), or ``other``, the other development set's classes (wild13 for the related set and
the other way round: a diagnostic, not a product cohort). Mean 1-vs-1 AUC and the one-class AUC
of the related pairs (related.py's), queries as generated, after JPEG q90 and rescaled to 0.75x
with the support as generated.

    python benchmarks/cohort_norm.py bank --photos ../shared/data/real-photos --archs 48 --per 100
    python benchmarks/cohort_norm.py measure --out benchmarks/results/cohort_norm.json

Figures: benchmarks/RESULTS.md section 11.14.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

import rules as R
from related import PAIRS, both_ways
from ofa_sdk import scoring

ROOT = Path(__file__).resolve().parents[1]
RULE = R.rule_objects()["gaussian-lw"]


def bank(a):
    """Simulator architectures (seeded draws) reconstructing random 256 px training-photo
    crops, ``--per`` images each, embedded at 4 crops in rules.py's cache format."""
    import torch
    from ofa_sdk import Attributor
    from ofa_sdk.evaluation.runner import embed_items
    from ofa_sdk.images import from_tensor
    from ofa_sdk.training.common import PhotoSet
    from ofa_sdk.weights import load_default_model
    torch.set_num_threads(2)
    att = Attributor(None, crops=4)
    sim = load_default_model().simulator().eval()
    data = PhotoSet(a.photos, split="train")
    g = torch.Generator().manual_seed(a.seed)
    z, counts, cls, idx = [], [], [], []
    t0 = time.time()
    for k in range(a.archs):
        arch = sim.sample(g)
        with torch.inference_mode():
            imgs = from_tensor(sim(data.batch(a.per, 256, g), arch))
        e = embed_items(att, list(imgs), None, with_spectra=False)
        z += e.z
        counts += [len(v) for v in e.z]
        cls += [f"a{arch.id}"] * len(e.z)
        idx += list(range(len(e.z)))
        if (k + 1) % 8 == 0:
            print(f"{k + 1}/{a.archs} architectures, {time.time() - t0:.0f}s", flush=True)
    out = R.cache_path("simcohort", 0, 4)
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez(out, z=np.concatenate(z).astype(np.float32), counts=np.array(counts), cls=np.array(cls),
             idx=np.array(idx), model=att.model_id)


def _log_scores(state, queries) -> np.ndarray:
    pts = np.stack([scoring.prototype(q) for q in queries])
    return -np.log(np.maximum(RULE.distances(state, pts), scoring.MIN_DISTANCE))


def _cohort_state(name: str, set_name: str):
    if name == "sim":
        f = np.load(R.cache_path("simcohort", 0, 4))
        rows = np.split(f["z"], np.cumsum(f["counts"])[:-1])
        per = {}
        for c, r in zip(f["cls"], rows):
            per.setdefault(str(c), []).append(r)
        sup = [(np.concatenate(v), [len(x) for x in v]) for v in per.values()]
    else:
        other = R.Cached(R.cache_path("related" if set_name == "wild13" else "wild13", 0, 4))
        sup = [other.support(c, 100) for c in other.names]
    return RULE.prepare([s for s, _ in sup], counts=[k for _, k in sup]), len(sup)


def _pairs(set_name):
    groups = ["wild13"] if set_name == "wild13" else ["choose", "confirm"]
    return [p for g in groups for ps in PAIRS[g].values() for p in ps]


def measure(a):
    report = {}
    print("| set | queries | cohort | none | " + " | ".join(f"{n} k={k or 'all'}" for n in a.norms for k in a.ks)
          + " |\n|---|---|---|---|" + "---|" * (len(a.norms) * len(a.ks)))
    for s in a.sets:
        data = R.Cached(R.cache_path(s, 0, 4))
        sup = [data.support(c, 100) for c in data.names]
        state = RULE.prepare([z for z, _ in sup], counts=[k for _, k in sup])
        cohorts = {c: _cohort_state(c, s) for c in a.cohorts}
        for label, q, r in (("as generated", 0, 1.0), ("q90", 90, 1.0), ("0.75x", 0, 0.75)):
            qd = data if label == "as generated" else R.Cached(R.cache_path(s, q, 4, r))
            qs, owner = [], []
            for p, c in enumerate(data.names):
                x = qd.query(c)
                qs += x
                owner += [p] * len(x)
            owner = np.array(owner)
            S = _log_scores(state, qs)

            def cell(T):
                m, pairs = R.mean_1v1(T, owner, data.names)
                return {"auc": m, "pairs": float(np.mean([both_ways(pairs, p) for p in _pairs(s)]))}
            for cname, (cstate, size) in cohorts.items():
                C = -np.sort(-_log_scores(cstate, qs), 1)
                row = {"none": cell(S)}
                for norm in a.norms:
                    for k in a.ks:
                        top = C[:, :k or size]
                        T = S - top.mean(1, keepdims=True)
                        row[f"{norm} k={k or 'all'}"] = cell(T / top.std(1, keepdims=True) if norm == "z" else T)
                report[f"{s} / {label} / {cname} ({size})"] = row
                print(f"| {s} | {label} | {cname} ({size}) | " + " | ".join(
                    f"{v['auc']:.3f} / {v['pairs']:.3f}" for v in row.values()) + " |", flush=True)
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(report, indent=1))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("bank")
    b.add_argument("--photos", required=True)
    b.add_argument("--archs", type=int, default=48)
    b.add_argument("--per", type=int, default=100)
    b.add_argument("--seed", type=int, default=777)
    m = sub.add_parser("measure")
    m.add_argument("--sets", nargs="+", default=["related", "wild13"])
    m.add_argument("--cohorts", nargs="+", default=["sim", "other"], choices=["sim", "other"])
    m.add_argument("--norms", nargs="+", default=["mean", "z"], choices=["mean", "z"])
    m.add_argument("--ks", type=int, nargs="+", default=[5, 0], help="cohort profiles per query (0: all)")
    m.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "cohort_norm.json"))
    a = ap.parse_args(argv)
    bank(a) if a.cmd == "bank" else measure(a)


if __name__ == "__main__":
    main()
