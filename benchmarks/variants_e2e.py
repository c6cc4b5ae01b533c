"""Variants end to end (issue 31): every class of a development set enrolled through
``Attributor.enroll`` from its files as generated, once with the default variants and once
without (``jpeg_variants=(), rescale_variants=()``), then ``Attributor.attribute`` on new
images of each class written to disk as JPEG files at each ``--jpeg`` quality (and as PNG: as
generated), so the quality is read from the files' quantisation tables as in production, and
resized by each ``--rescale`` factor (bicubic) as PNG and then as JPEG at the first quality
(the factor read from their size against the support's). Right / wrong /
``unknown`` (%) among the classes' images, at the SDK's defaults (4 crops, per-profile
thresholds, the tie margin); every class enrolled (the never-enrolled side is
``jpeg_matched.py --variants``). The same JPEG queries decoded before they reach the SDK (numpy
arrays: their quality read from the pixels) are a row of their own.

``--baseline-rescale-variants F...``: also enrolled with the default JPEG variants and these
resize variants (another grid, such as an earlier default), a third set of rows in the same run.
``--kernel K``: the queries resized with kernel K (``ofa_sdk.images.KERNELS``) instead of
bicubic, and, K not bicubic, also enrolled with the default variants resized with K
(``Attributor.enroll(resize_kernel=K)``), a set of rows of its own.

``--cost``: also the price of reading the quality from the pixels, ``Attributor.attribute``
end to end on the PNG queries with ``InputPolicy.pixel_quality`` on and off, alternated, best
of 3 (a ratio within one run).

    python benchmarks/variants_e2e.py --set benchmarks/data/wild13 --jpeg 90 85 --rescale 0.75 --out benchmarks/results/variants_e2e.json
    python benchmarks/variants_e2e.py --set benchmarks/data/wild13 --jpeg 90 --rescale 0.93 0.83 0.68 0.57 \
        --baseline-rescale-variants 0.75 0.5 --out benchmarks/results/variants_e2e_grid.json
    python benchmarks/variants_e2e.py --set benchmarks/data/wild13 --jpeg 90 --rescale 0.75 0.5 --kernel box \
        --out benchmarks/results/variants_e2e_box.json
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from eval_wild import load_classes
from ofa_sdk import Attributor
from ofa_sdk.attributor import JPEG_VARIANTS, RESCALE_VARIANTS
from ofa_sdk.images import KERNELS, resize


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--set", default="benchmarks/data/wild13")
    ap.add_argument("--support", type=int, default=100)
    ap.add_argument("--queries", type=int, default=40)
    ap.add_argument("--jpeg", type=int, nargs="+", default=[90, 85])
    ap.add_argument("--rescale", type=float, nargs="+", default=[0.75])
    ap.add_argument("--baseline-rescale-variants", type=float, nargs="+", default=None,
                    help="also enroll with these resize variants (and the default JPEG ones)")
    ap.add_argument("--kernel", default="bicubic", choices=KERNELS,
                    help="the kernel the queries are resized with")
    ap.add_argument("--cost", action="store_true", help="time the pixel reading of the quality")
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
        deliveries = [(1.0, q) for q in [0] + a.jpeg] + \
            [(f, q) for f in a.rescale for q in (0, a.jpeg[0])]
        for f_, q in deliveries:
            kernel = "" if a.kernel == "bicubic" else f" {a.kernel}"
            key = q if f_ == 1.0 else f"resized {f_:g}x{kernel}" + (f", q{q}" if q else " (PNG)")
            files[key] = []
            for c, fs in held.items():
                for i, f in enumerate(fs):
                    p = Path(tmp) / f"r{f_:g}q{q}" / c / (f"{i}.jpg" if q else f"{i}.png")
                    p.parent.mkdir(parents=True, exist_ok=True)
                    im = Image.open(f).convert("RGB")
                    if f_ != 1.0:
                        im = Image.fromarray(resize(np.asarray(im), f_, a.kernel))
                    im.save(p, **({"format": "JPEG", "quality": q} if q else {"format": "PNG"}))
                    files[key].append((c, p))
        arrays = {f"q{q} arrays": [(c, np.asarray(Image.open(p).convert("RGB"))) for c, p in files[q]]
                  for q in a.jpeg[:1]}
        print("| variants | queries | right / wrong / unknown (%) |\n|---|---|---|")
        default = f"JPEG {' '.join(map(str, JPEG_VARIANTS))}, resized {' '.join(map(str, RESCALE_VARIANTS))}"
        grids = [("none", (), (), None), (default, None, None, None)]
        if a.baseline_rescale_variants:
            grids.insert(1, (f"JPEG {' '.join(map(str, JPEG_VARIANTS))}, resized "
                             f"{' '.join(map(str, a.baseline_rescale_variants))}", None,
                             tuple(a.baseline_rescale_variants), None))
        if a.kernel != "bicubic":
            grids.append((f"{default} ({a.kernel})", None, None, a.kernel))
        for how, jpegs, scales, kern in grids:
            g = Path(tmp) / f"gallery-{len(rep)}.db"
            att = Attributor(crops=4, gallery=g)
            t = time.perf_counter()
            for c, fs in support.items():
                att.enroll(c, fs, jpeg_variants=jpegs, rescale_variants=scales, resize_kernel=kern)
            size = sum(f.stat().st_size for f in g.parent.glob(g.name + "*"))   # with its WAL
            rep[f"{how}/enroll"] = {"seconds": time.perf_counter() - t, "gallery_bytes": size}
            print(f"| {how} | enrollment: {len(support)} profiles of {a.support} images in "
                  f"{rep[f'{how}/enroll']['seconds']:.0f} s, gallery file "
                  f"{size / 2 ** 20:.1f} MiB | |", flush=True)
            for q, items in [*files.items(), *arrays.items()]:
                res = att.attribute([p for _, p in items])
                truth = [c for c, _ in items]
                right = np.mean([r.profile == t for r, t in zip(res, truth)])
                unknown = np.mean([r.profile is None for r in res])
                cell = {"right": float(right), "wrong": float(1 - right - unknown),
                        "unknown": float(unknown)}
                name = q if isinstance(q, str) else f"q{q}" if q else "as generated (PNG)"
                rep[f"{how}/{name}"] = cell
                print(f"| {how} | {name} | "
                      + " / ".join(f"{100 * v:.1f}" for v in cell.values()) + " |", flush=True)
        if a.cost:
            rep["cost"] = cost(att, [p for _, p in files[0]])
    if a.out:
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.out).write_text(json.dumps(rep, indent=1))


def cost(att, paths) -> dict:
    """Images per second of ``att.attribute(paths)`` with the pixel reading of the quality on
    and off, alternated, best of 3."""
    on, off = att.policy, dataclasses.replace(att.policy, pixel_quality=False)
    best = {"on": 0.0, "off": 0.0}
    att.attribute(paths[:32])                                      # warm-up
    for _ in range(3):
        for key, policy in (("on", on), ("off", off)):
            att.policy = policy
            t = time.perf_counter()
            att.attribute(paths)
            best[key] = max(best[key], len(paths) / (time.perf_counter() - t))
    att.policy = on
    print(f"attribute, {len(paths)} PNG images, backend {att.backend}: pixel quality on "
          f"{best['on']:.1f} img/s, off {best['off']:.1f} img/s ({best['on'] / best['off']:.2f}x)")
    return best


if __name__ == "__main__":
    main()
