"""Engines and how one is chosen.

The registry maps a name to ``"module:Class"``; modules import on first use, so no engine's
dependencies (onnxruntime, TensorRT, CUDA) load before they are asked for. A new engine is
one file implementing :class:`~ofa_sdk.backends.base.Engine` and one :func:`register` call.

``select_engine(name, bundle, device, strict)``: an explicit name that cannot run here falls
back to the PyTorch reference with a ``RuntimeWarning`` and a note (``strict=True`` raises
:class:`EngineUnavailable` instead); ``"auto"`` tries :data:`AUTO_ORDER` in order -- TensorRT,
then torch on CUDA (with the Triton kernels), then ONNX Runtime, then torch on the CPU --
keeping only the candidates on the requested device when one is given, and takes the first
that constructs and has passed its parity check on this host (:mod:`.verify`; the CPU reference
needs none), noting what it chose and what it skipped and why. ``device`` takes what PyTorch
does (:func:`resolve_device`: 0, "cuda:1", "cpu", a ``torch.device``). No fallback is silent:
``Attributor.backend`` and ``backend_note`` say what runs.
"""
from __future__ import annotations

import importlib
import warnings
from typing import Dict, NamedTuple, Optional

from .base import Engine, EngineUnavailable, check_crops, cuda_driver_absent

__all__ = ["Engine", "EngineUnavailable", "BackendUnavailable", "ENGINES", "BACKENDS",
           "AUTO_ORDER", "register", "engine_class", "select_engine", "Selection", "check_crops",
           "resolve_device"]

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


def resolve_device(device) -> Optional[str]:
    """``device=`` as PyTorch and detector SDKs take it -> ``None`` (any), ``"cpu"`` or
    ``"cuda:N"``: an int N or a digit string (CUDA device N), ``"cuda"``, ``"cuda:N"``,
    ``"cpu"``, or a ``torch.device``. Anything else is a ValueError naming the input."""
    bad = f"device must be an int, 'cpu', 'cuda', 'cuda:N' or a torch.device, got {device!r}"
    if device is None:
        return None
    if isinstance(device, bool):
        raise ValueError(bad)
    if isinstance(device, int):
        if device < 0:
            raise ValueError(f"device={device!r}: a CUDA device index must be >= 0")
        return f"cuda:{device}"
    text = str(device).strip().lower()     # str() also takes a torch.device
    if text.isdigit():
        return f"cuda:{int(text)}"
    kind, _, index = text.partition(":")
    if kind == "cpu" and not index:
        return "cpu"
    if kind == "cuda" and (not index or index.isdigit()):
        return text
    raise ValueError(bad)


def _make(name: str, bundle, device, options: Optional[Dict] = None):
    """Construct an engine; an optional package that fails to import inside the constructor
    (e.g. ``onnx`` missing beside ``tensorrt``) is the engine being unavailable, not a crash."""
    try:
        return engine_class(name)(bundle, device, **(options or {}).get(name, {}))
    except ImportError as e:
        err = EngineUnavailable(f"backend {name!r} needs a package that failed to import: {e}")
        err.broken_install = True      # installed, but incompletely: worth a warning in auto
        raise err from None


def select_engine(name: str, bundle, device=None, strict: bool = False,
                  options: Optional[Dict[str, Dict]] = None, verify: bool = True) -> Selection:
    """``options``: per engine name, keyword arguments for its constructor (e.g.
    ``{"onnxruntime": {"threads": 4}}``). ``device``: see :func:`resolve_device`. ``verify``:
    ``auto`` takes an engine other than the CPU reference only with a passed parity record on
    this host (:mod:`ofa_sdk.backends.verify`)."""
    if name != "auto" and name not in ENGINES:
        raise ValueError(f"backend must be one of {backend_names()}, got {name!r}")
    asked = device
    device = resolve_device(device)
    on = "" if device is None else f" on device {device!r}" + (
        f" (device={asked!r})" if str(asked) != device else "")
    if name == "auto":
        want = None if device is None else device.split(":")[0]
        skipped = []
        for cand, kind in AUTO_ORDER:
            if cand not in ENGINES or (want is not None and kind != want):
                continue
            if kind == "cuda" and cuda_driver_absent():
                skipped.append(f"{cand} on cuda: no NVIDIA driver on this host")
                continue
            try:
                eng = _make(cand, bundle, device if want else kind, options)
            except EngineUnavailable as e:
                skipped.append(f"{cand} on {kind}: {e}")
                if getattr(e, "broken_install", False):
                    warnings.warn(f"{e}; auto goes on to the next engine", RuntimeWarning, stacklevel=3)
                continue
            checked = verify and not (cand == REFERENCE and kind == "cpu")
            if checked:
                from .verify import ensure_verified
                why, _ = ensure_verified(eng, bundle)
                if why:
                    skipped.append(f"{cand} on {eng.device}: {why}")
                    continue
            return Selection(eng, f"auto chose {cand} on {eng.device}"
                             + (" (parity verified on this host)" if checked else "")
                             + (f" (skipped: {'; '.join(skipped)})" if skipped else ""))
        raise EngineUnavailable(f"no backend can run here{on}: "
                                + ("; ".join(skipped) or f"no engine runs on {want!r} devices"))
    try:
        return Selection(_make(name, bundle, device, options), "")
    except EngineUnavailable as e:
        if strict:
            raise EngineUnavailable(f"{e} (strict=True)") from None
        reason = f"{e}; falling back to {REFERENCE!r}"
        try:
            eng = _make(REFERENCE, bundle, device, options)
        except EngineUnavailable as e2:
            raise EngineUnavailable(f"backend {name!r} cannot run{on}: {e}; nor can the "
                                    f"{REFERENCE!r} fallback: {e2}") from None
        warnings.warn(reason, RuntimeWarning, stacklevel=3)
        return Selection(eng, reason)
