"""CCDN: Cross-order Cross-semantic Deep Network (Wan, Lai, Shen, Zhou et al.).

A regression port of Cross-X onto a 4-stack hourglass (IMPLEMENTATION_NOTES §4):

    image 128² -> StackedHourglass -> HG-4 features 256×32²
      -> block T−1: Residual(256→256, /2) carrying a CTM -> trunk + P side outputs X̂ᵖ_{T−1} (256×16²)
      -> block T:   Residual(256→512, /2) carrying a CTM -> P side outputs X̂ᵖ_T (512×8²)
      -> CFF (eq. 7), one K₁, Fconv, K₂, BN for every excitation: X̂ᵖ_G (256×16²)
      -> heads: per level ℓ ∈ {T, T−1, G}, concat_p GAP(X̂ᵖ_ℓ) -> Linear -> 2N, summed (notes §8 item 9)

The CTM (eqs. 1–4) squeezes the residual branch by GAP (first order) and by
global covariance pooling (second order) and re-weights it with P excitation
blocks; the COCS regulariser (eqs. 5, 6, 8) pushes the P excitations apart.
Variants: ``ccdn``; ``fcdn`` (first-order squeeze only, no second-order
parameters); ``baseline`` (Tables 2–5: "four stacked hourglass networks" regress
the points, GAP + Linear on the 4th hourglass, nothing else); ``no_ctm`` (not a
paper row: CCDN's blocks T−1, T, CFF and summed heads without any CTM, the
baseline before issue 13).
P excitations live on one axis, (B, P, D, H, W); per-excitation weights are
grouped convolutions, so nothing loops over excitations.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from flmk.models.baseline import squared_point_error
from flmk.models.blocks.covpool import GlobalCovariancePooling
from flmk.models.blocks.hourglass import Residual, StackedHourglass

VARIANTS = ("ccdn", "fcdn", "baseline", "no_ctm")
HEADS = ("tgm_sum", "t_only")
CFF_WEIGHTS = ("shared", "per_excitation")
COCS_G = ("pre_bn", "post_bn")
UNITS = ("normalised", "pixels")


class ExcitationGates(nn.Module):
    """P independent gates s^{p} = σ(W_U^{p} ReLU(W_V^{p} κ)) (eq. 3) as grouped 1×1 convs: κ (B, D) -> (B, P, D)."""

    def __init__(self, channels: int, excitations: int, reduction: int = 4) -> None:
        super().__init__()
        if channels % reduction:
            raise ValueError(f"CTM: channels {channels} not divisible by model.net.reduction={reduction}")
        p, hidden = excitations, channels // reduction
        self.excitations = p
        self.mlp = nn.Sequential(
            nn.Conv2d(p * channels, p * hidden, 1, groups=p),  # W_V^p: D -> D/4
            nn.ReLU(inplace=True),
            nn.Conv2d(p * hidden, p * channels, 1, groups=p),  # W_U^p: D/4 -> D
            nn.Sigmoid(),
        )

    def forward(self, kappa: torch.Tensor) -> torch.Tensor:
        b, d = kappa.shape
        return self.mlp(kappa.repeat(1, self.excitations)[:, :, None, None]).view(b, self.excitations, d)


class CTM(nn.Module):
    """Cross-order two-squeeze multi-excitation module (eqs. 1–4): X (B, D, H, W) -> X̂ (B, P, D, H, W).

    X̂ᵖ = s^{p,st} ⊙ X + s^{p,nd} ⊙ X (eq. 4) with κ_st = GAP(X) (eq. 1) and
    κ_nd = GCP(X) (eq. 2). ``second_order=False`` is FCDN: no GCP, no nd gates.
    """

    def __init__(
        self,
        channels: int,
        excitations: int = 4,
        second_order: bool = True,
        reduction: int = 4,
        ns_iterations: int = 5,
        covariance_eps: float = 1e-5,
    ) -> None:
        super().__init__()
        self.first_order = ExcitationGates(channels, excitations, reduction)
        self.gcp = GlobalCovariancePooling(ns_iterations, covariance_eps) if second_order else None
        self.second_order = ExcitationGates(channels, excitations, reduction) if second_order else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = self.first_order(x.mean(dim=(2, 3)))  # eqs. 1, 3 (st)
        if self.second_order is not None:
            scale = scale + self.second_order(self.gcp(x).to(x.dtype))  # eqs. 2, 3 (nd); eq. 4 sums the orders
        return scale[..., None, None] * x[:, None]


class CTMResidual(nn.Module):
    """Residual block whose branch also feeds a CTM (as Cross-X's OSME, notes §4.2).

    Returns the un-excited trunk ``branch + skip`` and the P side outputs
    X̂ᵖ = ReLU(CTM(branch)ᵖ + skip) (B, P, D, h, w); without a CTM the single
    side output is ReLU(trunk).
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int, ctm: CTM | None) -> None:
        super().__init__()
        self.residual = Residual(in_channels, out_channels, stride)
        self.ctm = ctm

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        branch, skip = self.residual.branch(x), self.residual.skip(x)
        trunk = branch + skip
        if self.ctm is None:
            return trunk, F.relu(trunk)[:, None]
        return trunk, F.relu(self.ctm(branch) + skip[:, None])


class CFF(nn.Module):
    """Cross-layer feature fusing (eq. 7): X̂ᵖ_G = BN(K₂ * (X̂ᵖ_{T−1} + Fconv(K₁ * X̂ᵖ_T))).

    K₁ 1×1 (D_T -> D), Fconv k4 s2, K₂ 3×3. ``shared``: eq. 7 indexes the features by p but
    no kernel, so one K₁, Fconv, K₂ and BN serve every excitation (P folded into the batch);
    ``per_excitation``: separate weights per p as grouped convs (Cross-X's conv2_p / conv3_p).
    Returns X̂ᵖ_G and K₂ * (...) before the BN, both (B, P, D, h, w).
    """

    def __init__(self, t_channels: int, channels: int, excitations: int, weights: str = "shared") -> None:
        super().__init__()
        if weights not in CFF_WEIGHTS:
            raise ValueError(f"model.net.cff_weights must be one of {CFF_WEIGHTS}, got {weights!r}")
        g = 1 if weights == "shared" else excitations
        self.groups = g
        self.k1 = nn.Conv2d(g * t_channels, g * channels, 1, groups=g, bias=False)
        self.deconv = nn.ConvTranspose2d(g * channels, g * channels, 4, stride=2, padding=1, groups=g)
        self.k2 = nn.Conv2d(g * channels, g * channels, 3, padding=1, groups=g, bias=False)
        self.bn = nn.BatchNorm2d(g * channels)

    def _fold(self, x: torch.Tensor) -> torch.Tensor:
        """(B, P, D, h, w) -> (B·P/g, g·D, h, w): P into the batch (shared) or into the channels (grouped)."""
        b, p, d, h, w = x.shape
        return x.reshape(b * p // self.groups, self.groups * d, h, w)

    def forward(self, x_t: torch.Tensor, x_t1: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        b, p = x_t1.shape[:2]
        pre_bn = self.k2(self._fold(x_t1) + self.deconv(self.k1(self._fold(x_t))))
        fused = self.bn(pre_bn)
        return (fused.view(b, p, -1, *fused.shape[-2:]), pre_bn.view(b, p, -1, *pre_bn.shape[-2:]))


class CCDN(nn.Module):
    """4-stack hourglass + CTMs at T−1 and T + CFF + summed GAP/Linear heads -> ``points`` (B, N, 2).

    ``points`` = mean shape + (summed head outputs) / ``offset_scale``: with offset_scale = crop size the
    heads predict crop pixels, so the optimiser's steps move points by pixels (config default).

    Outputs: ``points``; ``semantic_t``, ``semantic_t1``, ``semantic_g`` (B, P, D), the pooled
    features f_p the COCS loss reads (eq. 5): GAP of X̂ᵖ_T, X̂ᵖ_{T−1} and, with ``cocs_g=pre_bn``,
    of eq. 7 before its BN (``post_bn``: of X̂ᵖ_G itself, which BN centres per channel, so that its
    affine bias alone can make Q^G diagonal); ``excitation_maps`` (B, P, h, w), one CAM-style face
    activation map per excitation (Fig. 8, saved by flmk.evaluate; CTM variants only). The
    Baseline returns ``points`` only.
    """

    def __init__(
        self,
        num_points: int = 68,
        variant: str = "ccdn",
        excitations: int = 4,
        head: str = "tgm_sum",
        num_stacks: int = 4,
        channels: int = 256,
        hg_depth: int = 4,
        stem_channels: tuple[int, int] = (64, 128),
        pool: str = "max",
        t_channels: int = 512,
        reduction: int = 4,
        ns_iterations: int = 5,
        covariance_eps: float = 1e-5,
        head_init_std: float = 1e-3,
        offset_scale: float = 1.0,
        cff_weights: str = "shared",
        cocs_g: str = "pre_bn",
    ) -> None:
        super().__init__()
        if variant not in VARIANTS:
            raise ValueError(f"model.net.variant must be one of {VARIANTS}, got {variant!r}")
        if head not in HEADS:
            raise ValueError(f"model.net.head must be one of {HEADS}, got {head!r}")
        if cocs_g not in COCS_G:
            raise ValueError(f"model.net.cocs_g must be one of {COCS_G}, got {cocs_g!r}")
        if excitations < 1:
            raise ValueError(f"model.net.excitations must be >= 1, got {excitations}")
        if offset_scale <= 0:
            raise ValueError(f"model.net.offset_scale must be > 0 (crop units per head unit), got {offset_scale}")
        if variant in ("baseline", "no_ctm") and excitations != 1:
            raise ValueError(
                f"model.net.variant={variant} has no excitation blocks: set model.net.excitations=1 "
                f"(got {excitations})"
            )
        self.num_points = num_points
        self.excitations = excitations
        self.cocs_g = cocs_g
        self.offset_scale = offset_scale  # heads predict offsets in 1/offset_scale crop units (crop_size: pixels)
        self.backbone = StackedHourglass(num_stacks, channels, 3, hg_depth, tuple(stem_channels), pool)
        if variant == "baseline":  # Tables 2–5: the hourglasses regress the points, GAP + Linear [assume]
            self.block_t1 = self.block_t = self.cff = None
            self.levels: tuple[str, ...] = ("hg",)
            widths = {"hg": channels}
        else:
            def ctm(dim: int) -> CTM | None:
                if variant == "no_ctm":
                    return None
                return CTM(dim, excitations, variant == "ccdn", reduction, ns_iterations, covariance_eps)

            self.block_t1 = CTMResidual(channels, channels, 2, ctm(channels))
            self.block_t = CTMResidual(channels, t_channels, 2, ctm(t_channels))
            self.levels = ("t", "t1", "g") if head == "tgm_sum" else ("t",)
            has_cocs = variant != "no_ctm" and excitations > 1  # COCS needs the fused level G (eq. 8)
            needs_cff = "g" in self.levels or has_cocs
            self.cff = CFF(t_channels, channels, excitations, cff_weights) if needs_cff else None
            widths = {"t": t_channels, "t1": channels, "g": channels}
        self.heads = nn.ModuleDict({lvl: nn.Linear(excitations * widths[lvl], 2 * num_points) for lvl in self.levels})
        for lin in self.heads.values():  # start at the mean shape
            nn.init.normal_(lin.weight, std=head_init_std)
            nn.init.zeros_(lin.bias)
        self.register_buffer("mean_shape", torch.full((num_points, 2), 0.5))
        self.visual_keys: tuple[str, ...] = () if variant in ("baseline", "no_ctm") else ("excitation_maps",)

    def set_mean_shape(self, mean_shape: torch.Tensor) -> None:
        """Predictions are offsets from this crop-normalised (N, 2) shape (LandmarkModule calls it)."""
        self.mean_shape.copy_(mean_shape.to(self.mean_shape))

    def level_features(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        """Feature maps (B, P, D_ℓ, h, w): ``hg`` (Baseline: the 4th hourglass, P = 1), or the side outputs
        ``t``, ``t1`` and, with the CFF, ``g`` and ``g_pre_bn`` (eq. 7 before its BN)."""
        top = self.backbone(image)[-1]
        if self.block_t1 is None:
            return {"hg": top[:, None]}
        trunk, side_t1 = self.block_t1(top)
        _, side_t = self.block_t(trunk)
        features = {"t": side_t, "t1": side_t1}
        if self.cff is not None:
            features["g"], features["g_pre_bn"] = self.cff(side_t, side_t1)  # eq. 7
        return features

    def forward(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        features = self.level_features(image)
        pooled = {lvl: f.mean(dim=(-2, -1)) for lvl, f in features.items()}  # f_p before L2 (eq. 5)
        offsets = sum(self.heads[lvl](pooled[lvl].flatten(1)) for lvl in self.levels)
        out = {"points": self.mean_shape + offsets.view(-1, self.num_points, 2) / self.offset_scale}
        for lvl in ("t", "t1", "g"):
            source = "g_pre_bn" if lvl == "g" and self.cocs_g == "pre_bn" else lvl
            if source in pooled:
                out[f"semantic_{lvl}"] = pooled[source]
        if self.visual_keys:
            with torch.no_grad():
                out["excitation_maps"] = self.class_activation_maps(features).abs().mean(dim=2).float()
        return out

    def class_activation_maps(self, features: dict[str, torch.Tensor]) -> torch.Tensor:
        """CAM_k^p(h, w) = Σ_ℓ W_ℓ[k, p, :] · X̂ᵖ_ℓ(h, w) over the head levels, at T−1's size: (B, P, 2N, h, w).

        Its spatial mean, summed over p, is the head output k minus the biases. The
        Fig. 8 face activation map of excitation p is the mean over k of |CAM_k^p|.
        """
        size = features["t1"].shape[-2:]
        cam = 0.0
        for lvl in self.levels:
            x = features[lvl]
            w = self.heads[lvl].weight.view(2 * self.num_points, self.excitations, -1).to(x.dtype)
            c = torch.einsum("bpdhw,kpd->bpkhw", x, w)
            cam = cam + F.interpolate(c.flatten(1, 2), size=size, mode="nearest").view(*c.shape[:3], *size)
        return cam


def cross_semantic_loss(pooled: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """L(Q) = (‖Q‖_F² − ‖diag Q‖²) / ‖diag Q‖² (eq. 6) of pooled features (B, P, D), in fp32.

    Q_{pp'} = (1/B²) Σ_{b,b'} ⟨f_{p,b}, f_{p',b'}⟩ over L2-normalised f (eq. 5, mean over all batch pairs).
    """
    with torch.autocast(device_type=pooled.device.type, enabled=False):
        f = F.normalize(pooled.float(), dim=-1)
        q = torch.einsum("bpd,cqd->pq", f, f) / f.shape[0] ** 2  # eq. 5
        diag = q.diagonal().square().sum()
        return (q.square().sum() - diag) / (diag + eps)  # eq. 6


class CCDNLoss(nn.Module):
    """Eq. 9: Σ_i ‖S*_i − Ŝ_i‖² + γ₁ L(Q^T) + γ₂ L(Q^{T−1}) + γ₃ L(Q^G).

    Terms: ``regression``, ``cocs_t``, ``cocs_t1``, ``cocs_g`` (already weighted). A γ of
    0 drops its term; with one excitation (p = 1, Baseline) there is no COCS term.
    ``units`` is the unit of S in the data term: ``normalised`` (crop = 1, the paper's
    reading: only there do γ ≈ 0.01–0.1 on L(Q) ∈ [0, P−1] weigh against it, Table 6) or
    ``pixels`` (crop pixels: the data term grows by crop_size², the COCS terms by nothing).
    """

    def __init__(
        self,
        gamma1: float = 0.025,
        gamma2: float = 0.01,
        gamma3: float = 0.05,
        units: str = "normalised",
        crop_size: int = 128,
        eps: float = 1e-8,
    ) -> None:
        super().__init__()
        if units not in UNITS:
            raise ValueError(f"model.loss.units must be one of {UNITS}, got {units!r}")
        self.gammas = {"t": gamma1, "t1": gamma2, "g": gamma3}
        self.scale = float(crop_size) if units == "pixels" else 1.0
        self.eps = eps

    def forward(
        self, outputs: dict[str, torch.Tensor], batch: dict[str, torch.Tensor], net: nn.Module | None = None
    ) -> dict[str, torch.Tensor]:
        s = self.scale
        terms = {"regression": squared_point_error(outputs["points"] * s, batch["points"] * s)}
        if "semantic_t" in outputs and outputs["semantic_t"].shape[1] > 1:  # eq. 8
            for lvl, gamma in self.gammas.items():
                if gamma > 0:
                    terms[f"cocs_{lvl}"] = gamma * cross_semantic_loss(outputs[f"semantic_{lvl}"], self.eps)
        terms["loss"] = sum(terms.values())
        return terms
