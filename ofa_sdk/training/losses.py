"""Losses of stage 2 (paper Sec. 3.3, Eq. 5-8).

* :func:`supcon_loss` -- supervised contrastive loss (Eq. 6) with a memory bank: positives are
  batch entries with the same architecture label, excluding self; the denominator holds every
  other batch entry plus the filled bank slots. Bank entries are negatives only (authors'
  scripts), and a bank entry whose stored label equals the anchor's is left out of the
  denominator, so a replayed architecture is never its own negative. Computed in float32 with
  the row max subtracted (logits reach 1/tau = 50 and exp overflows fp16), so it is stable under
  fp16/bf16 autocast; anchors without positives contribute nothing (no NaN).
* :class:`MemoryBank` -- ring buffer of detached fingerprints with their labels.
* :func:`pair_loss` -- BCE of the pair head on pairs mined to balance positives and negatives.
* :func:`real_loss` -- BCE of the real/reconstructed head.
* :func:`total_loss` -- L = w_scl L_scl + w_att L_att + w_cls L_cls.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..config import LossConfig


class MemoryBank(nn.Module):
    """FIFO ring buffer of (fingerprint, label). Only filled slots are ever used."""

    def __init__(self, size: int, dim: int):
        super().__init__()
        self.size = size
        self.register_buffer("feats", torch.zeros(size, dim))
        self.register_buffer("labels", torch.full((size,), -(2 ** 62), dtype=torch.long))
        self.register_buffer("ptr", torch.zeros((), dtype=torch.long))
        self.register_buffer("filled", torch.zeros((), dtype=torch.long))

    @torch.no_grad()
    def push(self, z: torch.Tensor, labels: torch.Tensor) -> None:
        z, labels = z.detach().float(), labels.detach().long()
        if self.size == 0:
            return
        if len(z) > self.size:  # keep the newest entries only
            z, labels = z[-self.size:], labels[-self.size:]
        n, p = len(z), int(self.ptr)
        idx = (torch.arange(n, device=z.device) + p) % self.size
        self.feats[idx] = z.to(self.feats.device)
        self.labels[idx] = labels.to(self.labels.device)
        self.ptr.fill_((p + n) % self.size)
        self.filled.fill_(min(self.size, int(self.filled) + n))

    def get(self) -> Tuple[torch.Tensor, torch.Tensor]:
        n = int(self.filled)
        return self.feats[:n], self.labels[:n]


def supcon_loss(z: torch.Tensor, labels: torch.Tensor, tau: float = 0.02,
                bank_feats: Optional[torch.Tensor] = None,
                bank_labels: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Eq. 6. z: (N,d) L2-normalised; labels: (N,) int; bank: (M,d), (M,)."""
    with torch.autocast(device_type=z.device.type, enabled=False):
        z = z.float()
        n = len(z)
        eye = torch.eye(n, dtype=torch.bool, device=z.device)
        same = labels[:, None] == labels[None, :]
        pos = same & ~eye
        logits = z @ z.T / tau
        valid = ~eye
        if bank_feats is not None and len(bank_feats):
            bl = (z @ bank_feats.float().T) / tau
            logits = torch.cat([logits, bl], dim=1)
            bank_valid = labels[:, None] != bank_labels[None, :].to(labels.device)
            valid = torch.cat([valid, bank_valid], dim=1)
            pos = torch.cat([pos, torch.zeros_like(bank_valid)], dim=1)
        neg_inf = torch.finfo(logits.dtype).min
        logits = logits.masked_fill(~valid, neg_inf)
        logits = logits - logits.max(dim=1, keepdim=True).values.detach()
        log_denom = torch.logsumexp(logits, dim=1, keepdim=True)
        log_prob = logits - log_denom
        npos = pos.sum(1)
        has = npos > 0
        if not bool(has.any()):
            return z.sum() * 0.0
        per_anchor = -(log_prob.masked_fill(~pos, 0.0)).sum(1)[has] / npos[has]
        return per_anchor.mean()


def mine_pairs(labels: torch.Tensor, generator: Optional[torch.Generator] = None,
               max_pairs: Optional[int] = None) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Balanced pairs: every positive pair (i != j, same label) and as many random negatives.

    Returns index tensors (i, j) and targets (1 same, 0 different).
    """
    n = len(labels)
    same = labels[:, None] == labels[None, :]
    off = ~torch.eye(n, dtype=torch.bool, device=labels.device)
    pi, pj = torch.nonzero(same & off, as_tuple=True)
    ni, nj = torch.nonzero(~same, as_tuple=True)
    k = min(len(pi), len(ni))
    if max_pairs is not None:
        k = min(k, max_pairs // 2)
    if k == 0:
        empty = labels.new_zeros(0)
        return empty, empty, torch.zeros(0, device=labels.device)
    dev = labels.device
    ps = torch.randperm(len(pi), generator=generator)[:k].to(dev)
    ns = torch.randperm(len(ni), generator=generator)[:k].to(dev)
    i = torch.cat([pi[ps], ni[ns]])
    j = torch.cat([pj[ps], nj[ns]])
    t = torch.cat([torch.ones(k, device=dev), torch.zeros(k, device=dev)])
    return i, j, t


def pair_loss(pair_head: nn.Module, z: torch.Tensor, labels: torch.Tensor,
              generator: Optional[torch.Generator] = None, max_pairs: Optional[int] = 4096):
    """Eq. 7 on balanced mined pairs; returns (loss, accuracy)."""
    i, j, t = mine_pairs(labels, generator, max_pairs)
    if len(t) == 0:
        return z.sum() * 0.0, float("nan")
    logits = pair_head(z[i], z[j]).float()
    loss = F.binary_cross_entropy_with_logits(logits, t)
    acc = ((logits > 0).float() == t).float().mean().item()
    return loss, acc


def real_loss(real_head: nn.Module, z: torch.Tensor, is_reconstruction: torch.Tensor):
    """BCE of f(z): 1 for a simulator reconstruction, 0 for a real photo."""
    logits = real_head(z).float()
    return F.binary_cross_entropy_with_logits(logits, is_reconstruction.float())


def total_loss(cfg: LossConfig, l_scl, l_att, l_cls):
    """Eq. 8."""
    return cfg.w_scl * l_scl + cfg.w_att * l_att + cfg.w_cls * l_cls
