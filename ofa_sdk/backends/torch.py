"""The PyTorch reference engine: eager execution of :class:`ofa_sdk.models.OFAModel`.

Every other engine is tested against this one. On CPU it runs the bundle's own module (already
float32 and frozen; nothing is changed on it); on another device it runs a private copy, so
the shared bundle is never moved.

On CUDA every call runs with that device current (:func:`device_guard`), so ``"cuda:1"`` never
touches device 0, and with TF32 off for cuDNN convolutions and matmuls (PyTorch's default lets
convolutions round their inputs to TF32, about 1e-3 relative: fingerprints would then differ
from the CPU's by more than float32 rounding; ``tf32=True`` allows it, for speed). The flags
are process-global in PyTorch: they are off while any engine call is running and restored
after the last (:func:`exact_fp32`), so other CUDA work of the process sees them off then.
"""
from __future__ import annotations

import contextlib
import copy
import threading
from typing import Optional, Tuple

import numpy as np

from .base import EngineUnavailable, check_crops


def cuda_device(device):
    """``device`` (str or torch.device) as a CUDA ``torch.device`` with its index fixed (the
    current device when none is given), or EngineUnavailable naming what could not be used."""
    import torch
    dev = torch.device(device or "cuda")
    if dev.type != "cuda":
        raise ValueError(f"not a CUDA device: {device!r}")
    if not torch.cuda.is_available():
        raise EngineUnavailable(f"device {str(device)!r} requested but CUDA is not available "
                                f"(torch {torch.__version__}, built for CUDA {torch.version.cuda})")
    n = torch.cuda.device_count()
    index = torch.cuda.current_device() if dev.index is None else dev.index
    if index >= n:
        raise EngineUnavailable(f"device {str(device)!r} requested but this host has {n} CUDA "
                                f"device(s): cuda:0..cuda:{n - 1}")
    return torch.device("cuda", index)


def device_guard(dev):
    """A context making ``dev`` the current CUDA device (nothing for a CPU device): engines,
    contexts, streams, cuFFT plans and Triton launches then land on the requested GPU."""
    import torch
    if getattr(dev, "type", None) != "cuda":
        return contextlib.nullcontext()
    return torch.cuda.device(dev)


_TF32_LOCK = threading.Lock()
_TF32 = {"depth": 0, "saved": None}     # nested/concurrent users of exact_fp32, flags to restore


@contextlib.contextmanager
def exact_fp32(dev, allow_tf32: bool):
    """TF32 off for cuDNN and cuBLAS while the block runs on CUDA. The flags are process-global
    in PyTorch: the first of any overlapping blocks (threads included) turns them off and the
    last one restores them, so concurrent calls never leave them changed."""
    import torch
    if getattr(dev, "type", None) != "cuda" or allow_tf32:
        yield
        return
    flags = torch.backends.cudnn, torch.backends.cuda.matmul
    with _TF32_LOCK:
        if _TF32["depth"] == 0:
            _TF32["saved"] = tuple(f.allow_tf32 for f in flags)
            for f in flags:
                f.allow_tf32 = False
        _TF32["depth"] += 1
    try:
        yield
    finally:
        with _TF32_LOCK:
            _TF32["depth"] -= 1
            if _TF32["depth"] == 0:
                for f, v in zip(flags, _TF32["saved"]):
                    f.allow_tf32 = v


class TorchEngine:
    name = "torch"

    def __init__(self, bundle, device: Optional[str] = None, *, tf32: bool = False):
        import torch
        dev = torch.device(device or "cpu")
        if dev.type == "cuda":
            dev = cuda_device(dev)
        on = next(bundle.model.parameters()).device
        with device_guard(dev):
            self.model = bundle.model if on == dev else copy.deepcopy(bundle.model).to(dev)
        self._torch, self._dev, self.tf32 = torch, dev, bool(tf32)
        self.device, self.model_id, self.crop = str(dev), bundle.model_id, bundle.config.crop
        self._lock = threading.Lock()  # one forward at a time per module

    def _input(self, crops: np.ndarray):
        from ..images import to_tensor
        return to_tensor(check_crops(crops, self.crop)).to(self._dev)

    @contextlib.contextmanager
    def _running(self):
        """One forward: this engine's lock, its device current, TF32 off on CUDA."""
        with self._lock, device_guard(self._dev), exact_fp32(self._dev, self.tf32), \
                self._torch.inference_mode():
            yield

    def embed(self, crops: np.ndarray) -> np.ndarray:
        x = self._input(crops)
        with self._running():
            return self.model(x).float().cpu().numpy()

    def embed_spectra(self, crops: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
        x = self._input(crops)
        torch = self._torch
        with self._running():
            spec = self.model.spectrum(x)
            z = torch.nn.functional.normalize(self.model.extract(spec).float(), dim=-1)
            return z.cpu().numpy(), spec.float().cpu().numpy()
