"""Heads on the fingerprint z (paper Sec. 3.3).

* :class:`PairHead` g([z_i; z_j]) -> P(same generator) (Eq. 7). The paper writes g on the
  normalised z (the authors' scripts feed un-normalised features); we follow the paper so the
  gallery stores only the L2-normalised fingerprints the API returns.
  Its first layer is linear in the concatenation, so it splits: W [z_s; z_q] + b =
  (W_s z_s + b) + W_q z_q. ``support_part`` is computed once at enroll time, ``query_part``
  once per query, and ``pair_logits`` combines them for every (query, support) pair.
* :class:`RealHead` f(z) -> P(reconstructed / synthetic) vs real photo.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F


def _mlp(dims: Sequence[int]) -> nn.Sequential:
    layers = []
    for i in range(len(dims) - 1):
        layers.append(nn.Linear(dims[i], dims[i + 1]))
        if i < len(dims) - 2:
            layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


class PairHead(nn.Module):
    def __init__(self, dim: int, hidden: Sequence[int] = (128, 128)):
        super().__init__()
        self.dim = dim
        self.first = nn.Linear(2 * dim, hidden[0])
        self.rest = _mlp(list(hidden) + [1])

    def forward(self, zi: torch.Tensor, zj: torch.Tensor) -> torch.Tensor:
        """Logits of g([z_i; z_j]) for aligned pairs (N,d),(N,d) -> (N,)."""
        return self.rest(F.relu(self.first(torch.cat([zi, zj], dim=-1)))).squeeze(-1)

    def support_part(self, zs: torch.Tensor) -> torch.Tensor:
        """(S,d) -> (S,h): W_s z_s + b, computed once per enrolled support image."""
        return F.linear(zs, self.first.weight[:, : self.dim], self.first.bias)

    def query_part(self, zq: torch.Tensor) -> torch.Tensor:
        """(Q,d) -> (Q,h): W_q z_q."""
        return F.linear(zq, self.first.weight[:, self.dim:])

    def pair_logits(self, query_part: torch.Tensor, support_part: torch.Tensor) -> torch.Tensor:
        """(Q,h),(S,h) -> (Q,S) logits of g([z_s; z_q]) for every pair."""
        h = F.relu(query_part[:, None, :] + support_part[None, :, :])
        return self.rest(h).squeeze(-1)


class RealHead(nn.Module):
    def __init__(self, dim: int, hidden: Sequence[int] = (64,)):
        super().__init__()
        self.net = _mlp([dim] + list(hidden) + [1])

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z).squeeze(-1)
