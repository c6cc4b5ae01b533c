"""A scan with a never-enrolled generator in it: what the shift check (``ofa_sdk.shift``) takes
back of the labels its images got, and what it costs the enrolled generators' own images.

Protocol (cached fingerprints of ``rules.py embed``; the default Gaussian rule, 100 support
images per profile, the SDK's decision at its defaults): each class of a development set is held
out in turn, every other class enrolled. The scan holds the enrolled classes' query images on one
half of the query contents and the held-out class's on the other half (the sets render the same
contents in every class; a content seen twice in one accepted set would let the discriminant
learn the content). ``--share`` keeps that share of the held-out class's half. Each profile's
accepted images are checked against its support; where the test fires, the images named unlike
lose their label. "none": no class held out, the scan all enrolled classes' images (the check's
false alarms). Reported per held-out class and as means: right / wrong / unknown among the
enrolled classes' images and the held-out class's images labelled, before and after the check;
profiles whose test fired.

    python benchmarks/shift_scan.py --set wild13
    python benchmarks/shift_scan.py --set related
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))


def run(data, rule, held: str | None, share: float, n: int, check_kw: dict) -> dict:
    from ofa_sdk import scoring, shift
    from rules import decide_labels
    names = [c for c in data.names if c != held]
    half = len(data.queries) // 2
    q1, q2 = data.queries[:half], data.queries[half:]
    if held is not None:
        q2 = q2[: max(1, round(share * len(q2)))]
    sup = {c: data.support(c, n) for c in names}
    scan, owner = [], []
    for c in names:
        scan += [data.classes[c][i] for i in q1]
        owner += [names.index(c)] * len(q1)
    if held is not None:
        scan += [data.classes[held][i] for i in q2]
        owner += [-1] * len(q2)
    owner = np.array(owner)
    lab = decide_labels(names, rule, sup, scan)
    pts = np.stack([scoring.unit(z.mean(0)) for z in scan])
    after = lab.copy()
    fired = []
    for p, c in enumerate(names):
        acc = np.flatnonzero(lab == p)
        r = shift.check(scoring.image_points(*sup[c]), pts[acc], **check_kw)
        if r.shifted:
            fired.append(c)
            after[acc[r.unlike]] = -1
    known = owner >= 0

    def stats(l):
        return {"right": float((l[known] == owner[known]).mean()),
                "wrong": float(((l[known] >= 0) & (l[known] != owner[known])).mean()),
                "unknown": float((l[known] < 0).mean()),
                "never enrolled labelled": float((l[~known] >= 0).mean()) if (~known).any() else None}
    return {"before": stats(lab), "after": stats(after), "fired": fired}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--set", default="wild13", choices=["wild13", "related"])
    ap.add_argument("--crops", type=int, default=4)
    ap.add_argument("--share", type=float, default=1.0, help="share of the held-out class's half kept")
    ap.add_argument("--permutations", type=int, default=199)
    ap.add_argument("--alpha", type=float, default=None)
    ap.add_argument("--statistic", default="auc", choices=["auc", "tail"])
    ap.add_argument("--out", default=None)
    a = ap.parse_args(argv)
    from related import RULE, SUPPORT
    from rules import Cached, cache_path, rule_objects
    from ofa_sdk import shift
    data = Cached(cache_path(a.set, 0, a.crops))
    rule = rule_objects()[RULE]
    kw = {"permutations": a.permutations, "alpha": a.alpha or shift.ALPHA, "statistic": a.statistic}
    n = min(SUPPORT, len(data.pool))
    rows = {}
    print("| held out | right / wrong / unknown, before -> after | never enrolled labelled | fired |\n|---|---|---|---|")
    for held in [None] + list(data.names):
        t0 = time.time()
        r = rows["none" if held is None else held] = run(data, rule, held, a.share, n, kw)
        b, f = r["before"], r["after"]
        ne = "" if b["never enrolled labelled"] is None else \
            f"{100 * b['never enrolled labelled']:.1f} -> {100 * f['never enrolled labelled']:.1f}"
        print(f"| {held or 'none'} | {100 * b['right']:.1f} / {100 * b['wrong']:.1f} / {100 * b['unknown']:.1f} -> "
              f"{100 * f['right']:.1f} / {100 * f['wrong']:.1f} / {100 * f['unknown']:.1f} | {ne} | "
              f"{', '.join(r['fired']) or '-'} | ({time.time() - t0:.0f} s)", flush=True)
    held = [v for k, v in rows.items() if k != "none"]
    mean = {w: {k: float(np.mean([v[w][k] for v in held])) for k in held[0][w]} for w in ("before", "after")}
    rows["mean over held-out classes"] = mean
    print("mean: " + "; ".join(f"{w}: right {100 * m['right']:.1f} never-enrolled labelled "
                               f"{100 * m['never enrolled labelled']:.1f}" for w, m in mean.items()))
    out = Path(a.out or ROOT / "benchmarks" / "results" / f"shift_scan_{a.set}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"args": vars(a), "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
