"""1D / 2D heatmap heads: upsampling to any L, co-attention (eqs. 9-10) in both layouts, head shapes."""

from __future__ import annotations

import math

import pytest
import torch

from flmk.models.heads.heatmap1d import AxisCompressor, CoAttention, Heatmap1DHead, strided_size
from flmk.models.heads.heatmap2d import Heatmap2DHead
from flmk.models.heads.upsample import Upsampler, upsample_factors


@pytest.mark.parametrize(
    ("length", "factors"),
    [(768, [2, 2, 3]), (64, []), (128, [2]), (384, [2, 3]), (512, [2, 2, 2]), (640, [2, 5]), (100, []), (32, []),
     (64 * 14, [2])],  # 7 > max factor: x2 by deconvolution, the rest by resampling
)
def test_upsample_factors(length: int, factors: list[int]) -> None:
    assert upsample_factors(64, length) == factors


@pytest.mark.parametrize(("dim", "length"), [(1, 64), (1, 100), (1, 640), (1, 768), (1, 30), (2, 32), (2, 48), (2, 12)])
def test_upsampler_reaches_exactly_length(dim: int, length: int) -> None:
    up = Upsampler(dim, 6, 4, 3, length, upsample_factors(16, length))
    x = torch.randn(2, 6, *(16,) * dim)
    assert up(x).shape == (2, 3, *(length,) * dim)
    assert len(up.deconvs) == len(upsample_factors(16, length))


def test_axis_compressor_strides_the_other_axis() -> None:
    f = torch.randn(2, 5, 16, 16)
    assert AxisCompressor(5, 7, 3, "x")(f).shape == (2, 7, 2, 16)  # CNN1x: rows 16 -> 2
    assert AxisCompressor(5, 7, 3, "y")(f).shape == (2, 7, 16, 2)  # CNN1y: columns 16 -> 2
    assert strided_size(64, 3) == 8 and strided_size(2, 3) == 1
    with pytest.raises(ValueError, match="axis"):
        AxisCompressor(5, 7, 3, "z")


def _explicit_coattention(att: CoAttention, dx: torch.Tensor, dy: torch.Tensor):
    """Eqs. 9-10 channel by channel, written from the paper with the layout's per-channel matrices."""
    out_x, out_y = torch.empty_like(dx), torch.empty_like(dy)
    d = att.P.shape[1]
    for b in range(dx.shape[0]):
        for k in range(dx.shape[1]):
            if att.layout == "tokens":
                Dx, Dy = dx[b, k].T, dy[b, k].T  # Dx_k = X_k (W x r), Dy_k = Y_k^T (r x H)
            else:
                Dx, Dy = dx[b, k], dy[b, k]  # natural slices (r x W), (H x r)
            w_xy = torch.softmax(Dy.T @ att.P @ Dx.T / math.sqrt(d), dim=1)
            w_yx = torch.softmax(Dx @ att.Q @ Dy / math.sqrt(d), dim=1)
            Dx2 = Dx + att.gamma * w_yx @ Dy.T
            Dy2 = Dy + att.gamma * (w_xy @ Dx).T
            out_x[b, k], out_y[b, k] = (Dx2.T, Dy2.T) if att.layout == "tokens" else (Dx2, Dy2)
    return out_x, out_y


@pytest.mark.parametrize("layout", ("tokens", "natural"))
def test_coattention_matches_eqs_9_10_and_documented_shapes(layout: str) -> None:
    torch.manual_seed(0)
    r, side = 3, 8
    att = CoAttention(r, side, gamma=0.3, layout=layout)
    dx, dy = torch.randn(2, 4, r, side), torch.randn(2, 4, side, r)
    w_xy, w_yx = att.affinities(dx, dy)
    if layout == "tokens":  # x-y position affinities; P, Q are r x r
        assert att.P.shape == att.Q.shape == (r, r)
        assert w_xy.shape == (2, 4, side, side) and w_yx.shape == (2, 4, side, side)
    else:  # P is H x W; affinities between the r compressed rows / columns
        assert att.P.shape == att.Q.shape == (side, side)
        assert w_xy.shape == (2, 4, r, r) and w_yx.shape == (2, 4, r, r)
    torch.testing.assert_close(w_xy.sum(-1), torch.ones(w_xy.shape[:-1]))  # row softmax
    out_x, out_y = att(dx, dy)
    assert out_x.shape == dx.shape and out_y.shape == dy.shape
    ref_x, ref_y = _explicit_coattention(att, dx, dy)
    torch.testing.assert_close(out_x, ref_x)
    torch.testing.assert_close(out_y, ref_y)
    assert not torch.allclose(out_x, dx)


@pytest.mark.parametrize("layout", ("tokens", "natural"))
def test_coattention_gamma_zero_is_the_identity(layout: str) -> None:
    att = CoAttention(2, 6, gamma=0.0, layout=layout)
    dx, dy = torch.randn(1, 3, 2, 6), torch.randn(1, 3, 6, 2)
    out_x, out_y = att(dx, dy)
    assert torch.equal(out_x, dx) and torch.equal(out_y, dy)
    assert not list(att.parameters())  # no unused P, Q (DDP would reject them)


def test_coattention_gradients_reach_P_and_Q_and_bad_layout_fails() -> None:
    att = CoAttention(2, 6, gamma=0.5)
    out_x, out_y = att(torch.randn(1, 3, 2, 6), torch.randn(1, 3, 6, 2))
    (out_x.square().sum() + out_y.square().sum()).backward()
    assert att.P.grad.abs().sum() > 0 and att.Q.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="coattention_layout"):
        CoAttention(2, 6, layout="rows")
    with pytest.raises(ValueError, match="square"):
        CoAttention(2, 6, layout="natural")(torch.randn(1, 1, 2, 6), torch.randn(1, 1, 5, 2))


@pytest.mark.parametrize(("length", "layout"), [(48, "tokens"), (100, "natural"), (16, "tokens")])
def test_heatmap1d_head_shapes(length: int, layout: str) -> None:
    head = Heatmap1DHead(8, 16, 5, length, channels=6, cnn1_layers=2, cnn2_layers=2, coattention_layout=layout,
                         deconv_channels=4)
    hx, hy = head(torch.randn(2, 8, 16, 16))
    assert hx.shape == hy.shape == (2, 5, length)


def test_heatmap1d_head_x_branch_ignores_a_pure_y_change_without_coattention() -> None:
    """With gamma = 0 the x heatmaps read only CNN1x; with gamma > 0 the y branch leaks in (the joint distribution)."""
    torch.manual_seed(0)
    for gamma, coupled in ((0.0, False), (1.0, True)):
        head = Heatmap1DHead(4, 8, 3, 16, channels=4, cnn1_layers=1, cnn2_layers=1, gamma=gamma, deconv_channels=4)
        head.eval()
        f = torch.randn(1, 4, 8, 8)
        hx0, _ = head(f)
        with torch.no_grad():  # perturb only CNN1y's weights
            head.cnn1["y"].layers[0][0].weight.add_(1.0)
        hx1, _ = head(f)
        assert (not torch.allclose(hx0, hx1)) == coupled


def test_heatmap2d_head_shape() -> None:
    head = Heatmap2DHead(8, 16, 5, 32, deconv_channels=4)
    assert head(torch.randn(2, 8, 16, 16)).shape == (2, 5, 32, 32)
