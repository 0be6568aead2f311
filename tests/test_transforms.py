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


def srn_preset() -> AugmentConfig:
    from omegaconf import OmegaConf

    from flmk.train import CONF_DIR

    raw = OmegaConf.to_container(OmegaConf.load(f"{CONF_DIR}/augment/srn.yaml"))
    assert set(raw) <= set(AugmentConfig.__dataclass_fields__)  # the data module drops unknown keys silently
    return AugmentConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in raw.items()})


@pytest.mark.parametrize("seed", range(4))
def test_srn_preset_points_follow_the_pixels(seed):
    img, pts = dotted_image()
    layout = get_layout("7")
    cfg = srn_preset()
    cfg.rotation_p, cfg.color, cfg.noise = 1.0, 0.0, 0.0  # geometry only: every sample rotated, true colours
    out = FaceTransform(layout, 128, cfg, train=True)(img, pts, np.array([50, 70, 170, 170.0]), np.ones(7, bool),
                                                      np.random.default_rng(seed))
    source = layout.flip_index if out["flipped"] else np.arange(7)
    for i, (x, y) in enumerate(np.round(out["points"]).astype(int)):
        assert np.array_equal(out["crop"][y, x], COLOURS[source[i]]), (i, out["flipped"])


@pytest.mark.parametrize("rotation", [0.0, 23.0])
def test_box_jitter_crops_the_jittered_box_of_the_rotated_landmarks(rotation):
    _, pts = dotted_image()
    cfg = AugmentConfig(crop_scale=1.6, box_jitter=(0.05, 0.05, 0.1, 0.1))
    t = FaceTransform(get_layout("7"), 128, cfg, train=True)
    j = np.array([0.1, -0.05, 0.2, -0.1])
    record_box = np.array([0, 0, 400, 400.0])  # ignored in training: the crop follows the landmarks
    out = t(np.zeros((240, 220, 3), np.uint8), pts, record_box, np.ones(7, bool), np.random.default_rng(0),
            params=dict(rotation_deg=rotation, zoom=1.0, shift=(0.0, 0.0), flip=False, box_jitter=j))
    lo, hi = out["points"].min(0), out["points"].max(0)
    size = hi - lo                                       # the rotated landmarks' box, in crop pixels
    theta = np.deg2rad(rotation)
    q = pts @ np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]]).T
    np.testing.assert_allclose(size / (q.max(0) - q.min(0)), size[0] / (q.max(0) - q.min(0))[0])  # no shear
    np.testing.assert_allclose((lo + hi) / 2, 63.5 - j[:2] * size, atol=1e-9)        # centre moved by the jitter
    assert np.isclose((size * np.exp(j[2:])).max() * 1.6, 128)                        # scale from the jittered box
    out0 = t(np.zeros((240, 220, 3), np.uint8), pts, record_box, np.ones(7, bool), np.random.default_rng(0),
             params=dict(rotation_deg=rotation, zoom=1.0, shift=(0.0, 0.0), flip=False, box_jitter=np.zeros(4)))
    lo, hi = out0["points"].min(0), out0["points"].max(0)
    np.testing.assert_allclose((lo + hi) / 2, [63.5, 63.5], atol=1e-9)               # no jitter: centred
    assert np.isclose((hi - lo).max() * 1.6, 128)


def test_rotation_on_a_share_of_samples_and_unclipped_gaussian():
    draw = lambda cfg: np.array([FaceTransform(get_layout("7"), 64, cfg, train=True).sample_params(  # noqa: E731
        np.random.default_rng(i))["rotation_deg"] for i in range(2000)])
    rot = draw(srn_preset())
    assert 0.45 < (rot == 0).mean() < 0.55                                     # rotated on half of the samples
    assert 8 < rot[rot != 0].std() < 12 and np.abs(rot).max() > 20             # N(0, 10°), not clipped at 2σ
    clipped = draw(AugmentConfig(rotation=10, rotation_dist="gaussian"))
    assert (clipped != 0).all() and np.abs(clipped).max() <= 20                # the generic draw: every sample, ±2σ
    assert "box_jitter" not in FaceTransform(get_layout("7"), 64, srn_preset(), train=False).sample_params(
        np.random.default_rng(0))                                              # evaluation crops the record's box
    with pytest.raises(ValueError, match="augment.box_jitter"):
        FaceTransform(get_layout("7"), 64, AugmentConfig(box_jitter=(0.1,)), train=True).sample_params(
            np.random.default_rng(0))
