"""Build the scoring *development* set: simulator architectures never sampled in training,
applied to held-out photo content at 256x256. It shares no generator with the wild set, so
choices made on it (for example the scoring rule) are not tuned to the wild set's classes.

    python benchmarks/dev_sim.py --photos ../shared/data/real-photos --out benchmarks/data/dev-sim

One folder per architecture (named by its integer id), identical file names across folders =
identical content, like the wild set. Reconstructions are rounded to 8 bit.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]

from eval_wild import seen_architectures
from wild import content_crops
from ofa_sdk.images import from_tensor
from ofa_sdk.weights import load_default_model, load_model
from ofa_sdk.training.common import PhotoSet


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--photos", required=True)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "data" / "dev-sim"))
    ap.add_argument("--model", default=None)
    ap.add_argument("--train-log", default=str(ROOT / "runs" / "compact" / "stage2.jsonl"))
    ap.add_argument("--archs", type=int, default=10)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--limit", type=int, default=120, help="content crops per architecture")
    ap.add_argument("--seed", type=int, default=777)
    ap.add_argument("--ids", type=int, nargs="+", default=None,
                    help="rebuild these architecture ids instead of drawing (no training log needed)")
    a = ap.parse_args(argv)
    torch.set_num_threads(2)
    bundle = load_model(a.model) if a.model else load_default_model()
    sim = bundle.simulator().eval()
    from ofa_sdk.models.simulator import Architecture
    seen = seen_architectures(Path(a.train_log))
    if a.ids:
        archs = [Architecture.from_id(i) for i in a.ids]
        hit = [b.id for b in archs if b.id in seen]
        if hit:
            print(f"warning: ids {hit} were sampled in training", file=sys.stderr)
    elif not seen:
        raise SystemExit(f"no training log at {a.train_log}: cannot exclude seen architectures "
                         "(pass --ids to rebuild a known set)")
    else:
        archs = []
    g = torch.Generator().manual_seed(a.seed)
    while len(archs) < a.archs:
        arch = sim.sample(g)
        if arch.id not in seen and arch.id not in {b.id for b in archs}:
            archs.append(arch)
    content = list(content_crops(PhotoSet(a.photos, split="holdout"), a.size, 2))[: a.limit]
    x = torch.from_numpy(np.stack(content)).permute(0, 3, 1, 2).float() / 255
    out = Path(a.out)
    for arch in archs:
        d = out / f"arch-{arch.id}"
        d.mkdir(parents=True, exist_ok=True)
        with torch.inference_mode():
            for i in range(0, len(x), 16):
                for k, img in enumerate(from_tensor(sim(x[i:i + 16], arch))):
                    Image.fromarray(img).save(d / f"content_{i + k:04d}.png")
        print(f"wrote {len(x)} images to {d} ({arch.describe()})", flush=True)
    (out / "MANIFEST.json").write_text(json.dumps({
        "architectures": [{"id": b.id, "arch": b.to_dict()} for b in archs],
        "excluded_seen_ids": len(seen), "images_per_class": len(x), "size": a.size,
        "content": "held-out photos", "seed": a.seed}, indent=1))


if __name__ == "__main__":
    main()
