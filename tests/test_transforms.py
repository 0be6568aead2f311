"""Landmarks stay on the image content through crop, rotation, scale, translation and flip."""

import numpy as np
import pytest

from flmk.data.transforms import AugmentConfig, FaceTransform, apply_affine, crop_affine, invert_affine
from flmk.layouts import get_layout

COLOURS = np.array([[255, 0, 0], [0, 255, 0], [0, 0, 255], [255, 255, 0], [255, 0, 255], [0, 255, 255],
                    [255, 128, 0]], dtype=np.uint8)


def dotted_image():
    """A 7-point face (layout "7") drawn as coloured 7x7 squares on black."""
    pts = np.array([[60, 80], [90, 82], [130, 82], [160, 80], [110, 120], [80, 160], [140, 160]], dtype=float)
    img = np.zeros((240, 220, 3), np.uint8)
    for (x, y), c in zip(pts.astype(int), COLOURS):
        img[y - 3:y + 4, x - 3:x + 4] = c
    return img, pts


@pytest.mark.parametrize("seed", range(6))
def test_points_follow_the_pixels(seed):
    img, pts = dotted_image()
    layout = get_layout("7")
    cfg = AugmentConfig(crop_scale=1.4, rotation=40, scale=(0.8, 1.2), translation=0.08, flip=0.5)
    out = FaceTransform(layout, 128, cfg, train=True)(img, pts, np.array([50, 70, 170, 170.0]),
                                                        np.ones(7, bool), np.random.default_rng(seed))
    crop, moved = out["crop"], out["points"]
    # the point now labelled i came from original point flip[i] when the sample was mirrored
    source = layout.flip_index if out["flipped"] else np.arange(7)
    for i, (x, y) in enumerate(np.round(moved).astype(int)):
        assert np.array_equal(crop[y, x], COLOURS[source[i]]), (i, out["flipped"])


def test_flip_happens_and_mirrors_left_right():
    img, pts = dotted_image()
    layout = get_layout("7")
    t = FaceTransform(layout, 128, AugmentConfig(flip=1.0), train=True)
    out = t(img, pts, np.array([50, 70, 170, 170.0]), np.ones(7, bool), np.random.default_rng(0))
    assert out["flipped"]
    # after flip + permutation, point 0 (right eye outer corner) is again left of point 3
    assert out["points"][0, 0] < out["points"][3, 0]


def test_affine_inverse_maps_back_to_original_pixels():
    m = crop_affine(np.array([10, 20, 110, 140.0]), 64, 1.25, rotation_deg=17, zoom=1.1, shift=(3, -2), flip=True)
    p = np.random.default_rng(0).uniform(0, 150, (20, 2))
    np.testing.assert_allclose(apply_affine(invert_affine(m), apply_affine(m, p)), p, atol=1e-9)


def test_eval_crop_centres_the_box():
    m = crop_affine(np.array([0, 0, 99, 99.0]), 100, 1.0)
    np.testing.assert_allclose(apply_affine(m, np.array([[49.5, 49.5]])), [[49.5, 49.5]])
