"""Export: stage checkpoints -> one inference model file (fp16 safetensors + JSON metadata)."""
from __future__ import annotations

from pathlib import Path

from ofa_sdk.config import OFAConfig
from ofa_sdk.models import FingerprintSimulator, OFAModel
from ofa_sdk.weights import save_model

from .common import git_commit, load_checkpoint, read_metadata


def run(out: Path, dest: Path, dtype: str = "float16") -> str:
    m2 = read_metadata(out / "stage2.safetensors")
    cfg = OFAConfig.from_dict(m2["config"])
    model, sim = OFAModel(cfg), FingerprintSimulator(cfg.simulator)
    m0, _ = load_checkpoint(out / "stage0.safetensors", {"denoiser": model.denoiser})
    m1, _ = load_checkpoint(out / "stage1.safetensors", {"simulator": sim})
    load_checkpoint(out / "stage2.safetensors", {"extractor": model.extractor,
                                                  "pair_head": model.pair_head,
                                                  "real_head": model.real_head})
    meta = {"config": cfg.to_dict(), "dtype": dtype, "commit": git_commit(),
            # a fine-tune's stage 2 also names the model it started from ("init")
            "training": {f"stage{i}": {k: m[k] for k in ("step", "seed", "data", "commit", "init")
                                       if k in m and (k != "init" or m[k])}
                         for i, m in enumerate((m0, m1, m2))},
            "perceptual": m1.get("perceptual")}
    return save_model(dest, model, sim, meta, dtype)


def unpack(model_path: Path, out: Path) -> None:
    """The inverse for the frozen stages: write ``stage0`` (denoiser) and ``stage1`` (simulator)
    checkpoints into ``out`` from a model file, so stage 2 can be retrained on them (e.g. from
    the shipped model, whose run folder is not in the repository)."""
    from ofa_sdk.weights import load_model

    from .common import save_checkpoint
    bundle = load_model(model_path)
    training = bundle.meta.get("training", {})
    for stage, name, module in ((0, "denoiser", bundle.model.denoiser),
                                (1, "simulator", bundle.simulator())):
        meta = {"stage": stage, "config": bundle.config.to_dict(), "unpacked_from": str(model_path),
                **{k: v for k, v in training.get(f"stage{stage}", {}).items()}}
        if stage == 1:
            meta["perceptual"] = bundle.meta.get("perceptual")
        save_checkpoint(out / f"stage{stage}.safetensors", {name: module}, meta)
