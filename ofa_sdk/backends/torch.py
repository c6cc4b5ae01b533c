"""The PyTorch reference engine: eager execution of :class:`ofa_sdk.models.OFAModel`.

Every other engine is tested against this one. On CPU it runs the bundle's own module (already
float32 and frozen; nothing is changed on it); on another device it runs a private copy, so
the shared bundle is never moved.
"""
from __future__ import annotations

import copy
import threading
from typing import Optional, Tuple

import numpy as np

from .base import EngineUnavailable, check_crops


class TorchEngine:
    name = "torch"

    def __init__(self, bundle, device: Optional[str] = None):
        import torch
        dev = torch.device(device or "cpu")
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise EngineUnavailable(f"device {device!r} requested but CUDA is not available")
        on = next(bundle.model.parameters()).device
        self.model = bundle.model if on == dev else copy.deepcopy(bundle.model).to(dev)
        self._torch, self._dev = torch, dev
        self.device, self.model_id, self.crop = str(dev), bundle.model_id, bundle.config.crop
        self._lock = threading.Lock()  # one forward at a time per module

    def _input(self, crops: np.ndarray):
        from ..images import to_tensor
        return to_tensor(check_crops(crops, self.crop)).to(self._dev)

    def embed(self, crops: np.ndarray) -> np.ndarray:
        x = self._input(crops)
        with self._lock, self._torch.inference_mode():
            return self.model(x).float().cpu().numpy()

    def embed_spectra(self, crops: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
        x = self._input(crops)
        torch = self._torch
        with self._lock, torch.inference_mode():
            spec = self.model.spectrum(x)
            z = torch.nn.functional.normalize(self.model.extract(spec).float(), dim=-1)
            return z.cpu().numpy(), spec.float().cpu().numpy()
