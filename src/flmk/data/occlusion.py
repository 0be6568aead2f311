"""Noise-patch occlusion (SRN §3.1, notes §6.1): a square of i.i.d. U[0, 1) pixels pasted on a crop.

Batched on tensors, so it runs on the GPU inside a network's forward. Images
are ImageNet-normalised crops (docs/ARCHITECTURE.md); the noise is drawn in
[0, 1) pixel space and normalised the same way. Centres are crop-normalised
points; sizes are in crop pixels (48 on the 224 crop).
"""

from __future__ import annotations

import torch

from flmk.data.transforms import IMAGENET_MEAN_STD

IMAGENET_MEAN, IMAGENET_STD = IMAGENET_MEAN_STD  # Python floats, as uniform_noise_like's defaults


def uniform_noise_like(image: torch.Tensor, generator: torch.Generator | None = None,
                       mean: tuple[float, ...] = IMAGENET_MEAN, std: tuple[float, ...] = IMAGENET_STD) -> torch.Tensor:
    """U[0, 1) pixels of ``image``'s shape (..., C, H, W), normalised with ``mean``/``std``."""
    u = torch.rand(image.shape, generator=generator, device=image.device, dtype=torch.float32)
    m = torch.tensor(mean, device=image.device).view(-1, 1, 1)
    s = torch.tensor(std, device=image.device).view(-1, 1, 1)
    return ((u - m) / s).to(image.dtype)


def square_mask(centres: torch.Tensor, size: int, height: int, width: int, keep_inside: bool = True) -> torch.Tensor:
    """(M, 2) crop-normalised centres -> (M, 1, H, W) bool, True on the ``size`` x ``size`` square.

    Pixel ``i`` is covered when ``u - size/2 <= i < u + size/2`` with ``u`` the centre in pixels.
    ``keep_inside`` moves a square that would leave the crop back inside it (the SRN code shifts such
    centres by 50 px; [assume] a clamp keeps the whole patch visible).
    """
    hw = torch.tensor([width, height], device=centres.device, dtype=torch.float32)
    u = centres.float() * hw - 0.5
    half = size / 2
    if keep_inside:
        u = torch.minimum(torch.clamp(u, min=half - 0.5), hw - half - 0.5)
    lo = u - half                                                               # (M, 2)
    xs = torch.arange(width, device=centres.device, dtype=torch.float32)
    ys = torch.arange(height, device=centres.device, dtype=torch.float32)
    in_x = (xs >= lo[:, :1]) & (xs < lo[:, :1] + size)                          # (M, W)
    in_y = (ys >= lo[:, 1:]) & (ys < lo[:, 1:] + size)                          # (M, H)
    return (in_y[:, :, None] & in_x[:, None, :])[:, None]


def paste_noise(image: torch.Tensor, centres: torch.Tensor, size: int, noise: torch.Tensor | None = None,
                keep_inside: bool = True, generator: torch.Generator | None = None) -> torch.Tensor:
    """(M, C, H, W) crops with a noise square at each (M, 2) centre; ``noise`` (M, C, H, W) or fresh U[0, 1)."""
    if noise is None:
        noise = uniform_noise_like(image, generator)
    mask = square_mask(centres, size, image.shape[-2], image.shape[-1], keep_inside)
    return torch.where(mask, noise.to(image.dtype), image)


def landmark_at(points: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """(M, N, 2) points, (M,) indices -> (M, 2) the indexed landmark of each sample."""
    return points.gather(1, index.view(-1, 1, 1).expand(-1, 1, 2)).squeeze(1)


def occlude_random_landmark(image: torch.Tensor, points: torch.Tensor, size: int, keep_inside: bool = True,
                            generator: torch.Generator | None = None) -> torch.Tensor:
    """SRN's training augmentation: noise square around one uniformly drawn landmark per sample."""
    index = torch.randint(points.shape[1], (points.shape[0],), generator=generator, device=points.device)
    return paste_noise(image, landmark_at(points, index), size, keep_inside=keep_inside, generator=generator)
