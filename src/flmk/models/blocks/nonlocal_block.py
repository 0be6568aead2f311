"""Embedded-Gaussian non-local block (Wang et al. 2018), as SRN uses it (eqs. 3-4).

``y_u = sum_v softmax_v(theta(x_u) . phi(x_v)) g(x_v)``  (eq. 3; the softmax is the 1/C(x) normaliser)
``R = W(y) + x``                                           (eq. 4)

Two variants (``variant``):

* ``"standard"``: Wang et al.'s block. Linear 1x1 theta, phi, g; ``W`` zero-initialised, so the block
  starts as the identity and can be dropped into a trained network without changing it.
* ``"official"``: the SRN TF code (``models.py``, scopes cita/feita/gama/beata; notes §6.2 item 3).
  theta, phi, g and ``W`` are slim 1x1 convs with their defaults (ReLU, truncated-normal std 0.01, bias 0);
  phi is *reshaped*, not transposed, from the channels-last (positions, C) tensor to (C, positions), so
  the "affinity" pairs theta with a scramble of phi's positions and channels; and ``y`` is divided by
  B * positions * C (B the batch size of the call: 64 * 272 * 64 = 1,114,112 at the training batch).
  At that scale W(y) is ~1e-9 of x: the block is near-inert, R = x + ReLU(W's bias) in effect.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

NLVariant = Literal["official", "standard"]


class NonLocalBlock(nn.Module):
    """Non-local block over the positions of ``x`` (B, C, *positions); output has the shape of ``x``."""

    def __init__(self, channels: int, inter_channels: int | None = None, variant: NLVariant = "standard") -> None:
        super().__init__()
        if variant not in ("official", "standard"):
            raise ValueError(f"SRN nl_variant: expected 'official' or 'standard', got {variant!r}")
        inter = inter_channels or channels
        self.variant = variant
        self.theta = nn.Conv1d(channels, inter, 1)
        self.phi = nn.Conv1d(channels, inter, 1)
        self.g = nn.Conv1d(channels, inter, 1)
        self.out = nn.Conv1d(inter, channels, 1)  # W in eq. 4 (the paper's F)
        self.act = nn.ReLU() if variant == "official" else nn.Identity()
        if variant == "official":  # slim conv2d defaults (code:SRN slim/ops.py)
            for conv in (self.theta, self.phi, self.g, self.out):
                nn.init.trunc_normal_(conv.weight, std=0.01, a=-0.02, b=0.02)
                nn.init.zeros_(conv.bias)
        else:
            nn.init.zeros_(self.out.weight)
            nn.init.zeros_(self.out.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.flatten(2)                                                    # (B, C, L)
        b, c, length = flat.shape
        theta = self.act(self.theta(flat)).transpose(1, 2)                     # (B, L, C')
        phi = self.act(self.phi(flat))                                         # (B, C', L)
        if self.variant == "official":  # tf.reshape of the channels-last (B, L, C') tensor to (B, C', L)
            phi = phi.transpose(1, 2).reshape(phi.shape)
        affinity = torch.softmax((theta @ phi).float(), dim=-1)               # (B, L, L), eq. 3
        y = affinity.to(flat.dtype) @ self.act(self.g(flat)).transpose(1, 2)   # (B, L, C')
        if self.variant == "official":
            y = y / (b * length * c)
        return (self.act(self.out(y.transpose(1, 2))) + flat).view_as(x)      # eq. 4
