"""Transposed-convolution upsampling to an arbitrary heatmap length ``L``.

1D-HM reaches L = 3F = 768 from 64 feature positions with deconvolutions
x2, x2, x3; Table 1 sweeps L over 64..768 and the 2D baseline needs 64..256.
:func:`upsample_factors` splits ``L / base`` into small integer factors (one
deconvolution each, smallest first); whatever is left over (L not a multiple of
``base``, a prime factor above ``max_factor``, or L < base) is closed by a final
linear resampling, which keeps bin centres at (j + 0.5) / L (align_corners=False).
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn


def upsample_factors(base: int, length: int, max_factor: int = 5) -> list[int]:
    """Integer deconvolution factors (ascending) whose product divides ``length / base``."""
    if base < 1 or length < 1:
        raise ValueError(f"upsample_factors: base and length must be >= 1, got base={base}, length={length}")
    if length % base:
        return []
    ratio, factors, p = length // base, [], 2
    while p <= max_factor and ratio > 1:
        while ratio % p == 0:
            factors.append(p)
            ratio //= p
        p += 1
    return factors


def deconv_block(dim: int, in_channels: int, out_channels: int, factor: int) -> nn.Sequential:
    """ConvTranspose (exact x``factor``) + BN + ReLU in 1 or 2 spatial dims."""
    conv = {1: nn.ConvTranspose1d, 2: nn.ConvTranspose2d}[dim]
    norm = {1: nn.BatchNorm1d, 2: nn.BatchNorm2d}[dim]
    pad = factor // 2  # kernel = factor + 2 * pad gives exactly n * factor outputs
    return nn.Sequential(
        conv(in_channels, out_channels, factor + 2 * pad, stride=factor, padding=pad, bias=False),
        norm(out_channels), nn.ReLU(inplace=True),
    )


class Upsampler(nn.Module):
    """Deconvolutions by ``factors``, a 1x1 projection to ``out_channels``, then resampling to exactly ``length``."""

    def __init__(
        self, dim: int, in_channels: int, mid_channels: int, out_channels: int, length: int,
        factors: Sequence[int],
    ) -> None:
        super().__init__()
        if dim not in (1, 2):
            raise ValueError(f"Upsampler: dim must be 1 or 2, got {dim}")
        self.dim, self.length = dim, length
        widths = [in_channels] + [mid_channels] * len(factors)
        self.deconvs = nn.Sequential(*(deconv_block(dim, a, b, f) for a, b, f in zip(widths, widths[1:], factors)))
        self.project = {1: nn.Conv1d, 2: nn.Conv2d}[dim](widths[-1], out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.project(self.deconvs(x))
        if x.shape[-1] != self.length:
            mode = "linear" if self.dim == 1 else "bilinear"
            x = F.interpolate(x, size=(self.length,) * self.dim, mode=mode, align_corners=False)
        return x
