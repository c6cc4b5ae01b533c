"""Discovery of new generators (issue 28): clustering quality on the development sets, and the
cost of clustering 100,000 unknown fingerprints.

    python benchmarks/discover.py quality [--sets dev-sim wild13] [--seeds 5]
                                          [--real-photos ../shared/data/real-photos] [--out FILE]
    python benchmarks/discover.py scale [--n 100000] [--out FILE]

``quality``: per set and condition (clean, JPEG q90, q75, and "mixed", each image at one of
the three drawn at random), a few generator classes are enrolled (50 support images each: the
reference the agglomerative cut and the cohesion scale come from) and the others, each cut to a
random size, are mixed with every real photo (class ``real``) as the unknowns to cluster. Every
method is run on the same draws. Fingerprints come from the embedding cache
(``benchmarks/data/cache/<set>_q<Q>_c4.npz``, written by benchmarks/rules.py); a missing cache is
embedded here with the shipped model, 4 crops.

``scale``: synthetic fingerprints (generator centres around one direction, images around them,
with dev-sim's between-generator and own-image cosines; diffuse rows each with a centre of its
own, like real photos), clustered by the two-stage scheme; wall time and peak resident memory of
the process.
"""
from __future__ import annotations

import argparse
import json
import resource
import time
from pathlib import Path

import numpy as np

from ofa_sdk import discovery

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "benchmarks" / "data"
CACHE = DATA / "cache"
QUALITIES = (0, 90, 75)
SUPPORT = 50


def unit(x):
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def load(set_name: str, q: int, crops: int = 4):
    """(classes (N,), per-image unit fingerprints (N, d), content index (N,)) of one set at one
    JPEG quality (0: as stored)."""
    path = CACHE / f"{set_name}_q{q}_c{crops}.npz"
    if not path.exists():
        embed(set_name, q, crops, path)
    f = np.load(path)
    rows = np.split(f["z"], np.cumsum(f["counts"])[:-1])
    return f["cls"].astype(str), unit(np.stack([r.mean(0) for r in rows])), f["idx"]


def embed(set_name: str, q: int, crops: int, path: Path) -> None:
    """Write the cache file of one set and quality, in benchmarks/rules.py's format."""
    from ofa_sdk import Attributor
    from ofa_sdk.evaluation.runner import embed_items
    from ofa_sdk.images import list_images
    att = Attributor(crops=crops)
    root = DATA / set_name
    z, counts, cls, idx = [], [], [], []
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        e = embed_items(att, sorted(list_images(folder)), q or None, with_spectra=False)
        z += e.z
        counts += [len(x) for x in e.z]
        cls += [folder.name] * len(e.z)
        idx += list(range(len(e.z)))
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, z=np.concatenate(z).astype(np.float32), counts=np.array(counts),
             cls=np.array(cls), idx=np.array(idx), model=att.model_id)


def real_photos(photos: str, q: int, crops: int = 4, limit: int = 120):
    """(classes, fingerprints, index) of a ``real`` class made as benchmarks/wild.py makes
    wild13's: 256 px content crops of the held-out photos (cached)."""
    path = CACHE / f"discover-real_q{q}_c{crops}.npz"
    if not path.exists():
        from ofa_sdk import Attributor
        from ofa_sdk.evaluation.runner import embed_items
        from ofa_sdk.training.common import PhotoSet
        from wild import content_crops
        content = list(content_crops(PhotoSet(photos, split="holdout"), 256, 2))[:limit]
        att = Attributor(crops=crops)
        e = embed_items(att, content, q or None, with_spectra=False)
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez(path, z=np.concatenate(e.z).astype(np.float32),
                 counts=np.array([len(x) for x in e.z]), cls=np.array(["real"] * len(e.z)),
                 idx=np.arange(len(e.z)), model=att.model_id)
    f = np.load(path)
    rows = np.split(f["z"], np.cumsum(f["counts"])[:-1])
    return f["cls"].astype(str), unit(np.stack([r.mean(0) for r in rows])), f["idx"]


def conditions(set_name: str, seed: int = 0, photos: str = None):
    """{condition: (classes, fingerprints)}; "mixed" takes each image at a random quality.
    ``photos``: add a ``real`` class (:func:`real_photos`) to a set that has none."""
    per_q = {q: load(set_name, q) for q in QUALITIES}
    if photos and "real" not in set(per_q[0][0]):
        per_q = {q: tuple(np.concatenate([a, b]) for a, b in zip(v, real_photos(photos, q)))
                 for q, v in per_q.items()}
    cls0, _, idx0 = per_q[0]
    for q in QUALITIES[1:]:
        if not (np.array_equal(per_q[q][0], cls0) and np.array_equal(per_q[q][2], idx0)):
            raise SystemExit(f"{set_name}: the caches of the JPEG qualities hold different images")
    pick = np.random.default_rng(seed).integers(0, len(QUALITIES), len(cls0))
    mixed = np.stack([per_q[QUALITIES[p]][1][i] for i, p in enumerate(pick)])
    out = {("clean" if q == 0 else f"q{q}"): (cls0, per_q[q][1]) for q in QUALITIES}
    out["mixed"] = (cls0, mixed)
    return out


def whitener(groups):
    """Pooled within-class covariance of the enrolled classes (Ledoit-Wolf), as a feature map
    x -> x W with W W^T = its inverse: a Mahalanobis-type metric learned from the profiles."""
    from sklearn.covariance import LedoitWolf
    centred = np.concatenate([g - g.mean(0) for g in groups])
    cov = LedoitWolf(assume_centered=True).fit(centred).covariance_
    val, vec = np.linalg.eigh(cov)
    w = vec / np.sqrt(np.maximum(val, 1e-12))

    def whitened(x):
        return unit(np.asarray(x, np.float64)) @ w
    return whitened


METHODS = {
    # name: (method, quantile, uses the reference, feature space)
    "agglomerative q0.8": ("agglomerative", 0.8, True, "unit"),
    "agglomerative q0.9": ("agglomerative", 0.9, True, "unit"),
    "agglomerative q0.95": ("agglomerative", 0.95, True, "unit"),
    "hdbscan": ("hdbscan", 0.9, True, "unit"),
    "agglomerative q0.9, whitened": ("agglomerative", 0.9, True, "whitened"),
    "hdbscan, whitened": ("hdbscan", 0.9, True, "whitened"),
}


def score(truth, labels, real: str = "real"):
    """The quality figures of one clustering against the true classes."""
    from sklearn.metrics import adjusted_rand_score
    gens = sorted(set(truth) - {real})
    on = labels >= 0
    row = {"ari": adjusted_rand_score(truth, labels), "clusters": int(labels.max() + 1),
           "true": len(gens)}
    hit = 0
    majority = {}
    for c in range(row["clusters"]):
        vals, cnt = np.unique(truth[labels == c], return_counts=True)
        hit += cnt.max()
        majority[c] = vals[cnt.argmax()]
    row["purity"] = hit / max(1, on.sum())
    homes, splits, missed = {}, 0, 0
    for g in gens:
        lab = labels[(truth == g) & on]
        if not len(lab):
            missed += 1
            continue
        c, cnt = np.unique(lab, return_counts=True)
        homes.setdefault(c[cnt.argmax()], []).append(g)
        size = (truth == g).sum()
        splits += int((cnt >= max(5, 0.2 * size)).sum() >= 2)
    row["merged"] = sum(len(v) - 1 for v in homes.values())
    row["split"] = splits
    row["missed"] = missed
    row["gen_noise"] = float(((truth != real) & ~on).sum() / max(1, (truth != real).sum()))
    if (truth == real).any():
        row["real_spurious"] = sum(1 for m in majority.values() if m == real)
        row["real_clustered"] = float((on & (truth == real)).mean() / (truth == real).mean())
    return row


def quality(a) -> dict:
    report = {"support": SUPPORT, "seeds": a.seeds, "min_cluster_size": a.min_cluster_size,
              "runs": {}}
    for set_name in a.sets:
        for cond, (cls, x) in conditions(set_name, photos=a.real_photos).items():
            gens = sorted(set(cls) - {"real"})
            n_enrolled = max(2, len(gens) // 3)
            rows = {m: [] for m in METHODS}
            for seed in range(a.seeds):
                rng = np.random.default_rng(seed)
                order = rng.permutation(gens)
                enrolled, unknown = order[:n_enrolled], order[n_enrolled:]
                profiles = {g: x[np.flatnonzero(cls == g)[:SUPPORT]] for g in enrolled}
                pool = []
                for g in unknown:
                    idx = np.flatnonzero(cls == g)
                    pool.append(rng.permutation(idx)[:rng.integers(20, len(idx) + 1)])
                pool.append(np.flatnonzero(cls == "real"))
                pool = np.concatenate(pool)
                feats = {"unit": None, "whitened": whitener(list(profiles.values()))}
                refs = {k: discovery.reference_from(profiles, t) for k, t in feats.items()}
                for name, (method, q, uses_ref, space) in METHODS.items():
                    res = discovery.discover(x[pool], method=method, quantile=q,
                                             transform=feats[space],
                                             reference=refs[space] if uses_ref else None,
                                             min_cluster_size=a.min_cluster_size)
                    rows[name].append(score(cls[pool], res.labels))
            for name, rs in rows.items():
                mean = {k: float(np.mean([r[k] for r in rs])) for k in rs[0]}
                report["runs"][f"{set_name}/{cond}/{name}"] = {"mean": mean, "per_seed": rs}
                print(f"{set_name:8s} {cond:6s} {name:30s} " + "  ".join(
                    f"{k} {v:.2f}" for k, v in mean.items()), flush=True)
    return report


def table(report: dict) -> str:
    """The RESULTS.md table: one row per set, condition and method."""
    lines = ["| set | condition | method | ARI | purity | clusters / true | merged | split | "
             "missed | generator images in noise | real-photo clusters | real photos clustered |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for key, r in report["runs"].items():
        s, c, m = key.split("/")
        v = r["mean"]
        real = (f"{v['real_spurious']:.1f} | {100 * v['real_clustered']:.1f}%"
                if "real_spurious" in v else "- | -")
        lines.append(f"| {s} | {c} | {m} | {v['ari']:.3f} | {v['purity']:.3f} | "
                     f"{v['clusters']:.1f} / {v['true']:.0f} | {v['merged']:.1f} | {v['split']:.1f} | "
                     f"{v['missed']:.1f} | {100 * v['gen_noise']:.1f}% | {real} |")
    return "\n".join(lines)


def geometry(set_name: str):
    """(mean leave-one-out cosine of a generator's own images, mean cosine between two
    generators' prototypes) on a development set: the geometry the synthetic scale test
    reproduces."""
    cls, x, _ = load(set_name, 0)
    gens = sorted(set(cls) - {"real"})
    own = np.mean([discovery.loo_cosines(x[cls == g]).mean() for g in gens])
    p = unit(np.stack([x[cls == g].mean(0) for g in gens]))
    return float(own), float((p @ p.T)[np.triu_indices(len(gens), 1)].mean())


def scale(a) -> dict:
    from sklearn.metrics import adjusted_rand_score
    rng = np.random.default_rng(0)
    d, c = a.dim, a.own_cosine
    sigma = np.sqrt((1 / c ** 2 - 1) / d)     # cos(x, centre) ~ 1 / sqrt(1 + d sigma^2)
    tau = np.sqrt((1 / a.between_cosine - 1) / d)   # cos(centre_i, centre_j) ~ 1 / (1 + d tau^2)
    n_diffuse = int(a.n * a.diffuse)
    sizes = rng.multinomial(a.n - n_diffuse, rng.dirichlet(np.full(a.generators, 0.5)))
    sizes = np.maximum(sizes, 1)
    u = unit(rng.standard_normal(d))
    # generator centres around one common direction; a diffuse row is an image with a centre of
    # its own (a real photo looks like no generator, not like noise)
    centres = unit(u + tau * rng.standard_normal((a.generators + 10, d)))
    x = np.concatenate([centres[g] + sigma * rng.standard_normal((n, d)) for g, n in enumerate(sizes)]
                       + [unit(u + tau * rng.standard_normal((n_diffuse, d)))]).astype(np.float32)
    truth = np.concatenate([np.full(n, g) for g, n in enumerate(sizes)] + [np.full(n_diffuse, -1)])
    profiles = {f"p{g}": centres[a.generators + g] + sigma * rng.standard_normal((SUPPORT, d))
                for g in range(10)}
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    t = time.perf_counter()
    ref = discovery.reference_from(profiles)
    res = discovery.discover(x, method=a.method, reference=ref, min_cluster_size=a.min_cluster_size,
                             micro_clusters=a.micro_clusters)
    wall = time.perf_counter() - t
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    big = sizes >= a.min_cluster_size
    out = {"n": a.n, "dim": d, "generators": a.generators, "generators_at_least_min": int(big.sum()),
           "diffuse": n_diffuse, "own_cosine": c, "between_cosine": a.between_cosine,
           "sigma": float(sigma), "method": res.method, "micro_clusters": a.micro_clusters,
           "wall_s": wall, "timings": res.timings, "peak_rss_mb": rss,
           "rss_before_mb": rss0, "input_mb": x.nbytes / 2 ** 20,
           "clusters": len(res.clusters), "noise": len(res.noise),
           "ari": adjusted_rand_score(truth, res.labels),
           "diffuse_in_noise": float((res.labels[truth < 0] < 0).mean())}
    print(json.dumps(out, indent=1))
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("quality")
    p.add_argument("--sets", nargs="+", default=["dev-sim", "wild13"])
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--real-photos", default=None,
                   help="the photo folder benchmarks/wild.py takes: a set without a 'real' class "
                        "gets one made the same way (held-out content crops)")
    p.add_argument("--min-cluster-size", type=int, default=discovery.DEFAULT_MIN_CLUSTER_SIZE)
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "discover_quality.json"))
    p = sub.add_parser("scale")
    p.add_argument("--n", type=int, default=100_000)
    p.add_argument("--dim", type=int, default=128)
    p.add_argument("--generators", type=int, default=50)
    p.add_argument("--diffuse", type=float, default=0.2, help="share of diffuse (real-photo-like) rows")
    p.add_argument("--own-cosine", type=float, default=None,
                   help="a generator's own-image cosine (default: measured on dev-sim)")
    p.add_argument("--between-cosine", type=float, default=None,
                   help="cosine between two generators' prototypes (default: measured on dev-sim)")
    p.add_argument("--micro-clusters", type=int, default=discovery.MICRO_CLUSTERS)
    p.add_argument("--method", default="auto")
    p.add_argument("--min-cluster-size", type=int, default=discovery.DEFAULT_MIN_CLUSTER_SIZE)
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "discover_scale.json"))
    a = ap.parse_args(argv)
    if a.cmd == "quality":
        report = quality(a)
        print(table(report))
    else:
        own, between = geometry("dev-sim")
        a.own_cosine = own if a.own_cosine is None else a.own_cosine
        a.between_cosine = between if a.between_cosine is None else a.between_cosine
        report = scale(a)
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
