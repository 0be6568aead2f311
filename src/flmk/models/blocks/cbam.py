"""CBAM (Woo et al. 2018): channel then spatial attention, and the residual block that carries it.

Follows Jongchan/attention-module (IMPLEMENTATION_NOTES §3.1): the channel
gate is a shared MLP C -> C/r -> C on the average- and max-pooled vectors;
the spatial gate is a bias-free 7x7 conv + BN on the channel max and mean
maps; in a BasicBlock the gates act on the residual branch after bn2. The
gates also return their maps, M_c (B, C) and M_s (B, H, W), which AODN
regularises (eq. 8) and visualises (Fig. 13).
"""

from __future__ import annotations

import torch
from torch import nn


class ChannelGate(nn.Module):
    """M_c = sigmoid(MLP(AvgPool(Z)) + MLP(MaxPool(Z))), applied as Z' = M_c * Z (AODN eq. 3)."""

    def __init__(self, channels: int, reduction: int = 8) -> None:
        super().__init__()
        if reduction < 1 or channels % reduction:
            raise ValueError(f"model.net.reduction must divide the {channels} channels, got {reduction!r}")
        self.mlp = nn.Sequential(nn.Linear(channels, channels // reduction), nn.ReLU(inplace=True),
                                 nn.Linear(channels // reduction, channels))  # W0: C -> C/r, W1: C/r -> C

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        m_c = torch.sigmoid(self.mlp(z.mean(dim=(2, 3))) + self.mlp(z.amax(dim=(2, 3))))
        return z * m_c[:, :, None, None], m_c


class SpatialGate(nn.Module):
    """M_s = sigmoid(BN(conv7x7([MaxPool_c(Z'); AvgPool_c(Z')]))), applied as Z'' = M_s * Z' (AODN eq. 4)."""

    def __init__(self, kernel_size: int = 7) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 1, kernel_size, padding=kernel_size // 2, bias=False)
        self.bn = nn.BatchNorm2d(1, momentum=0.01)

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        pooled = torch.cat([z.amax(dim=1, keepdim=True), z.mean(dim=1, keepdim=True)], dim=1)
        m_s = torch.sigmoid(self.bn(self.conv(pooled)))  # (B, 1, H, W)
        return z * m_s, m_s[:, 0]


class CBAMBasicBlock(nn.Module):
    """ResNet BasicBlock (stride 1, same width) with CBAM on its residual branch after bn2.

    Returns the block output and the channel / spatial maps (M_c (B, C), M_s (B, H, W)).
    """

    def __init__(self, channels: int, reduction: int = 8) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.channel_gate = ChannelGate(channels, reduction)
        self.spatial_gate = SpatialGate()

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        r = self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(z)))))
        r, m_c = self.channel_gate(r)
        r, m_s = self.spatial_gate(r)
        return torch.relu(r + z), m_c, m_s
