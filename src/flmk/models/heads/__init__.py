"""Heads and decoders: 1D heatmaps (1D-HM), 2D heatmaps (FAN), their targets and decoders."""

from flmk.models.heads.decoders import DECODERS_1D, DECODERS_2D, decode_1d, decode_2d, dsnt_regulariser, soft_argmax_2d
from flmk.models.heads.heatmap1d import AxisCompressor, AxisDecoder, CoAttention, Heatmap1DHead
from flmk.models.heads.heatmap2d import Heatmap2DHead, IntermediateHeatmaps
from flmk.models.heads.targets import gaussian_1d, gaussian_2d, heatmap_l2, sigma_in_bins
from flmk.models.heads.upsample import Upsampler, upsample_factors

__all__ = [
    "DECODERS_1D", "DECODERS_2D", "AxisCompressor", "AxisDecoder", "CoAttention", "Heatmap1DHead", "Heatmap2DHead",
    "IntermediateHeatmaps", "Upsampler", "decode_1d", "decode_2d", "dsnt_regulariser", "gaussian_1d", "gaussian_2d",
    "heatmap_l2", "sigma_in_bins", "soft_argmax_2d", "upsample_factors",
]
