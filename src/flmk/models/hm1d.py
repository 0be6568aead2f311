"""1D-HM: attentive one-dimensional heatmap regression (Yin, Wang, Chen, Chen, Liang; ACM MM 2020).

Detector (Fig. 2a, sec. 4.1)::

    image S x S -> FAN-style stacked hourglass -> R (C, S/4, S/4) (last stack)
      -> CNN1x / CNN1y (stride the other axis) -> Dx (K, r, S/4), Dy (K, S/4, r)
      -> co-attention (eqs. 9-10, weight gamma) -> CNN2x / CNN2y + 1D deconvolutions
      -> h^x, h^y (N, L), decoded by argmax (eq. 7) or 1D DARK ("Ours+DARK")

Loss eq. 11 against the peak-normalised marginals of the 2D Gaussian (eq. 12), built on the fly; only
the last stack is supervised (eq. 11), FAN's intermediate 2D supervision is the switch
``intermediate_supervision`` shared with the 2D baseline (Tables 1 and 3 like-for-like).
Tracker (Fig. 2b, sec. 4.2): :class:`HM1DTracker` refines each frame's h^x, h^y with CNN3 ->
eq. 13 -> CNN4 (flmk.models.tracking); loss eq. 14 is :class:`HM1DLoss` over the clip.
Every [assume] choice of IMPLEMENTATION_NOTES §5 / §8 items 13-18 is a constructor argument.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from flmk.models.blocks.hourglass import Pool, StackedHourglass
from flmk.models.heads.decoders import DECODERS_1D, check_decoder, decode_1d
from flmk.models.heads.heatmap1d import CoAttentionLayout, Heatmap1DHead
from flmk.models.heads.heatmap2d import IntermediateHeatmaps
from flmk.models.heads.targets import gaussian_1d, heatmap_l2, sigma_in_bins
from flmk.models.tracking import ExponentialMemory, HeatmapTracker, TemporalRefiner


def check_crop(crop_size: int, depth: int, model: str) -> int:
    """Feature side S/4 of the hourglass; the crop must be divisible by 4 * 2**depth."""
    if crop_size % (4 << depth):
        raise ValueError(
            f"{model}: model.crop_size={crop_size} must be divisible by 4 * 2**hourglass_depth = {4 << depth}"
        )
    return crop_size // 4


class HM1D(nn.Module):
    """The 1D-heatmap detector: ``forward(image)`` -> points, heatmap_x, heatmap_y ((B, N, L) each)."""

    visual_keys = ("heatmap_x", "heatmap_y")
    heatmap_keys = ("heatmap_x", "heatmap_y")

    def __init__(
        self,
        num_points: int,
        crop_size: int = 256,
        num_stacks: int = 4,
        channels: int = 256,
        hourglass_depth: int = 4,
        pool: Pool = "avg",
        length: int = 768,
        head_channels: int = 256,
        cnn1_layers: int = 3,
        cnn2_layers: int = 3,
        gamma: float = 0.3,
        coattention_layout: CoAttentionLayout = "tokens",
        deconv_channels: int = 128,
        upsample_factors: Sequence[int] | None = None,
        sigma: float = 2.0,
        min_sigma_bins: float = 1.0,
        decoder: str = "argmax",
        intermediate_supervision: bool = False,
    ) -> None:
        super().__init__()
        feature_size = check_crop(crop_size, hourglass_depth, "hm1d")
        self.crop_size, self.length = crop_size, length
        self.decoder = check_decoder(decoder, DECODERS_1D, "model.net (hm1d)")
        self.sigma_bins = sigma_in_bins(sigma, crop_size, length, min_sigma_bins)  # notes item 13
        self.backbone = StackedHourglass(num_stacks, channels, depth=hourglass_depth, pool=pool)
        self.intermediate = IntermediateHeatmaps(  # off: eq. 11 supervises only h (notes §8 item 17)
            num_stacks, channels, num_points, feature_size,
            sigma_in_bins(sigma, crop_size, feature_size, min_sigma_bins), intermediate_supervision,
        )
        self.head = Heatmap1DHead(
            channels, feature_size, num_points, length, head_channels, cnn1_layers, cnn2_layers, gamma,
            coattention_layout, deconv_channels, upsample_factors,
        )

    def forward(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        if image.shape[-2:] != (self.crop_size, self.crop_size):
            raise ValueError(f"hm1d: image is {tuple(image.shape[-2:])}, model.crop_size is {self.crop_size}")
        feat, stacks = self.intermediate(self.backbone, image)
        hx, hy = self.head(feat)
        out = {"heatmap_x": hx, "heatmap_y": hy}
        out["points"] = self.decode_heatmaps(out)
        if stacks is not None:
            out["heatmap_stacks"] = stacks
        return out

    def decode_heatmaps(self, heatmaps: dict[str, torch.Tensor]) -> torch.Tensor:
        """(..., N, L) x and y heatmaps -> (..., N, 2) crop-normalised points (eq. 7 or 1D DARK)."""
        decode = [decode_1d(heatmaps[k], self.decoder, self.sigma_bins) for k in self.heatmap_keys]
        return torch.stack(decode, -1)

    def targets(self, points: torch.Tensor) -> dict[str, torch.Tensor]:
        """(..., N, 2) crop-normalised points -> 1D Gaussian targets (..., N, L) per axis (eq. 12) and, with
        intermediate supervision, the stacks' 2D Gaussians (..., 1, N, S/4, S/4)."""
        axes = {k: gaussian_1d(points[..., i], self.length, self.sigma_bins) for i, k in enumerate(self.heatmap_keys)}
        return axes | self.intermediate.targets(points)


class HM1DTracker(HeatmapTracker):
    """1D-HM tracker: an :class:`HM1D` (every detector key passes through) + CNN3 / eq. 13 / CNN4 per axis."""

    detector_command = "python -m flmk.train experiment=hm1d/300w_300vw"

    def __init__(
        self,
        num_points: int,
        lam: float = 0.3,
        temporal_channels: int = 256,
        temporal_layers: int = 3,
        temporal_kernel: int = 5,
        zero_init_refinement: bool = True,
        detector_ckpt: str | None = None,
        detector_lr_scale: float = 0.1,
        lr: float | None = None,
        allow_scratch: bool = False,
        **detector: object,
    ) -> None:
        refiners = {
            k: TemporalRefiner(1, num_points, temporal_channels, temporal_layers, temporal_kernel,
                               ExponentialMemory(lam), zero_init_refinement)
            for k in HM1D.heatmap_keys
        }  # CNN3x/CNN4x and CNN3y/CNN4y
        super().__init__(HM1D(num_points, **detector), refiners, detector_ckpt, detector_lr_scale, lr, allow_scratch)


class HM1DLoss(nn.Module):
    """Eq. 11 (images) / eq. 14 (clips): squared L2 between predicted and target 1D heatmaps (``heatmap``).

    Summed over landmarks, bins (and frames), mean over the batch. ``net.targets`` draws the targets.
    With ``model.net.intermediate_supervision`` (off by default, eq. 11) the intermediate stacks' 2D maps
    add the same L2 to their eq. 2 Gaussians, weighted by ``intermediate_weight`` (term ``intermediate``),
    as :class:`flmk.models.fan2d.FAN2DLoss` does.
    """

    def __init__(self, heatmap_weight: float = 1.0, intermediate_weight: float = 1.0) -> None:
        super().__init__()
        self.heatmap_weight, self.intermediate_weight = heatmap_weight, intermediate_weight

    def forward(self, outputs: dict, batch: dict, net: nn.Module) -> dict[str, torch.Tensor]:
        terms, targets = {}, net.targets(batch["points"])
        if self.heatmap_weight:
            terms["heatmap"] = self.heatmap_weight * sum(heatmap_l2(outputs[k], targets[k]) for k in net.heatmap_keys)
        if self.intermediate_weight and "heatmap_stacks" in outputs:
            stacks = outputs["heatmap_stacks"]
            terms["intermediate"] = self.intermediate_weight * heatmap_l2(
                stacks, targets["heatmap_stacks"].expand_as(stacks))
        terms["loss"] = sum(terms.values()) if terms else batch["points"].new_zeros(())
        return terms
