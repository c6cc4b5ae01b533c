"""A lossless query resized by a factor between the resize variants, resized again down to the
variant below (issue 31; measured, not built: benchmarks/RESULTS.md 11.24).

A resized query meets the variant nearest its factor (``snapshot.nearest_variant``); between the
variants' factors it meets resampling traces of another factor. The lever: resize the query
again, to the size of the largest variant below its factor (support size x v), so its last
resampling is the variant's, and score it against that variant. ``embed``: the held-out query
images of a set delivered as ``F[qQ][>V]`` (resized by F, re-encoded at Q, then resized to V
of the original size), cached beside rules.py's caches; ``score``: ``DELIVERY@SCALE[,Q]`` scored
against the support's variant at (SCALE, Q): mean 1-vs-1 AUC (top-1 %) and right / wrong /
unknown / never-enrolled labelled (%), as jpeg_matched.py's ``--variants`` reports them.

    export OFA_BENCH_CACHE=benchmarks/data/cache-v2
    python benchmarks/rules.py embed --set benchmarks/data/wild13 benchmarks/data/related --jpeg 0 90 --crops 4 --rescale 0.75 0.5
    python benchmarks/requery_resize.py embed --set wild13 '0.95>0.75' '0.9>0.75' '0.85>0.75' '0.8>0.75' '0.7>0.5' '0.65>0.5' '0.6>0.5' '0.55>0.5'
    python benchmarks/requery_resize.py score --set wild13 '0.95>0.75@0.75' '0.9>0.75@0.75' '0.85>0.75@0.75' '0.8>0.75@0.75' '0.7>0.5@0.5' '0.65>0.5@0.5' '0.6>0.5@0.5' '0.55>0.5@0.5'
"""
import argparse
import time
from pathlib import Path

import numpy as np
from PIL import Image

from rules import CACHE, ROOT, Cached, auc_runs, cache_path, rule_objects
from jpeg_matched import LABELS, RULE, _labels


def _cache(name: str, delivery: str) -> Path:
    return CACHE / f"{name}_deliv_{delivery.replace('>', 'to')}.npz"


def _sized(a: np.ndarray, w: int, h: int, factor: float) -> np.ndarray:
    return np.asarray(Image.fromarray(a).resize((max(1, round(w * factor)), max(1, round(h * factor))),
                                                Image.BICUBIC))


def deliver(a: np.ndarray, delivery: str) -> np.ndarray:
    """``F[qQ][>V]``: resized by F (bicubic), re-encoded at Q, then resized to V of the original."""
    from ofa_sdk.images import jpeg
    fq, _, v = delivery.partition(">")
    f, _, q = fq.partition("q")
    h, w = a.shape[:2]
    x = _sized(a, w, h, float(f))
    if q:
        x = jpeg(x, int(q))
    return _sized(x, w, h, float(v)) if v else x


class Delivered:
    """The query images of one delivery cache, in the split of the set's cache as generated."""

    def __init__(self, path: Path, base: Cached):
        f = np.load(path)
        rows = np.split(f["z"], np.cumsum(f["counts"])[:-1])
        self.classes = {}
        for c, i, r in zip(f["cls"], f["idx"], rows):
            self.classes.setdefault(str(c), {})[int(i)] = r
        self.names, self.queries = base.names, base.queries

    def query(self, c):
        return [self.classes[c][i] for i in self.queries]


def embed(a):
    from eval_wild import load_classes
    from ofa_sdk import Attributor
    from ofa_sdk.evaluation.runner import embed_items
    from ofa_sdk.images import to_rgb
    att = Attributor(crops=4)
    base = Cached(cache_path(a.set, 0, 4))
    classes = load_classes(ROOT / "benchmarks" / "data" / a.set)
    for d in a.deliveries:
        out = _cache(a.set, d)
        if out.exists():
            continue
        t0 = time.time()
        z, counts, cls, idx = [], [], [], []
        ids = sorted(int(i) for i in base.queries)
        for c, files in classes.items():
            e = embed_items(att, [deliver(to_rgb(files[i]), d) for i in ids], None, with_spectra=False)
            if e.skipped:
                raise SystemExit(f"{a.set}/{c}: unusable images {e.skipped[:3]}")
            z += e.z
            counts += [len(x) for x in e.z]
            cls += [c] * len(e.z)
            idx += ids
        np.savez(out, z=np.concatenate(z).astype(np.float32), counts=np.array(counts),
                 cls=np.array(cls), idx=np.array(idx), model=att.model_id)
        print(f"{out.name}: {len(counts)} images in {time.time() - t0:.0f}s", flush=True)


def score(a):
    base = Cached(cache_path(a.set, 0, 4))
    print("| set | queries | variant | AUC (top-1 %) | right / wrong / unknown / never-enrolled labelled |"
          "\n|---|---|---|---|---|")
    for tok in a.rows:
        d, _, spec = tok.partition("@")
        sc, _, q = spec.partition(",")
        sup = Cached(cache_path(a.set, int(q or 0), 4, float(sc)))
        qd = Delivered(_cache(a.set, d), base)
        r = auc_runs(sup, [100], {RULE: rule_objects()[RULE]}, queries=qd)[100]["mean_1v1"]
        o = _labels(sup, qd)
        print(f"| {a.set} | {d} | {spec} | {r[RULE]:.3f} ({100 * r[RULE + ':top1']:.1f}) | "
              + " / ".join(f"{100 * o[k]:.1f}" for k in LABELS) + " |", flush=True)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    e = sub.add_parser("embed")
    e.add_argument("--set", default="wild13")
    e.add_argument("deliveries", nargs="+")
    s = sub.add_parser("score")
    s.add_argument("--set", default="wild13")
    s.add_argument("rows", nargs="+", help="DELIVERY@SCALE[,Q]")
    a = ap.parse_args(argv)
    {"embed": embed, "score": score}[a.cmd](a)


if __name__ == "__main__":
    main()
