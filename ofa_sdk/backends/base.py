"""The engine contract: uint8 crops in, unit fingerprints out.

An engine is what runs the model: the PyTorch reference (``torch.py``) or a compiled one
(ONNX Runtime, TensorRT). Everything else -- decoding, cropping, score rules, thresholds -- is
outside it and shared, so adding an engine is one file against :class:`Engine` plus one line in
the registry (:mod:`ofa_sdk.backends`).

Rules every engine follows:
* ``embed`` takes (B, c, c, 3) uint8 crops (NHWC, RGB; c the model's crop) and returns (B, d)
  float32 L2-normalised fingerprints, row i from crop i alone (batching never changes a row
  beyond float rounding);
* ``embed_spectra`` also returns the (B, C, h, w) float32 residual log-spectra the fingerprints
  came from (for ``ofa-sdk show`` and the evaluation's baselines);
* ``model_id`` is the id of the model it runs (:func:`ofa_sdk.weights.inference_id`);
* it never mutates the :class:`~ofa_sdk.weights.ModelBundle` it was given (two Attributors may
  share one bundle on different devices), and it is safe to call from several threads.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Protocol, Tuple, runtime_checkable

import numpy as np


def cpu_threads() -> int:
    """Threads for the CPU work outside PyTorch (ONNX Runtime, the C++ kernels): PyTorch's
    intra-op count when PyTorch is loaded, so ``torch.set_num_threads`` governs every engine
    alike; else the CPUs this process may run on (without importing PyTorch for it)."""
    torch = sys.modules.get("torch")
    if torch is not None:
        return torch.get_num_threads()
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:     # not Linux
        return os.cpu_count() or 1


def cuda_driver_absent() -> bool:
    """True when this host certainly has no NVIDIA driver, told without importing PyTorch: a
    Linux host without ``/proc/driver/nvidia``, ``/dev/nvidiactl`` or WSL's ``/dev/dxg``. False
    whenever PyTorch is already loaded (it answers itself) or the OS is not Linux."""
    if "torch" in sys.modules or not sys.platform.startswith("linux"):
        return False
    return not any(os.path.exists(p) for p in ("/proc/driver/nvidia", "/dev/nvidiactl", "/dev/dxg"))


class EngineUnavailable(RuntimeError):
    """The requested engine cannot run here (missing package, device or file)."""


@runtime_checkable
class Engine(Protocol):
    name: str          # the registry name, e.g. "torch"
    device: str        # e.g. "cpu", "cuda:0"
    model_id: str

    def embed(self, crops: np.ndarray) -> np.ndarray:
        """(B, c, c, 3) uint8 -> (B, d) float32 unit fingerprints."""
        ...

    def embed_spectra(self, crops: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
        """(B, c, c, 3) uint8 -> ((B, d) fingerprints, (B, C, h, w) residual log-spectra)."""
        ...


def check_crops(crops: np.ndarray, crop: int) -> np.ndarray:
    """The input contract, checked once for every engine: a clear error, never a shape error
    from deep inside a graph."""
    a = np.asarray(crops)
    if a.dtype != np.uint8 or a.ndim != 4 or a.shape[1:] != (crop, crop, 3):
        raise ValueError(f"an engine takes (B, {crop}, {crop}, 3) uint8 crops, got "
                         f"{a.dtype} array of shape {a.shape}")
    return np.ascontiguousarray(a)


def atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see the old file or the new one, never a part
    (engine plans, their records, parity records)."""
    path = Path(path)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)
