"""Model files: one safetensors file holding the inference model (denoiser, extractor, heads)
and the frozen simulator, stored in fp16, with JSON metadata (configuration, training record).

``load_default_model()`` loads the model shipped inside the package; ``load_model(path)`` any
file written by ``ofa-train export``. A model's id is a hash of its file: gallery profiles record
it, so fingerprints from different model versions are never compared.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Optional

DEFAULT_MODEL = Path(__file__).resolve().parent / "weights" / "compact.safetensors"


@dataclass
class ModelBundle:
    model: "object"            # OFAModel, eval mode, float32
    config: "object"           # OFAConfig
    model_id: str
    path: Path
    meta: Dict = field(default_factory=dict)
    _simulator: Optional[object] = None

    def simulator(self):
        """The frozen fingerprint simulator stored with the model (loaded on first use)."""
        if self._simulator is None:
            from safetensors.torch import load_file
            from .models import FingerprintSimulator
            sim = FingerprintSimulator(self.config.simulator)
            sd = {k[len("simulator."):]: v.float() for k, v in load_file(str(self.path)).items()
                  if k.startswith("simulator.")}
            if not sd:
                raise ValueError(f"model file {self.path} carries no simulator")
            sim.load_state_dict(sd)
            self._simulator = sim.eval()
        return self._simulator


def file_id(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:16]


def read_meta(path: Path) -> Dict:
    from safetensors import safe_open
    with safe_open(str(path), "pt") as f:
        md = f.metadata() or {}
    if "ofa" not in md:
        raise ValueError(f"{path} is not an ofa-sdk model file (no 'ofa' metadata)")
    return json.loads(md["ofa"])


def load_model(path, device=None) -> ModelBundle:
    import torch
    from safetensors.torch import load_file

    from .config import OFAConfig
    from .models import OFAModel

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"model file {str(path)!r} not found")
    meta = read_meta(path)
    cfg = OFAConfig.from_dict(meta["config"])
    model = OFAModel(cfg)
    sd = {k[len("model."):]: v.float() for k, v in load_file(str(path)).items()
          if k.startswith("model.")}
    model.load_state_dict(sd)
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    if device is not None:
        model.to(torch.device(device))
    return ModelBundle(model, cfg, file_id(path), path, meta)


def load_default_model(device=None) -> ModelBundle:
    """The model shipped in the package (the ``compact`` configuration)."""
    if not DEFAULT_MODEL.is_file():
        raise FileNotFoundError(
            f"this installation has no shipped default model ({DEFAULT_MODEL}); train one with "
            "'ofa-train all --config compact --data DIR' and 'ofa-train export'")
    return load_model(DEFAULT_MODEL, device)


def save_model(path, model, simulator, meta: Dict, dtype="float16") -> str:
    """Write an inference model file (used by ``ofa-train export``). Returns its id."""
    import torch
    dt = getattr(torch, dtype)
    tensors = {f"model.{k}": (v.to(dt) if v.is_floating_point() else v).contiguous()
               for k, v in model.state_dict().items()}
    if simulator is not None:
        tensors.update({f"simulator.{k}": (v.to(dt) if v.is_floating_point() else v).contiguous()
                        for k, v in simulator.state_dict().items()})
    return _write(path, tensors, meta)


def _write(path, tensors: Dict, meta: Dict) -> str:
    """Atomically write a model file (tensors + JSON metadata). Returns its id."""
    from safetensors.torch import save_file
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    save_file(tensors, str(tmp), metadata={"ofa": json.dumps(meta, default=str)})
    tmp.replace(path)
    return file_id(path)


def update_meta(path, updates: Dict) -> str:
    """Merge ``updates`` into a model file's metadata, tensors untouched (used by
    ``ofa-train calibrate``). The file's bytes change, so its model id changes. Returns it."""
    from safetensors.torch import load_file
    meta = read_meta(path)
    meta.update(updates)
    return _write(path, load_file(str(path)), meta)
