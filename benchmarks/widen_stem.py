"""Turn a stage-2 checkpoint of a high-pass model into one of a ``spectrum.residual="both"``
model: the extractor's stem gains three input channels for the denoiser residual (placed first,
as ``OFAModel.residual`` stacks them), with zero weights and zero Adam moments, so the widened
model starts as the original one applied to the centre part of its high-pass spectrum (the
part the denoiser's residual also covers). Fine-tuning it against a control arm resumed from
the same checkpoint measures what the denoiser residual adds (RESULTS.md 9.11).

    python benchmarks/widen_stem.py --src runs/jpeg-hp-4200 --out runs/ft-both

Copies stage0/stage1 beside the widened stage2 checkpoint, so ``ofa-train stage2 --out DIR
--set spectrum.residual=both`` resumes it.
"""
from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file

from ofa_sdk.weights import read_meta, write_file

STEM = "extractor.stem.0.weight"


def widen(src: Path, out: Path) -> None:
    meta = read_meta(src / "stage2.safetensors")
    if meta["config"]["spectrum"].get("residual", "denoiser") != "highpass":
        raise SystemExit(f"{src}/stage2.safetensors is not a high-pass model")
    tensors = load_file(str(src / "stage2.safetensors"))
    stem = tensors[STEM]
    # the optimizer's moments of the stem weight: the entries of optim.* with the stem's shape
    # whose parameter id is the stem's (the first parameter of the extractor, id 0)
    keys = [STEM] + [k for k in tensors if k.startswith("optim.0.") and tensors[k].shape == stem.shape]
    if len(keys) != 3:
        raise SystemExit(f"expected the stem weight and its two Adam moments, found {keys}")
    for k in keys:
        tensors[k] = torch.cat([torch.zeros_like(tensors[k]), tensors[k]], dim=1).contiguous()
    meta["config"]["spectrum"]["residual"] = "both"
    out.mkdir(parents=True, exist_ok=True)
    for f in ("stage0.safetensors", "stage1.safetensors"):
        shutil.copy2(src / f, out / f)
    write_file(out / "stage2.safetensors", tensors, meta)
    print(f"{out}/stage2.safetensors: step {meta['step']}, stem {tuple(stem.shape)} -> "
          f"{tuple(tensors[STEM].shape)}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--src", required=True, type=Path, help="run folder with a high-pass stage2 checkpoint")
    ap.add_argument("--out", required=True, type=Path)
    a = ap.parse_args()
    widen(a.src, a.out)


if __name__ == "__main__":
    main()
