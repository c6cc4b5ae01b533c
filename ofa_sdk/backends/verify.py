"""Parity records: ``backend="auto"`` picks an engine on a host only after it matched the
reference there.

The reference is the torch engine on the CPU (every other engine is tested against it). Any
other engine that ``auto`` considers is checked the first time it is considered on a host: it
embeds a fixed set of probe crops (:func:`probe_crops`) and its fingerprints are compared with
the reference's within the tolerance of its precision (:data:`TOLERANCES`). The result, pass or
fail, with the measured error, is written beside the engine cache
(``$OFA_SDK_CACHE/verified/<engine>-<key>.json``, default ``~/.cache/ofa-sdk``) under a key of
everything the result depends on (:func:`host_fields`: host name, engine, device, GPU name and
compute capability, precision, model id, and the versions of Python, torch, the engine's own
package and ofa-sdk), so a new driver stack, GPU, package version or model is checked again and
a recorded failure is not retried until one of them changes. An engine that fails, or raises
while embedding the probes (a first run on a new GPU), is skipped with the reason in
``backend_note``; the next engine in :data:`ofa_sdk.backends.AUTO_ORDER` is tried.

An explicitly named backend is not held to this (the caller chose it); ``benchmarks/gpu_check.sh``
records the checks of every engine on a GPU host in one go (:func:`ensure_verified` with
``force=True``).

The check costs one batch of :data:`PROBES` crops through the engine and through the reference
(milliseconds on the CPU; an engine build, where there is one, costs far more and is cached
separately).
"""
from __future__ import annotations

import hashlib
import json
import platform
import sys
import time
from pathlib import Path
from typing import Dict, Optional, Tuple

import numpy as np

from .base import atomic_write

PROBES = 8
# per precision: (largest |difference| of a fingerprint coordinate, largest 1 - cosine) allowed
# against the torch CPU reference; fingerprints are unit vectors
TOLERANCES: Dict[str, Tuple[float, float]] = {
    "fp32": (1e-3, 1e-5),     # ONNX Runtime CPU measures ~1e-6; CUDA fp32 with TF32 off
    "fp16": (2e-2, 1e-3),
    "int8": (1e-1, 2e-2),
}
_PACKAGES = {"onnxruntime": "onnxruntime", "tensorrt": "tensorrt", "torch": "triton"}
_MEMO: Dict[str, Dict] = {}     # record path -> record, for cache folders that cannot be written


def records_dir() -> Path:
    from .graphs import default_cache_dir
    return default_cache_dir().parent / "verified"


def probe_crops(crop: int, n: int = PROBES) -> np.ndarray:
    """(n, crop, crop, 3) uint8, the same on every host: uniform noise, smooth gradients with
    mild noise (photo-like spectra), and the extremes 0 and 255 (fp16 range, saturation)."""
    rng = np.random.default_rng(20260101)
    yy, xx = np.mgrid[0:crop, 0:crop] / max(crop - 1, 1)
    out = []
    for i in range(n):
        if i % 4 == 0:
            a = rng.integers(0, 256, (crop, crop, 3))
        elif i % 4 == 3:
            a = np.where(rng.random((crop, crop, 3)) < 0.5, 0, 255)
        else:
            base = 255 * (0.5 + 0.5 * np.sin(2 * np.pi * (i * xx + (i + 1) * yy)))[..., None]
            a = base * rng.uniform(0.3, 1.0, 3) + rng.normal(0, 4 * i, (crop, crop, 3))
        out.append(np.clip(np.rint(a), 0, 255).astype(np.uint8))
    return np.stack(out)


def _version(module: str) -> Optional[str]:
    from importlib import metadata
    try:
        return metadata.version(module)
    except metadata.PackageNotFoundError:
        return None


def host_fields(engine, model_id: str) -> Dict:
    """Everything a parity result is valid for."""
    fields = {"host": platform.node(), "engine": engine.name, "device": str(engine.device),
              "precision": getattr(engine, "precision", "fp32"), "model_id": model_id,
              "python": platform.python_version(), "torch": _version("torch"),
              "ofa_sdk": _version("ofa-sdk"), "package": None, "gpu": None}
    pkg = _PACKAGES.get(engine.name)
    if pkg:
        fields["package"] = f"{pkg} {_version(pkg)}"
    if str(engine.device).startswith("cuda"):
        import torch
        props = torch.cuda.get_device_properties(torch.device(engine.device))
        fields["gpu"] = f"{props.name} sm{props.major}{props.minor}"
        fields["cuda"] = torch.version.cuda
        # which kernels a CUDA torch engine runs, and its TF32 switch: a pass of one path
        # says nothing of another
        from ..kernels import dispatch
        rep = dispatch.report()
        fields["kernels"] = {k: rep[k] for k in ("reference_forced", "prefer", "precision")}
        fields["tf32"] = getattr(engine, "tf32", None)
    return fields


def record_key(fields: Dict) -> str:
    return hashlib.sha1(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:16]


def parity(engine, reference, crops: np.ndarray) -> Dict:
    """Measured difference of ``engine``'s fingerprints from ``reference``'s on ``crops``."""
    want = reference.embed(crops).astype(np.float64)
    got = np.asarray(engine.embed(crops), dtype=np.float64)
    if got.shape != want.shape or not np.isfinite(got).all():
        return {"max_abs": float("inf"), "max_one_minus_cos": float("inf"),
                "detail": f"got {got.shape} fingerprints, finite={bool(np.isfinite(got).all())}"}
    cos = (got * want).sum(1) / (np.linalg.norm(got, axis=1) * np.linalg.norm(want, axis=1))
    return {"max_abs": float(np.abs(got - want).max()),
            "max_one_minus_cos": float((1 - cos).max())}


def check(engine, bundle) -> Dict:
    """Run the parity check of ``engine`` against the torch CPU reference now (no record)."""
    from .torch import TorchEngine
    tol_abs, tol_cos = TOLERANCES.get(getattr(engine, "precision", "fp32"), TOLERANCES["fp32"])
    rec: Dict = {"tolerance": {"max_abs": tol_abs, "max_one_minus_cos": tol_cos},
                 "probes": PROBES, "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    try:
        rec.update(parity(engine, TorchEngine(bundle, "cpu"), probe_crops(bundle.config.crop)))
        rec["passed"] = rec["max_abs"] <= tol_abs and rec["max_one_minus_cos"] <= tol_cos
    except Exception as e:  # noqa: BLE001 - an engine that cannot run the probes fails its check
        rec.update(passed=False, error=f"{type(e).__name__}: {e}"[:500])
    return rec


def why_not(rec: Dict) -> Optional[str]:
    """None for a passed record, else the reason it failed, in words."""
    if rec.get("passed"):
        return None
    if "error" in rec:
        return f"parity check raised {rec['error']}"
    return (f"parity check failed: max |diff| {rec['max_abs']:.3g} (allowed "
            f"{rec['tolerance']['max_abs']:g}), max 1-cos {rec['max_one_minus_cos']:.3g} "
            f"(allowed {rec['tolerance']['max_one_minus_cos']:g})")


def ensure_verified(engine, bundle, force: bool = False) -> Tuple[Optional[str], Dict]:
    """(None, record) when ``engine`` has a passed parity record on this host (checking and
    recording it first when there is none, or with ``force``); (reason, record) otherwise."""
    fields = host_fields(engine, bundle.model_id)
    key = record_key(fields)
    path = records_dir() / f"{engine.name}-{key}.json"
    rec = None if force else _MEMO.get(str(path)) or _read(path, key)
    if rec is None:
        rec = {"key": key, **fields, **check(engine, bundle)}
        _MEMO[str(path)] = rec
        if "error" in rec:      # a crash (out of memory, a compile error) holds for this process
            return why_not(rec), rec
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write(path, json.dumps(rec, indent=1).encode())
            rec["path"] = str(path)
        except OSError as e:   # a read-only cache: the result holds for this process only
            print(f"ofa-sdk: cannot record the parity check in {path}: {e}", file=sys.stderr)
    return why_not(rec), rec


def _read(path: Path, key: str) -> Optional[Dict]:
    try:
        rec = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return rec if rec.get("key") == key and "passed" in rec else None
