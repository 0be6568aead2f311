"""flmk.plots writes PNGs of the promised size and draws where it should."""

from __future__ import annotations

import matplotlib.image
import numpy as np
import pytest
import torch

from flmk.plots import GT_COLOUR, PRED_COLOUR, landmark_grid, overlay_map, plot_ced


def read_png(path) -> np.ndarray:
    return matplotlib.image.imread(path)


def test_plot_ced_png_size(tmp_path):
    rng = np.random.default_rng(0)
    curves = {"odn": rng.gamma(2, 0.02, 50), "baseline": torch.from_numpy(rng.gamma(2, 0.03, 50))}
    path = plot_ced(curves, tmp_path / "sub" / "ced_test.png", t=0.10, title="300W challenging")
    assert path == tmp_path / "sub" / "ced_test.png" and path.stat().st_size > 10_000
    img = read_png(path)
    assert img.shape[:2] == (480, 640)
    assert img[..., :3].std() > 0.05  # not a blank canvas
    with pytest.raises(ValueError, match="no curves"):
        plot_ced({}, tmp_path / "x.png")


def test_landmark_grid_shape_colours_and_file(tmp_path):
    B, H, W = 5, 32, 40
    images = np.full((B, H, W, 3), 128, np.uint8)
    gt = np.tile(np.array([[[5.0, 6.0], [20.0, 10.0]]]), (B, 1, 1))
    pred = gt + np.array([10.0, 10.0])
    pred[4, 1] = (20.0, 10.0)  # prediction on top of the ground truth: red wins
    gt[3, 0] = (-50.0, 3.0)  # off-image: not drawn, no error
    grid = landmark_grid(images, torch.from_numpy(pred), gt, path=tmp_path / "grid.png", ncols=4, radius=1)

    pad = 2
    assert grid.shape == (2 * (H + pad) - pad, 4 * (W + pad) - pad, 3) and grid.dtype == np.uint8
    assert tuple(grid[6, 5]) == GT_COLOUR and tuple(grid[7, 5]) == GT_COLOUR  # disc of radius 1
    assert tuple(grid[16, 15]) == PRED_COLOUR
    assert tuple(grid[0, 0]) == (128, 128, 128)
    x0 = 3 * (W + pad)  # tile 3 (first row, last column): its first GT point is off-image
    assert tuple(grid[6, x0 + 5]) == (128, 128, 128)
    y4 = H + pad  # tile 4 (second row, first column)
    assert tuple(grid[y4 + 10, 20]) == PRED_COLOUR
    assert tuple(grid[y4 + 5, W + pad + 5]) == (0, 0, 0)  # empty slot of the last row is black
    assert (grid[:, W : W + pad] == 0).all()  # separator

    saved = read_png(tmp_path / "grid.png")
    assert saved.shape[:2] == grid.shape[:2]
    np.testing.assert_array_equal(np.rint(saved[..., :3] * 255).astype(np.uint8), grid)

    bare = landmark_grid(images[:2], None, None)
    assert bare.shape == (H, 2 * W + pad, 3)
    with pytest.raises(ValueError, match="uint8"):
        landmark_grid(images.astype(np.float32))
    with pytest.raises(ValueError, match=r"points must be \(5, N, 2\)"):
        landmark_grid(images, pred[:2])


def test_overlay_map_blend(tmp_path):
    image = np.zeros((16, 24, 3), np.uint8)
    heat = np.zeros((4, 6), np.float32)
    heat[:, 3:] = 1.0  # right half "occluded"
    out = overlay_map(image, heat, tmp_path / "o.png", alpha=1.0, cmap="gray", vmin=0.0, vmax=1.0)
    assert out.shape == (16, 24, 3) and out.dtype == np.uint8
    assert (out[:, :10] == 0).all() and (out[:, 14:] == 255).all()  # bilinear ramp only near the edge
    assert read_png(tmp_path / "o.png").shape[:2] == (16, 24)

    faint = overlay_map(image, np.full((4, 6), 0.2), alpha=1.0, cmap="gray", vmin=0.0, vmax=1.0)
    assert (faint == 51).all()  # absolute scale: 0.2 * 255
    np.testing.assert_array_equal(overlay_map(image + 7, heat, alpha=0.0), image + 7)
    with pytest.raises(ValueError, match=r"heat must be \(h, w\)"):
        overlay_map(image, heat[None])
