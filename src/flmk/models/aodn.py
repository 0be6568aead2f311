"""AODN: Attentive Occlusion-adaptive Deep Networks (Sadiq & Shi).

ODN (odn.py) with its distillation module replaced by the attention module
(AM): sub-network C is a residual block carrying CBAM (channel then spatial
attention, eqs. 3-4) giving Z''; sub-network D keeps the input Z (identity,
IMPLEMENTATION_NOTES §8 item 7); F = Z'' ⊙ Z (eq. 2, EWM) or Z'' + Z (EWA,
Table 5). The loss is eq. 8: ODN's with L1 on P' = M_c and P'' = M_s.
"""

from __future__ import annotations

import torch
from torch import nn

from flmk.models.blocks.cbam import CBAMBasicBlock
from flmk.models.odn import OcclusionAdaptiveLoss, OcclusionAdaptiveNet

FUSIONS = ("mul", "add")


class AttentionModule(nn.Module):
    """AM: F = Z'' ⊙ Z (``fuse="mul"``, EWM) or Z'' + Z (``"add"``, EWA), Z'' = CBAM block(Z)."""

    def __init__(self, channels: int, reduction: int = 8, fuse: str = "mul") -> None:
        super().__init__()
        if fuse not in FUSIONS:
            raise ValueError(f"model.net.fuse must be one of {FUSIONS}, got {fuse!r}")
        self.fuse = fuse
        self.sub_network_c = CBAMBasicBlock(channels, reduction)

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        z2, m_c, m_s = self.sub_network_c(z)
        f = z2 * z if self.fuse == "mul" else z2 + z  # eq. 2; sub-network D is the identity
        return f, {"attention_channel": m_c, "attention_spatial": m_s}


class AODN(OcclusionAdaptiveNet):
    """AODN with switches ``gm``, ``am``, ``lm``; a switched-off module has no parameters."""

    def __init__(self, num_points: int = 68, backbone: str = "resnet18", pretrained: bool = False,
                 cut_stage: int = 3, gm: bool = True, gm_width: int = 232, gm_product: str = "matmul",
                 gm_normalise: bool = True, am: bool = True, reduction: int = 8, fuse: str = "mul",
                 lm: bool = True, lm_init: str = "identity", output: str = "linear") -> None:
        factory = (lambda c: AttentionModule(c, reduction, fuse)) if am else None
        super().__init__(num_points, backbone, pretrained, cut_stage, gm, gm_width, gm_product,
                         gm_normalise, factory, lm, lm_init, output)
        self.visual_keys: tuple[str, ...] = ("attention_spatial", "feature_energy") if am else ()


class AODNLoss(OcclusionAdaptiveLoss):
    """AODN eq. 8: ODN's weights, with eta' ||P'||_1 (P' = M_c) + eta'' ||P''||_1 (P'' = M_s)."""

    def __init__(self, beta: float = 1e-6, gamma: float = 1e-5, alpha: float = 1e-5, lambda_: float = 1e-5,
                 eta_channel: float = 1e-6, eta_spatial: float = 1e-6, visible_only: bool = False) -> None:
        maps = {"channel_attention_l1": ("attention_channel", eta_channel),
                "spatial_attention_l1": ("attention_spatial", eta_spatial)}
        super().__init__(beta, gamma, alpha, lambda_, maps, visible_only)
