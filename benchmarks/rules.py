"""Score rules and the open-set decision, compared on cached fingerprints of the development sets.

Two steps. ``embed`` runs the shipped model once per (set, JPEG quality, crops) and caches every
image's crop fingerprints; ``compare`` then varies only the rule, in numpy, on those caches:

    python benchmarks/rules.py embed --set benchmarks/data/dev-sim benchmarks/data/wild13 \
        --jpeg 0 90 75 --crops 4 1
    python benchmarks/rules.py compare --open --out benchmarks/results/rules.json
    python benchmarks/rules.py summary benchmarks/results/rules.json      # markdown tables

Protocol (aligned content, as the sets are built): ``QUERIES`` content indices of each class
(at most half of them) are the queries, the others the support pool, by one seeded
permutation (``--split random``, the evaluation protocol's) or in content order (``--split
ordered``: the queries are photos of other sources than most of the support, a content shift); a support of n images is the first n
of a seeded permutation of the pool. 1-vs-1 AUC as in the paper (mean over target/other pairs).

Open set (``--open``): every class of a set but ``--unknown`` held-out ones is enrolled at once;
the known classes' queries get their own label, another profile's label, or ``unknown``; the
held-out classes' queries should get ``unknown``. Folds rotate which classes are held out
(``--folds``, fixed seeds); figures are means over folds.

Rules: ``prototype`` (cosine to the support's mean, the previous default), ``knn10`` (mean
cosine to the 10 nearest support images; a benchmark-only comparison), ``gaussian``
(:class:`ofa_sdk.scoring.GaussianRule`, Ledoit-Wolf or OAS shrinkage, optionally whitened by
the gallery's pooled within-profile covariance), ``gaussian-crops`` (benchmark-only: the same
Gaussian fitted on single crops, a query scored by the mean of its crops' distances).
"""
from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
# the embedding caches; OFA_BENCH_CACHE points another model's caches elsewhere (the cache files
# are named by set, quality, crops and rescale, not by model)
CACHE = Path(os.environ.get("OFA_BENCH_CACHE", ROOT / "benchmarks" / "data" / "cache"))
QUERIES = 75

from ofa_sdk import decision, scoring
from ofa_sdk.evaluation.metrics import oscr, roc_auc
from ofa_sdk.images import KERNELS


# -- embedding cache ---------------------------------------------------------------------------
def cache_path(name: str, jpeg: int, crops: int, rescale: float = 1.0, first: int = 0,
               kernel: str = "bicubic") -> Path:
    """``first``: a JPEG quality each image was encoded at before ``jpeg`` (0: none);
    ``kernel``: the resize kernel (``ofa_sdk.images.KERNELS``; bicubic, the default, is not
    named in the file name)."""
    k = "" if kernel == "bicubic" else kernel
    tag = "" if rescale == 1.0 else f"_r{round(100 * rescale)}{k}"
    q = f"{first}to{jpeg}" if first else f"{jpeg}"
    return CACHE / f"{name}_q{q}_c{crops}{tag}.npz"


def rescaled(files, factor: float, kernel: str = "bicubic"):
    """The images of ``files`` resized by ``factor`` with ``kernel`` (``ofa_sdk.images.KERNELS``),
    as a platform resizes before it re-encodes; 1.0: the files themselves."""
    if factor == 1.0:
        return files
    from ofa_sdk.images import resize, to_rgb
    return [resize(to_rgb(f), factor, kernel) for f in files]


def embed(sets, jpegs, crops_list, model=None, rescales=(1.0,), first=0, kernel="bicubic"):
    """Cache every image's crop fingerprints per (set, JPEG quality, crops, rescale factor); a
    rescaled copy is resized first (with ``kernel``), then re-encoded (``rescaled``); ``first``:
    each image encoded at this JPEG quality before that (a copy re-encoded twice)."""
    from ofa_sdk.images import jpeg, to_rgb
    from eval_wild import load_classes
    from ofa_sdk import Attributor
    from ofa_sdk.evaluation.runner import embed_items
    for crops in crops_list:
        att = Attributor(model, crops=crops)
        for s in sets:
            classes = load_classes(Path(s))
            for q, r in ((q, r) for q in jpegs for r in rescales):
                out = cache_path(Path(s).name, q, crops, r, first, kernel)
                if out.exists():
                    continue
                t0 = time.time()
                z, counts, cls, idx = [], [], [], []
                for c, files in classes.items():
                    items = rescaled(files, r, kernel)
                    if first:
                        items = [jpeg(to_rgb(x), first) for x in items]
                    e = embed_items(att, items, q or None, with_spectra=False)
                    if e.skipped:
                        raise SystemExit(f"{s}/{c}: unusable images {e.skipped[:3]}")
                    z += e.z
                    counts += [len(x) for x in e.z]
                    cls += [c] * len(e.z)
                    idx += list(range(len(e.z)))
                out.parent.mkdir(parents=True, exist_ok=True)
                np.savez(out, z=np.concatenate(z).astype(np.float32), counts=np.array(counts),
                         cls=np.array(cls), idx=np.array(idx), model=att.model_id)
                print(f"{out.name}: {len(counts)} images in {time.time() - t0:.0f}s", flush=True)


class Cached:
    """One cache file: per class, a list of (k, d) crop fingerprints by content index."""

    def __init__(self, path: Path, split: str = "random"):
        f = np.load(path)
        rows = np.split(f["z"], np.cumsum(f["counts"])[:-1])
        self.classes = {}
        for c, i, r in zip(f["cls"], f["idx"], rows):
            self.classes.setdefault(str(c), {})[int(i)] = r
        self.names = sorted(self.classes)
        n = min(len(v) for v in self.classes.values())
        cut = max(n - QUERIES, n // 2)
        # "random": one seeded permutation of the content indices for every class (the
        # evaluation protocol's aligned split); "ordered": the queries are the last content
        # indices, photos of other sources than most of the support (a content shift)
        order = np.random.default_rng(0).permutation(n) if split == "random" else np.arange(n)
        self.pool, self.queries = order[:cut], order[cut:]

    def support(self, c, n, seed=0):
        pick = np.random.default_rng(seed).permutation(self.pool)[:n]
        z = [self.classes[c][i] for i in pick]
        return np.concatenate(z), [len(x) for x in z]

    def query(self, c):
        return [self.classes[c][i] for i in self.queries]


# -- rules as (prepare, raw scores) on support sets ----------------------------------------------
def _knn(supports, counts, queries, k=10):
    q = np.stack([scoring.prototype(x) for x in queries])
    out = []
    for s, c in zip(supports, counts):
        pts = scoring.image_points(s, c)
        sims = np.sort(q @ pts.T, axis=1)[:, ::-1][:, :min(k, len(pts))]
        out.append(sims.mean(1))
    return np.stack(out, 1)


def _gauss_crops(rule, supports, queries):
    fits = [scoring.fit_gaussian(scoring.unit(s), rule.shrink, rule.rank) for s in supports]
    return np.stack([np.array([1 - scoring.mahalanobis(f, q).mean() / q.shape[1] for q in queries])
                     for f in fits], 1)


CAL = scoring.Calibration(1.0, 0.0)     # raw scores only: AUCs and raw-scale thresholds


def rule_objects():
    g = dict(calibration=CAL)
    return {
        "prototype": scoring.PrototypeRule(CAL),
        "knn10": None,
        "gaussian-lw": scoring.GaussianRule(**g),
        "gaussian-oas": scoring.GaussianRule(shrink="oas", **g),
        "gaussian-lw-r16": scoring.GaussianRule(rank=16, **g),
        "gaussian-lw-r64": scoring.GaussianRule(rank=64, **g),
        "gaussian-crops": scoring.GaussianRule(**g),
        "lda-gallery": scoring.GaussianRule(whiten="gallery", **g),
        "lda-gallery-oas": scoring.GaussianRule(whiten="gallery", shrink="oas", **g),
    }


def raw_matrix(name, rule, supports, counts, queries):
    """(Q, P) raw scores of the query images against every support set."""
    if name == "knn10":
        return _knn(supports, counts, queries)
    if name == "gaussian-crops":
        return _gauss_crops(rule, supports, queries)
    return rule.raw_scores(rule.prepare(supports, counts=counts), queries)


def mean_1v1(S, owner, names):
    """Mean 1-vs-1 AUC of a (Q, P) score matrix whose column p is profile names[p]."""
    aucs, pairs = [], {}
    for p, t in enumerate(names):
        for c, o in enumerate(names):
            if c != p:
                a = roc_auc(S[owner == p, p], S[owner == c, p])
                aucs.append(a)
                pairs[f"{t}|{o}"] = a
    return float(np.mean(aucs)), pairs


def auc_runs(data: Cached, supports_n, rules, seed=0, queries: Cached = None):
    """Mean 1-vs-1 AUC, top-1 and per-pair AUCs per support size and rule; ``queries``: another
    cache of the same set (rescaled, re-encoded) to take the query images from, the support
    staying as generated."""
    names = data.names
    qs, owner = [], []
    for p, c in enumerate(names):
        q = (queries or data).query(c)
        qs += q
        owner += [p] * len(q)
    owner = np.array(owner)
    out = {}
    for n in supports_n:
        sup = [data.support(c, n, seed) for c in names]
        row, pairs = {}, {}
        for name, rule in rules.items():
            S = raw_matrix(name, rule, [s for s, _ in sup], [k for _, k in sup], qs)
            row[name], pairs[name] = mean_1v1(S, owner, names)
            row[name + ":top1"] = float((S.argmax(1) == owner).mean())
        out[n] = {"mean_1v1": row, "pairs": pairs}
    return out


# -- open set: every known class enrolled at once ------------------------------------------------
# The Gaussian rule's raw scores on a probability-like scale that grows with the score (what
# decision.decide compares): CAL's logistic of log(D^2/d) falls with the Gaussian's score.
GAUSS_DECISION = scoring.Calibration(-1.0, 0.0)


def _decision_scale(rule):
    """The rule with a calibration :func:`ofa_sdk.decision.decide` can compare."""
    import dataclasses
    if isinstance(rule, scoring.GaussianRule):
        return dataclasses.replace(rule, calibration=GAUSS_DECISION)
    return rule


def bench_snapshot(known, rule, state, own, fraction=decision.DEFAULT_FRACTION, tails=None):
    """A snapshot of the enrolled classes ``known`` as the SDK makes one (per-profile
    thresholds refusing ``fraction``, read through ``tails``), without a gallery and without
    an ambiguity margin (the decision before the SDK's default tie margin; a caller sets one
    with ``dataclasses.replace(snap, margin=m)``)."""
    from ofa_sdk.snapshot import GallerySnapshot
    return GallerySnapshot("bench", tuple(known), rule, state,
                           tuple(decision.threshold_of(rule, o, fraction, None, tails) for o in own),
                           own, "profile", fraction, tails)


def _labels(snap, queries, S) -> np.ndarray:
    """Index of the profile ``decision.decide`` labels each query with; -1 for ``unknown``."""
    out = [decision.decide("", row, snap.names, None, snapshot=snap, crops=len(q)).profile
           for q, row in zip(queries, S)]
    return np.array([-1 if p is None else snap.names.index(p) for p in out], int)


def decide_labels(names, rule, supports, queries) -> np.ndarray:
    """The SDK's decision (default fraction and tie margin) over profiles ``names`` fitted on
    ``supports`` ({name: (z, counts)}): a label index per query (each (k, d)), -1 where refused."""
    from dataclasses import replace
    rule = _decision_scale(rule)
    state, own, tails = _enrolled(rule, [supports[c] for c in names])
    snap = replace(bench_snapshot(names, rule, state, own, decision.DEFAULT_FRACTION, tails),
                   margin=decision.DEFAULT_MARGIN)
    return _labels(snap, queries, rule.scores(state, queries))


def _enrolled(rule, sup):
    """What the SDK prepares for profiles fitted on ``sup`` ([(z, counts)]): the rule's state,
    each profile's own scores and the tail pooled over them (scoring.Tails), as a snapshot of
    a gallery of those profiles holds them."""
    state = rule.prepare([s for s, _ in sup], counts=[k for _, k in sup])
    own = tuple(decision.own_scores(rule, s, k, state=state) for s, k in sup)
    return state, own, scoring.Tails.pooled(own)


def open_set(data: Cached, rule, n, unknown, folds, fractions=(0.01, 0.05, 0.1, 0.2, 0.3),
             seed=0, held_out=None, margins=(), queries: Cached = None):
    """Right / wrong / unknown for known classes' queries, and the share of held-out classes'
    queries given a label, by the SDK's decision (``decision.decide`` on a snapshot of the
    enrolled profiles: per-profile thresholds from ``scoring.held_out_stats`` at the queries'
    crop count, read through the tail pooled over the enrolled profiles (``scoring.Tails``),
    refusing ``fraction`` of each profile's own images -- the SDK's default is
    decision.DEFAULT_FRACTION --, and among the profiles that accept an image the one it is most
    typical of); plus OSCR and known-vs-unknown AUROC of the best score's margin over its
    profile's threshold at the default fraction. ``held_out``: the held-out classes of each
    fold, given (e.g. one family at a time) instead of ``unknown`` random ones in each of
    ``folds``. ``margins``: also the default fraction with each ambiguity margin
    (``decision.rival``), under ``f<fraction>_m<margin>``. ``queries``: the queries from
    another cache of the same images (e.g. re-encoded), the support from ``data``."""
    from dataclasses import replace
    rule = _decision_scale(rule)
    names = data.names
    rng = np.random.default_rng(seed)
    res = []
    for f in range(folds if held_out is None else len(held_out)):
        held = set(rng.permutation(names)[:unknown] if held_out is None else held_out[f])
        known = [c for c in names if c not in held]
        state, own, tails = _enrolled(rule, [data.support(c, n, seed + f) for c in known])
        kq, ko = [], []
        qd = data if queries is None else queries
        for p, c in enumerate(known):
            q = qd.query(c)
            kq += q
            ko += [p] * len(q)
        uq = [x for c in sorted(held) for x in qd.query(c)]
        ko = np.array(ko)
        Sk, Su = rule.scores(state, kq), rule.scores(state, uq)
        row = {}
        snaps = {f"f{frac}": bench_snapshot(known, rule, state, own, frac, tails)
                 for frac in set(fractions) | {decision.DEFAULT_FRACTION}}
        default = f"f{decision.DEFAULT_FRACTION}"
        snaps.update({f"{default}_m{m}": replace(snaps[default], margin=m) for m in margins})
        for tag in [f"f{frac}" for frac in fractions] + [f"{default}_m{m}" for m in margins]:
            snap = snaps[tag]
            lk, lu = _labels(snap, kq, Sk), _labels(snap, uq, Su)
            row[tag] = {"right": (lk == ko).mean(), "wrong": ((lk >= 0) & (lk != ko)).mean(),
                        "unknown": (lk < 0).mean(),
                        "unknown_labelled": (lu >= 0).mean() if len(lu) else float("nan")}
        res.append(row)
        if not uq:      # every class enrolled: no known-vs-unknown curve
            continue
        k = len(kq[0])
        thr = np.array([decision.threshold_of(rule, o, decision.DEFAULT_FRACTION, k, tails)
                        for o in own])
        bk, bu = Sk.argmax(1), Su.argmax(1)
        mk = Sk[np.arange(len(bk)), bk] - thr[bk]
        mu = Su[np.arange(len(bu)), bu] - thr[bu]
        row["curve"] = {"top1": (bk == ko).mean(), "oscr": oscr(mk, bk == ko, mu),
                        "auroc": roc_auc(mk, mu)}
    return {t: {k: float(np.mean([r[t][k] for r in res])) for k in res[0][t]} for t in res[0]}


def compare(a):
    report = {"runs": {}, "open_set": {}, "args": vars(a)}
    rules = rule_objects()
    if a.rules:
        rules = {k: v for k, v in rules.items() if k in a.rules}
    t0 = time.time()
    for s in a.sets:
        for q in a.jpeg:
            for crops in a.crops:
                p = cache_path(s, q, crops)
                if not p.exists():
                    continue
                data = Cached(p, a.split)
                key = f"{s}/q{q}/c{crops}"
                report["runs"][key] = auc_runs(data, a.support, rules)
                for n, r in report["runs"][key].items():
                    print(f"{key} n={n}: " + "  ".join(
                        f"{k} {100 * v:.2f}" for k, v in r["mean_1v1"].items() if ":" not in k)
                        + f"  [{time.time() - t0:.0f}s]", flush=True)
                    print("   top1: " + "  ".join(
                        f"{k[:-5]} {100 * v:.1f}" for k, v in r["mean_1v1"].items() if ":" in k))
                if a.open and crops == a.open_crops:
                    for name in a.open_rules:
                        for n in a.open_support:
                            r = open_set(data, rules[name], n, a.unknown[s], a.folds)
                            report["open_set"][f"{key}/{name}/n{n}"] = r
                            for t, v in r.items():
                                if t in ("curve", "f0.05", "f0.2"):
                                    print(f"  open {key} {name} n={n} {t}: " + "  ".join(
                                        f"{k} {100 * x:.1f}" for k, x in v.items()), flush=True)
    if a.out:
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.out).write_text(json.dumps(report, indent=1))


PAIRS = {"seed pairs": ["tconv4-ae-s0|tconv4-ae-s1", "unet-gan-s0|unet-gan-s1"],
         "real vs GAN/SR upscalers": ["real|sr-x2", "real|unet-gan-s0", "real|unet-gan-s1"],
         "classical upscaler siblings": ["bicubic-x2|lanczos-x3", "bicubic-x2|nearest-x2"]}


def summary(a):
    """Markdown tables of a ``compare`` report: mean 1-vs-1 AUC and top-1 per rule, the
    per-pair view (both directions averaged), and the open-set decision."""
    rep = json.loads(Path(a.report).read_text())
    rules = a.rules
    print("| set / JPEG / crops | support | " + " | ".join(rules) + " |")
    print("|---|---|" + "---|" * len(rules))
    for key, runs in rep["runs"].items():
        for n, r in runs.items():
            m = r["mean_1v1"]
            print(f"| {key} | {n} | " + " | ".join(
                f"{100 * m[x]:.2f} ({100 * m[x + ':top1']:.1f})" for x in rules) + " |")
    print("\n| pairs (mean of both directions) | set / JPEG / crops, support | "
          + " | ".join(rules) + " |")
    print("|---|---|" + "---|" * len(rules))
    for key, runs in rep["runs"].items():
        for n, r in runs.items():
            for group, pairs in PAIRS.items():
                got = []
                for x in rules:
                    v = [r["pairs"][x].get(p) for p in pairs] + \
                        [r["pairs"][x].get("|".join(p.split("|")[::-1])) for p in pairs]
                    v = [u for u in v if u is not None]
                    got.append(f"{100 * np.mean(v):.1f}" if v else None)
                if all(got):
                    print(f"| {group} | {key}, {n} | " + " | ".join(got) + " |")
    print("\n| open set: set / JPEG / crops / rule / support | right | wrong | unknown "
          "| never-enrolled given a label | OSCR | AUROC |")
    print("|---|---|---|---|---|---|---|")
    for key, r in rep["open_set"].items():
        d, c = r[a.decision], r["curve"]
        print(f"| {key} | {100 * d['right']:.1f} | {100 * d['wrong']:.1f} | "
              f"{100 * d['unknown']:.1f} | {100 * d['unknown_labelled']:.1f} | "
              f"{100 * c['oscr']:.1f} | {100 * c['auroc']:.1f} |")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    e = sub.add_parser("embed")
    e.add_argument("--set", nargs="+", required=True)
    e.add_argument("--jpeg", type=int, nargs="+", default=[0, 90, 75], help="0: no recompression")
    e.add_argument("--crops", type=int, nargs="+", default=[4, 1])
    e.add_argument("--model", default=None)
    e.add_argument("--rescale", type=float, nargs="+", default=[1.0],
                   help="resize factors (with --kernel, before any JPEG); 1.0: as generated")
    e.add_argument("--first-jpeg", type=int, default=0,
                   help="a JPEG quality each image is encoded at before --jpeg (0: none)")
    e.add_argument("--kernel", default="bicubic", choices=KERNELS, help="the resize kernel")
    c = sub.add_parser("compare")
    c.add_argument("--sets", nargs="+", default=["dev-sim", "wild13"])
    c.add_argument("--jpeg", type=int, nargs="+", default=[0, 90, 75])
    c.add_argument("--crops", type=int, nargs="+", default=[4, 1])
    c.add_argument("--support", type=int, nargs="+", default=[5, 10, 20, 50])
    c.add_argument("--rules", nargs="+", default=None)
    c.add_argument("--open", action="store_true")
    c.add_argument("--open-crops", type=int, default=4)
    c.add_argument("--open-rules", nargs="+", default=["prototype", "gaussian-lw", "lda-gallery"])
    c.add_argument("--open-support", type=int, nargs="+", default=[20, 50])
    c.add_argument("--folds", type=int, default=5)
    c.add_argument("--split", default="random", choices=["random", "ordered"])
    c.add_argument("--out", default=None)
    m = sub.add_parser("summary")
    m.add_argument("report")
    m.add_argument("--rules", nargs="+", default=["prototype", "gaussian-lw", "lda-gallery"])
    m.add_argument("--decision", default="f0.05", help="open-set decision column, e.g. f0.2")
    a = ap.parse_args(argv)
    if a.cmd == "summary":
        summary(a)
    elif a.cmd == "embed":
        import torch
        torch.set_num_threads(2)
        embed(a.set, a.jpeg, a.crops, a.model, a.rescale, a.first_jpeg, a.kernel)
    else:
        a.unknown = {"dev-sim": 3, "wild13": 4, "related": 4}
        compare(a)


if __name__ == "__main__":
    main()
