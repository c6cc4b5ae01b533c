"""Stage 0: the DnCNN residual denoiser, trained on real photos with Gaussian noise of
``denoiser.noise_sigma`` grey levels (Corvi et al.'s recipe; their weights are not obtainable
here). The network predicts the noise; an unpadded one predicts it for the central region."""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from ofa_sdk.config import OFAConfig
from ofa_sdk.models import DnCNN

from .common import (PhotoSet, Prefetcher, autocast, git_commit, open_run, save_checkpoint,
                     set_lr, train_device)


def run(cfg: OFAConfig, data: PhotoSet, out: Path, seed: int = 0, resume: bool = True,
        every: int = 100, quiet: bool = False, stop_at: int | None = None, device=None,
        precision: str = "auto") -> Path:
    sc = cfg.stage0
    dev = train_device(device)
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    net = DnCNN(cfg.denoiser).to(dev)
    opt = torch.optim.Adam(net.parameters(), lr=sc.lr)
    ckpt, start, log = open_run(out, "stage0", {"denoiser": net}, opt, g, resume, sc.steps, "stage0 denoiser", quiet)
    sigma = cfg.denoiser.noise_sigma / 255.0

    def draw(gs):                       # on the loader's thread
        x = data.batch(sc.batch, sc.crop, gs)
        return x, torch.randn(x.shape, generator=gs) * sigma

    net.train()
    with Prefetcher(draw, seed, "stage0", start, sc.steps, dev) as loader:
        for step, (x, noise) in loader:
            with autocast(dev, precision):
                pred = net(x + noise)
            # Loss in grey levels so its scale is readable (target std = noise_sigma).
            loss = F.mse_loss(pred.float() * 255, net.crop_like(noise) * 255)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            lr = set_lr(opt, sc.lr, step, sc.steps, floor=sc.lr_floor)
            opt.step()
            log.step(step, sc.batch, loss=loss.item(), lr=lr)
            if step % every == 0 or step == sc.steps or step == stop_at:
                save_checkpoint(ckpt, {"denoiser": net}, _meta(cfg, data, step, seed), opt, g)
            if step == stop_at:  # an interruption on purpose (tests, time-boxed jobs)
                break
    log.close()
    return ckpt


def _meta(cfg, data, step, seed):
    return {"stage": 0, "step": step, "seed": seed, "config": cfg.to_dict(),
            "data": data.describe(), "commit": git_commit()}
