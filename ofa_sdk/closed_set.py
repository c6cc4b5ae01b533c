"""Closed/open-set attribution head (paper Sec. 4.2, Tables 4-5).

A (T+1)-way classifier on the frozen fingerprints z: T known generators plus a rejection class
fed with simulator reconstructions of real photos (random architectures, so "some generator that
is none of the known ones"). Open-set score: the maximum known-class probability (POSE).

Training is full-batch Adam on cached fingerprints with class-balanced cross-entropy: seconds on
a CPU. The head is persisted in the gallery with the classes and the model id it was fit on.
:func:`fit_closed_set` and :func:`open_set` run it with an Attributor's engine and gallery.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from . import images as imio
from .images import from_tensor, to_tensor

REJECT = "__reconstructed_real__"


def make_head(dim: int, n_out: int, hidden: int = 128):
    import torch.nn as nn
    return nn.Sequential(nn.Linear(dim, hidden), nn.ReLU(), nn.Dropout(0.1), nn.Linear(hidden, n_out))


def fit_head(known: Dict[str, np.ndarray], reject: np.ndarray, epochs: int = 300,
             lr: float = 3e-3, weight_decay: float = 1e-4, hidden: int = 128, seed: int = 0):
    """known: class -> (n_c, d) fingerprints; reject: (n_r, d). Returns (head, classes, stats).

    The head trains on standardised fingerprints (each dimension centred and scaled by the
    training set's mean and spread) and the standardisation is then folded into its first
    layer, so it takes raw fingerprints and its stored form is unchanged. A unit fingerprint's
    dimensions are small and unequal in spread; unstandardised, the same Adam steps left the
    head far from fitting its own training set (benchmarks/RESULTS.md 3.1)."""
    import torch
    import torch.nn.functional as F
    classes = sorted(known) + [REJECT]
    xs = [known[c] for c in classes[:-1]] + [reject]
    if any(len(x) == 0 for x in xs):
        raise ValueError("every known class and the rejection class need fingerprints")
    x = torch.from_numpy(np.concatenate(xs).astype(np.float32))
    y = torch.cat([torch.full((len(v),), i, dtype=torch.long) for i, v in enumerate(xs)])
    counts = torch.bincount(y, minlength=len(classes)).float()
    weight = counts.sum() / (len(classes) * counts)
    mu, sd = x.mean(0), x.std(0).clamp_min(1e-6)
    torch.manual_seed(seed)
    head = make_head(x.shape[1], len(classes), hidden)
    opt = torch.optim.Adam(head.parameters(), lr=lr, weight_decay=weight_decay)
    head.train()
    xs = (x - mu) / sd
    for _ in range(epochs):
        loss = F.cross_entropy(head(xs), y, weight=weight)
        opt.zero_grad()
        loss.backward()
        opt.step()
    head.eval()
    with torch.no_grad():    # W (x - mu) / sd + b  ==  (W / sd) x + (b - (W / sd) mu)
        w = head[0].weight / sd
        head[0].bias -= w @ mu
        head[0].weight.copy_(w)
        acc = float((head(x).argmax(1) == y).float().mean())
    return head, classes, {"train_loss": loss.item(), "train_acc": acc,
                           "counts": {c: int(n) for c, n in zip(classes, counts.tolist())}}


def predict(head, z: np.ndarray) -> np.ndarray:
    import torch
    with torch.inference_mode():
        return torch.softmax(head(torch.from_numpy(np.ascontiguousarray(z, np.float32))), -1).numpy()


@dataclass(frozen=True)
class HeadChooser:
    """A fitted head as the decision's chooser among accepting profiles
    (:func:`ofa_sdk.decision.choose`): the profiles' thresholds still decide whether an image
    gets a label, the head's known-class probabilities decide which (benchmarks/RESULTS.md 3.1).
    ``columns``: per profile of the snapshot, the head's output for it."""
    name: str
    head: Any
    columns: Tuple[int, ...]

    def probs(self, z: np.ndarray) -> np.ndarray:
        """(P,) the head's probability of each profile for one image's (k, d) fingerprints."""
        return predict(self.head, z).mean(0)[list(self.columns)]

    def select(self, idx: Sequence[int]) -> "HeadChooser":
        return HeadChooser(self.name, self.head, tuple(self.columns[i] for i in idx))


def load_head(gallery, name: str, model_ids):
    """(head, classes) of the head ``name`` stored in ``gallery`` for one of ``model_ids``;
    the last class is the rejection class."""
    h = gallery.get_head(name, model_ids)
    return head_from_bytes(h["weights"], h["dim"], len(h["classes"]), h["hidden"]), h["classes"]


def load_chooser(gallery, name: str, model_ids, profiles: Sequence[str]) -> HeadChooser:
    """The head ``name`` stored in ``gallery`` as a chooser among ``profiles``; every profile
    must be one of its known classes."""
    from .gallery import GalleryError
    head, classes = load_head(gallery, name, model_ids)
    known = classes[:-1]
    missing = [n for n in profiles if n not in known]
    if missing:
        raise GalleryError(f"closed-set head {name!r} was fit without profile(s) "
                           f"{', '.join(map(repr, missing[:3]))}; fit it again with every "
                           f"profile enrolled ('ofa-sdk fit-closed-set')")
    return HeadChooser(name, head, tuple(known.index(n) for n in profiles))


def head_to_bytes(head) -> bytes:
    from safetensors.torch import save
    return save({k: v.contiguous() for k, v in head.state_dict().items()})


def head_from_bytes(data: bytes, dim: int, n_out: int, hidden: int):
    from safetensors.torch import load
    head = make_head(dim, n_out, hidden)
    head.load_state_dict(load(data))
    return head.eval()


@dataclass
class OpenSetResult:
    source: str
    label: Optional[str]            # known class, or None (rejected / unknown); None on error
    predicted: Optional[str]        # argmax over the known classes (closed-set answer)
    known_prob: float               # max known-class probability (open-set score)
    probs: Dict[str, float] = field(default_factory=dict)
    error: Optional[str] = None

    @property
    def ok(self) -> bool:
        return self.error is None

    def to_dict(self) -> Dict:
        return {"source": self.source, "label": self.label or ("error" if self.error else "unknown"),
                "predicted": self.predicted, "known_prob": None if self.error else self.known_prob,
                "probs": self.probs, "error": self.error}


def reconstruct_real(simulator, crops: np.ndarray, per_image: int, seed: int, group: int = 8) -> np.ndarray:
    """Simulator reconstructions of real crops (k,c,c,3) uint8: ``per_image`` random
    architectures each, one architecture per group of ``group`` crops (as in training), rounded to
    8 bit. Returns (k*per_image, c, c, 3) uint8."""
    import torch
    g = torch.Generator().manual_seed(seed)
    x = to_tensor(crops)
    out = []
    with torch.inference_mode():
        for _ in range(per_image):
            for i in range(0, len(x), group):
                out.append(from_tensor(simulator(x[i:i + group], simulator.sample(g))))
    return np.concatenate(out)


def fit_closed_set(att, real_images, profiles: Optional[Sequence[str]] = None, *,
                   name: str = "default", recon_per_image: int = 2, epochs: int = 300,
                   seed: int = 0, hidden: int = 128) -> Dict:
    """Fit a (T+1)-way head on the support fingerprints of T enrolled profiles (default: all)
    plus a rejection class of simulator reconstructions of ``real_images``; store it in the
    Attributor's gallery under ``name``. Returns training statistics."""
    names = list(profiles) if profiles is not None else att.gallery.names()
    if not names:
        raise ValueError("fit_closed_set needs at least one enrolled profile")
    known = {n: att.gallery.get(n, model_id=att.bundle.ids).support for n in names}
    preps = [p for p in map(att.policy, imio.iter_items(real_images)) if isinstance(p, imio.Prepared)]
    if not preps:
        raise ValueError("fit_closed_set needs usable real photos for the rejection class")
    recon = reconstruct_real(att.bundle.simulator(), np.concatenate([p.crops for p in preps]),
                             recon_per_image, seed)
    reject = np.concatenate([att.engine.embed(recon[i:i + att.batch_size])
                             for i in range(0, len(recon), att.batch_size)])
    head, classes, stats = fit_head(known, reject, epochs=epochs, hidden=hidden, seed=seed)
    stats.update({"real_images": len(preps), "reconstructions": len(recon), "epochs": epochs,
                  "seed": seed})
    att.gallery.put_head(name, att.model_id, classes, att.dim, hidden, head_to_bytes(head), stats)
    return stats


def open_set(att, images, name: str = "default",
             threshold: Optional[float] = None) -> List[OpenSetResult]:
    """Closed/open-set attribution with the head ``name``: per image the predicted known
    profile, the max known-class probability, and a label that is None (unknown) when the
    rejection class wins or the probability is below ``threshold``."""
    head, classes = load_head(att.gallery, name, att.bundle.ids)
    known = classes[:-1]
    out = []
    for e in att.embed_stream(imio.iter_items(images)):
        if not e.ok:
            out.append(OpenSetResult(e.source, None, None, float("nan"), {}, e.error))
            continue
        p = predict(head, e.z).mean(0)
        k = int(np.argmax(p[:-1]))
        rejected = int(np.argmax(p)) == len(known) or (threshold is not None and p[k] < threshold)
        out.append(OpenSetResult(e.source, None if rejected else known[k], known[k], float(p[k]),
                                 {c: float(v) for c, v in zip(classes, p)}))
    return out
