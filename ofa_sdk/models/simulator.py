"""Fingerprint simulator (paper Sec. 3.1): a fixed hierarchical encoder and a stochastic decoder.

The decoder's *structure* is drawn per forward pass; its *weights* live in slots -- each
(level, cell slot) owns its parameters, shared by every architecture that uses the slot. An
architecture is an explicit value (:class:`Architecture`): sampled from a seed or a
``torch.Generator``, serialisable to JSON, replayable, and bijectively numbered by a stable
integer id used as the pseudo-generator's class label.

Space size (METHOD.md): a cell has 3! orders x 3 activations x 3 norms = 54 variants; a level has
|VariUp| x (54 + 54^2) = 11,880 with V in {1, 2}; over start scales s in {1, 2, 3} the space has
11,880 + 11,880^2 + 11,880^3 = 1,676,817,818,280 architectures.
"""
from __future__ import annotations

import itertools
import math
import json
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..config import SimulatorConfig
from .mokconv import MoKConv

UPSAMPLERS = ("bilinear", "nearest", "bicubic", "pixelshuffle")
ACTIVATIONS = ("gelu", "silu", "leakyrelu")
NORMS = ("batch", "instance", "group")
OPS = ("conv", "act", "norm")
ORDERS = tuple(itertools.permutations(range(3)))  # 6 orders of (conv, act, norm)

N_CELL = len(ORDERS) * len(ACTIVATIONS) * len(NORMS)  # 54


def level_variants(v_max: int = 2, n_up: int = len(UPSAMPLERS)) -> int:
    """Variants of one decoder level: an upsampler times 1..v_max cells."""
    return n_up * sum(N_CELL ** v for v in range(1, v_max + 1))


def space_size(start_scales: Sequence[int] = (1, 2, 3), v_max: int = 2) -> int:
    """Number of distinct decoder architectures (1,676,817,818,280 for the paper's setting)."""
    lv = level_variants(v_max)
    return sum(lv ** s for s in start_scales)


@dataclass(frozen=True)
class Cell:
    order: int        # index into ORDERS
    act: int          # index into ACTIVATIONS
    norm: int         # index into NORMS

    @property
    def index(self) -> int:
        return (self.order * len(ACTIVATIONS) + self.act) * len(NORMS) + self.norm

    @classmethod
    def from_index(cls, i: int) -> "Cell":
        i, norm = divmod(i, len(NORMS))
        order, act = divmod(i, len(ACTIVATIONS))
        return cls(order, act, norm)

    def describe(self) -> str:
        names = {"conv": "mokconv", "act": ACTIVATIONS[self.act], "norm": NORMS[self.norm] + "norm"}
        return "->".join(names[OPS[o]] for o in ORDERS[self.order])


@dataclass(frozen=True)
class Level:
    up: int                   # index into UPSAMPLERS
    cells: Tuple[Cell, ...]   # 1..v_max VariStruct cells


@dataclass(frozen=True)
class Architecture:
    """One decoder architecture. ``levels[0]`` is the coarsest (scale s), ``levels[-1]`` scale 1."""
    start_scale: int
    levels: Tuple[Level, ...]
    v_max: int = 2

    def __post_init__(self):
        if len(self.levels) != self.start_scale:
            raise ValueError("an architecture needs one level per scale s..1")
        for lv in self.levels:
            if not 1 <= len(lv.cells) <= self.v_max:
                raise ValueError(f"a level has 1..{self.v_max} cells")

    # -- stable integer id (mixed radix; bijective over the whole space) ----------------------
    @property
    def id(self) -> int:
        lvn = level_variants(self.v_max)
        offset = sum(lvn ** k for k in range(1, self.start_scale))
        idx = 0
        for lv in self.levels:
            idx = idx * lvn + _level_index(lv, self.v_max)
        return offset + idx

    @classmethod
    def from_id(cls, arch_id: int, v_max: int = 2, start_scales: Sequence[int] = (1, 2, 3)):
        lvn = level_variants(v_max)
        if not 0 <= arch_id < space_size(start_scales, v_max):
            raise ValueError(f"architecture id {arch_id} outside the space")
        rest = arch_id
        for s in sorted(start_scales):
            if rest < lvn ** s:
                break
            rest -= lvn ** s
        levels = []
        for _ in range(s):
            rest, li = divmod(rest, lvn)
            levels.append(_level_from_index(li, v_max))
        return cls(s, tuple(reversed(levels)), v_max)

    # -- serialisation --------------------------------------------------------------------------
    def to_dict(self) -> dict:
        return {
            "id": self.id, "start_scale": self.start_scale, "v_max": self.v_max,
            "levels": [{"up": UPSAMPLERS[lv.up],
                        "cells": [{"order": [OPS[o] for o in ORDERS[c.order]],
                                   "act": ACTIVATIONS[c.act], "norm": NORMS[c.norm]}
                                  for c in lv.cells]} for lv in self.levels],
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict) -> "Architecture":
        levels = tuple(
            Level(UPSAMPLERS.index(lv["up"]), tuple(
                Cell(ORDERS.index(tuple(OPS.index(o) for o in c["order"])),
                     ACTIVATIONS.index(c["act"]), NORMS.index(c["norm"])) for c in lv["cells"]))
            for lv in d["levels"])
        arch = cls(int(d["start_scale"]), levels, int(d.get("v_max", 2)))
        if "id" in d and int(d["id"]) != arch.id:
            raise ValueError("architecture id does not match its structure")
        return arch

    @classmethod
    def from_json(cls, s: str) -> "Architecture":
        return cls.from_dict(json.loads(s))

    def describe(self) -> str:
        parts = [f"s={self.start_scale}"]
        for i, lv in zip(range(self.start_scale, 0, -1), self.levels):
            parts.append(f"L{i}:{UPSAMPLERS[lv.up]}[" + ", ".join(c.describe() for c in lv.cells) + "]")
        return " ".join(parts)


def _level_index(lv: Level, v_max: int) -> int:
    n = len(lv.cells)
    within = sum(N_CELL ** v for v in range(1, n))  # offset of the n-cell block
    ci = 0
    for c in lv.cells:
        ci = ci * N_CELL + c.index
    per_up = sum(N_CELL ** v for v in range(1, v_max + 1))
    return lv.up * per_up + within + ci


def _level_from_index(i: int, v_max: int) -> Level:
    per_up = sum(N_CELL ** v for v in range(1, v_max + 1))
    up, rest = divmod(i, per_up)
    for n in range(1, v_max + 1):
        if rest < N_CELL ** n:
            break
        rest -= N_CELL ** n
    cells = []
    for _ in range(n):
        rest, ci = divmod(rest, N_CELL)
        cells.append(Cell.from_index(ci))
    return Level(up, tuple(reversed(cells)))


def sample_architecture(rng: Union[int, torch.Generator, None] = None,
                        start_scales: Sequence[int] = (1, 2, 3), v_max: int = 2) -> Architecture:
    """Draw an architecture uniformly per choice (as the paper's decoder does per forward).

    ``rng``: an int seed, a ``torch.Generator`` (advanced in place), or None (global RNG).
    """
    if isinstance(rng, int):
        rng = torch.Generator().manual_seed(rng)

    def randint(n: int) -> int:
        return int(torch.randint(n, (1,), generator=rng))

    s = list(start_scales)[randint(len(start_scales))]
    levels = []
    for _ in range(s):
        up = randint(len(UPSAMPLERS))
        v = 1 + randint(v_max)
        cells = tuple(Cell(randint(len(ORDERS)), randint(len(ACTIVATIONS)), randint(len(NORMS)))
                      for _ in range(v))
        levels.append(Level(up, cells))
    return Architecture(s, tuple(levels), v_max)


# ------------------------------------------------------------------------------------------------
# Networks
# ------------------------------------------------------------------------------------------------

class ResBlock(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        self.conv1 = nn.Conv2d(c, c, 3, padding=1)
        self.conv2 = nn.Conv2d(c, c, 3, padding=1)

    def forward(self, x):
        return x + self.conv2(F.silu(self.conv1(F.silu(x))))


class Encoder(nn.Module):
    """E: stem conv, then L stride-2 stages each followed by a residual block (Eq. 1). Swish."""

    def __init__(self, cfg: SimulatorConfig):
        super().__init__()
        self.stem = nn.Conv2d(3, cfg.stem_channels, 3, padding=1)
        stages, cin = [], cfg.stem_channels
        for c in cfg.enc_channels:
            stages.append(nn.Sequential(nn.Conv2d(cin, c, 3, stride=2, padding=1), nn.SiLU(),
                                        ResBlock(c)))
            cin = c
        self.stages = nn.ModuleList(stages)

    def forward(self, x) -> List[torch.Tensor]:
        h = F.silu(self.stem(x))
        feats = []
        for st in self.stages:
            h = st(h)
            feats.append(h)
        return feats  # F_1 (H/2) .. F_L (H/2^L)


class VariStructCell(nn.Module):
    """One cell slot: a MoKConv, the three activations and the three norms; the architecture
    decides their order and which activation and norm are used (Eq. 2)."""

    def __init__(self, c: int, cfg: SimulatorConfig):
        super().__init__()
        self.conv = MoKConv(c, c, cfg.num_kernels, cfg.router_hidden, cfg.mok_mode)
        # Batch statistics always (no running stats): the simulator is a pseudo-generator whose
        # structure changes every draw, so pooled running statistics would describe no one.
        self.norms = nn.ModuleList([
            nn.BatchNorm2d(c, track_running_stats=False),
            nn.InstanceNorm2d(c, affine=True),
            nn.GroupNorm(math.gcd(cfg.gn_groups, c), c),
        ])

    def forward(self, h, cell: Cell):
        for o in ORDERS[cell.order]:
            op = OPS[o]
            if op == "conv":
                h = self.conv(h)
            elif op == "act":
                h = _activation(h, cell.act)
            else:
                h = self.norms[cell.norm](h)
        return h


def _activation(h, i: int):
    name = ACTIVATIONS[i]
    if name == "gelu":
        return F.gelu(h)
    if name == "silu":
        return F.silu(h)
    return F.leaky_relu(h, 0.2)


class DecoderLevel(nn.Module):
    """Channel reduction (1x1), VariUp x2, then V VariStruct cells inside a residual skip."""

    def __init__(self, cin: int, cout: int, cfg: SimulatorConfig):
        super().__init__()
        self.reduce = nn.Conv2d(cin, cout, 1)
        self.shuffle_conv = nn.Conv2d(cout, 4 * cout, 3, padding=1)  # pixel-shuffle VariUp
        self.cells = nn.ModuleList([VariStructCell(cout, cfg) for _ in range(cfg.v_max)])

    def forward(self, h, level: Level):
        h = self.reduce(h)
        up = UPSAMPLERS[level.up]
        if up == "pixelshuffle":
            h = F.pixel_shuffle(self.shuffle_conv(h), 2)
        elif up == "nearest":
            h = F.interpolate(h, scale_factor=2, mode="nearest")
        else:
            h = F.interpolate(h, scale_factor=2, mode=up, align_corners=False)
        y = h
        for slot, cell in enumerate(level.cells):
            y = self.cells[slot](y, cell)
        return h + y


class StochasticDecoder(nn.Module):
    """D: decodes F_s up through levels s..1 to full resolution; no encoder skips."""

    def __init__(self, cfg: SimulatorConfig):
        super().__init__()
        ch = list(cfg.enc_channels)
        outs = [c // 2 for c in ch]  # level i reduces C_i -> C_i / 2 (= C_{i-1} in the scripts)
        self.levels = nn.ModuleList(DecoderLevel(ch[i], outs[i], cfg) for i in range(len(ch)))
        # Level i's output feeds level i-1's reduction; adapt when C_i/2 != C_{i-1}.
        self.bridges = nn.ModuleList(
            nn.Identity() if i == 0 or outs[i] == ch[i - 1] else nn.Conv2d(outs[i], ch[i - 1], 1)
            for i in range(len(ch)))
        self.to_rgb = nn.Conv2d(outs[0], 3, 3, padding=1)

    def forward(self, feats: List[torch.Tensor], arch: Architecture):
        s = arch.start_scale
        h = feats[s - 1]
        for lv, i in zip(arch.levels, range(s - 1, -1, -1)):
            h = self.levels[i](h, lv)
            h = self.bridges[i](h)
        return self.to_rgb(h)


class FingerprintSimulator(nn.Module):
    """x -> x_hat = D_arch(E(x)). One forward = one architecture for the whole batch."""

    def __init__(self, cfg: SimulatorConfig):
        super().__init__()
        self.cfg = cfg
        self.encoder = Encoder(cfg)
        self.decoder = StochasticDecoder(cfg)

    def sample(self, rng=None) -> Architecture:
        return sample_architecture(rng, self.cfg.start_scales, self.cfg.v_max)

    def forward(self, x: torch.Tensor, arch: Optional[Architecture] = None,
                rng=None) -> torch.Tensor:
        if x.shape[-1] % 2 ** len(self.cfg.enc_channels) or x.shape[-2] % 2 ** len(self.cfg.enc_channels):
            raise ValueError(f"simulator input sides must be multiples of "
                             f"{2 ** len(self.cfg.enc_channels)}, got {tuple(x.shape[-2:])}")
        arch = arch if arch is not None else self.sample(rng)
        # Inputs in [0,1]; the networks work on [-1,1].
        y = self.decoder(self.encoder(x * 2 - 1), arch)
        return (y + 1) / 2
