"""MoKConv: mixture-of-kernels convolution (paper Eq. 4).

    MoKConv(h) = (sum_k w_k ⊙ W_k) * h

K base 3x3 kernels W_k (with biases); a router psi(h) gives per-sample coefficients w of shape
(K, C_out) -- raw, no softmax, as in the authors' scripts. Two exact ways to compute it:

* weight mixing: mix the kernels per sample, then one grouped conv with the batch folded into the
  groups (as timm's CondConv2d does). FLOPs of one conv plus the mixing.
* output mixing: K dense convs, outputs summed with per-sample, per-channel weights. K x FLOPs,
  as the authors' scripts compute it.

Biases mix with the same coefficients, so both paths are the same function. ``MoKConv`` in
weight mode goes through ``ofa_sdk.kernels.dispatch.mokconv``: the fused Triton kernel (mixing
inside the weight load, forward and backward) on CUDA, ``mokconv_weight_mixing`` otherwise (on CPU
by default, so CPU results are bit-identical to it). Output mode always runs
``mokconv_output_mixing``. Both paths are defined in ``ofa_sdk.kernels.reference``.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..kernels import dispatch
from ..kernels.reference import mokconv_output_mixing, mokconv_weight_mixing  # noqa: F401


class Router(nn.Module):
    """psi(h): two stride-2 3x3 convs, global average pool, an MLP -> (B, K, C_out)."""

    def __init__(self, cin: int, cout: int, num_kernels: int, hidden: int):
        super().__init__()
        self.k, self.cout = num_kernels, cout
        self.conv1 = nn.Conv2d(cin, hidden, 3, stride=2, padding=1)
        self.conv2 = nn.Conv2d(hidden, hidden, 3, stride=2, padding=1)
        self.fc1 = nn.Linear(hidden, hidden)
        self.fc2 = nn.Linear(hidden, num_kernels * cout)
        # Start near an even mixture (raw coefficients, no softmax): output ~ mean kernel.
        nn.init.normal_(self.fc2.weight, std=0.01)
        nn.init.constant_(self.fc2.bias, 1.0 / num_kernels)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        x = F.silu(self.conv1(h))
        x = F.silu(self.conv2(x))
        x = x.mean(dim=(2, 3))
        x = self.fc2(F.silu(self.fc1(x)))
        return x.view(-1, self.k, self.cout)


class MoKConv(nn.Module):
    def __init__(self, cin: int, cout: int, num_kernels: int = 4, router_hidden: int = 64,
                 mode: str = "weight"):
        super().__init__()
        if mode not in ("weight", "output"):
            raise ValueError(f"MoKConv mode must be 'weight' or 'output', got {mode!r}")
        self.mode = mode
        self.weight = nn.Parameter(torch.empty(num_kernels, cout, cin, 3, 3))
        self.bias = nn.Parameter(torch.zeros(num_kernels, cout))
        for k in range(num_kernels):  # each base kernel initialised like a standalone conv
            nn.init.kaiming_uniform_(self.weight.data[k], a=math.sqrt(5))
        self.router = Router(cin, cout, num_kernels, router_hidden)

    def forward(self, h: torch.Tensor, mode: str | None = None) -> torch.Tensor:
        coef = self.router(h)
        if (mode or self.mode) == "weight":
            return dispatch.mokconv(h, coef, self.weight, self.bias)
        return mokconv_output_mixing(h, coef, self.weight, self.bias)
