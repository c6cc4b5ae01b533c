"""Two test-time levers for the related families (issue 31), on the embedding caches of
benchmarks/rules.py (RESULTS 11.20):

* ``rerender`` / ``baseline`` -- a content-matched baseline. Each image is re-rendered by K fixed
  simulator architectures (the shipped model's stage-1 simulator, seeded draws, the same K for
  every image); under a profile P a query scores s(q, P) - lam * mean_k s(S_k(q), P): how much
  more P-like it is than its own content rendered by other decoders. Score space (``lin``: on
  the raw 1 - D^2/d; ``log``: on -log D^2) and feature space (``feature``: each crop's
  fingerprint minus lam times its re-renderings' mean, re-normalised, support and queries alike).
* ``eigen`` -- the profile Gaussian's covariance with cross-validated eigenvalues (eigenvectors
  from nine tenths of the support, the variance along them from the held-out tenth, averaged
  over 4 x 10 folds; NERCOME-style) against Ledoit-Wolf, as full-covariance Mahalanobis scores.

    export OFA_BENCH_CACHE=benchmarks/data/cache-v2
    python benchmarks/test_time_levers.py rerender --set benchmarks/data/related --all --out runs/rr_related.npz
    python benchmarks/test_time_levers.py baseline --set related --rr runs/rr_related.npz --support-rr runs/rr_related.npz
    python benchmarks/test_time_levers.py eigen --set related --variant q0
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import related as RL  # noqa: E402
import rules as R  # noqa: E402
from ofa_sdk import scoring  # noqa: E402

VARIANTS = {"q0": (0, 1.0), "q90": (90, 1.0), "r75": (0, 0.75)}


def rerender(a):
    """Cache the K re-renderings' crop fingerprints of every query (``--all``: every image),
    keyed by class, content index and k."""
    import torch
    from eval_wild import load_classes
    from ofa_sdk import Attributor
    from ofa_sdk.evaluation.runner import embed_items
    from ofa_sdk.images import from_tensor, jpeg, to_rgb, to_tensor
    from ofa_sdk.weights import load_default_model
    torch.set_num_threads(int(os.environ.get("THREADS", "2")))
    att = Attributor(None, crops=4)
    sim = load_default_model().simulator().eval()
    g = torch.Generator().manual_seed(a.seed)
    archs = [sim.sample(g) for _ in range(a.k)]
    data = R.Cached(R.cache_path(Path(a.set).name, 0, 4))
    classes = load_classes(Path(a.set))
    mult = 2 ** 4
    z, counts, cls, idx, ks = [], [], [], [], []
    t0 = time.time()
    for c in data.names:
        for i in (sorted(data.classes[c]) if a.all else list(data.queries)):
            im = R.rescaled([classes[c][i]], a.rescale)[0] if a.rescale != 1.0 else to_rgb(classes[c][i])
            if a.jpeg:
                im = to_rgb(jpeg(im, a.jpeg))
            h, w = (s // mult * mult for s in im.shape[:2])
            x = to_tensor(np.ascontiguousarray(im[:h, :w])[None])
            with torch.inference_mode():
                outs = [from_tensor(sim(x, arch).float().clamp(0, 1))[0] for arch in archs]
            e = embed_items(att, outs, None, with_spectra=False)
            if e.skipped:
                raise SystemExit(f"{c}/{i}: re-rendering unusable {e.skipped[:1]}")
            for k, v in enumerate(e.z):
                z.append(v); counts.append(len(v)); cls.append(c); idx.append(int(i)); ks.append(k)
        print(c, f"{time.time() - t0:.0f}s", flush=True)
    np.savez(a.out, z=np.concatenate(z).astype(np.float32), counts=np.array(counts), cls=np.array(cls),
             idx=np.array(idx), k=np.array(ks), archs=np.array([x.id for x in archs]))


def _load_rr(path):
    f = np.load(path)
    rows = np.split(f["z"], np.cumsum(f["counts"])[:-1])
    out = {}
    for c, i, k, r in zip(f["cls"], f["idx"], f["k"], rows):
        out.setdefault((str(c), int(i)), {})[int(k)] = r
    K = int(f["k"].max()) + 1
    return {key: [v[k] for k in range(K)] for key, v in out.items()}, K


def _report(res, tag, M, owner, names, groups):
    m, pairs = R.mean_1v1(M, owner, names)
    res[tag] = {"mean_1v1": m, "top1": float((M.argmax(1) == owner).mean())}
    for g in groups:
        res[tag][f"pairs {g}"] = float(np.mean([RL.both_ways(pairs, p) for kind in RL.PAIRS[g].values()
                                                for p in kind]))
    print(tag, json.dumps({k: round(v, 4) for k, v in res[tag].items()}), flush=True)


def _split(a):
    data = R.Cached(R.cache_path(a.set, 0, 4))
    q, r = VARIANTS[a.variant]
    qdata = R.Cached(R.cache_path(a.set, q, 4, r))
    return data, qdata


def baseline(a):
    data, qdata = _split(a)
    rr, K = _load_rr(a.rr)
    names = data.names
    rule = R.rule_objects()[RL.RULE]
    sup = [data.support(c, RL.SUPPORT, 0) for c in names]
    state = rule.prepare([s for s, _ in sup], counts=[k for _, k in sup])
    qs, owner, keys = [], [], []
    for p, c in enumerate(names):
        for i in qdata.queries:
            qs.append(qdata.classes[c][int(i)]); owner.append(p); keys.append((c, int(i)))
    owner = np.array(owner)
    S = rule.raw_scores(state, qs)
    SK = np.stack([rule.raw_scores(state, [rr[key][k] for key in keys]) for k in range(K)])
    res = {}
    _report(res, "baseline", S, owner, names, a.groups)
    for lam in (0.5, 1.0):
        _report(res, f"lin lam={lam}", S - lam * SK.mean(0), owner, names, a.groups)
        _report(res, f"log lam={lam}", -np.log(1 - S) + lam * np.log(1 - SK).mean(0), owner, names, a.groups)
    _report(res, "rerender only", SK.mean(0), owner, names, a.groups)
    if a.support_rr:
        rs, _ = _load_rr(a.support_rr)
        for lam in (0.5, 1.0):
            def fix(z, key, src):
                return scoring.unit(z - lam * np.mean(src[key], 0))
            sup2 = []
            for c in names:
                pick = np.random.default_rng(0).permutation(data.pool)[:RL.SUPPORT]
                zz = [fix(data.classes[c][int(i)], (c, int(i)), rs) for i in pick]
                sup2.append((np.concatenate(zz), [len(x) for x in zz]))
            st2 = rule.prepare([s for s, _ in sup2], counts=[k for _, k in sup2])
            _report(res, f"feature lam={lam}", rule.raw_scores(st2, [fix(q, key, rr) for q, key in zip(qs, keys)]),
                    owner, names, a.groups)
    if a.out:
        Path(a.out).write_text(json.dumps(res, indent=1))


def _lw(X):
    from sklearn.covariance import ledoit_wolf
    m = X.mean(0)
    return m, ledoit_wolf(X - m, assume_centered=True)[0]


def _cv(X, folds=10, reps=4, floor=0.0, blend=0.0):
    n, d = X.shape
    acc = np.zeros((d, d))
    rng = np.random.default_rng(0)
    for _ in range(reps):
        perm = rng.permutation(n)
        for f in range(folds):
            te = perm[f::folds]
            tr = np.setdiff1d(perm, te)
            mt = X[tr].mean(0)
            _, V = np.linalg.eigh(np.cov(X[tr] - mt, rowvar=False))
            acc += (V * (((X[te] - mt) @ V) ** 2).mean(0)) @ V.T
    C = acc / (reps * folds)
    if blend:
        C = (1 - blend) * C + blend * _lw(X)[1]
    lam, V = np.linalg.eigh(C)
    return X.mean(0), (V * np.maximum(lam, floor * lam.max() + 1e-12)) @ V.T


def eigen(a):
    data, qdata = _split(a)
    names = data.names
    Q = {c: np.stack([scoring.prototype(z) for z in qdata.query(c)]) for c in names}
    SP = {c: scoring.image_points(*data.support(c, RL.SUPPORT, 0)) for c in names}
    allq = np.concatenate([Q[o] for o in names])
    owner = np.repeat(np.arange(len(names)), [len(Q[o]) for o in names])
    res = {}
    for tag, fn in (("ledoit-wolf", _lw), ("cv", _cv), ("cv floor 1e-3", lambda X: _cv(X, floor=1e-3)),
                    ("cv blend 0.2", lambda X: _cv(X, blend=0.2))):
        cols = []
        for c in names:
            m, C = fn(SP[c])
            D = allq - m
            cols.append(-np.einsum("id,de,ie->i", D, np.linalg.inv(C), D))
        _report(res, tag, np.stack(cols, 1), owner, names, a.groups)
    # why: the own queries' variance along each Ledoit-Wolf eigenvector over the fitted
    # eigenvalue, mean per eighth of the eigenvalues (largest first), over the profiles
    ratio = []
    for c in names:
        m, C = _lw(SP[c])
        lam, V = np.linalg.eigh(C)
        r = (((Q[c] - m) @ V[:, ::-1]) ** 2).mean(0) / lam[::-1]
        ratio.append([float(x.mean()) for x in np.array_split(r, 8)])
    res["own variance / fitted, by eighth"] = np.mean(ratio, 0).round(3).tolist()
    print("own queries' variance / Ledoit-Wolf eigenvalue, by eighth:", res["own variance / fitted, by eighth"])
    if a.out:
        Path(a.out).write_text(json.dumps(res, indent=1))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("rerender")
    p.add_argument("--set", required=True, help="a development set's folder")
    p.add_argument("--k", type=int, default=6)
    p.add_argument("--seed", type=int, default=777)
    p.add_argument("--jpeg", type=int, default=0)
    p.add_argument("--rescale", type=float, default=1.0)
    p.add_argument("--all", action="store_true", help="the support pool too, not only the queries")
    p.add_argument("--out", required=True)
    for name in ("baseline", "eigen"):
        p = sub.add_parser(name)
        p.add_argument("--set", required=True, help="a cache name: related, wild13, related-siblings")
        p.add_argument("--variant", default="q0", choices=sorted(VARIANTS))
        p.add_argument("--groups", nargs="*", default=["choose", "confirm"])
        p.add_argument("--out", default=None)
        if name == "baseline":
            p.add_argument("--rr", required=True, help="rerender's output for the queries (this variant)")
            p.add_argument("--support-rr", default=None, help="rerender --all's output (feature space)")
    a = ap.parse_args(argv)
    {"rerender": rerender, "baseline": baseline, "eigen": eigen}[a.cmd](a)


if __name__ == "__main__":
    main()
