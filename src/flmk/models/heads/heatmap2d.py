"""2D heatmap head of the FAN baseline: features (B, C, S, S) -> (B, N, L, L).

L = S is FAN itself (a 1x1 convolution); larger L adds 2D deconvolutions
(x2 for 128, x2 x2 for 256 from 64x64 features), as in 1D-HM Table 1.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from flmk.models.heads.upsample import Upsampler, upsample_factors


class Heatmap2DHead(nn.Module):
    """2D deconvolutions by the factors that reach ``length`` from ``feature_size``, then a 1x1 conv to N maps."""

    def __init__(
        self, in_channels: int, feature_size: int, num_points: int, length: int = 64,
        deconv_channels: int = 256, factors: Sequence[int] | None = None,
    ) -> None:
        super().__init__()
        factors = upsample_factors(feature_size, length) if factors is None else list(factors)
        self.upsample = Upsampler(2, in_channels, deconv_channels, num_points, length, factors)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.upsample(features)
