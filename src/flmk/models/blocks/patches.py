"""Shape-indexed patches (SRN eq. 2's rho, MDM's ``extract_patches``), one grid_sample for a whole batch.

A point ``c`` in crop-normalised coordinates sits at pixel ``u = c * S - 0.5``
(pixel centres at integers, docs/ARCHITECTURE.md). A patch of side ``P``
samples the pixels ``u + k`` for ``k = -P//2 .. P - P//2 - 1`` (-18..17 for
P = 36, MDM's integer grid), bilinearly, so an integer-aligned point gives
an exact pixel crop and a sub-pixel point interpolates.

Border: pixels outside the image read as zero (``padding_mode="zeros"``).
MDM instead clamps indices to the border, repeating edge pixels; zeros keep a
landmark near the border from seeing a smeared copy of the edge.
No gradient flows into the positions (MDM marks them ``NotDifferentiable``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def patch_offsets(size: int, device: torch.device | None = None) -> torch.Tensor:
    """Pixel offsets of a patch row around its centre: -size//2 .. size - size//2 - 1."""
    return torch.arange(size, device=device, dtype=torch.float32) - size // 2


def extract_patches(image: torch.Tensor, points: torch.Tensor, size: int) -> torch.Tensor:
    """(B, C, H, W) image, (B, N, 2) crop-normalised points -> (B, N, C, size, size) patches."""
    if image.dim() != 4 or points.dim() != 3 or points.shape[-1] != 2 or points.shape[0] != image.shape[0]:
        raise ValueError(
            f"extract_patches: expected image (B, C, H, W) and points (B, N, 2), got {tuple(image.shape)} "
            f"and {tuple(points.shape)}"
        )
    b, c, h, w = image.shape
    n = points.shape[1]
    hw = torch.tensor([w, h], device=image.device, dtype=torch.float32)
    centre = points.detach().float() * hw - 0.5                               # pixel coordinates
    offsets = patch_offsets(size, image.device)
    xs = centre[..., 0, None] + offsets                                       # (B, N, P)
    ys = centre[..., 1, None] + offsets
    gx = (2 * xs + 1) / w - 1                                                 # align_corners=False
    gy = (2 * ys + 1) / h - 1
    grid = torch.stack(torch.broadcast_tensors(gx[:, :, None, :], gy[:, :, :, None]), dim=-1)  # (B, N, P, P, 2)
    out = F.grid_sample(image, grid.reshape(b, n * size, size, 2).to(image.dtype),
                        mode="bilinear", padding_mode="zeros", align_corners=False)            # (B, C, N*P, P)
    return out.view(b, c, n, size, size).transpose(1, 2)
