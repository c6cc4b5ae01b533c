"""Engines and how one is chosen.

The registry maps a name to ``"module:Class"``; modules import on first use, so no engine's
dependencies (onnxruntime, TensorRT, CUDA) load before they are asked for. A new engine is
one file implementing :class:`~ofa_sdk.backends.base.Engine` and one :func:`register` call.

``select_engine(name, bundle, device, strict)``: an explicit name that cannot run here falls
back to the PyTorch reference with a ``RuntimeWarning`` and a note (``strict=True`` raises
:class:`EngineUnavailable` instead); ``"auto"`` tries :data:`AUTO_ORDER` in order -- TensorRT,
then torch on CUDA (with the Triton kernels), then ONNX Runtime, then torch on the CPU --
keeping only the candidates on the requested device when one is given, and notes what it chose
and what it skipped and why. No fallback is silent: ``Attributor.backend`` and ``backend_note``
say what runs.
"""
from __future__ import annotations

import importlib
import warnings
from typing import Dict, NamedTuple, Optional

from .base import Engine, EngineUnavailable, check_crops

__all__ = ["Engine", "EngineUnavailable", "BackendUnavailable", "ENGINES", "BACKENDS",
           "AUTO_ORDER", "register", "engine_class", "select_engine", "Selection", "check_crops"]

BackendUnavailable = EngineUnavailable   # the 0.1 name

ENGINES: Dict[str, str] = {
    "torch": "ofa_sdk.backends.torch:TorchEngine",
    "onnxruntime": "ofa_sdk.backends.onnxruntime:OnnxRuntimeEngine",
    "tensorrt": "ofa_sdk.backends.tensorrt:TensorRTEngine",
}
# what backend="auto" tries, best first: (engine, device type)
AUTO_ORDER = (("tensorrt", "cuda"), ("torch", "cuda"), ("onnxruntime", "cpu"), ("torch", "cpu"))
REFERENCE = "torch"


def backend_names():
    """Every name ``backend=`` accepts."""
    return ("auto", *ENGINES)


BACKENDS = backend_names()


class Selection(NamedTuple):
    engine: Engine
    note: str          # why the engine differs from the one asked for ("" when it does not)


def register(name: str, target: str) -> None:
    """Add an engine: ``target`` is ``"package.module:Class"``, constructed as
    ``Class(bundle, device, **options)``."""
    global BACKENDS
    if ":" not in target:
        raise ValueError(f"engine target must be 'module:Class', got {target!r}")
    ENGINES[name] = target
    BACKENDS = backend_names()


def engine_class(name: str):
    if name not in ENGINES:
        raise ValueError(f"backend must be one of {backend_names()}, got {name!r}")
    module, cls = ENGINES[name].split(":")
    try:
        return getattr(importlib.import_module(module), cls)
    except ImportError as e:
        raise EngineUnavailable(f"backend {name!r} cannot be imported: {e}") from None


def _make(name: str, bundle, device, options: Optional[Dict] = None):
    return engine_class(name)(bundle, device, **(options or {}).get(name, {}))


def select_engine(name: str, bundle, device: Optional[str] = None, strict: bool = False,
                  options: Optional[Dict[str, Dict]] = None) -> Selection:
    """``options``: per engine name, keyword arguments for its constructor (e.g.
    ``{"onnxruntime": {"threads": 4}}``)."""
    if name != "auto" and name not in ENGINES:
        raise ValueError(f"backend must be one of {backend_names()}, got {name!r}")
    if name == "auto":
        want = None if device is None else str(device).split(":")[0]
        skipped = []
        for cand, kind in AUTO_ORDER:
            if cand not in ENGINES or (want is not None and kind != want):
                continue
            try:
                eng = _make(cand, bundle, device if want else kind, options)
                return Selection(eng, f"auto chose {cand} on {eng.device}"
                                 + (f" (skipped: {'; '.join(skipped)})" if skipped else ""))
            except EngineUnavailable as e:
                skipped.append(f"{cand} on {kind}: {e}")
        raise EngineUnavailable("no backend can run here: " + "; ".join(skipped))
    try:
        return Selection(_make(name, bundle, device, options), "")
    except EngineUnavailable as e:
        if strict:
            raise EngineUnavailable(f"{e} (strict=True)") from None
        reason = f"{e}; falling back to {REFERENCE!r}"
        warnings.warn(reason, RuntimeWarning, stacklevel=3)
        return Selection(_make(REFERENCE, bundle, device, options), reason)
