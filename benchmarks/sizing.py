"""Sizing: inference and stage-2 training throughput of candidate configurations on this CPU,
reported as ratios to the shipped ``compact`` configuration measured in the same run (shared,
noisy machines: absolute numbers drift, ratios much less).

    python benchmarks/sizing.py [--threads 2] [--rounds 5] [--batch 64]
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]

from ofa_sdk.config import compact, paper
from ofa_sdk.models import FingerprintSimulator, OFAModel


def candidates():
    c = compact()
    return {
        "compact (shipped)": c,
        "compact, denoiser 7x32": c.replace(**{"denoiser.depth": 7, "denoiser.width": 32}),
        "compact, crop 128": c.replace(**{"crop": 128, "stage2.crop": 128}),
        "compact, ResNet-18 width 32": c.replace(**{"extractor.layers": (2, 2, 2, 2), "extractor.width": 32}),
        "paper (ResNet-50, DnCNN-17, crop 256)": paper(),
    }


def build(cfg, batch: int, train: bool):
    """The two workloads of one configuration as zero-argument callables."""
    torch.manual_seed(0)
    model = OFAModel(cfg).eval()
    x = torch.rand(batch, 3, cfg.crop, cfg.crop)

    def infer():
        with torch.inference_mode():
            model(x)
    out = {"infer": infer, "infer_images": batch, "params": sum(p.numel() for p in model.parameters()),
           "crop": cfg.crop}
    if train:  # one stage-2 step: simulator draws + denoiser/spectrum (no grad) + extractor fwd/bwd
        sim = FingerprintSimulator(cfg.simulator).eval()
        sc = cfg.stage2
        xs = torch.rand(sc.n, 3, sc.crop, sc.crop)
        g = torch.Generator().manual_seed(0)
        extractor = model.extractor

        def step():
            extractor.train()
            with torch.no_grad():
                recon = [sim(xs, sim.sample(g)) for _ in range(2 * sc.m)]
                spec = model.spectrum(torch.cat(recon + [xs]).clamp(0, 1))
            model.extract(spec).square().mean().backward()
            extractor.eval()
        out.update(step=step, step_images=2 * sc.m * sc.n + sc.n)
    return out


def timed(fn, iters: int) -> float:
    t0 = time.perf_counter()
    for _ in range(iters):
        fn()
    return (time.perf_counter() - t0) / iters


def crops_throughput(rounds: int, n_images: int = 48, crops=(1, 4, 9)) -> dict:
    """End-to-end ``Attributor.fingerprint`` on 256x256 arrays (preprocessing included) with the
    shipped model, per crop count, as images/s ratios to 1 crop, interleaved rounds."""
    from ofa_sdk import Attributor
    rng = np.random.default_rng(0)
    imgs = [rng.integers(0, 256, (256, 256, 3), dtype=np.uint8) for _ in range(n_images)]
    atts = {k: Attributor(crops=k, batch_size=64) for k in crops}
    for att in atts.values():
        att.fingerprint(imgs[:4])  # warm-up
    ratios = {k: [] for k in crops}
    for _ in range(rounds):
        t = {k: timed(lambda att=att: att.fingerprint(imgs), 1) for k, att in atts.items()}
        for k in crops:
            ratios[k].append(t[crops[0]] / t[k])
    print(f"\nshipped model, Attributor.fingerprint on {n_images} images of 256x256, images/s as a "
          f"ratio to 1 crop (median of {rounds} interleaved rounds, min-max):")
    for k, v in ratios.items():
        print(f"  crops {k}: {np.median(v):.3f} ({min(v):.2f}-{max(v):.2f})")
    return {str(k): {"ratio_median": float(np.median(v)), "rounds": v} for k, v in ratios.items()}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=5, help="interleaved measurement rounds")
    ap.add_argument("--batch", type=int, default=64, help="inference batch (paper config: 4)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "sizing.json"))
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    work = {name: build(cfg, 4 if cfg.name == "paper" else a.batch, cfg.name != "paper")
            for name, cfg in candidates().items()}
    for w in work.values():  # warm-up
        w["infer"]()
        if "step" in w:
            w["step"]()
    base = "compact (shipped)"
    ratios = {n: {"infer": [], "step": []} for n in work}
    abs_base = {"infer": [], "step": []}
    # Rounds interleave the configurations, so drift on a shared machine hits all of them alike;
    # each round gives a ratio to the shipped configuration measured in that same round.
    for _ in range(a.rounds):
        t = {n: {"infer": timed(w["infer"], 3) / w["infer_images"],
                 "step": timed(w["step"], 1) / w["step_images"] if "step" in w else None}
             for n, w in work.items()}
        for kind in ("infer", "step"):
            abs_base[kind].append(t[base][kind])
            for n in work:
                if t[n][kind] is not None:
                    ratios[n][kind].append(t[base][kind] / t[n][kind])
    res = {}
    print(f"{'configuration':40s} {'params':>10s} {'inference x (min-max)':>24s} {'stage-2 step x (min-max)':>26s}")
    for n, w in work.items():
        r = {"params": w["params"], "crop": w["crop"]}
        cols = []
        for kind in ("infer", "step"):
            v = ratios[n][kind]
            r[f"{kind}_ratio_median"] = float(np.median(v)) if v else None
            r[f"{kind}_ratio_rounds"] = v
            cols.append(f"{np.median(v):.3f} ({min(v):.2f}-{max(v):.2f})" if v else "(GPU-sized)")
        res[n] = r
        print(f"{n:40s} {w['params']:10d} {cols[0]:>24s} {cols[1]:>26s}")
    res["compact_absolute"] = {"infer_img_per_s": 1 / float(np.median(abs_base["infer"])),
                               "step_s": float(np.median(abs_base["step"])) * work[base]["step_images"]}
    print(f"(median of {a.rounds} interleaved rounds; compact absolute in this run: "
          f"{res['compact_absolute']['infer_img_per_s']:.1f} img/s inference at batch {a.batch}, "
          f"{res['compact_absolute']['step_s']:.2f} s per stage-2 step)")
    res["crops_per_image"] = crops_throughput(a.rounds)
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
