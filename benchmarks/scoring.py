"""Compare image-to-model scoring rules on one class-per-folder set, in the same run, from one
embedding pass (fingerprints and residual spectra of every crop).

    python benchmarks/scoring.py --set benchmarks/data/dev-sim --crops 1 4 9 [--jpeg 90]

Rules (score of a query q against a target's support S; q and each s have k crop fingerprints):
* ``pair-prob``   mean over crops and support of sigmoid(g(z_s, z_q)) -- the paper's score
  (``pair-prob`` and ``proto-cos`` are computed by ``ofa_sdk.evaluation.support.support_scores`` itself);
* ``pair-logit``  the same mean taken over logits (before the sigmoid);
* ``pair-zmean``  sigmoid(g) on crop-averaged fingerprints, mean over the support images;
* ``proto-cos``   cosine of the crop-averaged query fingerprint to the mean support fingerprint
  (calibrated, the SDK's default; the calibration is monotone, so AUCs are the cosine's);
* ``proto-cos-centred`` the same after subtracting a background mean fingerprint (simulator
  reconstructions of training photos; needs --photos);
* ``baseline``    (no learned extractor) cosine of the query's denoiser-residual log-spectrum to the
  support mean;
* ``baseline-highpass`` (nothing learned) the same with a fixed Laplacian high-pass residual.
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch


from common import embed_split, record_rules, set_parser, write
from eval_wild import load_classes
from ofa_sdk import Attributor
from ofa_sdk.evaluation.runner import cosine_to_mean
from ofa_sdk.evaluation.support import support_scores
from ofa_sdk.images import from_tensor
from ofa_sdk.scoring import unit


# rules whose per-pair AUCs go into the report's "pairs": the two SDK rules and the non-learned
# high-pass baseline
PAIR_RULES = ("proto-cos", "pair-prob", "baseline-highpass")


def background_mean(att, photos: str, n: int = 256, seed: int = 99) -> np.ndarray:
    """Mean fingerprint of simulator reconstructions of *training* photos by random architectures
    (one draw per 8 photos): a generator-agnostic centre for cosine scoring."""
    from ofa_sdk.training.common import PhotoSet
    sim = att.bundle.simulator().eval()
    g = torch.Generator().manual_seed(seed)
    data = PhotoSet(photos, split="train")
    zs = []
    with torch.inference_mode():
        for _ in range(n // 8):
            zs.append(att.engine.embed(from_tensor(sim(data.batch(8, att.crop, g), sim.sample(g)))))
    return np.concatenate(zs).mean(0)


def rules(att, emb, split, centre=None):
    head = att.bundle.model.pair_head

    def logits(sz, qz):
        with torch.inference_mode():
            sp = head.support_part(torch.from_numpy(sz.astype(np.float32)))
            qp = head.query_part(torch.from_numpy(qz.astype(np.float32)))
            return head.pair_logits(qp, sp).numpy()

    def crop_owner(zs):
        return np.repeat(np.arange(len(zs)), [len(z) for z in zs])

    def sdk(t, c, rule):  # exactly what Attributor.verify returns with that rule
        sz = np.concatenate([emb[t].z[i] for i in split.support[t]])
        return support_scores(att, [emb[c].z[i] for i in split.query[c]], sz,
                              [len(emb[t].z[i]) for i in split.support[t]], rule=rule)

    def pair_logit(t, c):
        sz = np.concatenate([emb[t].z[i] for i in split.support[t]])
        qs = [emb[c].z[i] for i in split.query[c]]
        own = crop_owner(qs)
        return np.bincount(own, logits(sz, np.concatenate(qs)).mean(1)) / np.bincount(own)

    def zmean(t, c):
        sz = unit(np.stack([emb[t].z[i].mean(0) for i in split.support[t]]))
        qz = unit(np.stack([emb[c].z[i].mean(0) for i in split.query[c]]))
        return (1 / (1 + np.exp(-logits(sz, qz)))).mean(1)

    def proto_c(t, c):
        s = unit(unit(np.stack([emb[t].z[i].mean(0) for i in split.support[t]])).mean(0) - centre)
        q = unit(unit(np.stack([emb[c].z[i].mean(0) for i in split.query[c]])) - centre)
        return q @ s

    def base(t, c, kind="spec"):
        s = np.stack([getattr(emb[t], kind)[i] for i in split.support[t]])
        return cosine_to_mean(s, np.stack([getattr(emb[c], kind)[i] for i in split.query[c]]))

    return {"pair-prob": lambda t, c: sdk(t, c, "pair"), "pair-logit": pair_logit,
            "pair-zmean": zmean, "proto-cos": lambda t, c: sdk(t, c, "prototype"),
            **({"proto-cos-centred": proto_c} if centre is not None else {}), "baseline": base,
            "baseline-highpass": lambda t, c: base(t, c, "highpass")}


def main(argv=None):
    ap = set_parser(__doc__, crops=(1, 4, 9))
    ap.add_argument("--support", type=int, default=50)
    ap.add_argument("--queries", type=int, default=70)
    ap.add_argument("--jpeg", type=int, default=None)
    ap.add_argument("--photos", default=None, help="real photos: adds proto-cos-centred")
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    classes = load_classes(Path(a.set))
    report, t0 = {"set": a.set, "classes": sorted(classes), "jpeg": a.jpeg, "runs": {}}, time.time()
    for k in a.crops:
        att = Attributor(model=a.model, crops=k, batch_size=64)
        centre = background_mean(att, a.photos) if a.photos else None
        emb, split = embed_split(att, classes, a.jpeg, a.support, a.queries)
        record_rules(report, f"crops{k}", classes, split, rules(att, emb, split, centre), t0, PAIR_RULES)
    write(report, a.out)


if __name__ == "__main__":
    main()
