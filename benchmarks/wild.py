"""Build the project's "wild" development set: generators written here that are NOT in the
simulator's space, all applied to the same held-out photo content at 256x256.

Classes (one folder each, identical file names across folders = identical content):
* classical upscaling: ``bicubic-x2``, ``lanczos-x3``, ``nearest-x2`` (PIL; downscale with a box
  filter, upscale back);
* autoencoders trained briefly on the *training* photos (never the held-out ones):
  ``tconv4-ae-s0`` / ``tconv4-ae-s1`` (transposed-conv decoder, k4 s2; same architecture,
  different seeds), ``tconv3-ae`` (k3 s2 transposed convs: uneven overlap), ``ps4-ae`` (one
  pixel-shuffle x4 step), ``unet-tconv`` (U-Net with skips, transposed convs, ReLU+BatchNorm);
* generators trained with the losses real ones use, not only a pixel loss: ``tconv4-ssim``
  (L1 + multi-scale SSIM, a perceptual loss), ``unet-gan-s0`` / ``unet-gan-s1`` (L1 + a
  patch-discriminator hinge loss, the adversarial setting; same architecture, two seeds);
* ``sr-x2``: a learned x2 upscaler (ESPCN-style: box-downscaled input, convolutions and a pixel
  shuffle over a bicubic skip), trained to restore the photo it was downscaled from;
* ``real``: the content photos themselves, as a source of their own (a real photo must not pass
  for a generator's image; the held-out measurement of issue 11 found real photos against a
  learned upscaler among the weakest pairs).

benchmarks/RESULTS.md calls the 13-class set ``wild13``. Sections up to 9.9 of docs/experiment-log.md
used the 11 classes from before ``sr-x2`` and ``real`` were added, the set called ``wild``:
``--exclude real sr-x2`` builds it again.

    python benchmarks/wild.py --photos ../shared/data/real-photos      # -> benchmarks/data/wild13
    python benchmarks/wild.py --photos ../shared/data/real-photos --exclude real sr-x2 \
        --out benchmarks/data/wild                                      # the 11-class set

Content: held-out photos (the training split excludes them), up to two non-overlapping 256
crops each. Deterministic: every learned generator trains from its own fixed seed (``LEARNED``).
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
from ofa_sdk.images import from_tensor, to_tensor
from ofa_sdk.training.common import PhotoSet


# -- classical upscalers -------------------------------------------------------------------------
def _resample(a: np.ndarray, factor: float, up) -> np.ndarray:
    h, w = a.shape[:2]
    small = Image.fromarray(a).resize((round(w / factor), round(h / factor)), Image.BOX)
    return np.asarray(small.resize((w, h), up))


CLASSICAL = {
    "bicubic-x2": lambda a: _resample(a, 2, Image.BICUBIC),
    "lanczos-x3": lambda a: _resample(a, 3, Image.LANCZOS),
    "nearest-x2": lambda a: _resample(a, 2, Image.NEAREST),
    "real": lambda a: a,    # no generator: the content photo itself
}


# -- small learned generators ----------------------------------------------------------------------
def _down(cin, cout):
    return nn.Sequential(nn.Conv2d(cin, cout, 4, 2, 1), nn.LeakyReLU(0.2))


class TConvAE(nn.Module):
    def __init__(self, k: int = 4, ch=(32, 64, 96)):
        super().__init__()
        self.enc = nn.Sequential(_down(3, ch[0]), _down(ch[0], ch[1]), _down(ch[1], ch[2]))
        pad, op = (1, 0) if k == 4 else (1, 1)
        ups, cin = [], ch[2]
        for c in (ch[1], ch[0], 16):
            ups += [nn.ConvTranspose2d(cin, c, k, 2, pad, output_padding=op), nn.ReLU()]
            cin = c
        self.dec = nn.Sequential(*ups, nn.Conv2d(16, 3, 3, padding=1))

    def forward(self, x):
        return torch.sigmoid(self.dec(self.enc(x * 2 - 1)))


class PS4AE(nn.Module):
    def __init__(self):
        super().__init__()
        self.enc = nn.Sequential(_down(3, 32), _down(32, 64), nn.Conv2d(64, 64, 3, padding=1), nn.ReLU())
        self.dec = nn.Sequential(nn.Conv2d(64, 3 * 16, 3, padding=1), nn.PixelShuffle(4))

    def forward(self, x):
        return torch.sigmoid(self.dec(self.enc(x * 2 - 1)))


class UNetTConv(nn.Module):
    def __init__(self):
        super().__init__()
        self.d1, self.d2 = _down(3, 32), _down(32, 64)
        self.mid = nn.Sequential(nn.Conv2d(64, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU())
        self.u2 = nn.Sequential(nn.ConvTranspose2d(128, 32, 4, 2, 1), nn.BatchNorm2d(32), nn.ReLU())
        self.u1 = nn.Sequential(nn.ConvTranspose2d(64, 16, 4, 2, 1), nn.ReLU())
        self.out = nn.Conv2d(16 + 3, 3, 3, padding=1)

    def forward(self, x):
        x0 = x * 2 - 1
        a = self.d1(x0)
        b = self.d2(a)
        m = self.mid(b)
        u = self.u2(torch.cat([m, b], 1))
        u = self.u1(torch.cat([u, a], 1))
        return torch.sigmoid(self.out(torch.cat([u, x0], 1)))


class ESPCN(nn.Module):
    """A learned x2 upscaler: the input box-downscaled x2, then convolutions on the small image
    and a pixel shuffle back to full size, added to a bicubic upscale of the small image."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 64, 5, padding=2), nn.Tanh(),
                                  nn.Conv2d(64, 32, 3, padding=1), nn.Tanh(),
                                  nn.Conv2d(32, 3 * 4, 3, padding=1), nn.PixelShuffle(2))

    def forward(self, x):
        lo = F.avg_pool2d(x * 2 - 1, 2)
        up = F.interpolate(lo, scale_factor=2, mode="bicubic", align_corners=False)
        return ((up + self.body(lo)) / 2 + 0.5).clamp(0, 1)


class PatchD(nn.Module):
    """A small patch discriminator (the adversarial loss's critic)."""

    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(_down(3, 32), _down(32, 64), nn.Conv2d(64, 1, 3, padding=1))

    def forward(self, x):
        return self.net(x * 2 - 1)


# name -> (constructor, seed, loss): "l1", "ssim" (L1 + MS-SSIM) or "gan" (L1 + hinge GAN)
LEARNED = {
    "tconv4-ae-s0": (lambda: TConvAE(4), 0, "l1"),
    "tconv4-ae-s1": (lambda: TConvAE(4), 1, "l1"),
    "tconv3-ae": (lambda: TConvAE(3), 2, "l1"),
    "ps4-ae": (PS4AE, 3, "l1"),
    "unet-tconv": (UNetTConv, 4, "l1"),
    "tconv4-ssim": (lambda: TConvAE(4), 5, "ssim"),
    "unet-gan-s0": (UNetTConv, 6, "gan"),
    "unet-gan-s1": (UNetTConv, 7, "gan"),
    "sr-x2": (ESPCN, 8, "l1"),
}
GAN_WEIGHT = 0.05
SSIM_WEIGHT = 0.5


def train_brief(make, seed: int, photos: PhotoSet, steps: int, log=print, loss_kind: str = "l1") -> nn.Module:
    from ofa_sdk.training.perceptual import SSIMLoss
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(1000 + seed)
    net = make()
    opt = torch.optim.Adam(net.parameters(), lr=2e-3)
    ssim = SSIMLoss(scales=2) if loss_kind == "ssim" else None
    disc = PatchD() if loss_kind == "gan" else None
    opt_d = torch.optim.Adam(disc.parameters(), lr=2e-4, betas=(0.5, 0.999)) if disc else None
    t0 = time.time()
    for step in range(steps):
        x = photos.batch(8, 64, g)
        y = net(x)
        loss = F.l1_loss(y, x)
        if ssim is not None:
            loss = loss + SSIM_WEIGHT * ssim(y, x)
        if disc is not None:
            d_loss = F.relu(1 - disc(x)).mean() + F.relu(1 + disc(y.detach())).mean()
            opt_d.zero_grad()
            d_loss.backward()
            opt_d.step()
            loss = loss - GAN_WEIGHT * disc(y).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    log(f"  trained {steps} steps ({loss_kind}) in {time.time() - t0:.0f}s, final loss {loss.item():.4f}")
    return net.eval()


def build_generators(names, train: PhotoSet, steps: int, log=print):
    """name -> function(HxWx3 uint8) -> HxWx3 uint8, training the learned ones briefly."""
    gens = {}
    for name in names:
        if name in CLASSICAL:
            gens[name] = CLASSICAL[name]
            continue
        make, seed, kind = LEARNED[name]
        log(f"training {name}")
        net = train_brief(make, seed, train, steps, log, kind)

        def run(arr, net=net):
            with torch.inference_mode():
                return from_tensor(net(to_tensor(arr[None])))[0]
        gens[name] = run
    return gens


def write_set(gens, content, out: Path, log=print):
    for name, fn in gens.items():
        d = out / name
        d.mkdir(parents=True, exist_ok=True)
        for i, arr in enumerate(content):
            Image.fromarray(fn(arr)).save(d / f"content_{i:04d}.png")
        log(f"wrote {len(content)} images to {d}")


def content_crops(photos: PhotoSet, size: int, per_photo: int):
    for a in photos.photos:
        yield from photo_crops(a, size, per_photo)


def photo_crops(a: np.ndarray, size: int, per_photo: int):
    """One photo's ``size`` px content crops: none when it is smaller, two apart (its ends along
    the long side) when ``per_photo`` >= 2 and it is at least twice as long, else its centre."""
    h, w = a.shape[:2]
    if min(h, w) < size:
        return
    if per_photo >= 2 and max(h, w) >= 2 * size:
        if w >= h:
            offs = [((h - size) // 2, 0), ((h - size) // 2, w - size)]
        else:
            offs = [(0, (w - size) // 2), (h - size, (w - size) // 2)]
    else:
        offs = [((h - size) // 2, (w - size) // 2)]
    for t, l in offs[:per_photo]:
        yield np.ascontiguousarray(a[t:t + size, l:l + size])


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--photos", required=True)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "data" / "wild13"))
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--per-photo", type=int, default=2)
    ap.add_argument("--steps", type=int, default=300, help="brief training steps per learned generator")
    ap.add_argument("--limit", type=int, default=None, help="at most N content crops")
    ap.add_argument("--exclude", nargs="+", default=[], choices=list(CLASSICAL) + list(LEARNED),
                    help="sources to leave out (default: build all)")
    a = ap.parse_args(argv)
    torch.set_num_threads(2)
    out = Path(a.out)
    held = PhotoSet(a.photos, split="holdout")
    train = PhotoSet(a.photos, split="train")
    content = list(content_crops(held, a.size, a.per_photo))[: a.limit]
    print(f"{len(content)} content crops from {len(held)} held-out photos")
    gens = build_generators([c for c in list(CLASSICAL) + list(LEARNED) if c not in a.exclude],
                            train, a.steps)
    write_set(gens, content, out)
    (out / "MANIFEST.json").write_text(json.dumps({
        "classes": sorted(gens), "images_per_class": len(content), "size": a.size,
        "content": "held-out photos", "steps": a.steps}, indent=1))


if __name__ == "__main__":
    main()
