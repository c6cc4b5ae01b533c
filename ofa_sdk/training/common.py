"""Shared training machinery: photo data, the device and its precision, the prefetching loader,
checkpoints (safetensors + JSON, no pickle), logs.

Determinism: the data of step t (photos, crops, flips, noise, simulator architectures) is drawn
from a generator seeded by (run seed, stage, t) alone (:func:`step_generator`), so it does not
depend on what ran before or on which thread drew it, and a resumed run draws what an
uninterrupted one would. The other random choices of a stage (pair mining) draw from one
``torch.Generator`` seeded from the run's seed, whose state is saved in each checkpoint.

Devices (:func:`train_device`): ``"cpu"``, ``"cuda"``, ``"cuda:N"``, an int N. On CUDA the
trained network's forward runs under bf16 autocast (:func:`autocast`; losses, spectra and the
frozen simulator stay float32); ``precision="bf16"`` does the same on the CPU (how the tests
exercise that path here). The data of the coming steps is drawn on a background thread
(:class:`Prefetcher`), a bounded queue ahead of the training thread, in pinned memory on CUDA.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import queue
import subprocess
import sys
import threading
import time
import warnings
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np
import torch
from safetensors.torch import load_file

from ofa_sdk import images
from ofa_sdk.config import DataConfig
from ofa_sdk.weights import read_meta, write_file


# ------------------------------------------------------------------------------------------------
# Data
# ------------------------------------------------------------------------------------------------

def list_images(root: str | os.PathLike) -> List[Path]:
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"training data folder {str(root)!r} does not exist")
    return list(images.list_images(root))


def split_of(path: Path, root: Path, holdout: float = DataConfig.holdout) -> str:
    """Stable train/holdout split by a hash of the relative path (held-out photos give the
    content of evaluation sets, so evaluation never sees training photos)."""
    h = hashlib.sha1(str(path.relative_to(root)).encode()).digest()
    return "holdout" if int.from_bytes(h[:4], "big") / 2 ** 32 < holdout else "train"


def load_photo(path: Path, max_side: int = DataConfig.max_side) -> Optional[np.ndarray]:
    """HxWx3 uint8 (the SDK's own decoding: EXIF, modes, 16-bit), or None with a warning."""
    from ofa_sdk.images import to_rgb
    try:
        arr = to_rgb(path)
    except Exception as e:  # corrupt, truncated, unsupported: skip and count
        warnings.warn(f"skipping unreadable image {path}: {e}")
        return None
    h, w = arr.shape[:2]
    if h > max_side or w > max_side:
        t, l = max(0, (h - max_side) // 2), max(0, (w - max_side) // 2)
        arr = arr[t:t + max_side, l:l + max_side]
    return np.ascontiguousarray(arr)


class PhotoSet:
    """Real photos held in memory as uint8; random crops with flips as augmentation. ``holdout``
    and ``max_side``: ``OFAConfig.data`` (:class:`ofa_sdk.config.DataConfig`)."""

    def __init__(self, root: str | os.PathLike, split: str = "train", min_side: int = 64,
                 holdout: float = DataConfig.holdout, max_side: int = DataConfig.max_side):
        root = Path(root)
        paths = [p for p in list_images(root)
                 if split == "all" or split_of(p, root, holdout) == split]
        self.photos, self.paths, self.skipped = [], [], 0
        for p in paths:
            a = load_photo(p, max_side)
            if a is None or min(a.shape[:2]) < min_side:
                self.skipped += 1
                continue
            self.photos.append(a)
            self.paths.append(p)
        if not self.photos:
            raise RuntimeError(f"no usable photos under {root} (split {split!r})")
        self.root = root
        digest = hashlib.sha1("\n".join(str(p.relative_to(root)) for p in self.paths).encode())
        self.fingerprint = digest.hexdigest()[:16]

    def __len__(self):
        return len(self.photos)

    def batch(self, n: int, crop: int, g: torch.Generator, flip: bool = True) -> torch.Tensor:
        """(n,3,crop,crop) float in [0,1]: random photos, random crops, random h-flips."""
        out = torch.empty(n, 3, crop, crop)
        for k in range(n):
            a = self.photos[int(torch.randint(len(self.photos), (1,), generator=g))]
            h, w = a.shape[:2]
            if h < crop or w < crop:
                a = np.pad(a, ((0, max(0, crop - h)), (0, max(0, crop - w)), (0, 0)), mode="reflect")
                h, w = a.shape[:2]
            t = int(torch.randint(h - crop + 1, (1,), generator=g))
            l = int(torch.randint(w - crop + 1, (1,), generator=g))
            x = images.to_tensor(a[None, t:t + crop, l:l + crop])[0]
            if flip and bool(torch.rand(1, generator=g) < 0.5):
                x = x.flip(-1)
            out[k] = x
        return out

    def describe(self) -> Dict:
        return {"root": str(self.root), "images": len(self.photos), "skipped": self.skipped,
                "fingerprint": self.fingerprint}


# ------------------------------------------------------------------------------------------------
# Device, precision and the prefetching loader
# ------------------------------------------------------------------------------------------------

PRECISIONS = ("auto", "fp32", "bf16")
PREFETCH = 2          # batches drawn ahead of the training thread


def train_device(device=None) -> torch.device:
    """The training device: ``device`` as :func:`ofa_sdk.backends.resolve_device` takes it
    (None: the CPU); a CUDA device that is not there is a clear error."""
    from ofa_sdk.backends import EngineUnavailable, resolve_device
    from ofa_sdk.backends.torch import cuda_device
    dev = torch.device(resolve_device(device) or "cpu")
    if dev.type != "cuda":
        return dev
    try:
        return cuda_device(dev)
    except EngineUnavailable as e:
        raise RuntimeError(f"--device {device}: {e}") from None


def autocast(dev: torch.device, precision: str = "auto"):
    """The context the trained network's forward runs in: bf16 autocast on CUDA (``"auto"``)
    or wherever ``"bf16"`` asks for it, else nothing (float32)."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    on = precision == "bf16" or (precision == "auto" and dev.type == "cuda")
    if not on:
        return contextlib.nullcontext()
    return torch.autocast(device_type=dev.type, dtype=torch.bfloat16)


def step_generator(seed: int, stage: str, step: int) -> torch.Generator:
    """The generator of step ``step``'s data: a function of (seed, stage, step) only."""
    h = hashlib.sha1(f"{seed}/{stage}/{step}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(h[:8], "big") & (2 ** 63 - 1))


def to_device(batch, dev: torch.device):
    """Tensors of a (nested) tuple/list/dict batch moved to ``dev`` (asynchronously from
    pinned memory); anything else passes through."""
    if torch.is_tensor(batch):
        return batch.to(dev, non_blocking=True)
    if isinstance(batch, (list, tuple)):
        return type(batch)(to_device(b, dev) for b in batch)
    if isinstance(batch, dict):
        return {k: to_device(v, dev) for k, v in batch.items()}
    return batch


def _pin(batch):
    if torch.is_tensor(batch):
        return batch.pin_memory()
    if isinstance(batch, (list, tuple)):
        return type(batch)(_pin(b) for b in batch)
    if isinstance(batch, dict):
        return {k: _pin(v) for k, v in batch.items()}
    return batch


class Prefetcher:
    """The data of steps ``start+1 .. stop``, drawn on a background thread at most ``depth``
    batches ahead of the training thread (a bounded queue), so decoding, cropping, JPEG and the
    simulator's draws overlap the training step. ``draw(generator)`` makes one step's batch
    from :func:`step_generator`; on CUDA it is pinned there and moved to the device as it is
    taken. Iterating yields ``(step, batch)``; an error in ``draw`` is raised in the training
    thread; leaving early (``close``, or the ``with`` block) stops the thread."""

    def __init__(self, draw: Callable[[torch.Generator], object], seed: int, stage: str,
                 start: int, stop: int, device: torch.device, depth: int = PREFETCH):
        self.draw, self.seed, self.stage, self.dev = draw, seed, stage, torch.device(device)
        self.steps = range(start + 1, stop + 1)
        self.queue: "queue.Queue" = queue.Queue(maxsize=max(1, depth))
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._work, name=f"ofa-train-{stage}-data",
                                       daemon=True)
        self.thread.start()

    def _put(self, item) -> bool:
        while not self._stop.is_set():
            try:
                self.queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _work(self):
        pin = self.dev.type == "cuda"
        try:
            for step in self.steps:
                batch = self.draw(step_generator(self.seed, self.stage, step))
                if not self._put((step, _pin(batch) if pin else batch, None)):
                    return
        except BaseException as e:  # noqa: BLE001 - handed to the training thread
            self._put((None, None, e))

    def __iter__(self):
        for _ in self.steps:
            step, batch, err = self.queue.get()
            if err is not None:
                raise RuntimeError(f"{self.stage}: drawing the data failed: {err}") from err
            yield step, to_device(batch, self.dev)

    def close(self):
        self._stop.set()
        self.thread.join(timeout=10)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


# ------------------------------------------------------------------------------------------------
# Checkpoints: safetensors tensors + JSON metadata in the header. No pickle anywhere.
# ------------------------------------------------------------------------------------------------

def git_commit() -> str:
    try:
        here = Path(__file__).resolve().parent
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True,
                              text=True, timeout=5).stdout.strip() or "unknown"
    except Exception:
        return "unknown"


def optimizer_tensors(opt: torch.optim.Optimizer) -> Tuple[Dict[str, torch.Tensor], Dict]:
    sd = opt.state_dict()
    tensors, scalars = {}, {}
    for pid, st in sd["state"].items():
        for k, v in st.items():
            if torch.is_tensor(v):
                tensors[f"optim.{pid}.{k}"] = v.detach().cpu().contiguous()
            else:
                scalars[f"{pid}.{k}"] = v
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def load_optimizer(opt: torch.optim.Optimizer, tensors: Dict[str, torch.Tensor], meta: Dict):
    state: Dict[int, Dict] = {}
    for key, v in tensors.items():
        if key.startswith("optim."):
            _, pid, k = key.split(".", 2)
            state.setdefault(int(pid), {})[k] = v
    for key, v in meta.get("scalars", {}).items():
        pid, k = key.split(".", 1)
        state.setdefault(int(pid), {})[k] = v
    opt.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


def save_checkpoint(path: Path, modules: Dict[str, torch.nn.Module], meta: Dict,
                    optimizer: Optional[torch.optim.Optimizer] = None,
                    generator: Optional[torch.Generator] = None,
                    extra: Optional[Dict[str, torch.Tensor]] = None) -> None:
    """Atomic write (tmp file + rename) of weights, optimizer state and RNG state."""
    tensors = {}
    for name, mod in modules.items():
        for k, v in mod.state_dict().items():
            tensors[f"{name}.{k}"] = v.detach().cpu().contiguous()
    meta = dict(meta)
    if optimizer is not None:
        ot, om = optimizer_tensors(optimizer)
        tensors.update(ot)
        meta["optimizer"] = om
    if generator is not None:
        tensors["rng.generator"] = generator.get_state()
    tensors["rng.torch"] = torch.get_rng_state()
    for k, v in (extra or {}).items():
        tensors[f"extra.{k}"] = v.detach().cpu().contiguous()
    write_file(path, tensors, meta)


read_metadata = read_meta  # checkpoints and model files share one format (ofa_sdk.weights)


def load_checkpoint(path: Path, modules: Dict[str, torch.nn.Module],
                    optimizer: Optional[torch.optim.Optimizer] = None,
                    generator: Optional[torch.Generator] = None) -> Tuple[Dict, Dict]:
    tensors = load_file(str(path))
    meta = read_metadata(path)
    for name, mod in modules.items():
        prefix = name + "."
        sd = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
        mod.load_state_dict(sd)
    if optimizer is not None and "optimizer" in meta:
        load_optimizer(optimizer, tensors, meta["optimizer"])
    if generator is not None and "rng.generator" in tensors:
        generator.set_state(tensors["rng.generator"])
    if "rng.torch" in tensors:
        torch.set_rng_state(tensors["rng.torch"])
    extra = {k[6:]: v for k, v in tensors.items() if k.startswith("extra.")}
    return meta, extra


def set_lr(opt: torch.optim.Optimizer, base: float, step: int, total: int,
           warmup: int = 0, floor: float = 0.05) -> float:
    """Linear warm-up then cosine decay to ``floor * base``; a pure function of the step, so a
    resumed run follows the same schedule."""
    import math
    f = floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(step, total) / max(total, 1)))
    if warmup and step < warmup:
        f *= step / warmup
    lr = base * f
    for pg in opt.param_groups:
        pg["lr"] = lr
    return lr


def open_run(out: Path, stage: str, modules: Dict[str, torch.nn.Module],
             optimizer: torch.optim.Optimizer, generator: torch.Generator, resume: bool,
             total: int, desc: str, quiet: bool = False) -> Tuple[Path, int, "RunLog"]:
    """A stage's checkpoint ``out/STAGE.safetensors``, the step it resumes after (0: a fresh run;
    with ``resume`` an existing checkpoint is loaded into ``modules``, the optimizer and the
    generator) and its log ``out/STAGE.jsonl``."""
    ckpt, start = out / f"{stage}.safetensors", 0
    if resume and ckpt.exists():
        meta, _ = load_checkpoint(ckpt, modules, optimizer, generator)
        start = meta["step"]
    return ckpt, start, RunLog(out / f"{stage}.jsonl", total, start, desc, quiet)


# ------------------------------------------------------------------------------------------------
# Logging and progress
# ------------------------------------------------------------------------------------------------

class RunLog:
    """Append-only JSONL log plus a tqdm progress bar showing loss and throughput."""

    def __init__(self, path: Path, total: int, start: int, desc: str, quiet: bool = False):
        from tqdm import tqdm
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.exists():  # a resumed run: drop records past the checkpoint it resumes from
            keep = [l for l in path.read_text().splitlines(keepends=True)
                    if l.strip() and json.loads(l).get("step", 0) <= start]
            path.write_text("".join(keep))
        self.f = open(path, "a", buffering=1)
        self.bar = tqdm(total=total, initial=start, desc=desc, disable=quiet,
                        dynamic_ncols=True, file=sys.stderr, mininterval=2.0)
        self.t0, self.n0 = time.time(), 0

    def step(self, step: int, images: int, **values) -> None:
        self.n0 += images
        dt = max(time.time() - self.t0, 1e-9)
        rec = {"step": step, "time": round(time.time(), 3), "img_per_s": round(self.n0 / dt, 2)}
        rec.update({k: (round(v, 6) if isinstance(v, float) else v) for k, v in values.items()})
        self.f.write(json.dumps(rec) + "\n")
        self.bar.set_postfix({k: f"{v:.4g}" for k, v in values.items()
                              if isinstance(v, float)} | {"img/s": f"{rec['img_per_s']:.1f}"},
                             refresh=False)
        self.bar.update(1)

    def close(self):
        self.bar.close()
        self.f.close()
