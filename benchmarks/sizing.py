"""Sizing: inference and stage-2 training throughput of candidate configurations on this CPU,
reported as ratios to the shipped ``compact`` configuration measured in the same run (shared,
noisy machines: absolute numbers drift, ratios much less).

    python benchmarks/sizing.py [--threads 2] [--repeats 3]
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ofa_sdk.config import compact, paper  # noqa: E402
from ofa_sdk.models import FingerprintSimulator, OFAModel  # noqa: E402


def candidates():
    c = compact()
    return {
        "compact (shipped)": c,
        "compact, denoiser 7x32": c.replace(**{"denoiser.depth": 7, "denoiser.width": 32}),
        "compact, crop 128": c.replace(**{"crop": 128, "stage2.crop": 128}),
        "compact, ResNet-18 width 32": c.replace(**{"extractor.layers": (2, 2, 2, 2), "extractor.width": 32}),
        "paper (ResNet-50, DnCNN-17, crop 256)": paper(),
    }


def bench(fn, repeats):
    fn()  # warm-up
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return min(ts)


def measure(cfg, repeats, batch=16, train=True):
    torch.manual_seed(0)
    model = OFAModel(cfg).eval()
    x = torch.rand(batch, 3, cfg.crop, cfg.crop)
    with torch.inference_mode():
        t_inf = bench(lambda: model(x), repeats)
    if not train:  # the paper's step (272 images at 256 px, ResNet-50) is GPU-sized
        return {"infer_img_per_s": batch / t_inf, "train_step_s": None, "train_img_per_s": None,
                "params": sum(p.numel() for p in model.parameters()), "crop": cfg.crop}
    # one stage-2 step's compute: simulator draws + denoiser/spectrum (no grad) + extractor fwd/bwd
    sim = FingerprintSimulator(cfg.simulator).eval()
    sc = cfg.stage2
    n_img = 2 * sc.m * sc.n + sc.n
    model.extractor.train()
    xs = torch.rand(sc.n, 3, sc.crop, sc.crop)
    g = torch.Generator().manual_seed(0)

    def step():
        with torch.no_grad():
            recon = [sim(xs, sim.sample(g)) for _ in range(2 * sc.m)]
            spec = model.spectrum(torch.cat(recon + [xs]).clamp(0, 1))
        phi = model.extract(spec)
        phi.square().mean().backward()
    t_step = bench(step, max(1, repeats - 1))
    params = sum(p.numel() for p in model.parameters())
    return {"infer_img_per_s": batch / t_inf, "train_step_s": t_step, "train_img_per_s": n_img / t_step,
            "params": params, "crop": cfg.crop}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "sizing.json"))
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    res = {name: measure(cfg, a.repeats, batch=4 if cfg.name == "paper" else 16,
                         train=cfg.name != "paper") for name, cfg in candidates().items()}
    base = res["compact (shipped)"]
    print(f"{'configuration':40s} {'params':>10s} {'infer x':>8s} {'train-step x':>13s}")
    for name, r in res.items():
        r["infer_ratio"] = r["infer_img_per_s"] / base["infer_img_per_s"]
        r["train_ratio"] = r["train_img_per_s"] / base["train_img_per_s"] if r["train_img_per_s"] else None
        tr = f"{r['train_ratio']:13.3f}" if r["train_ratio"] else f"{'(GPU-sized)':>13s}"
        print(f"{name:40s} {r['params']:10d} {r['infer_ratio']:8.3f} {tr}")
    print(f"(compact absolute, this run: {base['infer_img_per_s']:.1f} img/s inference, "
          f"{base['train_step_s']:.2f} s per stage-2 step)")
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
