"""AODN: Attentive Occlusion-adaptive Deep Networks (Sadiq & Shi).

ODN (odn.py) with its distillation module replaced by the attention module
(AM): sub-network C is a residual block carrying CBAM (channel then spatial
attention, eqs. 3-4, acting on Z by default) giving Z''; sub-network D keeps
the input Z (identity, IMPLEMENTATION_NOTES §8 item 7); F = Z'' ⊙ Z (eq. 2, EWM)
or Z'' + Z (EWA, Table 5). The loss is eq. 8: ODN's with L1 on the
single-channel maps P' (the channel mean of Z', the channel-attended map) and
P'' (the spatial attention's pre-sigmoid map), as eq. 14's P_k < 0 case implies.
"""

from __future__ import annotations

import torch
from torch import nn

from flmk.models.blocks.cbam import CBAMBasicBlock
from flmk.models.odn import OcclusionAdaptiveLoss, OcclusionAdaptiveNet

FUSIONS = ("mul", "add")


class AttentionModule(nn.Module):
    """AM: F = Z'' ⊙ Z (``fuse="mul"``, EWM) or Z'' + Z (``"add"``, EWA), Z'' = CBAM block(Z)."""

    def __init__(self, channels: int, reduction: int = 8, fuse: str = "mul", gates: str = "input") -> None:
        super().__init__()
        if fuse not in FUSIONS:
            raise ValueError(f"model.net.fuse must be one of {FUSIONS}, got {fuse!r}")
        self.fuse = fuse
        self.sub_network_c = CBAMBasicBlock(channels, reduction, gates)

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        z2, maps = self.sub_network_c(z)
        f = z2 * z if self.fuse == "mul" else z2 + z  # eq. 2; sub-network D is the identity
        return f, maps


class AODN(OcclusionAdaptiveNet):
    """AODN with switches ``gm``, ``am``, ``lm``; a switched-off module has no parameters."""

    def __init__(self, num_points: int = 68, backbone: str = "resnet18", pretrained: bool = False,
                 cut_stage: int = 3, gm: bool = True, gm_width: int = 232, gm_product: str = "matmul",
                 gm_normalise: bool = True, am: bool = True, reduction: int = 8, fuse: str = "mul",
                 lm: bool = True, lm_init: str = "identity", output: str = "linear", gates: str = "input",
                 absent: str = "drop", pretrained_path: str | None = None) -> None:
        factory = (lambda c: AttentionModule(c, reduction, fuse, gates)) if am else None
        super().__init__(num_points, backbone, pretrained, cut_stage, gm, gm_width, gm_product,
                         gm_normalise, factory, lm, lm_init, output, absent, pretrained_path)
        self.visual_keys: tuple[str, ...] = ("attention_spatial", "feature_energy") if am else ()


L1_MAPS = {"single_channel": ("attention_channel_map", "attention_spatial_logits"),
           "gates": ("attention_channel", "attention_spatial")}


class AODNLoss(OcclusionAdaptiveLoss):
    """AODN eq. 8: ODN's weights, with eta' ||P'||_1 + eta'' ||P''||_1.

    ``l1_maps="single_channel"``: P' = channel mean of Z' = M_c(Z) ⊙ Z and P'' =
    the spatial attention's pre-sigmoid map, the "single-channel feature maps"
    of §4 (eq. 14 has a P_k < 0 case, so P'' is taken before the sigmoid);
    ``"gates"``: P' = M_c (a C-vector) and P'' = M_s, after the sigmoids.
    """

    def __init__(self, beta: float = 1e-6, gamma: float = 1e-5, alpha: float = 1e-5, lambda_: float = 1e-5,
                 eta_channel: float = 1e-6, eta_spatial: float = 1e-6, visible_only: bool = False,
                 l1_maps: str = "single_channel", units: str = "pixels", crop_size: int = 224,
                 nuclear: str = "newton_schulz", ns_steps: int = 8, svd_every: int = 100) -> None:
        if l1_maps not in L1_MAPS:
            raise ValueError(f"model.loss.l1_maps must be one of {tuple(L1_MAPS)}, got {l1_maps!r}")
        channel, spatial = L1_MAPS[l1_maps]
        maps = {"channel_attention_l1": (channel, eta_channel), "spatial_attention_l1": (spatial, eta_spatial)}
        super().__init__(beta, gamma, alpha, lambda_, maps, visible_only, units, crop_size, nuclear,
                         ns_steps, svd_every)
