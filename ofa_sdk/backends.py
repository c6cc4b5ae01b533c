"""Execution backends for the fingerprint extractor: uint8 crops in, L2-normalised z out.

Only the PyTorch reference backend exists in this release. "onnxruntime" and "tensorrt" are
reserved names for the compiled engines planned next; asking for them explicitly falls back to
"torch" with a warning (``strict=True`` raises instead), and ``Attributor.backend`` always says
which backend really runs. No fallback is ever silent.
"""
from __future__ import annotations

import threading
import warnings
from typing import Optional, Tuple

import numpy as np

BACKENDS = ("auto", "torch", "onnxruntime", "tensorrt")


class BackendUnavailable(RuntimeError):
    pass


class TorchBackend:
    name = "torch"

    def __init__(self, bundle, device: Optional[str] = None):
        import torch
        self.torch = torch
        self.device = torch.device(device or "cpu")
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise BackendUnavailable(f"device {device!r} requested but CUDA is not available")
        self.model = bundle.model.to(self.device).eval()
        self._lock = threading.Lock()  # one forward at a time per model instance

    def embed(self, crops: np.ndarray) -> np.ndarray:
        """(B, c, c, 3) uint8 -> (B, d) float32 L2-normalised fingerprints."""
        torch = self.torch
        x = torch.from_numpy(np.ascontiguousarray(crops)).to(self.device)
        x = x.permute(0, 3, 1, 2).float().div_(255.0)
        with self._lock, torch.inference_mode():
            return self.model(x).float().cpu().numpy()

    def embed_with_spectrum(self, crops: np.ndarray):
        """Fingerprints plus the residual log-spectra they came from, (B,d) and (B,3,h,w)."""
        torch = self.torch
        x = torch.from_numpy(np.ascontiguousarray(crops)).to(self.device)
        x = x.permute(0, 3, 1, 2).float().div_(255.0)
        with self._lock, torch.inference_mode():
            spec = self.model.spectrum(x)
            z = torch.nn.functional.normalize(self.model.extract(spec).float(), dim=-1)
            return z.cpu().numpy(), spec.float().cpu().numpy()

    def pair_probs(self, query_z: np.ndarray, support_part: np.ndarray) -> np.ndarray:
        """(Q,d) fingerprints x (S,h) precomputed support parts -> (Q,S) probabilities."""
        torch = self.torch
        head = self.model.pair_head
        with self._lock, torch.inference_mode():
            q = head.query_part(torch.from_numpy(query_z).to(self.device))
            s = torch.from_numpy(support_part).to(self.device)
            return torch.sigmoid(head.pair_logits(q, s)).float().cpu().numpy()

    def support_part(self, support_z: np.ndarray) -> np.ndarray:
        torch = self.torch
        with self._lock, torch.inference_mode():
            return self.model.pair_head.support_part(
                torch.from_numpy(support_z).to(self.device)).float().cpu().numpy()


def select_backend(name: str, bundle, device: Optional[str], strict: bool) -> Tuple[object, str]:
    """Returns (backend, note). note explains a fallback ('' when none happened)."""
    if name not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {name!r}")
    if name in ("auto", "torch"):
        return TorchBackend(bundle, device), ""
    reason = (f"backend {name!r} is not available in ofa-sdk {_version()}: compiled engines are "
              f"not implemented yet")
    if strict:
        raise BackendUnavailable(reason + " (strict=True)")
    warnings.warn(reason + "; falling back to 'torch'", RuntimeWarning, stacklevel=3)
    return TorchBackend(bundle, device), reason


def _version():
    from . import __version__
    return __version__
