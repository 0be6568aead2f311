"""CBAM (Woo et al. 2018): channel then spatial attention, and the residual block that carries it.

Follows Jongchan/attention-module (IMPLEMENTATION_NOTES §3.1): the channel
gate is a shared MLP C -> C/r -> C on the average- and max-pooled vectors;
the spatial gate is a bias-free 7x7 conv + BN on the channel max and mean
maps. In the residual block the gates act either on the block input Z, as
AODN eqs. 3-4 write (``gates="input"``), or on the residual branch after bn2
as CBAM's code places them (``gates="branch"``). The block also returns its
maps (M_c, M_s, the spatial logits and the channel mean of Z'), which AODN
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

    def logits(self, z: torch.Tensor) -> torch.Tensor:
        """BN(conv7x7([MaxPool_c(Z); AvgPool_c(Z)])), the pre-sigmoid map, (B, 1, H, W)."""
        pooled = torch.cat([z.amax(dim=1, keepdim=True), z.mean(dim=1, keepdim=True)], dim=1)
        return self.bn(self.conv(pooled))

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        m_s = torch.sigmoid(self.logits(z))  # (B, 1, H, W)
        return z * m_s, m_s[:, 0]


GATES = ("input", "branch")


class CBAMBasicBlock(nn.Module):
    """ResNet BasicBlock (stride 1, same width) R carrying CBAM; sub-network C of AODN's AM.

    ``gates="input"``: Z' = M_c(Z) ⊙ Z (eq. 3), Z'' = M_s(Z') ⊙ Z' (eq. 4) on the
    block input Z, output ReLU(R(Z) + Z''). ``gates="branch"``: the gates act on
    R(Z) after bn2, output ReLU(gated R(Z) + Z) (CBAM's code). Returns the
    output and the maps: ``attention_channel`` M_c (B, C), ``attention_spatial``
    M_s (B, H, W), ``attention_spatial_logits`` (its pre-sigmoid map) and
    ``attention_channel_map`` (the channel mean of the channel-gated map, B, H, W).
    """

    def __init__(self, channels: int, reduction: int = 8, gates: str = "input") -> None:
        super().__init__()
        if gates not in GATES:
            raise ValueError(f"model.net.gates must be one of {GATES}, got {gates!r}")
        self.gates = gates
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.channel_gate = ChannelGate(channels, reduction)
        self.spatial_gate = SpatialGate()

    def attend(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """x -> x'' = M_s(x') ⊙ x', x' = M_c(x) ⊙ x (eqs. 3-4), and the maps."""
        x1, m_c = self.channel_gate(x)
        logits = self.spatial_gate.logits(x1)
        maps = {"attention_channel": m_c, "attention_spatial": torch.sigmoid(logits[:, 0]),
                "attention_spatial_logits": logits[:, 0], "attention_channel_map": x1.mean(dim=1)}
        return x1 * torch.sigmoid(logits), maps

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        r = self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(z)))))
        if self.gates == "input":
            z2, maps = self.attend(z)
            return torch.relu(r + z2), maps
        r, maps = self.attend(r)
        return torch.relu(r + z), maps
