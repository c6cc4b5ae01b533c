"""Two test-time levers on the related families (issue 31), measured on the shipped model, no
training: a metric fitted once on simulator architectures, and content conditioning.

``bank`` embeds simulator architectures (random draws, seeded) reconstructing random 256 px crops
of *training* photos, 4 crops per image, in rules.py's cache format (``simbank_q0_c4.npz``).
``projection`` fits on that bank the Fisher discriminant of the architectures (pooled within-class
covariance, Ledoit-Wolf shrunk; between-class covariance of the class means), keeps its top k
directions, and fits the default Gaussian rule in them: a generator's own spread measured in the
directions along which *simulated* generators differ, fixed with the model, not the gallery.
``transform`` embeds each image of a set after a transform that keeps its content and replaces
its high frequencies (``du50``: bicubic down by 2 and up again; ``blur``: Gaussian blur, sigma
1.5). ``condition`` regresses the within-class deviations of each image's fingerprint on those of
its transformed copy (ridge least squares, fitted on one split of the related set's families)
and scores the residual on the other split's pairs: the content's part of a fingerprint predicted
from the image itself and removed.

    python benchmarks/content_levers.py bank --archs 300 --per 24
    python benchmarks/content_levers.py projection --ks 8 16 32 64 128
    python benchmarks/content_levers.py transform --set related --kind du50 blur
    python benchmarks/content_levers.py condition --t du50 blur r75
Figures: benchmarks/RESULTS.md section 11.12.
"""
from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from related import PAIRS, both_ways
import rules as R
from ofa_sdk import scoring

ROOT = Path(__file__).resolve().parents[1]
CHOOSE = ["cugan-se-x2", "cugan-se-x3", "cugan-se-x4", "cugan-pro-x2", "esr-av3-x2", "esr-av3-x4", "real"]


def _save(out: Path, z, counts, cls, idx, model):
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez(out, z=np.concatenate(z).astype(np.float32), counts=np.array(counts), cls=np.array(cls),
             idx=np.array(idx), model=model)


def bank(a):
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
        x = data.batch(a.per, 256, g)
        with torch.inference_mode():
            e = embed_items(att, list(from_tensor(sim(x, arch))), None, with_spectra=False)
        z += e.z
        counts += [len(v) for v in e.z]
        cls += [f"a{arch.id}"] * len(e.z)
        idx += list(range(len(e.z)))
        if (k + 1) % 20 == 0:
            print(f"{k + 1}/{a.archs} architectures, {time.time() - t0:.0f}s", flush=True)
    _save(R.cache_path("simbank", 0, 4), z, counts, cls, idx, att.model_id)


def fisher(points: np.ndarray, cls: np.ndarray) -> np.ndarray:
    """(d, d) directions V, V^T S_w V = (tr S_w / d) I, ordered by between/within ratio."""
    names = sorted(set(cls))
    means = np.stack([points[cls == c].mean(0) for c in names])
    r = np.concatenate([points[cls == c] - m for c, m in zip(names, means)])
    d = r.shape[1]
    sw = r.T @ r / len(r)
    mu = np.trace(sw) / d
    alpha = scoring.shrinkage(r, "ledoit-wolf")
    sw = (1 - alpha) * sw + alpha * mu * np.eye(d)
    mc = means - means.mean(0)
    ew, ev = np.linalg.eigh(sw)
    wh = ev / np.sqrt(ew)
    lb, vb = np.linalg.eigh(wh.T @ (mc.T @ mc / len(mc)) @ wh)
    return (wh @ vb[:, np.argsort(lb)[::-1]]) * np.sqrt(mu)


@dataclass(frozen=True)
class Projected(scoring.GaussianRule):
    """The Gaussian rule fitted on fingerprints projected by a fixed (d, k) matrix."""
    proj: np.ndarray = None

    def prepare(self, supports, parts=None, counts=None, fits=None):
        pts = [scoring.image_points(s, 1 if counts is None else counts[i]) @ self.proj
               for i, s in enumerate(supports)]
        fits = [scoring.fit_profile(p, self.shrink, self.rank, self.prior_var) for p in pts]
        return scoring._stack(fits, self.proj.shape[1], self.proj, self.prior_var)


def _points(data):
    idx = sorted(set(data.pool) | set(data.queries))
    return {c: scoring.image_points(np.concatenate([data.classes[c][i] for i in idx]),
                                    [len(data.classes[c][i]) for i in idx]) for c in data.names}


def _pairs(s):
    groups = ["wild13"] if s == "wild13" else ["choose", "confirm"]
    return [p for g in groups for plist in PAIRS[g].values() for p in plist]


def projection(a):
    f = np.load(R.cache_path("simbank", 0, 4))
    pts = scoring.image_points(f["z"], f["counts"])
    v = fisher(pts, f["cls"])
    var = float(np.mean(np.var(pts, 0)))
    rules = {"default": R.rule_objects()["gaussian-lw"]}
    rules.update({f"k{k}": Projected(calibration=R.CAL, proj=v[:, :k], prior_var=var) for k in a.ks})
    report = {}
    for s in a.sets:
        data = R.Cached(R.cache_path(s, 0, 4))
        for name, q, r in (("clean", 0, 1.0), ("q90", 90, 1.0), ("0.75x", 0, 0.75)):
            queries = None if name == "clean" else R.Cached(R.cache_path(s, q, 4, r))
            run = R.auc_runs(data, [100], rules, queries=queries)[100]
            row = {k: {"auc": run["mean_1v1"][k],
                       "pairs": float(np.mean([both_ways(run["pairs"][k], p) for p in _pairs(s)]))}
                   for k in rules}
            report[f"{s} {name}"] = row
            print(f"| {s} | {name} | " + " | ".join(f"{r['auc']:.3f} / {r['pairs']:.3f}" for r in row.values()) + " |",
                  flush=True)
    Path(a.out).write_text(json.dumps(report, indent=1))


def transform(a):
    from PIL import Image, ImageFilter
    from eval_wild import load_classes
    from ofa_sdk import Attributor
    from ofa_sdk.evaluation.runner import embed_items

    def t(f, kind):
        im = Image.open(f).convert("RGB")
        w, h = im.size
        if kind == "du50":
            return np.asarray(im.resize((w // 2, h // 2), Image.BICUBIC).resize((w, h), Image.BICUBIC))
        return np.asarray(im.filter(ImageFilter.GaussianBlur(1.5)))
    att = Attributor(None, crops=4)
    for kind in a.kind:
        z, counts, cls, idx = [], [], [], []
        for c, files in load_classes(ROOT / "benchmarks" / "data" / a.set).items():
            e = embed_items(att, [t(f, kind) for f in files], None, with_spectra=False)
            z += e.z
            counts += [len(x) for x in e.z]
            cls += [c] * len(e.z)
            idx += list(range(len(e.z)))
        _save(R.cache_path(f"{a.set}_{kind}", 0, 4), z, counts, cls, idx, att.model_id)


def condition(a):
    base = R.Cached(R.cache_path("related", 0, 4))
    z = _points(base)
    pool, qs = base.pool, base.queries

    def auc(feats, pairs):
        out = []
        for p in pairs:
            for x, y in (p.split("|"), p.split("|")[::-1]):
                fit = scoring.fit_gaussian(feats[x][pool])
                own, other = -scoring.mahalanobis(fit, feats[x][qs]), -scoring.mahalanobis(fit, feats[y][qs])
                from ofa_sdk.evaluation.metrics import roc_auc
                out.append(roc_auc(own, other))
        return float(np.mean(out))
    print("| transform | fitted on | scored on | fingerprint | residual | own spread kept |")
    print("|---|---|---|---|---|---|")
    for kind in a.t:
        tz = _points(R.Cached(R.cache_path("related", 0, 4, 0.75) if kind == "r75"
                              else R.cache_path(f"related_{kind}", 0, 4)))
        for fit_on, score_on in ((CHOOSE, "confirm"), ([c for c in base.names if c not in CHOOSE] + ["real"], "choose")):
            x = np.concatenate([tz[c][pool] - tz[c][pool].mean(0) for c in fit_on])
            y = np.concatenate([z[c][pool] - z[c][pool].mean(0) for c in fit_on])
            m = np.linalg.solve(x.T @ x + a.ridge * len(x) * np.eye(x.shape[1]), x.T @ y)
            res = {c: z[c] - tz[c] @ m for c in base.names}
            kept = np.mean([((res[c][pool] - res[c][pool].mean(0)) ** 2).sum(1).mean()
                            / ((z[c][pool] - z[c][pool].mean(0)) ** 2).sum(1).mean() for c in base.names])
            pairs = [p for plist in PAIRS[score_on].values() for p in plist]
            print(f"| {kind} | {len(fit_on)} classes | {score_on} | {auc(z, pairs):.3f} | {auc(res, pairs):.3f} | {kept:.2f} |",
                  flush=True)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("bank")
    b.add_argument("--photos", default=str(ROOT.parent / "shared" / "data" / "real-photos"))
    b.add_argument("--archs", type=int, default=300)
    b.add_argument("--per", type=int, default=24)
    b.add_argument("--seed", type=int, default=12345)
    p = sub.add_parser("projection")
    p.add_argument("--ks", type=int, nargs="+", default=[8, 16, 32, 64, 128])
    p.add_argument("--sets", nargs="+", default=["wild13", "related"])
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "content_projection.json"))
    t = sub.add_parser("transform")
    t.add_argument("--set", default="related")
    t.add_argument("--kind", nargs="+", default=["du50", "blur"], choices=["du50", "blur"])
    c = sub.add_parser("condition")
    c.add_argument("--t", nargs="+", default=["du50", "blur", "r75"])
    c.add_argument("--ridge", type=float, default=1e-3)
    a = ap.parse_args(argv)
    {"bank": bank, "projection": projection, "transform": transform, "condition": condition}[a.cmd](a)


if __name__ == "__main__":
    main()
