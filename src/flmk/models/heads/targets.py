"""Gaussian heatmap targets and the heatmap L2 loss shared by the 1D and 2D heads.

Coordinates are crop-normalised (ARCHITECTURE.md): bin j of a length-L heatmap is
centred at (j + 0.5) / L, so a coordinate c sits at the continuous bin index c * L - 0.5.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def sigma_in_bins(sigma_px: float, crop_size: int, length: int, min_bins: float) -> float:
    """Target std in heatmap bins for ``sigma_px`` input pixels, floored at ``min_bins`` (1D-HM notes item 13)."""
    if sigma_px <= 0 or crop_size <= 0:
        raise ValueError(f"sigma (input px) and crop_size must be > 0, got sigma={sigma_px}, crop_size={crop_size}")
    return max(sigma_px * length / crop_size, min_bins)


def gaussian_1d(coords: torch.Tensor, length: int, sigma_bins: float) -> torch.Tensor:
    """Peak-normalised 1D Gaussians, the marginals of eq. 12 rescaled to peak 1: (...,) -> (..., length)."""
    centre = coords.float().unsqueeze(-1) * length - 0.5
    bins = torch.arange(length, device=coords.device, dtype=torch.float32)
    return torch.exp(-0.5 * ((bins - centre) / sigma_bins) ** 2)


def gaussian_2d(points: torch.Tensor, length: int, sigma_bins: float) -> torch.Tensor:
    """Peak-normalised 2D Gaussians of eq. 2 on an L x L grid: (..., 2) -> (..., L, L), rows are y."""
    gx = gaussian_1d(points[..., 0], length, sigma_bins)
    gy = gaussian_1d(points[..., 1], length, sigma_bins)
    return gy.unsqueeze(-1) * gx.unsqueeze(-2)  # separable: exp(-(dx^2 + dy^2) / 2 sigma^2)


def heatmap_l2(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Squared L2 error summed over everything but the batch axis, mean over the batch (eqs. 11 and 14)."""
    return F.mse_loss(pred.float(), target, reduction="sum") / pred.shape[0]
