"""Does a residual keep the simulator's fingerprints? A training-free probe used to choose the
compact denoiser: reconstruct held-out photos with A random simulator architectures, take the
log-spectrum of each residual, and classify queries by the nearest class-mean spectrum
(cosine). Chance is 1/A. Only simulator architectures are used, never the wild set.

    python benchmarks/residual_probe.py --photos ../shared/data/real-photos \
        --simulator runs/compact/stage1.safetensors \
        --denoiser sigma1=runs/failed-2/stage0.safetensors --denoiser sigma3=runs/compact/stage0.safetensors
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
import torch.nn.functional as F


from ofa_sdk.config import OFAConfig
from ofa_sdk.models import DnCNN, FingerprintSimulator
from ofa_sdk.models.spectrum import log_spectrum
from ofa_sdk.kernels.reference import highpass
from ofa_sdk.training.common import PhotoSet, load_checkpoint, read_metadata


def nearest_centroid_acc(specs: torch.Tensor) -> float:
    """specs (A, N, D): first half of each class -> centroid, second half -> queries."""
    a, n, _ = specs.shape
    cent = F.normalize(specs[:, : n // 2].mean(1), dim=1)
    q = F.normalize(specs[:, n // 2:].reshape(-1, specs.shape[-1]), dim=1)
    y = torch.arange(a).repeat_interleave(n - n // 2)
    return float(((q @ cent.T).argmax(1) == y).float().mean())


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--photos", required=True)
    ap.add_argument("--simulator", required=True, help="stage-1 checkpoint")
    ap.add_argument("--denoiser", action="append", default=[], metavar="NAME=CKPT")
    ap.add_argument("--archs", type=int, default=8)
    ap.add_argument("--per-arch", type=int, default=24)
    ap.add_argument("--seeds", type=int, nargs="+", default=[5, 6, 7])
    a = ap.parse_args(argv)
    torch.set_num_threads(2)
    cfg = OFAConfig.from_dict(read_metadata(Path(a.simulator))["config"])
    sim = FingerprintSimulator(cfg.simulator)
    load_checkpoint(Path(a.simulator), {"simulator": sim})
    sim.eval()
    residuals = {"image itself": lambda x: x * 255, "laplacian high-pass": lambda x: highpass(x) * 255}
    for spec in a.denoiser:
        name, path = spec.split("=", 1)
        dcfg = OFAConfig.from_dict(read_metadata(Path(path))["config"])
        net = DnCNN(dcfg.denoiser)
        load_checkpoint(Path(path), {"denoiser": net})
        residuals[f"denoiser {name}"] = (lambda net: lambda x: net.eval()(x) * 255)(net)
    held = PhotoSet(a.photos, split="holdout")
    res = {k: [] for k in residuals}
    for seed in a.seeds:
        g = torch.Generator().manual_seed(seed)
        archs = [sim.sample(g) for _ in range(a.archs)]
        with torch.no_grad():
            imgs = [torch.round(sim(held.batch(a.per_arch, cfg.crop, g), ar).clamp(0, 1) * 255) / 255 for ar in archs]
            for name, fn in residuals.items():
                specs = torch.stack([log_spectrum(fn(x)).flatten(1) for x in imgs])
                res[name].append(nearest_centroid_acc(specs))
    print(f"nearest class-mean spectrum accuracy, {a.archs} architectures (chance {1 / a.archs:.3f}), "
          f"{len(a.seeds)} draws")
    for name, accs in res.items():
        print(f"{name:28s} {sum(accs) / len(accs):.3f}   {[round(x, 3) for x in accs]}")
    print(json.dumps({k: sum(v) / len(v) for k, v in res.items()}))


if __name__ == "__main__":
    main()
