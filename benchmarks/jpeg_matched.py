"""Quality-matched support (issue 31, JPEG targets): how much of what JPEG costs comes from the
mismatch between a support set as generated and queries re-encoded by a platform. From the
embedding caches of ``rules.py embed`` (every image at each JPEG quality, 4 crops): the mean
1-vs-1 AUC (paper protocol) and top-1 identification with every class enrolled, for every pair
of support quality and query quality (0: as generated), the default Gaussian rule, 20 and 100
support images. A matched pair needs the support re-encoded at the query's quality, which a
JPEG query's quantisation tables name: ``Attributor.enroll(jpeg_quality=Q)`` builds such a
support for one quality; choosing among several per query is not built.
``--open``: the labels instead, by the SDK's decision at its defaults (``rules.open_set``: 2
classes never enrolled per fold, 3 folds, 100 support images, the tie margin), re-encoded
queries against the support as generated and against the support at their quality.
``--rescale F``: the same for queries resized by F (bicubic, as generated otherwise): the mean
1-vs-1 AUC, top-1 and labels against the support as generated and resized alike
(``Attributor.enroll(rescale=F)``).
``--variants Q...``: variants as the SDK routes them (``Attributor.enroll(jpeg_variants=...,
rescale_variants=...)``, ``snapshot.nearest_variant``; ``--rescale-variants F...``, default
none): queries of each delivery (``--deliveries``: a quality; ``AtoB`` for a copy encoded at A
and then at B, whose tables name B only; ``rNN`` or ``rNNqQ`` for a copy resized by NN/100,
then re-encoded at Q; ``rNNK``, ``rNNKqQ``: resized with Pillow's kernel K, ``bilinear``,
``lanczos`` or ``box``, instead of bicubic, ``rules.py embed --kernel``) against the support
as generated and against the variant the SDK picks for the quality they name and the factor
their size gives; AUC, top-1 and labels for both. ``--variant-kernel K``: resize variants made
with K instead of bicubic (``Attributor.enroll(resize_kernel=K)``).

    python benchmarks/rules.py embed --set benchmarks/data/wild13 benchmarks/data/related --jpeg 0 90 75 --crops 4
    python benchmarks/jpeg_matched.py --out benchmarks/results/jpeg_matched.json
    python benchmarks/jpeg_matched.py --open --out benchmarks/results/jpeg_matched_open.json
    python benchmarks/rules.py embed --set benchmarks/data/wild13 benchmarks/data/related --jpeg 0 --crops 4 --rescale 0.75
    python benchmarks/jpeg_matched.py --rescale 0.75 --out benchmarks/results/rescale_matched.json
    python benchmarks/rules.py embed --set benchmarks/data/wild13 benchmarks/data/related --jpeg 95 85 80 60 --crops 4
    python benchmarks/rules.py embed --set benchmarks/data/wild13 benchmarks/data/related --first-jpeg 90 --jpeg 75 --crops 4
    python benchmarks/rules.py embed --set benchmarks/data/wild13 benchmarks/data/related --first-jpeg 75 --jpeg 90 --crops 4
    python benchmarks/rules.py embed --set benchmarks/data/wild13 benchmarks/data/related --first-jpeg 95 --jpeg 90 --crops 4
    python benchmarks/jpeg_matched.py --variants 95 90 75 --out benchmarks/results/jpeg_variants.json
    python benchmarks/rules.py embed --set benchmarks/data/wild13 benchmarks/data/related --jpeg 0 95 90 75 --crops 4 --rescale 0.75 0.6 0.5
    python benchmarks/jpeg_matched.py --variants 95 90 75 --rescale-variants 0.75 0.5 \
        --deliveries 0 90 r75 r75q90 r75q75 r60 r60q90 r50 r50q90 --out benchmarks/results/rescale_variants.json
"""
import argparse
import json
import re
from pathlib import Path

from ofa_sdk import decision
from ofa_sdk.images import KERNELS
from ofa_sdk.snapshot import nearest_variant
from rules import Cached, auc_runs, cache_path, open_set, rule_objects

RULE = "gaussian-lw"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sets", nargs="+", default=["wild13", "related"])
    ap.add_argument("--jpeg", nargs="+", type=int, default=[0, 90, 75])
    ap.add_argument("--support", nargs="+", type=int, default=[20, 100])
    ap.add_argument("--open", action="store_true", help="labels by the SDK's decision instead")
    ap.add_argument("--rescale", type=float, default=None, help="resized queries instead")
    ap.add_argument("--variants", nargs="+", type=int, default=None,
                    help="JPEG variants as the SDK routes them instead")
    ap.add_argument("--rescale-variants", nargs="+", type=float, default=[])
    ap.add_argument("--variant-kernel", default="bicubic", choices=KERNELS,
                    help="the resize variants made with this kernel (Attributor.enroll's "
                         "resize_kernel; default bicubic)")
    ap.add_argument("--deliveries", nargs="+",
                    default=["0", "95", "90", "85", "80", "75", "60", "90to75", "75to90", "95to90"])
    ap.add_argument("--out", default=None)
    a = ap.parse_args(argv)
    if a.variants is not None:
        return variants(a)
    if a.rescale is not None:
        return rescaled(a)
    if a.open:
        return labels(a)
    rule = {RULE: rule_objects()[RULE]}
    rep = {}
    print("| set | support images | support quality | " + " | ".join(
        f"queries q{q or ' as generated'}" for q in a.jpeg) + " |")
    print("|---|---|---|" + "---|" * len(a.jpeg))
    for s in a.sets:
        caches = {q: Cached(cache_path(s, q, 4)) for q in a.jpeg}
        for n in a.support:
            for sq in a.jpeg:
                cells = []
                for qq in a.jpeg:
                    r = auc_runs(caches[sq], [n], rule, queries=caches[qq])[n]["mean_1v1"]
                    rep[f"{s}/n{n}/s{sq}/q{qq}"] = {"mean_1v1": r[RULE], "top1": r[RULE + ":top1"]}
                    cells.append(f"{r[RULE]:.3f} ({100 * r[RULE + ':top1']:.1f})")
                print(f"| {s} | {n} | {'q%d' % sq if sq else 'as generated'} | " + " | ".join(cells) + " |",
                      flush=True)
    if a.out:
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.out).write_text(json.dumps(rep, indent=1))


LABELS = ("right", "wrong", "unknown", "unknown_labelled")


def _labels(support: Cached, queries: Cached) -> dict:
    """open_set at the SDK's defaults: 2 classes never enrolled per fold, 3 folds, 100 images."""
    tag = f"f{decision.DEFAULT_FRACTION}_m{decision.DEFAULT_MARGIN}"
    return open_set(support, rule_objects()[RULE], 100, 2, 3, fractions=(decision.DEFAULT_FRACTION,),
                    margins=(decision.DEFAULT_MARGIN,), queries=queries)[tag]


def rescaled(a):
    """Queries resized by ``a.rescale`` against the support as generated and resized alike:
    mean 1-vs-1 AUC (top-1 %) and right / wrong / unknown / never-enrolled labelled (%)."""
    rep = {}
    print("| set | support | mean 1-vs-1 AUC (top-1 %) | right / wrong / unknown / never-enrolled labelled |"
          "\n|---|---|---|---|")
    for s in a.sets:
        generated, resized = Cached(cache_path(s, 0, 4)), Cached(cache_path(s, 0, 4, a.rescale))
        for how, sup in (("as generated", generated), (f"resized {a.rescale:g}", resized)):
            r = auc_runs(sup, [100], {RULE: rule_objects()[RULE]}, queries=resized)[100]["mean_1v1"]
            o = _labels(sup, resized)
            rep[f"{s}/{how}"] = {"mean_1v1": r[RULE], "top1": r[RULE + ":top1"], **o}
            print(f"| {s} | {how} | {r[RULE]:.3f} ({100 * r[RULE + ':top1']:.1f}) | "
                  + " / ".join(f"{100 * o[k]:.1f}" for k in LABELS) + " |", flush=True)
    if a.out:
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.out).write_text(json.dumps(rep, indent=1))


def variants(a):
    """Per delivery: the variant the SDK routes it to, and AUC (top-1 %) and right / wrong /
    unknown / never-enrolled labelled (%) against the support as generated and that variant."""
    rep = {}
    print("| set | queries | variant | AUC (top-1 %): as generated | variant | labels: as generated "
          "| variant |\n|---|---|---|---|---|---|---|")
    rule = {RULE: rule_objects()[RULE]}
    keys = [(sc, q) for sc in (1.0, *a.rescale_variants) for q in (None, *a.variants)
            if (sc, q) != (1.0, None)]
    for s in a.sets:
        generated = Cached(cache_path(s, 0, 4))
        for d in a.deliveries:
            scale, first, last, kernel = _delivery(d)
            queries = Cached(cache_path(s, last, 4, scale, first, kernel))
            v = nearest_variant(last or None, keys, None, scale)
            routed = (Cached(cache_path(s, v[1] or 0, 4, v[0], kernel=a.variant_kernel)) if v
                      else generated)
            cells = {}
            for how, sup in (("generated", generated), ("variant", routed)):
                r = auc_runs(sup, [100], rule, queries=queries)[100]["mean_1v1"]
                cells[how] = {"mean_1v1": r[RULE], "top1": r[RULE + ":top1"],
                              **_labels(sup, queries)}
            rep[f"{s}/{d}"] = {"variant": v, **cells}
            auc = [f"{c['mean_1v1']:.3f} ({100 * c['top1']:.1f})" for c in cells.values()]
            lab = [" / ".join(f"{100 * c[k]:.1f}" for k in LABELS) for c in cells.values()]
            said = " ".join(x for x in (f"{v[0]:g}x" if v[0] != 1.0 else "",
                                        f"q{v[1]}" if v[1] else "") if x) if v else "none"
            print(f"| {s} | {_said(scale, first, last, kernel)} | {said} | " + " | ".join(auc + lab)
                  + " |", flush=True)
    if a.out:
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.out).write_text(json.dumps(rep, indent=1))


def _delivery(d: str):
    """``--deliveries`` token -> (scale, first JPEG quality or 0, last JPEG quality or 0, resize
    kernel)."""
    kernels = "|".join(k for k in KERNELS if k != "bicubic")
    m = re.fullmatch(rf"r(\d+)({kernels})?(?:q(\d+))?|(?:(\d+)to)?(\d+)", d)
    if m is None:
        raise SystemExit(f"--deliveries: {d!r} is not Q, AtoB, rNN, rNNqQ, rNNK or rNNKqQ "
                         f"(K: {kernels})")
    if m.group(1):
        return int(m.group(1)) / 100, 0, int(m.group(3) or 0), m.group(2) or "bicubic"
    return 1.0, int(m.group(4) or 0), int(m.group(5)), "bicubic"


def _said(scale: float, first: int, last: int, kernel: str = "bicubic") -> str:
    how = "" if kernel == "bicubic" else f" ({kernel})"
    parts = ([f"resized {scale:g}x{how}"] if scale != 1.0 else []) + \
        ([f"q{first} then q{last}"] if first else [f"q{last}"] if last else [])
    return ", ".join(parts) or "as generated"


def labels(a):
    """Right / wrong / unknown among enrolled classes' images, never-enrolled images labelled
    (%), for each re-encoded query quality against the support as generated and at that
    quality."""
    rep = {}
    print("| set | queries | support as generated | support at the queries' quality |\n|---|---|---|---|")
    for s in a.sets:
        caches = {q: Cached(cache_path(s, q, 4)) for q in a.jpeg}
        for qq in [q for q in a.jpeg if q]:
            cells = []
            for sq in (0, qq):
                r = rep[f"{s}/s{sq}/q{qq}"] = _labels(caches[sq], caches[qq])
                cells.append(" / ".join(f"{100 * r[k]:.1f}" for k in LABELS))
            print(f"| {s} | q{qq} | " + " | ".join(cells) + " |", flush=True)
    if a.out:
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.out).write_text(json.dumps(rep, indent=1))


if __name__ == "__main__":
    main()
