"""ODN: Occlusion-adaptive Deep Networks (Zhu, Shi, Zheng, Sadiq, CVPR 2019).

ResNet-18 cut after ``layer3`` (its last stage is replaced, IMPLEMENTATION_NOTES
§2.1) gives Z. The geometry-aware module (GM) and the distillation module
(DM) both read Z; their outputs are concatenated (the hybrid features),
pooled to X and regressed by the low-rank learning module (LM),
S = W_fc^T M^T X (§3.3, eq. 1). With one of GM / DM switched off only the other
module's output is pooled (``absent="drop"``, "BRNet+DM+LM" = DM alone feeds LM)
or Z stands in for the missing one (``absent="identity"``); with both off only
Z is pooled, so ``gm=dm=lm=false, cut_stage=4`` is BRNet. The loss is eq. 3,
written in crop pixels by default. AODN (aodn.py) reuses all of this with DM
replaced by AM.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from timm.models.resnet import BasicBlock
from torch import nn

from flmk.models.baseline import resnet_trunk, squared_point_error
from flmk.models.blocks.lowrank import NuclearNorm, RegressionHead

GM_PRODUCTS = ("matmul", "matmul_T", "hadamard")
ABSENT = ("drop", "identity")
UNITS = ("pixels", "normalised")
L1_ON = ("logits", "probabilities")


def conv_bn_relu(cin: int, cout: int, k: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, k, padding=k // 2, bias=False), nn.BatchNorm2d(cout),
                         nn.ReLU(inplace=True))


def pathway(channels: int, width: int, k: int, out: int, logits: bool = False) -> nn.Sequential:
    """A '1-k-1' pathway: 1x1 (C -> w), k x k (w -> w), 1x1 (w -> out); a logit output has no BN/ReLU."""
    last = nn.Conv2d(width, out, 1) if logits else conv_bn_relu(width, out, 1)
    return nn.Sequential(conv_bn_relu(channels, width, 1), conv_bn_relu(width, width, k), last)


class GeometryAwareModule(nn.Module):
    """GM: pathways A (1-3-1) and B (1-5-1), their per-channel matrix product, a 1x1 fusion conv (§3.1).

    ``product``: ``matmul`` G_k = A_k B_k (row i of A with column j of B, the
    recommended reading), ``matmul_T`` G_k = A_k B_k^T, ``hadamard`` A ⊙ B.
    ``normalise`` divides a matrix product by the map side W (magnitude control).
    """

    def __init__(self, channels: int, width: int = 232, product: str = "matmul",
                 normalise: bool = True) -> None:
        super().__init__()
        if product not in GM_PRODUCTS:
            raise ValueError(f"model.net.gm_product must be one of {GM_PRODUCTS}, got {product!r}")
        self.product, self.normalise = product, normalise
        self.pathway_a = pathway(channels, width, 3, channels)
        self.pathway_b = pathway(channels, width, 5, channels)
        self.fuse = conv_bn_relu(channels, channels, 1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        a, b = self.pathway_a(z), self.pathway_b(z)
        if self.product == "hadamard":
            g = a * b
        else:
            h, w = z.shape[-2:]
            if h != w:
                raise ValueError(f"GM gm_product={self.product!r} multiplies square maps, got {h}x{w} "
                                 f"features: use square crops or gm_product=hadamard")
            g = a @ (b if self.product == "matmul" else b.transpose(-1, -2))  # per channel: A_k B_k
            if self.normalise:
                g = g / w
        return self.fuse(g)


class DistillationModule(nn.Module):
    """DM: clean features = C ⊙ sigmoid(P), C from a residual block, P from a 1-3-1 pathway D (§3.2).

    Maps: ``occlusion_logits`` P (B, h, w), the pre-sigmoid map that eq. 9's L1
    acts on, and ``occlusion_map`` sigmoid(P), the occlusion probabilities.
    """

    def __init__(self, channels: int, width: int = 128) -> None:
        super().__init__()
        self.pathway_c = BasicBlock(channels, channels)
        self.pathway_d = pathway(channels, width, 3, 1, logits=True)

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        logits = self.pathway_d(z)  # P, (B, 1, h, w)
        p = torch.sigmoid(logits)  # occlusion-probability map
        return self.pathway_c(z) * p, {"occlusion_map": p[:, 0], "occlusion_logits": logits[:, 0]}


class OcclusionAdaptiveNet(nn.Module):
    """Trunk -> Z -> [GM(Z), branch(Z)] -> concat -> GAP -> X -> LM (or plain FC) -> points.

    ``branch`` is ODN's DM or AODN's AM: a module returning (features, maps),
    or None when switched off. ``absent`` says what stands in for a switched-off
    GM or branch while the other is on: ``drop`` (nothing, X has C channels) or
    ``identity`` (Z itself, X has 2C). Outputs: ``points`` (B, N, 2), the
    branch's maps and ``feature_energy`` (B, h, w), the channel mean of the
    squared branch features (the "post-distilled" / "post-attention" view).
    """

    def __init__(self, num_points: int, backbone: str, pretrained: bool, cut_stage: int,
                 gm: bool, gm_width: int, gm_product: str, gm_normalise: bool,
                 branch_factory: Callable[[int], nn.Module] | None, lm: bool, lm_init: str, output: str,
                 absent: str = "drop", pretrained_path: str | None = None) -> None:
        super().__init__()
        if absent not in ABSENT:
            raise ValueError(f"model.net.absent must be one of {ABSENT}, got {absent!r}")
        self.absent = absent
        self.trunk, channels = resnet_trunk(backbone, pretrained, cut_stage, pretrained_path)
        self.gm = GeometryAwareModule(channels, gm_width, gm_product, gm_normalise) if gm else None
        self.branch = branch_factory(channels) if branch_factory is not None else None
        both = self.gm is not None and self.branch is not None
        x_dim = 2 * channels if both or (absent == "identity" and (gm or self.branch is not None)) else channels
        self.head = RegressionHead(x_dim, num_points, low_rank=lm, output=output, m_init=lm_init)

    def forward(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        z = self.trunk(image)
        out: dict[str, torch.Tensor] = {}
        parts = []  # the hybrid feature representation, concatenated along channels
        stand_in = [z] if self.absent == "identity" else []
        parts += [self.gm(z)] if self.gm is not None else stand_in
        if self.branch is not None:
            feats, maps = self.branch(z)
            out.update(maps)
            out["feature_energy"] = feats.detach().float().pow(2).mean(dim=1)
            parts.append(feats)
        elif self.gm is not None:
            parts += stand_in
        hybrid = torch.cat(parts, dim=1) if parts else z  # nothing on: BRNet
        out["points"] = self.head(hybrid.mean(dim=(2, 3)))  # GAP -> X -> S = W_fc^T M^T X
        return out


class ODN(OcclusionAdaptiveNet):
    """ODN with switches ``gm``, ``dm``, ``lm``; a switched-off module has no parameters."""

    def __init__(self, num_points: int = 68, backbone: str = "resnet18", pretrained: bool = False,
                 cut_stage: int = 3, gm: bool = True, gm_width: int = 232, gm_product: str = "matmul",
                 gm_normalise: bool = True, dm: bool = True, dm_width: int = 128, lm: bool = True,
                 lm_init: str = "identity", output: str = "linear", absent: str = "drop",
                 pretrained_path: str | None = None) -> None:
        factory = (lambda c: DistillationModule(c, dm_width)) if dm else None
        super().__init__(num_points, backbone, pretrained, cut_stage, gm, gm_width, gm_product,
                         gm_normalise, factory, lm, lm_init, output, absent, pretrained_path)
        self.visual_keys: tuple[str, ...] = ("occlusion_map", "feature_energy") if dm else ()


class OcclusionAdaptiveLoss(nn.Module):
    """Squared point error + the LM, conv, FC regularisers + L1 on the maps named by ``maps``.

    ``maps`` = {term: (output key, weight)}. A term whose weight is 0 or whose
    module is switched off (no M, no map in the outputs) is left out.
    ``units="pixels"`` writes the point error in crop pixels (points times
    ``crop_size``), ``"normalised"`` in crop-normalised [0, 1] units; the
    regularisers do not depend on the unit, so it sets their balance against
    the data term. ``nuclear`` (``svd`` | ``newton_schulz``) and its keys choose
    how ||M||_* is computed (blocks/lowrank.NuclearNorm).
    """

    def __init__(self, beta: float, gamma: float, alpha: float, lambda_: float,
                 maps: dict[str, tuple[str, float]], visible_only: bool, units: str = "pixels",
                 crop_size: int = 224, nuclear: str = "newton_schulz", ns_steps: int = 8,
                 svd_every: int = 100) -> None:
        super().__init__()
        if units not in UNITS:
            raise ValueError(f"model.loss.units must be one of {UNITS}, got {units!r}")
        self.beta, self.gamma, self.alpha, self.lambda_ = beta, gamma, alpha, lambda_
        self.maps, self.visible_only = maps, visible_only
        self.scale = float(crop_size) if units == "pixels" else 1.0
        self.nuclear_norm = NuclearNorm(nuclear, ns_steps, svd_every)

    def forward(self, outputs: dict[str, torch.Tensor], batch: dict[str, torch.Tensor],
                net: nn.Module) -> dict[str, torch.Tensor]:
        mask = batch["visible"] if self.visible_only else None
        s = self.scale
        terms = {"points": squared_point_error(outputs["points"].float() * s, batch["points"].float() * s, mask)}
        m = net.head.M
        if m is not None and self.beta:
            terms["nuclear_M"] = self.beta * self.nuclear_norm(m)  # beta ||M||_*
        if m is not None and self.gamma:
            terms["frobenius_M"] = self.gamma * m.float().pow(2).sum()  # gamma ||M||_F^2
        if self.alpha:  # alpha ||W_c||_F^2 over every conv, backbone included
            convs = [mod.weight for mod in net.modules() if isinstance(mod, nn.Conv2d)]
            terms["conv_weights"] = self.alpha * torch.stack([w.float().pow(2).sum() for w in convs]).sum()
        if self.lambda_:
            terms["fc_weights"] = self.lambda_ * net.head.fc.weight.float().pow(2).sum()  # lambda ||W_fc||_F^2
        for term, (key, weight) in self.maps.items():
            if weight and key in outputs:  # eta ||P_i||_1 (eq. 9), summed per sample, mean over the batch
                p = outputs[key].float()
                terms[term] = weight * p.abs().flatten(1).sum(1).mean()
        terms["loss"] = torch.stack(list(terms.values())).sum()
        return terms


class ODNLoss(OcclusionAdaptiveLoss):
    """ODN eq. 3 with the paper's weights (alpha = gamma = lambda = 1e-5, beta = eta = 1e-6).

    ``l1_on="logits"``: eta ||P||_1 on the pre-sigmoid map P (§3.2, eq. 9 with
    its p_k < 0 case); ``"probabilities"``: on sigmoid(P).
    """

    def __init__(self, beta: float = 1e-6, gamma: float = 1e-5, alpha: float = 1e-5, lambda_: float = 1e-5,
                 eta: float = 1e-6, visible_only: bool = False, l1_on: str = "logits", units: str = "pixels",
                 crop_size: int = 224, nuclear: str = "newton_schulz", ns_steps: int = 8,
                 svd_every: int = 100) -> None:
        if l1_on not in L1_ON:
            raise ValueError(f"model.loss.l1_on must be one of {L1_ON}, got {l1_on!r}")
        key = "occlusion_logits" if l1_on == "logits" else "occlusion_map"
        super().__init__(beta, gamma, alpha, lambda_, {"occlusion_l1": (key, eta)}, visible_only, units,
                         crop_size, nuclear, ns_steps, svd_every)
