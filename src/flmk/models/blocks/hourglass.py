"""Stacked hourglass backbone (Newell et al. 2016; FAN, Bulat & Tzimiropoulos 2017).

Heads are not part of it: :class:`StackedHourglass` returns one feature map per
stack at 1/4 of the input resolution and each network attaches its own heads
(CCDN regresses coordinates from the last one, FAN / 1D-HM draw heatmaps).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

Pool = Literal["max", "avg"]


def _pool2d(kind: Pool) -> nn.Module:
    """Stride-2 2x2 pooling, "max" (Newell) or "avg" (FAN)."""
    if kind == "max":
        return nn.MaxPool2d(2, 2)
    if kind == "avg":
        return nn.AvgPool2d(2, 2)
    raise ValueError(f"hourglass pool: expected 'max' or 'avg', got {kind!r}")


class Residual(nn.Module):
    """Newell's pre-activation bottleneck: BN-ReLU-1x1(C/2)-BN-ReLU-3x3(C/2)-BN-ReLU-1x1(C) + skip.

    ``branch`` and ``skip`` are separate submodules so that attention blocks
    (CCDN's CTM) can re-weight the residual branch before the sum.
    The skip is the identity unless the width or stride changes (then a 1x1 conv).
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1) -> None:
        super().__init__()
        mid = out_channels // 2
        if mid < 1:
            raise ValueError(f"Residual: out_channels must be >= 2, got {out_channels}")
        self.branch = nn.Sequential(
            nn.BatchNorm2d(in_channels), nn.ReLU(inplace=True),
            nn.Conv2d(in_channels, mid, 1, bias=False),
            nn.BatchNorm2d(mid), nn.ReLU(inplace=True),
            nn.Conv2d(mid, mid, 3, stride=stride, padding=1, bias=False),
            nn.BatchNorm2d(mid), nn.ReLU(inplace=True),
            nn.Conv2d(mid, out_channels, 1),
        )
        self.skip: nn.Module = (
            nn.Identity()
            if in_channels == out_channels and stride == 1
            else nn.Conv2d(in_channels, out_channels, 1, stride=stride)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.branch(x) + self.skip(x)


class Hourglass(nn.Module):
    """Recursive hourglass of ``depth`` halvings: skip branch + (pool, residual, inner, residual, upsample).

    The input side must be divisible by ``2**depth``.
    """

    def __init__(self, depth: int, channels: int, pool: Pool = "max") -> None:
        super().__init__()
        if depth < 1:
            raise ValueError(f"Hourglass depth must be >= 1, got {depth}")
        self.depth = depth
        self.up = Residual(channels, channels)
        self.pool = _pool2d(pool)
        self.down = Residual(channels, channels)
        self.inner: nn.Module = (
            Hourglass(depth - 1, channels, pool) if depth > 1 else Residual(channels, channels)
        )
        self.out = Residual(channels, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] % (1 << self.depth) or x.shape[-2] % (1 << self.depth):
            raise ValueError(
                f"Hourglass(depth={self.depth}) needs a side divisible by {1 << self.depth}, "
                f"got {tuple(x.shape[-2:])}"
            )
        low = self.out(self.inner(self.down(self.pool(x))))
        return self.up(x) + F.interpolate(low, scale_factor=2.0, mode="nearest")


class Stem(nn.Module):
    """conv7x7/2 + BN + ReLU, Residual(c0->c1), pool/2, Residual(c1->c1), Residual(c1->C): 1/4 resolution."""

    def __init__(
        self, in_channels: int, channels: int, stem_channels: tuple[int, int] = (64, 128), pool: Pool = "max"
    ) -> None:
        super().__init__()
        c0, c1 = stem_channels
        self.layers = nn.Sequential(
            nn.Conv2d(in_channels, c0, 7, stride=2, padding=3, bias=False),
            nn.BatchNorm2d(c0), nn.ReLU(inplace=True),
            Residual(c0, c1), _pool2d(pool), Residual(c1, c1), Residual(c1, channels),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class StackedHourglass(nn.Module):
    """Stem + ``num_stacks`` x [Hourglass -> Residual -> 1x1 conv+BN+ReLU], chained by 1x1 feature re-injection.

    ``forward(image)`` returns the list of per-stack features, each (B, channels, S/4, S/4).
    Between stacks the next input is ``x + merge(features)`` (Newell / FAN); a user that
    also re-injects its own head predictions can iterate over ``stem``, ``stacks`` and
    ``merges`` itself.
    """

    def __init__(
        self,
        num_stacks: int = 4,
        channels: int = 256,
        in_ch: int = 3,
        depth: int = 4,
        stem_channels: tuple[int, int] = (64, 128),
        pool: Pool = "max",
    ) -> None:
        super().__init__()
        if num_stacks < 1:
            raise ValueError(f"StackedHourglass num_stacks must be >= 1, got {num_stacks}")
        self.num_stacks = num_stacks
        self.channels = channels
        self.stem = Stem(in_ch, channels, tuple(stem_channels), pool)
        self.stacks = nn.ModuleList(
            nn.Sequential(
                Hourglass(depth, channels, pool),
                Residual(channels, channels),
                nn.Conv2d(channels, channels, 1, bias=False),
                nn.BatchNorm2d(channels), nn.ReLU(inplace=True),
            )
            for _ in range(num_stacks)
        )
        self.merges = nn.ModuleList(nn.Conv2d(channels, channels, 1) for _ in range(num_stacks - 1))

    def forward(self, image: torch.Tensor) -> list[torch.Tensor]:
        x = self.stem(image)
        features: list[torch.Tensor] = []
        for i, stack in enumerate(self.stacks):
            feat = stack(x)
            features.append(feat)
            if i < self.num_stacks - 1:
                x = x + self.merges[i](feat)
        return features
