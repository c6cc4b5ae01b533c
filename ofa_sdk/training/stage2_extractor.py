"""Stage 2: the extractor and its heads, simulator and denoiser frozen (paper Sec. 3.3).

Each step (Fig. 3):
* multiple sets -- m decoder draws, each reconstructing a different batch of n real photos,
  plus a batch of n real photos as a class of its own;
* single set   -- one batch of n real photos decoded by the same m draws (same content,
  different fingerprints).
The m draws are shared by both halves, so each architecture class has 2n images of mixed content
and every single-set image has m-1 same-content negatives: the extractor is pushed to ignore
content. Reconstructions are rounded to 8 bit, as real generators' outputs are saved.
``stage2.pretrained`` adds pretrained generators' images of training-photo content as classes of
their own (PretrainedGenerators; not in any shipped model).
Loss: L = w_scl SupCon(+bank) + w_att pair BCE + w_cls real/reconstructed BCE (Eq. 8).
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from ofa_sdk.backends.torch import exact_fp32
from ofa_sdk.config import OFAConfig
from ofa_sdk.images import from_tensor, jpeg, quantize, to_tensor
from ofa_sdk.models import FingerprintSimulator, OFAModel

from .common import (PhotoSet, Prefetcher, autocast, git_commit, load_checkpoint, open_run,
                     read_metadata, save_checkpoint, set_lr, train_device)
from .losses import MemoryBank, pair_loss, real_loss, supcon_loss, total_loss

REAL_LABEL = -1  # architecture ids are >= 0


def _jpeg(x: torch.Tensor, g: torch.Generator, p: float, qrange) -> torch.Tensor:
    """JPEG-compress each image with probability p at a quality drawn from qrange."""
    if p <= 0:
        return x
    out = x.clone()
    for k in range(len(x)):
        if float(torch.rand(1, generator=g)) < p:
            q = int(torch.randint(qrange[0], qrange[1] + 1, (1,), generator=g))
            out[k] = to_tensor(jpeg(from_tensor(x[k:k + 1])[0], q)[None])[0]
    return out


def _jpeg_class(x: torch.Tensor, g: torch.Generator, p: float, qrange) -> torch.Tensor:
    """With probability p, JPEG-compress every image of one class at one shared quality."""
    if p <= 0 or float(torch.rand(1, generator=g)) >= p:
        return x
    q = int(torch.randint(qrange[0], qrange[1] + 1, (1,), generator=g))
    return _jpeg(x, g, 1.0, (q, q))


RESAMPLE_KERNELS = ("bicubic", "bilinear", "lanczos", "box")  # PIL's names; box is area averaging


def _resample_plan(sc, g: torch.Generator):
    """(factor, kernel) for one class with probability ``resample_p``, else None; no draw at all
    when resampling is off, so the batches of a recipe without it stay as they were."""
    if sc.resample_p <= 0 or float(torch.rand(1, generator=g)) >= sc.resample_p:
        return None
    lo, hi = sc.resample_f
    f = lo + (hi - lo) * float(torch.rand(1, generator=g))
    return f, RESAMPLE_KERNELS[int(torch.randint(len(RESAMPLE_KERNELS), (1,), generator=g))]


def _content_side(crop: int, f: float, multiple: int) -> int:
    """The content side that a factor-f resize brings down to at least ``crop``, rounded up to
    the simulator's input multiple."""
    return multiple * math.ceil(crop / f / multiple)


def _resample(x: torch.Tensor, plan, crop: int, share: float, g: torch.Generator) -> torch.Tensor:
    """(n,3,crop,crop): each image of a class, saved to 8 bit, with probability ``share`` resized
    by the plan's factor and kernel and then cropped, else cropped as generated (random offsets)."""
    from PIL import Image
    f, kernel = plan
    side = x.shape[-1]
    a = from_tensor(x)
    out = torch.empty(len(x), 3, crop, crop)
    for k in range(len(x)):
        im = a[k]
        if float(torch.rand(1, generator=g)) < share:
            to = max(crop, round(side * f))
            im = np.asarray(Image.fromarray(im).resize((to, to), getattr(Image.Resampling, kernel.upper())))
        t, l = (int(torch.randint(im.shape[0] - crop + 1, (1,), generator=g)) for _ in range(2))
        out[k] = to_tensor(np.ascontiguousarray(im[None, t:t + crop, l:l + crop]))[0]
    return out


def _centre(x: torch.Tensor, side: int) -> torch.Tensor:
    o = (x.shape[-1] - side) // 2
    return x[..., o:o + side, o:o + side]


class PretrainedGenerators:
    """Pretrained generators' images of training-photo content (``stage2.pretrained``): each draw
    takes ``k`` generators as classes of their own, labelled below REAL_LABEL; n images of
    content shared by the k at one crop position, n of other content, each at its own."""

    def __init__(self, path: str, classes: int, crop: int):
        try:
            with np.load(path) as f:
                self.images, self.label, self.content = f["images"], f["label"], f["content"]
        except (OSError, KeyError, ValueError) as e:
            raise ValueError(f"stage2.pretrained {path}: not an .npz of images, label and content ({e})") from None
        if self.images.ndim != 4 or self.images.dtype != np.uint8 or min(self.images.shape[1:3]) < crop:
            raise ValueError(f"stage2.pretrained {path}: images must be (N,S,S,3) uint8 with S >= the "
                             f"crop {crop}, got {self.images.shape} {self.images.dtype}")
        self.gens = np.unique(self.label)
        self.index = {(int(l), int(c)): i for i, (l, c) in enumerate(zip(self.label, self.content))}
        self.shared = sorted(set.intersection(*[set(self.content[self.label == l].tolist()) for l in self.gens]))
        if not 1 <= classes <= len(self.gens) or not self.shared:
            raise ValueError(f"stage2.pretrained {path}: {len(self.gens)} generators, {len(self.shared)} contents "
                             f"all of them rendered; stage2.pretrained_classes = {classes} needs 1 to "
                             f"{len(self.gens)} and at least one shared content")

    def _crop(self, i: int, top: int, left: int, crop: int) -> torch.Tensor:
        return to_tensor(np.ascontiguousarray(self.images[i, top:top + crop, left:left + crop])[None])[0]

    def draw(self, n: int, k: int, crop: int, g: torch.Generator):
        side = self.images.shape[1]

        def rint(hi):
            return int(torch.randint(hi, (1,), generator=g))
        gens = [int(self.gens[j]) for j in torch.randperm(len(self.gens), generator=g)[:k]]
        shared = [self.shared[rint(len(self.shared))] for _ in range(n)]
        pos = [(rint(side - crop + 1), rint(side - crop + 1)) for _ in range(n)]
        xs, ys = [], []
        for gen in gens:
            own = np.flatnonzero(self.label == gen)
            rows = [self._crop(self.index[(gen, c)], t, l, crop) for c, (t, l) in zip(shared, pos)]
            rows += [self._crop(int(own[rint(len(own))]), rint(side - crop + 1), rint(side - crop + 1), crop)
                     for _ in range(n)]
            xs.append(torch.stack(rows))
            ys.append(torch.full((2 * n,), REAL_LABEL - 1 - gen, dtype=torch.long))
        return xs, ys


def make_batch(sim: FingerprintSimulator, data: PhotoSet, cfg: OFAConfig, g: torch.Generator,
               pretrained: "PretrainedGenerators | None" = None):
    """Images (B,3,c,c) in [0,1] on the CPU, labels (B,) and the architecture ids drawn, for one
    step. The simulator runs in float32 on its own device (reconstructions carry the
    fingerprints: no reduced precision there), resampling and JPEG on the CPU."""
    sc = cfg.stage2
    dev = next(sim.parameters()).device
    multiple = 2 ** len(cfg.simulator.enc_channels)
    archs = [sim.sample(g) for _ in range(sc.m)]
    xs, ys = [], []
    # single set content; with resampling on, drawn at the largest side a class can need and
    # centre-cropped per class, so every class still shares the content
    big = _content_side(sc.crop, sc.resample_f[0], multiple) if sc.resample_p > 0 else sc.crop
    shared = data.batch(sc.n, big, g)
    with torch.no_grad():
        for a in archs:
            plan = _resample_plan(sc, g)
            side = _content_side(sc.crop, plan[0], multiple) if plan else sc.crop
            pair = []
            for content in (data.batch(sc.n, side, g), _centre(shared, side)):
                r = sim(content.to(dev), a).float().clamp(0, 1)
                if sc.quantize:
                    r = quantize(r)
                pair.append(r.cpu())
            x = torch.cat(pair)
            if plan:
                x = _resample(x, plan, sc.crop, sc.resample_share, g)
            xs.extend(torch.split(_jpeg_class(x, g, sc.jpeg_class_p, sc.jpeg_q), sc.n))
            ys.extend(torch.full((sc.n,), a.id, dtype=torch.long) for _ in pair)
    plan = _resample_plan(sc, g)                       # real photos, a class of their own
    real = data.batch(sc.n, _content_side(sc.crop, plan[0], multiple) if plan else sc.crop, g)
    if plan:
        real = _resample(real, plan, sc.crop, sc.resample_share, g)
    xs.append(_jpeg_class(real, g, sc.jpeg_class_p, sc.jpeg_q))
    ys.append(torch.full((sc.n,), REAL_LABEL, dtype=torch.long))
    if pretrained is not None:                        # real generators, classes of their own
        bx, by = pretrained.draw(sc.n, sc.pretrained_classes, sc.crop, g)
        xs.extend(_jpeg_class(x, g, sc.jpeg_class_p, sc.jpeg_q) for x in bx)
        ys.extend(by)
    x = _jpeg(torch.cat(xs), g, sc.jpeg_p, sc.jpeg_q)
    return x, torch.cat(ys), [a.id for a in archs]


def run(cfg: OFAConfig, data: PhotoSet, out: Path, seed: int = 0, resume: bool = True,
        every: int = 50, quiet: bool = False, stop_at: int | None = None, device=None,
        precision: str = "auto", init: Path | None = None) -> Path:
    """Train stage 2 into ``out/stage2.safetensors``. ``init``: a model file whose extractor and
    heads a fresh run starts from (a fine-tune, e.g. of the shipped model); its configuration
    must build the same networks."""
    sc = cfg.stage2
    dev = train_device(device)
    torch.manual_seed(seed + 2)
    g = torch.Generator().manual_seed(seed + 2)
    model = OFAModel(cfg)
    sim = FingerprintSimulator(cfg.simulator)
    load_checkpoint(out / "stage0.safetensors", {"denoiser": model.denoiser})
    s1meta, _ = load_checkpoint(out / "stage1.safetensors", {"simulator": sim})
    torch.manual_seed(seed + 2)
    for p in list(sim.parameters()) + list(model.denoiser.parameters()):
        p.requires_grad_(False)
    sim.eval()
    model.denoiser.eval()
    model.to(dev)
    sim.to(dev)
    generators = PretrainedGenerators(sc.pretrained, sc.pretrained_classes, sc.crop) if sc.pretrained else None
    bank = MemoryBank(cfg.loss.bank_size, cfg.extractor.dim).to(dev)
    params = list(model.extractor.parameters()) + list(model.pair_head.parameters()) + \
        list(model.real_head.parameters())
    opt = torch.optim.Adam(params, lr=sc.lr)
    trained = {"extractor": model.extractor, "pair_head": model.pair_head,
               "real_head": model.real_head, "bank": bank}
    ckpt, start, log = open_run(out, "stage2", trained, opt, g, resume, sc.steps, "stage2 extractor", quiet)
    init_id = read_metadata(ckpt).get("init") if start else None  # a resumed fine-tune keeps it
    if init is not None and start == 0:
        from ofa_sdk.weights import load_model
        bundle = load_model(init)
        for name in ("extractor", "pair_head", "real_head"):
            getattr(model, name).load_state_dict(
                {k: v.float() for k, v in getattr(bundle.model, name).state_dict().items()})
        init_id = bundle.model_id
    model.extractor.train()
    # the simulator's draws and reconstructions, the crops and JPEG run on the loader's thread;
    # TF32 is off for the whole run (the flags are process-wide: the loader's simulator and the
    # spectra alike, as inference computes them); the extractor runs under bf16 autocast
    with exact_fp32(dev, allow_tf32=False), Prefetcher(
            lambda gs: make_batch(sim, data, cfg, gs, generators), seed, "stage2", start, sc.steps, dev) as loader:
        for step, (x, y, arch_ids) in loader:
            with torch.no_grad():
                spec = model.spectrum(x)    # float32, TF32 off (above): as inference computes it
            with autocast(dev, precision):
                phi = model.extract(spec)
            z = torch.nn.functional.normalize(phi.float(), dim=-1)
            bf, bl = bank.get()
            l_scl = supcon_loss(z, y, cfg.loss.tau, bf, bl)
            l_att, acc = pair_loss(model.pair_head, z, y, g)
            l_cls = real_loss(model.real_head, z, y != REAL_LABEL)
            loss = total_loss(cfg.loss, l_scl, l_att, l_cls)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, sc.grad_clip)
            lr = set_lr(opt, sc.lr, step, sc.steps, warmup=max(1, math.floor(sc.steps * sc.warmup)),
                        floor=sc.lr_floor)
            opt.step()
            bank.push(z.detach(), y)
            log.step(step, len(x), loss=loss.item(), scl=l_scl.item(), att=l_att.item(),
                     cls=l_cls.item(), pair_acc=float(acc), lr=lr, archs=arch_ids)
            if step % every == 0 or step == sc.steps or step == stop_at:
                meta = {"stage": 2, "step": step, "seed": seed, "config": cfg.to_dict(),
                        "data": data.describe(), "commit": git_commit(),
                        "simulator_perceptual": s1meta.get("perceptual"),
                        "init": init_id}
                save_checkpoint(ckpt, trained, meta, opt, g)
            if step == stop_at:  # an interruption on purpose (tests, time-boxed jobs)
                break
    log.close()
    return ckpt
