"""Heatmap targets and decoders: 1D argmax / DARK, 2D argmax / DARK / integral / DSNT."""

from __future__ import annotations

import math

import pytest
import torch

from flmk.models.heads.decoders import decode_1d, decode_2d, dsnt_regulariser, gaussian_blur, soft_argmax_2d
from flmk.models.heads.targets import gaussian_1d, gaussian_2d, heatmap_l2, sigma_in_bins

LENGTHS = (17, 64, 100, 384, 768)


@pytest.mark.parametrize("length", LENGTHS)
def test_1d_target_peaks_at_the_continuous_coordinate(length: int) -> None:
    coords = torch.tensor([0.2371, 0.5017, 0.6113, 0.8049])
    sigma = 2.5
    h = gaussian_1d(coords, length, sigma)
    centre = coords * length - 0.5  # bin j is centred at (j + 0.5) / L
    j = torch.arange(length, dtype=torch.float32)
    torch.testing.assert_close(h, torch.exp(-((j - centre[:, None]) ** 2) / (2 * sigma**2)))
    assert torch.equal(h.argmax(-1), centre.round().long())  # the nearest bin holds the maximum
    # log h is a parabola whose vertex is the continuous centre: fit it on three bins around the peak
    m = h.argmax(-1, keepdim=True)
    a, b, c = (h.log().gather(-1, m + k).squeeze(-1) for k in (-1, 0, 1))
    vertex = m.squeeze(-1) + 0.5 * (a - c) / (a - 2 * b + c)
    torch.testing.assert_close(vertex, centre, atol=1e-3, rtol=0)
    assert h.max() <= 1.0


def test_2d_target_is_the_product_of_its_marginals_and_peaks_at_the_point() -> None:
    p = torch.tensor([[0.31, 0.72]])
    h = gaussian_2d(p, 32, 1.5)
    assert h.shape == (1, 32, 32)
    assert torch.allclose(h, gaussian_1d(p[:, 1], 32, 1.5)[:, :, None] * gaussian_1d(p[:, 0], 32, 1.5)[:, None, :])
    iy, ix = divmod(int(h.flatten().argmax()), 32)
    assert (ix, iy) == (round(0.31 * 32 - 0.5), round(0.72 * 32 - 0.5))


def test_sigma_in_bins_scales_with_length_and_is_floored() -> None:
    assert sigma_in_bins(2.0, 256, 768, 1.0) == pytest.approx(6.0)  # notes item 13: 6 bins at L = 768
    assert sigma_in_bins(2.0, 256, 64, 1.0) == 1.0
    with pytest.raises(ValueError, match="sigma"):
        sigma_in_bins(0.0, 256, 64, 1.0)


@pytest.mark.parametrize("length", (64, 256, 768))
def test_1d_argmax_and_dark_recover_the_coordinate_dark_better(length: int) -> None:
    coords = torch.linspace(0.1, 0.9, 41) + 0.0037
    sigma = sigma_in_bins(2.0, 256, length, 1.0)
    clean = gaussian_1d(coords, length, sigma)
    assert (decode_1d(clean, "argmax") - coords).abs().max() <= 0.5 / length + 1e-6  # quantisation: half a bin
    assert (decode_1d(clean, "dark", sigma) - coords).abs().max() < 1e-3 / length
    noisy = clean + 0.01 * torch.rand(clean.shape, generator=torch.Generator().manual_seed(0))
    err_argmax = (decode_1d(noisy, "argmax") - coords).abs() * length  # in bins
    err_dark = (decode_1d(noisy, "dark", sigma) - coords).abs() * length
    assert err_argmax.mean() > 0.2 and err_argmax.max() < 1.5
    assert err_dark.mean() < 0.1 * err_argmax.mean()
    assert err_dark.max() < 0.05


def test_dark_moves_at_most_one_bin_on_arbitrary_heatmaps() -> None:
    h = torch.rand(4, 6, 30, generator=torch.Generator().manual_seed(1))
    shift = decode_1d(h, "dark", 2.0) * 30 - 0.5 - h.argmax(-1)
    assert shift.abs().max() <= 1 + 1e-5
    h2 = torch.rand(4, 6, 12, 12, generator=torch.Generator().manual_seed(2))
    assert ((decode_2d(h2, "dark", 1.0) - decode_2d(h2, "argmax")).abs() * 12).max() <= 1 + 1e-5


def test_1d_decoders_keep_leading_axes_and_edge_peaks() -> None:
    h = torch.zeros(2, 3, 5, 40)
    h[..., 0] = 1.0  # peak on the border: DARK must fall back to argmax
    assert torch.allclose(decode_1d(h, "dark", 2.0), torch.full((2, 3, 5), 0.5 / 40))
    with pytest.raises(ValueError, match="decoder"):
        decode_1d(h, "integral")


@pytest.mark.parametrize("length", (32, 64))
def test_2d_decoders_recover_a_known_point(length: int) -> None:
    pts = torch.tensor([[0.3137, 0.6612], [0.52, 0.41], [0.7731, 0.2893]])
    sigma = 1.5
    h = gaussian_2d(pts, length, sigma)
    err = {d: (decode_2d(h if d in ("argmax", "dark") else h.clamp_min(1e-12).log(), d, sigma) - pts).norm(dim=-1)
           for d in ("argmax", "dark", "integral", "dsnt")}
    assert err["argmax"].max() <= math.sqrt(2) * 0.5 / length + 1e-6
    assert err["dark"].max() < 1e-3 / length
    # softmax(log g) = normalised g: its expectation is the Gaussian's centre (interior points)
    assert err["integral"].max() < 1e-3 / length
    assert torch.equal(decode_2d(h.log(), "integral"), decode_2d(h.log(), "dsnt"))


def test_soft_argmax_gradient_matches_finite_differences() -> None:
    logits = torch.randn(1, 2, 5, 6, dtype=torch.double, requires_grad=True)
    assert torch.autograd.gradcheck(soft_argmax_2d, (logits,))


def test_dsnt_regulariser_is_zero_at_its_target_and_positive_elsewhere() -> None:
    target = gaussian_2d(torch.tensor([[[0.4, 0.6]]]), 24, 1.0)
    assert dsnt_regulariser(target.log(), 3.0 * target).abs().max() < 1e-6  # target scale does not matter
    js = dsnt_regulariser(torch.zeros(1, 1, 24, 24), target)
    assert 0.1 < float(js) <= math.log(2)  # Jensen-Shannon is bounded by log 2


def test_gaussian_blur_keeps_the_peak_value_and_the_argmax() -> None:
    h = gaussian_1d(torch.tensor([0.43]), 50, 2.0)
    b = gaussian_blur(h, 2.0, 1)
    assert torch.isclose(b.max(), h.max()) and b.argmax() == h.argmax()
    assert (b[0, 15:30] - h[0, 15:30]).abs().max() > 1e-3  # it does blur


def test_heatmap_l2_is_summed_over_everything_but_the_batch() -> None:
    pred, target = torch.ones(2, 3, 4), torch.zeros(2, 3, 4)
    assert float(heatmap_l2(pred, target)) == pytest.approx(12.0)
