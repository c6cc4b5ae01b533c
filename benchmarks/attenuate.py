"""A weaker-fingerprint copy of a class-per-folder set built by ``benchmarks/wild.py``: every image
becomes ``x + alpha * (G(x) - x)``, the generator's change to its content photo ``x`` scaled by
``alpha`` (rounded to 8 bit).

    python benchmarks/attenuate.py --set benchmarks/data/wild --photos ../shared/data/real-photos \
        --alpha 0.25 --out benchmarks/data/wild-a25

The intent: a well-trained generator leaves a fainter trace than the briefly trained ones of the
wild set, and a faint trace is what JPEG erases first. **Measured, and it does not model that**
(benchmarks/RESULTS.md section 9.6): most of these generators' trace is high frequencies they
remove, and mixing the content photo back in restores them, the same for every class; at
alpha = 0.25 even clean images are near chance for the non-learned spectrum as well as the
models. Kept so the figures there can be reproduced and the construction is not tried again as
it is.

The content photos are recomputed exactly as ``wild.py`` chose them (held-out split, same crops);
the script stops if they do not line up with the set's images.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from PIL import Image

from wild import content_crops
from ofa_sdk.training.common import PhotoSet


def attenuate(x: np.ndarray, gx: np.ndarray, alpha: float) -> np.ndarray:
    """uint8 content x and generated gx (same shape) -> uint8 x + alpha * (gx - x), rounded."""
    y = x.astype(np.float32) + alpha * (gx.astype(np.float32) - x.astype(np.float32))
    return np.clip(np.rint(y), 0, 255).astype(np.uint8)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--set", required=True, help="a set written by benchmarks/wild.py")
    ap.add_argument("--photos", required=True, help="the photo folder the set was built from")
    ap.add_argument("--alpha", type=float, required=True, help="fingerprint strength, 0 < alpha <= 1")
    ap.add_argument("--per-photo", type=int, default=2, help="as given to wild.py")
    ap.add_argument("--out", required=True)
    a = ap.parse_args(argv)
    if not 0 < a.alpha <= 1:
        ap.error(f"--alpha must be in (0, 1], got {a.alpha}")
    src, out = Path(a.set), Path(a.out)
    manifest = json.loads((src / "MANIFEST.json").read_text())
    n = manifest["images_per_class"]
    content = list(content_crops(PhotoSet(a.photos, split="holdout"), manifest["size"], a.per_photo))[:n]
    if len(content) != n:
        raise SystemExit(f"{a.photos}: {len(content)} content crops, the set has {n} per class")
    for name in manifest["classes"]:
        d = out / name
        d.mkdir(parents=True, exist_ok=True)
        own, other = [], []   # |G(x_i) - x_i| and |G(x_i) - x_(i+1)|: the first must be far smaller
        for i, x in enumerate(content):
            gx = np.asarray(Image.open(src / name / f"content_{i:04d}.png").convert("RGB"))
            if gx.shape != x.shape:
                raise SystemExit(f"{src / name / f'content_{i:04d}.png'}: shape {gx.shape}, content {x.shape}")
            own.append(np.abs(gx.astype(np.float32) - x).mean())
            other.append(np.abs(gx.astype(np.float32) - content[(i + 1) % n]).mean())
            Image.fromarray(attenuate(x, gx, a.alpha)).save(d / f"content_{i:04d}.png")
        if np.median(own) > 0.5 * np.median(other):
            raise SystemExit(f"{src / name}: median |G(x) - x| = {np.median(own):.1f} grey levels against "
                             f"{np.median(other):.1f} to other content; the recomputed content does not "
                             "line up with this set")
        print(f"{name}: median |G(x) - x| {np.median(own):.2f} grey levels "
              f"(other content: {np.median(other):.1f}), wrote {n} images")
    (out / "MANIFEST.json").write_text(json.dumps(
        {**manifest, "attenuated_from": str(src), "alpha": a.alpha}, indent=1))


if __name__ == "__main__":
    main()
