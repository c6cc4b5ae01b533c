"""Compare image-to-model scoring rules on one class-per-folder set, in the same run, from one
embedding pass (fingerprints and residual spectra of every crop).

    python benchmarks/scoring.py --set benchmarks/data/dev-sim --crops 1 4 9 [--jpeg 90]

Rules (score of a query q against a target's support S; q and each s have k crop fingerprints):
* ``pair-prob``   mean over crops and support of sigmoid(g(z_s, z_q)) -- the paper's score;
* ``pair-logit``  the same mean taken over logits (before the sigmoid);
* ``pair-zmean``  sigmoid(g) on crop-averaged fingerprints, mean over the support images;
* ``proto-cos``   cosine of the crop-averaged query fingerprint to the mean support fingerprint;
* ``proto-cos-centred`` the same after subtracting a background mean fingerprint (simulator
  reconstructions of training photos; needs --photos);
* ``baseline``    (not learned) cosine of the query's residual log-spectrum to the support mean.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.eval_wild import load_classes  # noqa: E402
from ofa_sdk import Attributor  # noqa: E402
from ofa_sdk.evaluation.protocol import image_to_model, split_support_query  # noqa: E402
from ofa_sdk.evaluation.runner import cosine_to_mean, embed_items  # noqa: E402


def _unit(x):
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def background_mean(att, photos: str, n: int = 256, seed: int = 99) -> np.ndarray:
    """Mean fingerprint of simulator reconstructions of *training* photos by random architectures
    (one draw per 8 photos): a generator-agnostic centre for cosine scoring."""
    from training.common import PhotoSet
    sim = att.bundle.simulator().eval()
    g = torch.Generator().manual_seed(seed)
    data = PhotoSet(photos, split="train")
    zs = []
    with torch.inference_mode():
        for _ in range(n // 8):
            r = sim(data.batch(8, att.crop, g), sim.sample(g)).clamp(0, 1)
            zs.append(att.engine.embed((r.permute(0, 2, 3, 1) * 255).round().byte().numpy()))
    return np.concatenate(zs).mean(0)


def rules(att, emb, split, centre=None):
    head = att.engine.model.pair_head

    def logits(sz, qz):
        with torch.inference_mode():
            sp = head.support_part(torch.from_numpy(sz))
            qp = head.query_part(torch.from_numpy(qz))
            return head.pair_logits(qp, sp).numpy()

    def crop_owner(zs):
        return np.repeat(np.arange(len(zs)), [len(z) for z in zs])

    def pair(t, c, prob):
        sz = np.concatenate([emb[t].z[i] for i in split.support[t]])
        qs = [emb[c].z[i] for i in split.query[c]]
        lg = logits(sz, np.concatenate(qs))
        v = (1 / (1 + np.exp(-lg))) if prob else lg
        per_crop = v.mean(1)
        own = crop_owner(qs)
        return np.bincount(own, per_crop) / np.bincount(own)

    def zmean(t, c):
        sz = _unit(np.stack([emb[t].z[i].mean(0) for i in split.support[t]]))
        qz = _unit(np.stack([emb[c].z[i].mean(0) for i in split.query[c]]))
        return (1 / (1 + np.exp(-logits(sz, qz)))).mean(1)

    def proto(t, c):
        s = np.stack([emb[t].z[i].mean(0) for i in split.support[t]])
        return cosine_to_mean(s, np.stack([emb[c].z[i].mean(0) for i in split.query[c]]))

    def proto_c(t, c):
        s = _unit(_unit(np.stack([emb[t].z[i].mean(0) for i in split.support[t]])).mean(0) - centre)
        q = _unit(_unit(np.stack([emb[c].z[i].mean(0) for i in split.query[c]])) - centre)
        return q @ s

    def base(t, c):
        s = np.stack([emb[t].spec[i] for i in split.support[t]])
        return cosine_to_mean(s, np.stack([emb[c].spec[i] for i in split.query[c]]))

    return {"pair-prob": lambda t, c: pair(t, c, True), "pair-logit": lambda t, c: pair(t, c, False),
            "pair-zmean": zmean, "proto-cos": proto,
            **({"proto-cos-centred": proto_c} if centre is not None else {}), "baseline": base}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--set", required=True)
    ap.add_argument("--model", default=None)
    ap.add_argument("--crops", type=int, nargs="+", default=[1, 4, 9])
    ap.add_argument("--support", type=int, default=50)
    ap.add_argument("--queries", type=int, default=70)
    ap.add_argument("--jpeg", type=int, default=None)
    ap.add_argument("--photos", default=None, help="real photos: adds proto-cos-centred")
    ap.add_argument("--out", default=None)
    a = ap.parse_args(argv)
    torch.set_num_threads(2)
    classes = load_classes(Path(a.set))
    report, t0 = {"set": a.set, "classes": sorted(classes), "jpeg": a.jpeg, "runs": {}}, time.time()
    for k in a.crops:
        att = Attributor(model=a.model, crops=k, batch_size=64)
        centre = background_mean(att, a.photos) if a.photos else None
        emb = {c: embed_items(att, items, a.jpeg, True) for c, items in classes.items()}
        split = split_support_query({c: len(e.z) for c, e in emb.items()}, a.support, a.queries,
                                    seed=0, aligned=True)
        row = {name: image_to_model(sorted(classes), split, fn).mean_1v1
               for name, fn in rules(att, emb, split, centre).items()}
        report["runs"][f"crops{k}"] = row
        print(f"crops {k}: " + "  ".join(f"{n} {100 * v:.2f}" for n, v in row.items())
              + f"  [{time.time() - t0:.0f}s]", flush=True)
    if a.out:
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.out).write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
