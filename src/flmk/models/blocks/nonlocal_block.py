"""Embedded-Gaussian non-local block (Wang et al. 2018), as SRN uses it (eqs. 3-4).

``y_u = sum_v softmax_v(theta(x_u) . phi(x_v)) g(x_v)``  (eq. 3; the softmax is the 1/C(x) normaliser)
``R = W(y) + x``                                           (eq. 4)

``W`` is zero-initialised, so the block starts as the identity and can be
dropped into a trained network without changing it (Wang et al.; notes §8
item 20). ``code_scaling`` reproduces the SRN TF code, which further divides
``y`` by (positions x channels) -- fixed per layout here (68*4*64 for 68
points), not by the batch-dependent size the code uses.
"""

from __future__ import annotations

import torch
from torch import nn


class NonLocalBlock(nn.Module):
    """Non-local block over the positions of ``x`` (B, C, *positions); output has the shape of ``x``."""

    def __init__(self, channels: int, inter_channels: int | None = None, code_scaling: bool = False) -> None:
        super().__init__()
        inter = inter_channels or channels
        self.code_scaling = code_scaling
        self.theta = nn.Conv1d(channels, inter, 1)
        self.phi = nn.Conv1d(channels, inter, 1)
        self.g = nn.Conv1d(channels, inter, 1)
        self.out = nn.Conv1d(inter, channels, 1)  # W in eq. 4 (the paper's F)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.flatten(2)                                                    # (B, C, L)
        theta = self.theta(flat).transpose(1, 2)                               # (B, L, C')
        affinity = torch.softmax((theta @ self.phi(flat)).float(), dim=-1)     # (B, L, L), eq. 3
        y = affinity.to(flat.dtype) @ self.g(flat).transpose(1, 2)             # (B, L, C')
        if self.code_scaling:
            y = y / (flat.shape[1] * flat.shape[2])
        return (self.out(y.transpose(1, 2)) + flat).view_as(x)                 # eq. 4
