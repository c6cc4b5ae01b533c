"""Evaluate a model before shipping: (a) pairwise AUC on simulator architectures never sampled in
training; (b) image-to-model 1-vs-1 AUC on the wild set; (c) the same after JPEG q90 -- each side
by side with two non-learned baselines (cosine of residual log-spectra to the support mean: the
residual of the model's denoiser, and a fixed Laplacian high-pass residual).

    python benchmarks/eval_wild.py --wild benchmarks/data/wild --photos ../shared/data/real-photos \
        [--model FILE] [--crops 1 4] [--train-log runs/compact/stage2.jsonl] [--out benchmarks/results/wild.json]
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]

from ofa_sdk import Attributor
from ofa_sdk.evaluation.metrics import roc_auc
from ofa_sdk.evaluation.protocol import format_table
from ofa_sdk.evaluation.runner import evaluate
from ofa_sdk.images import IMAGE_SUFFIXES, from_tensor


def seen_architectures(log: Path) -> set:
    seen = set()
    if log.exists():
        for line in log.open():
            rec = json.loads(line)
            seen.update(rec.get("archs", []))
    return seen


def unseen_arch_pairwise(att, photos: str, n_archs: int, per_arch: int, seen: set, seed: int) -> dict:
    """Pairwise AUC of the pair head on reconstructions by architectures absent from training."""
    from ofa_sdk.training.common import PhotoSet
    sim = att.bundle.simulator()
    g = torch.Generator().manual_seed(seed)
    held = PhotoSet(photos, split="holdout")
    archs = []
    while len(archs) < n_archs:
        a = sim.sample(g)
        if a.id not in seen and a.id not in {b.id for b in archs}:
            archs.append(a)
    crop = att.crop
    content = held.batch(per_arch, crop, g, flip=False)  # same content for every architecture
    zs, labels = [], []
    with torch.inference_mode():
        for k, a in enumerate(archs):
            zs.append(att.engine.embed(from_tensor(sim(content, a))))
            labels += [k] * per_arch
    z = np.concatenate(zs)
    y = np.array(labels)
    head = att.bundle.pair_head()
    p = head.probs(head.query_part(z), head.support_part(z))
    p = (p + p.T) / 2
    iu = np.triu_indices(len(z), 1)
    same = (y[:, None] == y[None, :])[iu]
    # content-matched negatives only: same photo, different architecture
    idx = np.arange(len(z)) % per_arch
    same_content = (idx[:, None] == idx[None, :])[iu]
    cos = (z @ z.T)[iu]
    return {"architectures": n_archs, "images_per_arch": per_arch,
            "excluded_seen_ids": len(seen),
            "pair_auc": roc_auc(p[iu][same], p[iu][~same]),
            "pair_auc_same_content_negatives": roc_auc(p[iu][same], p[iu][~same & same_content]),
            "cosine_auc": roc_auc(cos[same], cos[~same]),
            "start_scales": [a.start_scale for a in archs]}


def load_classes(root: Path) -> dict:
    classes = {}
    for d in sorted(p for p in root.iterdir() if p.is_dir()):
        files = sorted(f for f in d.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)
        if files:
            classes[d.name] = files
    return classes


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--wild", default=str(ROOT / "benchmarks" / "data" / "wild"))
    ap.add_argument("--photos", default=None, help="real photos (for the unseen-architecture test)")
    ap.add_argument("--model", default=None)
    ap.add_argument("--crops", type=int, nargs="+", default=[1, 4])
    ap.add_argument("--support", type=int, default=75)
    ap.add_argument("--queries", type=int, default=100)
    ap.add_argument("--jpeg", type=int, default=90)
    ap.add_argument("--train-log", default=str(ROOT / "runs" / "compact" / "stage2.jsonl"))
    ap.add_argument("--archs", type=int, default=24)
    ap.add_argument("--per-arch", type=int, default=16)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "wild.json"))
    a = ap.parse_args(argv)
    torch.set_num_threads(2)
    classes = load_classes(Path(a.wild))
    report = {"model": None, "classes": sorted(classes), "support": a.support,
              "queries": a.queries, "runs": {}}
    t0 = time.time()
    for crops in a.crops:
        att = Attributor(model=a.model, crops=crops, batch_size=64)
        report["model"] = att.model_id
        for q in (None, a.jpeg):
            key = f"crops{crops}" + (f"_jpeg{q}" if q else "")
            res = evaluate(att, classes, a.support, a.queries, seed=0, jpeg_quality=q, aligned=True,
                           also=["pair"])
            report["runs"][key] = {"ours": res["ours"].to_dict(), "baseline": res["baseline"].to_dict(),
                                   "baseline_highpass": res["baseline:highpass"].to_dict(),
                                   "skipped": res["skipped"], "score": att.rule.name}
            if "ours:pair" in res:
                report["runs"][key]["ours_pair"] = res["ours:pair"].to_dict()
                print(format_table(res["ours:pair"], f"\n== ours, paper's pair score, {key}"))
            print(format_table(res["ours"], f"\n== ours, score {att.rule.name}, {key}"))
            print(format_table(res["baseline"], f"-- baseline (denoiser-residual spectrum cosine), {key}"))
            print(format_table(res["baseline:highpass"],
                               f"-- baseline (fixed high-pass residual spectrum cosine), {key}"))
            print(f"[{time.time() - t0:.0f}s]", flush=True)
    if a.photos:
        att = Attributor(model=a.model)
        seen = seen_architectures(Path(a.train_log))
        report["unseen_architectures"] = unseen_arch_pairwise(att, a.photos, a.archs, a.per_arch,
                                                              seen, seed=12345)
        print("\n== unseen simulator architectures:", json.dumps(report["unseen_architectures"]))
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(report, indent=1))
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
