"""ofa-train: one command per stage, one for all, and export.

    ofa-train stage0|stage1|stage2|all --config compact --data DIR [--out runs/compact]
              [--device cuda] [--precision auto|fp32|bf16]
    ofa-train export [--out runs/compact] [--dest FILE]
    ofa-train calibrate --data DIR [--dest FILE] [--rules R ...]
                                                     (score calibrations, after export)
    ofa-train unpack --model FILE [--out DIR]        (stage 0/1 checkpoints from a model file)
    ofa-train stage2 --init shipped ...              (a fine-tune from a model file's extractor)

Runs resume from their checkpoints in --out unless --fresh is given. Overrides use dotted
names: --set stage2.steps=2000 --set loss.tau=0.05.
"""
from __future__ import annotations

import argparse
import ast
import json
import sys
from pathlib import Path


def _parse_set(items):
    out = {}
    for it in items or []:
        if "=" not in it:
            raise SystemExit(f"--set expects key=value, got {it!r}")
        k, v = it.split("=", 1)
        try:
            out[k] = ast.literal_eval(v)
        except (ValueError, SyntaxError):
            out[k] = v
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(prog="ofa-train", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("command", choices=["stage0", "stage1", "stage2", "all", "export", "calibrate", "unpack"])
    ap.add_argument("--config", default="compact", help="paper or compact")
    ap.add_argument("--data", help="folder tree of real photos")
    ap.add_argument("--out", default=None, help="run folder (default runs/CONFIG)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--fresh", action="store_true", help="ignore existing checkpoints")
    ap.add_argument("--set", action="append", metavar="KEY=VALUE", help="config override")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    ap.add_argument("--device", default=None,
                    help="cpu (default), cuda, cuda:N or N: where the stages train")
    ap.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"],
                    help="auto: bf16 autocast on CUDA, float32 on the CPU")
    ap.add_argument("--quiet", action="store_true", help="no progress bar")
    ap.add_argument("--stop-at", type=int, default=None,
                    help="stop each stage after this step (checkpointed; rerun to resume)")
    ap.add_argument("--lpips-vgg", help="VGG16 weights for real LPIPS (stage1.perceptual=lpips)")
    ap.add_argument("--lpips-lin", help="LPIPS linear-layer weights")
    ap.add_argument("--dest", default=None, help="export/calibrate: model file (default: shipped)")
    ap.add_argument("--rules", nargs="+", default=None, choices=["prototype", "gaussian"],
                    help="calibrate: the rules whose calibration is written (default: all; the "
                         "others keep what the model file holds)")
    ap.add_argument("--model", default=None,
                    help="unpack: model file or shipped model name (default: the default)")
    ap.add_argument("--init", default=None,
                    help="stage2: a model file whose extractor and heads a fresh run starts from "
                         "(a fine-tune; a shipped model's name, or 'shipped' for the default)")
    a = ap.parse_args(argv)
    if a.init and a.command not in ("stage2", "all"):
        ap.error(f"--init starts stage 2 from a model file; {a.command} does not train stage 2")

    import torch

    from ofa_sdk.config import get_config

    from . import common

    if a.threads:
        torch.set_num_threads(a.threads)
    cfg = get_config(a.config)
    if a.set:
        cfg = cfg.replace(**_parse_set(a.set))
    out = Path(a.out or f"runs/{cfg.name}")
    if a.command == "export":
        from . import export
        from ofa_sdk.weights import DEFAULT_MODEL
        dest = Path(a.dest) if a.dest else DEFAULT_MODEL
        mid = export.run(out, dest)
        print(json.dumps({"model": str(dest), "model_id": mid, "bytes": dest.stat().st_size}))
        return 0
    if a.command == "unpack":
        from . import export
        from ofa_sdk.weights import model_path
        export.unpack(model_path(a.model), out)
        print(json.dumps({"out": str(out), "written": ["stage0.safetensors", "stage1.safetensors"]}))
        return 0
    if not a.data:
        ap.error(f"--data is required for {a.command}")
    try:
        on = {"device": common.train_device(a.device), "precision": a.precision}
    except (RuntimeError, ValueError) as e:
        ap.error(str(e))
    data = common.PhotoSet(a.data, split="train", holdout=cfg.data.holdout,
                           max_side=cfg.data.max_side)
    if a.command == "calibrate":
        from . import calibrate
        from ofa_sdk.weights import DEFAULT_MODEL
        cal = calibrate.run(Path(a.dest) if a.dest else DEFAULT_MODEL, data, a.seed, rules=a.rules,
                            log=None if a.quiet else (lambda m: print(m, file=sys.stderr)))
        print(json.dumps(cal))
        return 0
    print(json.dumps({"data": data.describe(), "config": cfg.name, "device": str(on["device"]),
                      "precision": a.precision}), file=sys.stderr)
    stages = ["stage0", "stage1", "stage2"] if a.command == "all" else [a.command]
    for st in stages:
        if st == "stage0":
            from .stage0_denoiser import run
            run(cfg, data, out, a.seed, not a.fresh, quiet=a.quiet, stop_at=a.stop_at, **on)
        elif st == "stage1":
            from .stage1_simulator import run
            run(cfg, data, out, a.seed, not a.fresh, quiet=a.quiet, stop_at=a.stop_at,
                lpips_vgg=a.lpips_vgg, lpips_lin=a.lpips_lin, **on)
        else:
            from .stage2_extractor import run
            from ofa_sdk.weights import model_path
            init = None if not a.init else model_path(None if a.init == "shipped" else a.init)
            run(cfg, data, out, a.seed, not a.fresh, quiet=a.quiet, stop_at=a.stop_at,
                init=init, **on)
    return 0


if __name__ == "__main__":
    sys.exit(main())
