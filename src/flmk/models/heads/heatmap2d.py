"""2D heatmap head of the FAN baseline: features (B, C, S, S) -> (B, N, L, L).

L = S is FAN itself (a 1x1 convolution); larger L adds 2D deconvolutions
(x2 for 128, x2 x2 for 256 from 64x64 features), as in 1D-HM Table 1.
:class:`IntermediateHeatmaps` is the intermediate supervision of a stacked hourglass (FAN / Newell),
switchable on both the 2D baseline and the 1D-HM detector (``model.net.intermediate_supervision``).
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from flmk.models.blocks.hourglass import StackedHourglass
from flmk.models.heads.targets import gaussian_2d
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


class IntermediateHeatmaps(nn.Module):
    """Intermediate supervision (Newell et al. 2016, FAN): every stack but the last draws N heatmaps at S/4
    with a 1x1 conv; they are supervised (key ``heatmap_stacks``) and re-injected into the next stack's input
    by another 1x1 conv. Disabled, it holds no parameters and the stacks run as ``StackedHourglass.forward``.
    """

    def __init__(self, num_stacks: int, channels: int, num_points: int, feature_size: int, sigma_bins: float,
                 enabled: bool = True) -> None:
        super().__init__()
        inner = num_stacks - 1 if enabled else 0
        self.heads = nn.ModuleList(nn.Conv2d(channels, num_points, 1) for _ in range(inner))
        self.remaps = nn.ModuleList(nn.Conv2d(num_points, channels, 1) for _ in range(inner))
        self.feature_size, self.sigma_bins = feature_size, sigma_bins

    def forward(self, backbone: StackedHourglass, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """-> the last stack's features (B, C, S/4, S/4) and the maps (B, num_stacks - 1, N, S/4, S/4) or None."""
        x, maps = backbone.stem(image), []
        for i, stack in enumerate(backbone.stacks):
            feat = stack(x)
            if i < len(backbone.stacks) - 1:
                x = x + backbone.merges[i](feat)
                if self.heads:
                    maps.append(self.heads[i](feat))
                    x = x + self.remaps[i](maps[-1])
        return feat, torch.stack(maps, 1) if maps else None

    def targets(self, points: torch.Tensor) -> dict[str, torch.Tensor]:
        """(..., N, 2) -> ``heatmap_stacks`` eq. 2 Gaussians (..., 1, N, S/4, S/4), broadcast over the stacks."""
        if not self.heads:
            return {}
        return {"heatmap_stacks": gaussian_2d(points, self.feature_size, self.sigma_bins).unsqueeze(-4)}
