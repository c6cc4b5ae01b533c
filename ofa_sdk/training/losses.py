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
* :func:`episodic_loss` -- a one-class episode per class: a Gaussian profile fitted on half of
  the class's images scores the other half against every other image (batch and bank), so a
  class's own spread is penalised relative to its distance from the others, as the default score
  rule decides (off unless ``w_episodic`` > 0).
* :func:`total_loss` -- L = w_scl L_scl + w_att L_att + w_cls L_cls (+ w_episodic L_epi).
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


def episodic_loss(z: torch.Tensor, labels: torch.Tensor, scale: float,
                  bank_feats: Optional[torch.Tensor] = None,
                  bank_labels: Optional[torch.Tensor] = None) -> torch.Tensor:
    """One-class episodes, one per class of at least 4 entries. The first half of the class's
    entries (in batch order: stage 2 puts the multiple-set images first, so the queries are the
    single-set images, whose content every other class shares) is the support: its mean mu and
    per-dimension variance s2 (unbiased, about the mean) make an isotropic Gaussian profile. Each
    query q of the class is scored against every entry of another class, in the batch and in the
    bank, by the per-dimension squared distance D2(x) = |x - mu|^2 / (d s2):

        loss_q = softplus(scale * D2(q) + logsumexp_neg(-scale * D2(neg)))

    the cross-entropy of picking q among {q} and the negatives. Shrinking s2 alone does not pay:
    the gradient asks for a class tight relative to its distance from the others (its one-class
    AUC under a Gaussian rule), where SupCon only asks each pair of its entries to be closer
    than the others. Computed in float32; mean over every class's queries."""
    with torch.autocast(device_type=z.device.type, enabled=False):
        z = z.float()
        d = z.shape[1]
        if bank_feats is not None and len(bank_feats):
            others_z = torch.cat([z, bank_feats.float().to(z.device)])
            others_y = torch.cat([labels, bank_labels.to(labels.device)])
        else:
            others_z, others_y = z, labels
        per_query = []
        for c in torch.unique(labels):
            idx = torch.nonzero(labels == c, as_tuple=True)[0]
            if len(idx) < 4:
                continue
            half = len(idx) // 2
            sup, qry = z[idx[:half]], z[idx[half:]]
            mu = sup.mean(0)
            s2 = ((sup - mu) ** 2).sum(1).sum() / ((half - 1) * d) + 1e-8
            neg = others_z[others_y != c]
            if not len(neg):
                continue
            d_pos = ((qry - mu) ** 2).sum(1) / (d * s2)
            d_neg = ((neg - mu) ** 2).sum(1) / (d * s2)
            lse = torch.logsumexp(-scale * d_neg, dim=0)
            per_query.append(F.softplus(scale * d_pos + lse))
        if not per_query:
            return z.sum() * 0.0
        return torch.cat(per_query).mean()


def total_loss(cfg: LossConfig, l_scl, l_att, l_cls, l_epi=0.0):
    """Eq. 8, plus the episodic term where its weight is set."""
    return cfg.w_scl * l_scl + cfg.w_att * l_att + cfg.w_cls * l_cls + cfg.w_episodic * l_epi
