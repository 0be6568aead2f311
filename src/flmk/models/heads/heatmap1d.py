"""1D heatmap head of 1D-HM (Yin et al., ACM MM 2020): CNN1, co-attention (eqs. 9-10), CNN2.

Shapes (F = 256 input, R = 64x64 features, K channels, r compressed rows, L bins):
CNN1x: (B, C, 64, 64) -> Dx (B, K, r, 64)    strides the y axis (rows)
CNN1y: (B, C, 64, 64) -> Dy (B, K, 64, r)    strides the x axis (columns)
co-attention (eqs. 9-10) -> Dx', Dy' of the same shapes
CNN2x: Dx' -> (B, K, 64) -> 1D deconvolutions -> hx (B, N, L); CNN2y mirrors it.
"""

from __future__ import annotations

import math
from typing import Literal, Sequence

import torch
from torch import nn

from flmk.models.heads.upsample import Upsampler, upsample_factors

Axis = Literal["x", "y"]
CoAttentionLayout = Literal["tokens", "natural"]


def strided_size(size: int, layers: int) -> int:
    """Length left after ``layers`` 3x3 stride-2 convolutions with padding 1."""
    for _ in range(layers):
        size = (size - 1) // 2 + 1
    return size


class AxisCompressor(nn.Module):
    """CNN1 / the convolutional part of CNN2: 3x3 convs (+BN+ReLU) striding the axis other than ``axis``."""

    def __init__(self, in_channels: int, channels: int, layers: int, axis: Axis) -> None:
        super().__init__()
        if axis not in ("x", "y"):
            raise ValueError(f"AxisCompressor axis: expected 'x' or 'y', got {axis!r}")
        stride = (2, 1) if axis == "x" else (1, 2)  # the x branch compresses rows (the y axis)
        widths = [in_channels] + [channels] * layers
        self.layers = nn.Sequential(*(
            nn.Sequential(
                nn.Conv2d(a, b, 3, stride=stride, padding=1, bias=False), nn.BatchNorm2d(b), nn.ReLU(inplace=True)
            )
            for a, b in zip(widths, widths[1:])
        ))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class CoAttention(nn.Module):
    """Co-attention between the x and y distribution features (eqs. 9-10), per channel k.

    Both layouts run the paper's formulas verbatim on per-channel matrices Dx_k, Dy_k:
      W^xy = softmax_rows(Dy^T P Dx^T / sqrt(d)),  W^yx = softmax_rows(Dx Q Dy / sqrt(d))   (eq. 9)
      Dx' = Dx + gamma W^yx Dy^T,                 Dy' = Dy + gamma (W^xy Dx)^T             (eq. 10)
    ``tokens`` (notes item 15, default): Dx_k = (x positions x r), Dy_k = (r x y positions);
      P, Q are r x r, d = r, W^xy is (H x W) and W^yx is (W x H): an affinity between x and y positions.
    ``natural``: the NCHW slices Dx_k = (r x W), Dy_k = (H x r); P is H x W, Q is W x H, d = W,
      and both affinities are r x r (needs H == W).
    Inputs and outputs use the natural layout: dx (B, K, r, W), dy (B, K, H, r).
    """

    def __init__(self, rows: int, positions: int, gamma: float = 0.3, layout: CoAttentionLayout = "tokens") -> None:
        super().__init__()
        if layout not in ("tokens", "natural"):
            raise ValueError(f"coattention_layout: expected 'tokens' or 'natural', got {layout!r}")
        self.gamma, self.layout = gamma, layout
        side = rows if layout == "tokens" else positions
        self.scale = 1.0 / math.sqrt(side)  # d = column number of P and Q
        if gamma:  # gamma = 0 removes the module and its parameters (Fig. 3, first point)
            self.P = nn.Parameter(nn.init.xavier_uniform_(torch.empty(side, side)))
            self.Q = nn.Parameter(nn.init.xavier_uniform_(torch.empty(side, side)))

    def affinities(self, dx: torch.Tensor, dy: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """W^xy and W^yx of eq. 9 for natural-layout inputs."""
        Dx, Dy = self._paper_layout(dx, dy)
        w_xy = torch.softmax(Dy.transpose(-1, -2) @ self.P @ Dx.transpose(-1, -2) * self.scale, dim=-1)
        w_yx = torch.softmax(Dx @ self.Q @ Dy * self.scale, dim=-1)
        return w_xy, w_yx

    def forward(self, dx: torch.Tensor, dy: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.gamma == 0:
            return dx, dy
        if self.layout == "natural" and dx.shape[-1] != dy.shape[-2]:
            raise ValueError(f"natural co-attention needs a square feature map, got W={dx.shape[-1]}, H={dy.shape[-2]}")
        with torch.autocast(dx.device.type, enabled=False):  # small (B K 64^2) and softmax-sensitive: fp32
            return self._fuse(dx.float(), dy.float())

    def _fuse(self, dx: torch.Tensor, dy: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        Dx, Dy = self._paper_layout(dx, dy)
        w_xy, w_yx = self.affinities(dx, dy)
        Dx_new = Dx + self.gamma * w_yx @ Dy.transpose(-1, -2)  # eq. 10
        Dy_new = Dy + self.gamma * (w_xy @ Dx).transpose(-1, -2)  # eq. 10
        return self._paper_layout(Dx_new, Dy_new)  # the layout map is an involution

    def _paper_layout(self, dx: torch.Tensor, dy: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.layout == "tokens":
            return dx.transpose(-1, -2), dy.transpose(-1, -2)
        return dx, dy


class AxisDecoder(nn.Module):
    """CNN2 for one axis: more striding convs, mean over what is left of the other axis, 1D deconvs to (B, N, L)."""

    def __init__(
        self, channels: int, layers: int, axis: Axis, num_points: int, length: int, deconv_channels: int,
        factors: Sequence[int],
    ) -> None:
        super().__init__()
        self.axis = axis
        self.compress = AxisCompressor(channels, channels, layers, axis)
        self.upsample = Upsampler(1, channels, deconv_channels, num_points, length, factors)

    def forward(self, d: torch.Tensor) -> torch.Tensor:
        d = self.compress(d)
        d = d.mean(dim=-2) if self.axis == "x" else d.mean(dim=-1)  # (B, K, positions)
        return self.upsample(d)


class Heatmap1DHead(nn.Module):
    """Features (B, C, S, S) -> (hx, hy), each (B, N, L): CNN1x/y, co-attention, CNN2x/y (Fig. 2a)."""

    def __init__(
        self,
        in_channels: int,
        feature_size: int,
        num_points: int,
        length: int = 768,
        channels: int = 256,
        cnn1_layers: int = 3,
        cnn2_layers: int = 3,
        gamma: float = 0.3,
        coattention_layout: CoAttentionLayout = "tokens",
        deconv_channels: int = 128,
        factors: Sequence[int] | None = None,
    ) -> None:
        super().__init__()
        factors = upsample_factors(feature_size, length) if factors is None else list(factors)
        rows = strided_size(feature_size, cnn1_layers)
        self.cnn1 = nn.ModuleDict({a: AxisCompressor(in_channels, channels, cnn1_layers, a) for a in ("x", "y")})
        self.coattention = CoAttention(rows, feature_size, gamma, coattention_layout)
        self.cnn2 = nn.ModuleDict({
            a: AxisDecoder(channels, cnn2_layers, a, num_points, length, deconv_channels, factors)
            for a in ("x", "y")
        })

    def forward(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        dx, dy = self.coattention(self.cnn1["x"](features), self.cnn1["y"](features))
        return self.cnn2["x"](dx), self.cnn2["y"](dy)

