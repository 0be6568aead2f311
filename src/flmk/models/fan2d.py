"""FAN 2D-heatmap baseline of 1D-HM Tables 1 and 3 (Bulat & Tzimiropoulos 2017; Newell et al. 2016).

    image S x S -> stacked hourglass (S/4 features) -> last stack -> 2D deconvolutions to L x L -> N heatmaps

Intermediate stacks predict S/4 heatmaps that are supervised and re-injected into the next stack
(FAN / Newell: "MSE on every stack"; ``intermediate_supervision``, default on, the same switch as 1D-HM's);
``pool`` picks FAN's average or Newell's max pooling. The decoder is a switch:
``argmax`` / ``dark`` train on the heatmap L2 of eq. 2 targets; ``integral`` (Sun et al.) and
``dsnt`` (Nibali et al.) read the heatmap as logits, decode by soft-argmax and train on
coordinates (L1, resp. Euclidean + the DSNT Jensen-Shannon regulariser).
:class:`FAN2DTracker` is the 2D tracker of Table 1: a recurrent (ConvGRU) encoder-decoder refining
each frame's heatmaps (Peng et al. 2016).
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from flmk.models.blocks.hourglass import Pool, StackedHourglass
from flmk.models.heads.decoders import DECODERS_2D, check_decoder, decode_2d, dsnt_regulariser, soft_argmax_2d
from flmk.models.heads.heatmap2d import Heatmap2DHead, IntermediateHeatmaps
from flmk.models.heads.targets import gaussian_2d, heatmap_l2, sigma_in_bins
from flmk.models.hm1d import check_crop
from flmk.models.tracking import ConvGRUMemory, HeatmapTracker, TemporalRefiner


class FAN2D(nn.Module):
    """``forward(image)`` -> points, heatmap (B, N, L, L) and, with intermediate supervision,
    heatmap_stacks (B, num_stacks - 1, N, S/4, S/4)."""

    visual_keys = ("heatmap",)
    heatmap_keys = ("heatmap",)

    def __init__(
        self,
        num_points: int,
        crop_size: int = 256,
        num_stacks: int = 4,
        channels: int = 256,
        hourglass_depth: int = 4,
        pool: Pool = "avg",
        length: int = 64,
        deconv_channels: int = 256,
        upsample_factors: Sequence[int] | None = None,
        sigma: float = 2.0,
        min_sigma_bins: float = 1.0,
        decoder: str = "argmax",
        intermediate_supervision: bool = True,
    ) -> None:
        super().__init__()
        self.feature_size = check_crop(crop_size, hourglass_depth, "fan2d")
        self.crop_size, self.length = crop_size, length
        self.decoder = check_decoder(decoder, DECODERS_2D, "model.net (fan2d)")
        self.sigma_bins = sigma_in_bins(sigma, crop_size, length, min_sigma_bins)
        self.backbone = StackedHourglass(num_stacks, channels, depth=hourglass_depth, pool=pool)
        self.intermediate = IntermediateHeatmaps(
            num_stacks, channels, num_points, self.feature_size,
            sigma_in_bins(sigma, crop_size, self.feature_size, min_sigma_bins), intermediate_supervision,
        )
        self.head = Heatmap2DHead(channels, self.feature_size, num_points, length, deconv_channels, upsample_factors)

    def forward(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        if image.shape[-2:] != (self.crop_size, self.crop_size):
            raise ValueError(f"fan2d: image is {tuple(image.shape[-2:])}, model.crop_size is {self.crop_size}")
        feat, stacks = self.intermediate(self.backbone, image)
        out = {"heatmap": self.head(feat)}
        out["points"] = self.decode_heatmaps(out)
        if stacks is not None:
            out["heatmap_stacks"] = stacks
        return out

    def decode_heatmaps(self, heatmaps: dict[str, torch.Tensor]) -> torch.Tensor:
        return decode_2d(heatmaps["heatmap"], self.decoder, self.sigma_bins)

    def targets(self, points: torch.Tensor) -> dict[str, torch.Tensor]:
        """(..., N, 2) -> eq. 2 Gaussians: heatmap (..., N, L, L) and, with intermediate supervision,
        heatmap_stacks (..., 1, N, S/4, S/4)."""
        return {"heatmap": gaussian_2d(points, self.length, self.sigma_bins), **self.intermediate.targets(points)}


class FAN2DTracker(HeatmapTracker):
    """2D tracker baseline: a :class:`FAN2D` (every detector key passes through) + ConvGRU encoder-decoder."""

    detector_command = "python -m flmk.train model=fan2d data=300w_300vw data.batch_size=10 trainer.max_epochs=60"

    def __init__(
        self,
        num_points: int,
        temporal_channels: int = 64,
        temporal_layers: int = 3,
        temporal_kernel: int = 3,
        zero_init_refinement: bool = True,
        detector_ckpt: str | None = None,
        detector_lr_scale: float = 0.1,
        lr: float | None = None,
        allow_scratch: bool = False,
        **detector: object,
    ) -> None:
        memory = ConvGRUMemory(2, temporal_channels, temporal_kernel)
        refiner = TemporalRefiner(2, num_points, temporal_channels, temporal_layers, temporal_kernel, memory,
                                  zero_init_refinement)
        super().__init__(FAN2D(num_points, **detector), {"heatmap": refiner}, detector_ckpt, detector_lr_scale, lr,
                         allow_scratch)


class FAN2DLoss(nn.Module):
    """Loss of the 2D baseline, chosen by ``net.decoder`` (the row's method), on the last stack and,
    weighted by ``intermediate_weight``, on the intermediate stacks (term ``intermediate``):

    argmax / dark: squared L2 to the eq. 2 Gaussians (``heatmap``);
    integral: L1 between soft-argmax and target coordinates (``coord``, Sun et al.);
    dsnt: Euclidean distance (``coord``) + Jensen-Shannon to the target Gaussian (``dsnt_reg``, Nibali et al.).
    Sums over landmarks (and frames), mean over the batch; coordinates are crop-normalised.
    """

    def __init__(self, heatmap_weight: float = 1.0, intermediate_weight: float = 1.0, coord_weight: float = 1.0,
                 dsnt_reg_weight: float = 1.0) -> None:
        super().__init__()
        self.weights = {"heatmap": heatmap_weight, "coord": coord_weight, "dsnt_reg": dsnt_reg_weight}
        self.intermediate_weight = intermediate_weight

    def forward(self, outputs: dict, batch: dict, net: nn.Module) -> dict[str, torch.Tensor]:
        points, targets = batch["points"], net.targets(batch["points"])
        terms = {k: self.weights[k] * v for k, v in
                 self.level(outputs["heatmap"], targets["heatmap"], points, net.decoder).items() if self.weights[k]}
        if self.intermediate_weight and "heatmap_stacks" in outputs:
            stacks = self.level(outputs["heatmap_stacks"], targets["heatmap_stacks"], points.unsqueeze(-3), net.decoder)
            terms["intermediate"] = self.intermediate_weight * sum(self.weights[k] * v for k, v in stacks.items())
        terms["loss"] = sum(terms.values()) if terms else points.new_zeros(())
        return terms

    @staticmethod
    def level(
        heatmap: torch.Tensor, target: torch.Tensor, points: torch.Tensor, decoder: str
    ) -> dict[str, torch.Tensor]:
        """Unweighted terms of one level: heatmap (B, ..., N, H, W), target and points broadcastable to it."""
        b, target = heatmap.shape[0], target.expand_as(heatmap)
        if decoder in ("argmax", "dark"):
            return {"heatmap": heatmap_l2(heatmap, target)}
        error = soft_argmax_2d(heatmap) - points.float().expand(*heatmap.shape[:-2], 2)
        if decoder == "integral":
            return {"coord": error.abs().sum() / b}  # L1 (Sun et al.)
        return {"coord": error.norm(dim=-1).sum() / b, "dsnt_reg": dsnt_regulariser(heatmap, target).sum() / b}
