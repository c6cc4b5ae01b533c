"""A real-photo reference profile (issue 31's real photos, RESULTS 11.15): can a profile of real
photos fitted on the *training* photos, enrolled beside a gallery, keep real photos from getting a
generator's label?

``build`` writes ``benchmarks/data/real-train``: 256 px content crops of the training-split photos
(never the held-out photos that give the development sets their content), the same crops as
``benchmarks/wild.py`` takes, one class per source group (``GROUPS``, by the photo's folder).
``sources`` writes the source group of each development-set content index (the held-out photos,
in wild.py's order). ``measure`` enrolls every development class but ``real``, plus the reference
(the crops of every group, or of every group but one), and reports with the SDK's decision:
right / wrong / refused-by-the-reference among the enrolled generators' queries, the dev real
photos' queries given a generator's label (per source group, and for the group the reference was
built without), and the never-enrolled generators' queries labelled (each class held out alone).
``--jpeg Q``: every query re-encoded at Q, scored against each profile's (and the reference's)
variant at Q, as the SDK scores a JPEG query.

    python benchmarks/real_reference.py build --photos ../shared/data/real-photos
    python benchmarks/rules.py embed --set benchmarks/data/real-train --jpeg 0 --crops 4
    python benchmarks/real_reference.py sources --photos ../shared/data/real-photos
    python benchmarks/real_reference.py measure --set wild13
    python benchmarks/rules.py embed --set benchmarks/data/real-train --jpeg 90 --crops 4
    python benchmarks/real_reference.py measure --set wild13 --jpeg 90
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
GROUPS = {"bsds500": "bsds", "imagenet-samples": "imagenet", "coco2017-train": "coco"}   # else "other"
REF = "reference"


def group_of(path: Path, root: Path) -> str:
    return GROUPS.get(path.relative_to(root).parts[0], "other")


def crops_by_group(photos, size=256, per_photo=2):
    """wild.py's content crops of ``photos`` (a PhotoSet), in its order, each with its group."""
    from wild import photo_crops
    return [(group_of(p, photos.root), c) for p, a in zip(photos.paths, photos.photos)
            for c in photo_crops(a, size, per_photo)]


def build(a):
    from ofa_sdk.training.common import PhotoSet
    crops = crops_by_group(PhotoSet(a.photos, split="train"))
    out = Path(a.out)
    n = {}
    for g, c in crops:
        d = out / g
        d.mkdir(parents=True, exist_ok=True)
        Image.fromarray(c).save(d / f"content_{n.get(g, 0):04d}.png")
        n[g] = n.get(g, 0) + 1
    print(f"wrote {sum(n.values())} training-photo crops to {out}: {n}")


def sources(a):
    from ofa_sdk.training.common import PhotoSet
    groups = [g for g, _ in crops_by_group(PhotoSet(a.photos, split="holdout"))]
    Path(a.out).write_text(json.dumps(groups))
    print(f"{len(groups)} held-out content crops by group: "
          + ", ".join(f"{g} {groups.count(g)}" for g in sorted(set(groups))))


def measure(a):
    from related import RULE, SUPPORT
    from rules import Cached, cache_path, decide_labels as labels, rule_objects
    rule = rule_objects()[RULE]
    data = Cached(cache_path(a.set, a.jpeg, a.crops))
    ref = Cached(cache_path("real-train", a.jpeg, a.crops))
    src = np.array(json.loads(Path(a.sources).read_text()))
    qsrc = src[data.queries]
    gens = [c for c in data.names if c != "real"]
    n = min(SUPPORT, len(data.pool))
    sup = {c: data.support(c, n) for c in gens}

    def ref_support(groups):
        z = [x for g in groups for x in ref.classes[g].values()]
        if a.ref_size:
            z = [z[i] for i in np.random.default_rng(0).permutation(len(z))[:a.ref_size]]
        return np.concatenate(z), [len(x) for x in z]

    real_q = data.query("real")
    every = sorted(ref.names)
    rep = {"set": a.set, "reference groups": {g: len(ref.classes[g]) for g in every},
           "queries by group": {g: int((qsrc == g).sum()) for g in sorted(set(qsrc))}, "runs": {}}
    for run, groups in [("no reference", None), ("reference: every group", every)] + [
            (f"reference without {g}", [h for h in every if h != g]) for g in every]:
        names = gens + ([REF] if groups else [])
        s = dict(sup) | ({REF: ref_support(groups)} if groups else {})
        r = {}
        kq = [x for c in gens for x in data.query(c)]
        ko = np.repeat(np.arange(len(gens)), [len(data.query(c)) for c in gens])
        lk = labels(names, rule, s, kq)
        r["right"] = float((lk == ko).mean())
        r["wrong"] = float(((lk >= 0) & (lk < len(gens)) & (lk != ko)).mean())
        r["refused by reference"] = float((lk == len(gens)).mean())
        lr = labels(names, rule, s, real_q)
        gen_label = (lr >= 0) & (lr < len(gens))
        r["real: generator label"] = float(gen_label.mean())
        r["real: generator label by group"] = {g: float(gen_label[qsrc == g].mean())
                                                for g in sorted(set(qsrc))}
        if groups and len(groups) < len(every):
            left = [g for g in every if g not in groups][0]
            r["real: generator label, group left out"] = r["real: generator label by group"].get(left)
        # never enrolled: each generator held out alone, the rest (and the reference) enrolled
        nl, nr = [], []
        for c in gens:
            kn = [x for x in names if x != c]
            lu = labels(kn, rule, {x: s[x] for x in kn}, data.query(c))
            ref_i = kn.index(REF) if REF in kn else -2
            nl.append(float(((lu >= 0) & (lu != ref_i)).mean()))
            nr.append(float((lu == ref_i).mean()))
        r["never enrolled: generator label"] = dict(zip(gens, nl))
        r["never enrolled: generator label, mean"] = float(np.mean(nl))
        r["never enrolled: refused by reference, mean"] = float(np.mean(nr))
        rep["runs"][run] = r
        print(f"{run}: right {100 * r['right']:.1f} wrong {100 * r['wrong']:.1f} ref-refused "
              f"{100 * r['refused by reference']:.1f} | real given a generator label "
              f"{100 * r['real: generator label']:.1f} "
              + " ".join(f"{g} {100 * v:.0f}" for g, v in r["real: generator label by group"].items())
              + f" | never-enrolled labelled {100 * r['never enrolled: generator label, mean']:.1f}, "
              f"ref-refused {100 * r['never enrolled: refused by reference, mean']:.1f}", flush=True)
    out = Path(a.out or ROOT / "benchmarks" / "results" / f"real_reference_{a.set}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(rep, indent=1))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build")
    b.add_argument("--photos", required=True)
    b.add_argument("--out", default=str(ROOT / "benchmarks" / "data" / "real-train"))
    s = sub.add_parser("sources")
    s.add_argument("--photos", required=True)
    s.add_argument("--out", default=str(ROOT / "benchmarks" / "data" / "heldout-sources.json"))
    m = sub.add_parser("measure")
    m.add_argument("--set", default="wild13", choices=["wild13", "related"])
    m.add_argument("--crops", type=int, default=4)
    m.add_argument("--ref-size", type=int, default=None, help="at most N reference images (default: all)")
    m.add_argument("--jpeg", type=int, default=0, help="queries, supports and reference at this JPEG quality "
                   "(each profile's variant of that quality, as the SDK scores a JPEG query)")
    m.add_argument("--sources", default=str(ROOT / "benchmarks" / "data" / "heldout-sources.json"))
    m.add_argument("--out", default=None)
    a = ap.parse_args(argv)
    {"build": build, "sources": sources, "measure": measure}[a.cmd](a)


if __name__ == "__main__":
    main()
