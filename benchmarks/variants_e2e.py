"""JPEG variants end to end (issue 31): every class of a development set enrolled through
``Attributor.enroll`` from its files as generated, once with the default JPEG variants and once
without (``jpeg_variants=()``), then ``Attributor.attribute`` on new images of each class
written to disk as JPEG files at each ``--jpeg`` quality (and as PNG: as generated), so the
quality is read from the files' quantisation tables as in production. Right / wrong /
``unknown`` (%) among the classes' images, at the SDK's defaults (4 crops, per-profile
thresholds, the tie margin); every class enrolled (the never-enrolled side is
``jpeg_matched.py --variants``).

    python benchmarks/variants_e2e.py --set benchmarks/data/wild13 --jpeg 90 85 --out benchmarks/results/variants_e2e.json
"""
from __future__ import annotations

import argparse
import io
import json
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

from eval_wild import load_classes
from ofa_sdk import Attributor
from ofa_sdk.attributor import JPEG_VARIANTS


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--set", default="benchmarks/data/wild13")
    ap.add_argument("--support", type=int, default=100)
    ap.add_argument("--queries", type=int, default=40)
    ap.add_argument("--jpeg", type=int, nargs="+", default=[90, 85])
    ap.add_argument("--out", default=None)
    a = ap.parse_args(argv)
    classes = load_classes(Path(a.set))
    rng = np.random.default_rng(0)
    split = {c: rng.permutation(len(f)) for c, f in classes.items()}
    support = {c: [f[i] for i in split[c][:a.support]] for c, f in classes.items()}
    held = {c: [f[i] for i in split[c][a.support:a.support + a.queries]] for c, f in classes.items()}
    rep = {}
    with tempfile.TemporaryDirectory() as tmp:
        files = {}          # delivery -> [(class, path)]
        for q in [0] + a.jpeg:
            files[q] = []
            for c, fs in held.items():
                for i, f in enumerate(fs):
                    p = Path(tmp) / f"q{q}" / c / (f"{i}.jpg" if q else f"{i}.png")
                    p.parent.mkdir(parents=True, exist_ok=True)
                    im = Image.open(f).convert("RGB")
                    im.save(p, **({"format": "JPEG", "quality": q} if q else {"format": "PNG"}))
                    files[q].append((c, p))
        print("| variants | queries | right / wrong / unknown (%) |\n|---|---|---|")
        for how, variants in (("none", ()), (" ".join(map(str, JPEG_VARIANTS)), None)):
            att = Attributor(crops=4)
            for c, fs in support.items():
                att.enroll(c, fs, jpeg_variants=variants)
            for q, items in files.items():
                res = att.attribute([p for _, p in items])
                truth = [c for c, _ in items]
                right = np.mean([r.profile == t for r, t in zip(res, truth)])
                unknown = np.mean([r.profile is None for r in res])
                cell = {"right": float(right), "wrong": float(1 - right - unknown),
                        "unknown": float(unknown)}
                rep[f"{how}/q{q}"] = cell
                print(f"| {how} | {'q%d' % q if q else 'as generated (PNG)'} | "
                      + " / ".join(f"{100 * v:.1f}" for v in cell.values()) + " |", flush=True)
    if a.out:
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.out).write_text(json.dumps(rep, indent=1))


if __name__ == "__main__":
    main()
