"""Stage 1: the fingerprint simulator (encoder + stochastic decoder) on real photos only.

L_img = w_mse * MSE + w_perc * perceptual (paper Eq. 3). Every step draws one architecture for
the whole batch, so every slot's weights learn to reconstruct under every structure that uses
them. Perceptual term: weight-free MS-SSIM by default, real LPIPS with user weights."""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from ofa_sdk.config import OFAConfig
from ofa_sdk.models import FingerprintSimulator

from .common import (PhotoSet, Prefetcher, autocast, git_commit, open_run, save_checkpoint,
                     set_lr, train_device)
from .perceptual import make_perceptual


def run(cfg: OFAConfig, data: PhotoSet, out: Path, seed: int = 0, resume: bool = True,
        every: int = 100, quiet: bool = False, stop_at: int | None = None,
        lpips_vgg=None, lpips_lin=None, device=None, precision: str = "auto") -> Path:
    sc = cfg.stage1
    dev = train_device(device)
    torch.manual_seed(seed + 1)
    g = torch.Generator().manual_seed(seed + 1)
    sim = FingerprintSimulator(cfg.simulator).to(dev)
    perc = make_perceptual(sc.perceptual, lpips_vgg, lpips_lin).to(dev)
    opt = torch.optim.Adam(sim.parameters(), lr=sc.lr)
    ckpt, start, log = open_run(out, "stage1", {"simulator": sim}, opt, g, resume, sc.steps, "stage1 simulator", quiet)

    def draw(gs):                       # on the loader's thread: photos and architecture draws
        return [(data.batch(sc.batch, sc.crop, gs), sim.sample(gs)) for _ in range(sc.accum)]

    sim.train()
    with Prefetcher(draw, seed, "stage1", start, sc.steps, dev) as loader:
        for step, parts in loader:
            opt.zero_grad(set_to_none=True)
            tot = {"loss": 0.0, "mse": 0.0, "perc": 0.0}
            for x, arch in parts:
                with autocast(dev, precision):
                    y = sim(x, arch)
                y = y.float()
                mse = F.mse_loss(y, x)
                p = perc(y.clamp(0, 1), x)
                loss = (sc.w_mse * mse + sc.w_perc * p) / sc.accum
                loss.backward()
                tot["loss"] += loss.item()
                tot["mse"] += mse.item() / sc.accum
                tot["perc"] += p.item() / sc.accum
            torch.nn.utils.clip_grad_norm_(sim.parameters(), sc.grad_clip)
            lr = set_lr(opt, sc.lr, step, sc.steps, floor=sc.lr_floor)
            opt.step()
            psnr = -10 * torch.log10(torch.tensor(max(tot["mse"], 1e-10))).item()
            log.step(step, sc.batch * sc.accum, **tot, psnr=psnr, lr=lr, start_scale=arch.start_scale)
            if step % every == 0 or step == sc.steps or step == stop_at:
                meta = {"stage": 1, "step": step, "seed": seed, "config": cfg.to_dict(),
                        "data": data.describe(), "commit": git_commit(),
                        "perceptual": sc.perceptual if sc.perceptual == "ssim" else
                        {"kind": "lpips", "vgg": str(lpips_vgg), "lin": str(lpips_lin)}}
                save_checkpoint(ckpt, {"simulator": sim}, meta, opt, g)
            if step == stop_at:  # an interruption on purpose (tests, time-boxed jobs)
                break
    log.close()
    return ckpt
