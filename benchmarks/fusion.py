"""Would fusing the learned fingerprint with the fixed high-pass spectrum help? A measurement,
not an SDK feature (see benchmarks/RESULTS.md §3.3).

    python benchmarks/fusion.py --set benchmarks/data/dev-sim --support 50 --queries 70

For each target t, two cosines of a query to t's support mean: of the crop-averaged learned
fingerprints (``z-cos``, the SDK's prototype score before calibration) and of the fixed
Laplacian high-pass residual log-spectra (``hp-cos``, the nothing-learned baseline). ``fused``
normalises each by t's own support: u = -(log(1 - cos) - m) / s, with m and s the mean and
standard deviation of log(1 - cos) over the support images' leave-one-out cosines (the
statistics behind the SDK's per-profile thresholds), and adds the two u. Nothing is fitted
on the evaluated queries.
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch


from common import embed_split, record_rules, set_parser, write
from eval_wild import load_classes
from ofa_sdk import Attributor
from ofa_sdk.scoring import leave_one_out_cosines, unit


def rules(emb, split):
    Z = {c: unit(np.stack([z.mean(0) for z in e.z])) for c, e in emb.items()}
    H = {c: unit(np.stack(e.highpass)) for c, e in emb.items()}
    stats = {}

    def own(X, name, t):
        if (name, t) not in stats:
            sup = X[t][split.support[t]]
            d = np.log(np.maximum(1 - leave_one_out_cosines(sup, 1), 1e-6))
            stats[(name, t)] = (unit(sup.mean(0)), d.mean(), d.std(ddof=1))
        return stats[(name, t)]

    def cos(X, name, t, c):
        return X[c][split.query[c]] @ own(X, name, t)[0]

    def u(X, name, t, c):
        _, m, s = own(X, name, t)
        return -(np.log(np.maximum(1 - cos(X, name, t, c), 1e-6)) - m) / s

    return {"z-cos": lambda t, c: cos(Z, "z", t, c), "hp-cos": lambda t, c: cos(H, "h", t, c),
            "fused": lambda t, c: u(Z, "z", t, c) + u(H, "h", t, c)}


def main(argv=None):
    ap = set_parser(__doc__)
    ap.add_argument("--jpeg", type=int, nargs="+", default=[0, 90], help="0: no JPEG")
    ap.add_argument("--support", type=int, default=50)
    ap.add_argument("--queries", type=int, default=70)
    a = ap.parse_args(argv)
    torch.set_num_threads(2)
    classes = load_classes(Path(a.set))
    report, t0 = {"set": a.set, "runs": {}}, time.time()
    for k in a.crops:
        att = Attributor(model=a.model, crops=k, batch_size=64)
        for q in a.jpeg:
            emb, split = embed_split(att, classes, q or None, a.support, a.queries, spectra=False)
            record_rules(report, f"crops{k}" + (f"_jpeg{q}" if q else ""), classes, split,
                         rules(emb, split), t0, pairs=("z-cos", "hp-cos", "fused"))
    write(report, a.out)


if __name__ == "__main__":
    main()
