"""Model files: one safetensors file holding the inference model (denoiser, extractor, heads)
and the frozen simulator, stored in fp16, with JSON metadata (configuration, training record,
calibration). No pickle anywhere: :func:`write_file` / :func:`read_meta` are the one home of the
safetensors-plus-JSON format, for model files and training checkpoints alike.

``load_default_model()`` loads the model shipped inside the package; ``load_model(path)`` any
file written by ``ofa-train export``.

A model's id (:func:`inference_id`) is a hash of what decides its fingerprints: the inference
tensors (``model.*``, as stored) and the configuration that shapes inference (everything but the
training stages, losses and data). The calibration, the training record and the file's other bytes are
left out, so ``ofa-train calibrate`` keeps the id and an ONNX export of the same weights carries
the same id. Gallery profiles record it; fingerprints of different models are never compared.
Profiles enrolled before this id existed recorded a hash of the file's bytes: that hash is the
bundle's legacy id and is still accepted for the same file (:attr:`ModelBundle.ids`).

Integrity: a folder of model files may carry ``MANIFEST.json`` (``{name: {"sha256", "bytes"}}``;
the package ships one for ``weights/``). :func:`load_model` of a file listed in the manifest of
its own folder checks its size and sha256 on the very bytes it then loads, and refuses a
truncated or tampered file naming what mismatched; an unlisted file (a user's own model) loads
as before, and a truncated or corrupt one raises a ``ValueError`` naming it. Files are never
unpickled. :func:`write_manifest` (re)writes a manifest.

Hostile files: only a regular file is read (a pipe or a device is refused without being
opened for reading, so loading cannot block), at most :data:`MAX_MODEL_BYTES`; a header over
:data:`MAX_HEADER_BYTES` is refused from its length field before it is parsed, and every parse
failure of the header or the metadata -- JSON nested deeper than the parser's recursion limit
included -- becomes the same ``ValueError`` naming the file.
"""
from __future__ import annotations

import hashlib
import json
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Optional, Tuple

import numpy as np

from .config import TRAINING_SECTIONS  # not part of the model id

# The models shipped in the package, by name: ``Attributor(model=NAME)``. The default is the
# newest; an older one stays loadable under its name, so that galleries enrolled with it keep
# working (a profile is refused by any other model). Their cards: docs/model-card.md.
SHIPPED = Path(__file__).resolve().parent / "weights"
MODELS = {"compact-v2": SHIPPED / "compact-v2.safetensors",   # the default (issue 31 fine-tune)
          "compact": SHIPPED / "compact.safetensors"}         # the previous default
DEFAULT_NAME = "compact-v2"
DEFAULT_MODEL = MODELS[DEFAULT_NAME]
META_KEY = "ofa"                     # the safetensors metadata key holding the JSON
MANIFEST_NAME = "MANIFEST.json"      # {file name: {"sha256": hex, "bytes": size}} of a folder
MAX_HEADER_BYTES = 16 * 1024 * 1024   # a model file's JSON header (the shipped one is ~30 KB)
MAX_MODEL_BYTES = 4 * 1024 ** 3       # the largest model file read


@dataclass
class ModelBundle:
    """A loaded model: its configuration, id, file, metadata and inference tensors, and the
    torch module built from them (:attr:`model`: float32, eval, frozen; engines never mutate
    it). The module is built on first use, so a process that runs only the ONNX Runtime engine
    with shipped graphs and the numpy score rules never imports PyTorch."""
    config: "object"           # OFAConfig
    model_id: str
    path: Path
    meta: Dict = field(default_factory=dict)
    legacy_id: str = ""        # hash of the file's bytes: the id profiles recorded before inference_id
    tensors: Dict = field(default_factory=dict, repr=False)   # the model.* tensors as stored
    device: Optional[str] = None   # where :attr:`model` is put when built
    _model: Optional[object] = field(default=None, repr=False)
    _simulator: Optional[object] = None
    _lock: object = field(default_factory=threading.Lock, repr=False, compare=False)

    @property
    def ids(self) -> Tuple[str, ...]:
        """Every id a profile made with this model may carry."""
        return (self.model_id, self.legacy_id) if self.legacy_id else (self.model_id,)

    @property
    def model(self):
        """The ``OFAModel`` (built from :attr:`tensors` on first use; a ValueError naming the
        file when they do not make a model of its own configuration)."""
        if self._model is None:
            with self._lock:
                if self._model is None:
                    self._model = _build_model(self.path, self.config, self.tensors, self.device)
        return self._model

    def __getstate__(self):       # picklable (workers, Ray actors): a lock is not
        return {k: v for k, v in self.__dict__.items() if k != "_lock"}

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def pair_head(self):
        """The pair head as numpy arrays (:class:`ofa_sdk.scoring.PairHeadWeights`), read from
        the stored tensors: the pair rule never needs the torch module."""
        from .scoring import PairHeadWeights
        pre = "model.pair_head."
        arr = {k[len(pre):]: _numpy(v) for k, v in self.tensors.items() if k.startswith(pre)}
        rest = sorted({int(k.split(".")[1]) for k in arr if k.startswith("rest.")})
        return PairHeadWeights.from_arrays(arr["first.weight"], arr["first.bias"],
                                           [(arr[f"rest.{i}.weight"], arr[f"rest.{i}.bias"]) for i in rest],
                                           self.config.extractor.dim)

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


def sha256_hex(source) -> str:
    """SHA-256 hex digest of ``source``: bytes, or a file path (read in 1 MiB chunks)."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        return hashlib.sha256(source).hexdigest()
    h = hashlib.sha256()
    with open(source, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def file_id(source) -> str:
    """Short hash of a file's bytes (a path, or the bytes): the legacy model id, and the tag of an
    exported graph in TensorRT cache keys."""
    return sha256_hex(source)[:16]


def inference_config(config: Dict) -> Dict:
    """The part of a configuration dict that shapes inference (what the model id covers)."""
    return {k: v for k, v in config.items() if k not in TRAINING_SECTIONS}


def inference_id(tensors: Dict, config: Dict) -> str:
    """The model id: sha256 over the ``model.*`` tensors (name, dtype as PyTorch names it,
    shape, bytes, in name order) and :func:`inference_config` of ``config``, as JSON with sorted
    keys. Tensors may be torch tensors or numpy arrays (the same id for the same values)."""
    h = hashlib.sha256()
    h.update(json.dumps(inference_config(config), sort_keys=True).encode())
    for name in sorted(k for k in tensors if k.startswith("model.")):
        t = tensors[name]
        if isinstance(t, np.ndarray):
            # numpy names these dtypes as PyTorch does ("float16", "int64", "bool")
            dtype, raw = f"torch.{t.dtype.name}", np.ascontiguousarray(t).tobytes()
        else:
            import torch
            t = t.detach().cpu().contiguous()
            dtype, raw = str(t.dtype), (t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
        h.update(f"{name}|{dtype}|{tuple(int(n) for n in t.shape)}|".encode())
        h.update(raw)
    return h.hexdigest()[:16]


def _numpy(t) -> np.ndarray:
    """A stored tensor as a float32 numpy array."""
    if isinstance(t, np.ndarray):
        return t.astype(np.float32)
    return t.detach().float().cpu().numpy()


def read_meta(path) -> Dict:
    """The JSON metadata of a model file or training checkpoint."""
    from safetensors import safe_open
    with safe_open(str(path), "pt") as f:
        md = f.metadata() or {}
    if META_KEY not in md:
        raise ValueError(f"{path} is not an ofa-sdk file (no {META_KEY!r} metadata)")
    try:
        return json.loads(md[META_KEY])
    except (ValueError, RecursionError) as e:
        raise ValueError(f"{path} has unreadable ofa-sdk metadata ({_why(e)})") from None


def write_file(path, tensors: Dict, meta: Dict) -> None:
    """Atomically write tensors + JSON metadata (a temporary file renamed over ``path``)."""
    from safetensors.torch import save_file
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    save_file(tensors, str(tmp), metadata={META_KEY: json.dumps(meta, default=str)})
    os.replace(tmp, path)


def read_manifest(folder) -> Dict[str, Dict]:
    """The manifest of ``folder`` (``{}`` when it has none)."""
    mf = Path(folder) / MANIFEST_NAME
    if not mf.is_file():
        return {}
    try:
        entries = json.loads(mf.read_text())
        if not isinstance(entries, dict) or not all(
                isinstance(v, dict) and {"sha256", "bytes"} <= set(v) for v in entries.values()):
            raise ValueError("expected {name: {'sha256': ..., 'bytes': ...}}")
    except (ValueError, RecursionError) as e:  # json.JSONDecodeError is a ValueError
        raise ValueError(f"model manifest {mf} is unreadable ({e}); restore it, or rewrite it "
                         f"with ofa_sdk.weights.write_manifest({str(mf.parent)!r})") from None
    return entries


def write_manifest(folder, patterns=("*.safetensors",)) -> Path:
    """(Re)write ``folder/MANIFEST.json``: size and sha256 of every file of ``folder`` matching
    ``patterns`` (globs relative to ``folder``; e.g. add ``"engines/*/*.onnx"``). Returns its path.

    The package ships one for ``ofa_sdk/weights/``, and :func:`load_model` refuses a listed file
    whose bytes do not match it. ``ofa-train export`` / ``ofa-train calibrate`` write model files
    through :func:`save_model` / :func:`update_meta`, which refresh the entry of a file already
    listed in its folder's manifest; any other way of putting a model file into the package
    (a first export of a new file name, a copy) must be followed by
    ``write_manifest("ofa_sdk/weights")``, or loading it fails (listed file) or is unchecked
    (new file)."""
    folder = Path(folder)
    files = sorted({p for pat in patterns for p in folder.glob(pat)
                    if p.is_file() and p.name != MANIFEST_NAME})
    entries = {}
    for p in files:
        data = p.read_bytes()
        entries[p.relative_to(folder).as_posix()] = {"sha256": sha256_hex(data), "bytes": len(data)}
    return _write_manifest(folder, entries)


def _write_manifest(folder: Path, entries: Dict) -> Path:
    mf = folder / MANIFEST_NAME
    tmp = mf.with_name(mf.name + ".tmp")
    tmp.write_text(json.dumps(entries, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, mf)
    return mf


def _refresh_manifest_entry(path: Path) -> None:
    """After this module rewrote ``path``: update its entry if its folder's manifest lists it."""
    try:
        entries = read_manifest(path.parent)
    except ValueError:
        return  # an unreadable manifest is reported when the file is loaded, not here
    if path.name in entries:
        data = path.read_bytes()
        entries[path.name] = {"sha256": sha256_hex(data), "bytes": len(data)}
        _write_manifest(path.parent, entries)


def check_manifest(path, data: Optional[bytes] = None) -> bool:
    """Check a model file (or its bytes ``data``) against the manifest of its own folder.
    True: listed and matching; False: not listed; a mismatch raises ``ValueError``."""
    path = Path(path)
    entry = read_manifest(path.parent).get(path.name)
    if entry is None:
        return False
    data = path.read_bytes() if data is None else data
    fix = (f"the file was truncated, corrupted or replaced: reinstall ofa-sdk (or restore the "
           f"file); if it was re-exported on purpose, run "
           f"ofa_sdk.weights.write_manifest({str(path.parent)!r})")
    if len(data) != int(entry["bytes"]):
        raise ValueError(f"model file {path} failed its integrity check: size {len(data)} bytes, "
                         f"{MANIFEST_NAME} lists {entry['bytes']}; {fix}")
    digest = sha256_hex(data)
    if digest != entry["sha256"]:
        raise ValueError(f"model file {path} failed its integrity check: sha256 {digest}, "
                         f"{MANIFEST_NAME} lists {entry['sha256']}; {fix}")
    return True


def _why(e: BaseException) -> str:
    """A parse error in words (a RecursionError's own message names no input)."""
    if isinstance(e, RecursionError):
        return "JSON nested too deeply"
    return str(e) or type(e).__name__


def _read(path: Path) -> bytes:
    """A model file's bytes: a regular file only, at most MAX_MODEL_BYTES, never blocking."""
    from .images import read_file
    try:
        return read_file(path, MAX_MODEL_BYTES)
    except FileNotFoundError as e:
        raise FileNotFoundError(f"model file {str(path)!r} not found ({e})") from None
    except (OSError, ValueError) as e:
        if str(e) == "empty file":
            return b""                  # reported by _parse as a truncated file
        raise ValueError(f"model file {path} cannot be read: {e}") from None


def _parse(path: Path, data: bytes):
    """(metadata, tensors) of a safetensors file's bytes; ValueError naming the file when they
    are not a complete ofa-sdk model file."""
    bad = f"model file {path} is truncated or corrupt (not a complete safetensors file)"
    if len(data) < 8:
        raise ValueError(f"{bad}: {len(data)} bytes")
    n = int.from_bytes(data[:8], "little")
    if n > MAX_HEADER_BYTES:
        raise ValueError(f"{bad}: its header claims {n} bytes, over the {MAX_HEADER_BYTES} byte "
                         f"limit of a model header")
    if n > len(data) - 8:
        raise ValueError(f"{bad}: its header claims {n} bytes, the file has {len(data)}")
    try:
        header = json.loads(data[8:8 + n])
        md = header.get("__metadata__") if isinstance(header, dict) else None
        md = (md or {}) if isinstance(md, (dict, type(None))) else None
    except (ValueError, UnicodeDecodeError, RecursionError) as e:
        raise ValueError(f"{bad}: unreadable header ({_why(e)})") from None
    if md is None or META_KEY not in md:
        raise ValueError(f"{path} is not an ofa-sdk file (no {META_KEY!r} metadata)")
    try:
        meta = json.loads(md[META_KEY])
        config = meta["config"]
        if not isinstance(config, dict):
            raise TypeError(f"config is a {type(config).__name__}, not an object")
    except (ValueError, KeyError, TypeError, RecursionError) as e:
        raise ValueError(f"model file {path} has unreadable ofa-sdk metadata "
                         f"({_why(e) if isinstance(e, RecursionError) else repr(e)})") from None
    try:
        tensors = _load_tensors(data)
    except Exception as e:  # safetensors' own error type; never a raw one to the caller
        raise ValueError(f"{bad}: {e}") from None
    return meta, config, tensors


def _load_tensors(data: bytes) -> Dict:
    """A safetensors file's tensors as numpy arrays, without PyTorch; as torch tensors where
    numpy has no such dtype (bfloat16)."""
    from safetensors.numpy import load
    try:
        return load(data)
    except KeyError:        # a dtype numpy lacks (safetensors names it: 'BF16')
        from safetensors.torch import load as load_torch
        return load_torch(data)


def _build_model(path, cfg, tensors: Dict, device=None):
    """The ``OFAModel`` of ``cfg`` holding ``tensors`` (float32, eval, frozen), on ``device``."""
    import torch

    from .models import OFAModel
    try:
        model = OFAModel(cfg)
        model.load_state_dict({k[len("model."):]: (torch.from_numpy(np.array(v)) if isinstance(v, np.ndarray)
                                                    else v).float()
                               for k, v in tensors.items() if k.startswith("model.")})
    except (RuntimeError, KeyError, TypeError, ValueError, AttributeError) as e:
        # RuntimeError includes RecursionError
        raise ValueError(f"model file {path} does not hold a model of its own configuration: "
                         f"{_why(e).splitlines()[0]}") from None
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    if device is not None:
        model.to(torch.device(device))
    return model


def load_model(path, device=None) -> ModelBundle:
    """Load a model file. A file its folder's manifest vouches for (a shipped model, or one
    ``ofa-train export`` wrote) builds its torch module on first use (:attr:`ModelBundle.model`);
    any other is built now, so a file that does not hold a model of its own configuration is
    refused here, naming it."""
    from .config import OFAConfig

    path = Path(path)
    # one read: the bytes checked against the manifest are the bytes loaded
    data = _read(path)
    vouched = check_manifest(path, data)
    meta, config, tensors = _parse(path, data)
    legacy = file_id(data)
    del data
    try:
        cfg = OFAConfig.from_dict(config)
    except (RuntimeError, KeyError, TypeError, ValueError, AttributeError) as e:   # incl. RecursionError
        raise ValueError(f"model file {path} does not hold a model of its own configuration: "
                         f"{_why(e).splitlines()[0]}") from None
    tensors = {k: v for k, v in tensors.items() if k.startswith("model.")}
    bundle = ModelBundle(cfg, inference_id(tensors, config), path, meta, legacy, tensors,
                         None if device is None else str(device))
    if not vouched or device is not None:
        bundle.model   # noqa: B018 - built now: checked at load, or put on its device
    return bundle


def load_default_model(device=None) -> ModelBundle:
    """The default model shipped in the package (:data:`DEFAULT_NAME`)."""
    if not DEFAULT_MODEL.is_file():
        raise FileNotFoundError(
            f"this installation has no shipped default model ({DEFAULT_MODEL}); train one with "
            "'ofa-train all --config compact --data DIR' and 'ofa-train export'")
    return load_model(DEFAULT_MODEL, device)


def model_path(model=None) -> Path:
    """The file of ``model``: None (the shipped default), the name of a shipped model
    (:data:`MODELS`) or a model file's path."""
    if model is None:
        return DEFAULT_MODEL
    return MODELS[model] if isinstance(model, str) and model in MODELS else Path(model)


def as_bundle(model=None, device=None) -> ModelBundle:
    """A loaded model from what callers accept as ``model=``: None (the shipped default), the
    name of a shipped model (:data:`MODELS`), a :class:`ModelBundle` (as it is) or a model
    file."""
    if model is None:
        return load_default_model(device)
    if isinstance(model, ModelBundle):
        return model
    return load_model(model_path(model), device)


def save_model(path, model, simulator, meta: Dict, dtype="float16") -> str:
    """Write an inference model file (used by ``ofa-train export``). Returns its model id."""
    import torch
    dt = getattr(torch, dtype)
    tensors = {f"model.{k}": (v.to(dt) if v.is_floating_point() else v).contiguous()
               for k, v in model.state_dict().items()}
    if simulator is not None:
        tensors.update({f"simulator.{k}": (v.to(dt) if v.is_floating_point() else v).contiguous()
                        for k, v in simulator.state_dict().items()})
    write_file(path, tensors, meta)
    _refresh_manifest_entry(Path(path))
    return inference_id(tensors, meta["config"])


def update_meta(path, updates: Dict) -> str:
    """Merge ``updates`` into a model file's metadata, tensors untouched (used by
    ``ofa-train calibrate``). The model id does not change; it is returned."""
    from safetensors.torch import load_file
    meta = read_meta(path)
    meta.update(updates)
    tensors = load_file(str(path))
    write_file(path, tensors, meta)
    _refresh_manifest_entry(Path(path))
    return inference_id(tensors, meta["config"])
