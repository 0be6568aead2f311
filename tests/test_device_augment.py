"""data.augment_on=device: the workers draw, the device warps and colours the batch as the worker path would."""

import cv2
import numpy as np
import pytest
import torch
from hydra.utils import instantiate

from conftest import compose_train
from flmk.data.device_augment import color_jitter, erase, finish_batch, gauss_noise, gaussian_blur, warp_canvas
from flmk.data.transforms import (BLUR_SIGMA, COLOR_JITTER, NOISE_STD, AugmentConfig, FaceTransform, crop_affine,
                                  to_chw_uint8)
from flmk.errors import OptionError
from flmk.layouts import get_layout


def smooth_image(h=90, w=110, seed=0):
    """A smooth RGB test image: bilinear resampling of it is nearly exact, so interpolators agree closely."""
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    rng = np.random.default_rng(seed)
    chans = [127 + 120 * np.sin(x / (7 + 3 * c) + rng.uniform(0, 6)) * np.cos(y / (9 + 2 * c)) for c in range(3)]
    return np.clip(np.stack(chans, -1), 0, 255).astype(np.uint8)


def test_warp_equals_cv2_warp_affine():
    img = smooth_image()
    m = crop_affine(np.array([20.0, 15.0, 80.0, 70.0]), 64, 1.3, rotation_deg=17.0, zoom=1.1, shift=(3.0, -2.0),
                    flip=True)
    ref = cv2.warpAffine(img.astype(np.float32), m, (64, 64), flags=cv2.INTER_LINEAR,
                         borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    out = warp_canvas(torch.from_numpy(to_chw_uint8(img))[None], torch.from_numpy(m)[None].float(), 64)
    diff = np.abs(out[0].permute(1, 2, 0).numpy() - ref)
    assert diff.mean() < 0.1 and diff.max() < 2.0  # cv2 rounds source coordinates to 1/32 pixel


def test_color_jitter_steps():
    x = torch.from_numpy(smooth_image().transpose(2, 0, 1)).float()[None]
    ident = torch.tensor([[1.0, 1.0, 1.0, 0.0]])
    torch.testing.assert_close(color_jitter(x, ident), x, atol=1e-3, rtol=0)
    flat = torch.full((1, 3, 4, 4), 100.0)
    torch.testing.assert_close(color_jitter(flat, torch.tensor([[1.2, 1.0, 1.0, 0.0]])), flat * 1.2)
    gray = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
    no_contrast = color_jitter(x, torch.tensor([[1.0, 0.0, 1.0, 0.0]]))
    torch.testing.assert_close(no_contrast, ((x * gray).sum(1, keepdim=True).mean()).expand_as(x), atol=1e-3, rtol=0)
    no_saturation = color_jitter(x, torch.tensor([[1.0, 1.0, 0.0, 0.0]]))
    torch.testing.assert_close(no_saturation, (x * gray).sum(1, keepdim=True).expand_as(x), atol=1e-3, rtol=0)
    mid = torch.full((1, 3, 2, 2), 128.0) + torch.tensor([40.0, -30.0, 10.0]).view(1, 3, 1, 1)
    turned = color_jitter(mid, torch.tensor([[1.0, 1.0, 1.0, 0.25]]))
    torch.testing.assert_close((turned * gray).sum(1), (mid * gray).sum(1), atol=1e-3, rtol=0)  # luma kept
    assert not torch.allclose(turned, mid, atol=1.0)  # ... and the colour turned
    torch.testing.assert_close(color_jitter(mid, torch.tensor([[1.0, 1.0, 1.0, 1.0]])), mid, atol=1e-3, rtol=0)


def test_blur_equals_cv2_separable_filter():
    img = np.random.default_rng(1).uniform(0, 255, (20, 23, 3)).astype(np.float32)
    taps = np.arange(-2, 3)
    k = np.exp(-0.5 * (taps / 1.3) ** 2)
    k /= k.sum()
    ref = cv2.sepFilter2D(img, -1, k, k, borderType=cv2.BORDER_REFLECT_101)
    x = torch.from_numpy(img.transpose(2, 0, 1))[None]
    kernels = torch.tensor(np.stack([k, [0, 0, 1, 0, 0]]), dtype=torch.float32)
    out = gaussian_blur(torch.cat([x, x]), kernels)
    np.testing.assert_allclose(out[0].permute(1, 2, 0).numpy(), ref, atol=1e-3)
    torch.testing.assert_close(out[1:], x)  # identity kernel: unchanged


def test_noise_and_erase():
    torch.manual_seed(0)
    x = torch.full((2, 3, 64, 64), 128.0)
    noisy = gauss_noise(x, torch.tensor([0.05, 0.0]))
    assert abs(float((noisy[0] - 128).std()) - 0.05 * 255) < 0.05 * 255 * 0.05
    torch.testing.assert_close(noisy[1], x[1])
    holes = torch.tensor([[[10, 20, 30, 25], [0, 0, 0, 0]], [[0, 0, 0, 0], [5, 5, 5, 60]]], dtype=torch.float32)
    out = erase(x, holes)
    inside = torch.zeros(64, 64, dtype=torch.bool)
    inside[20:25, 10:30] = True
    assert (out[0][:, inside] != 128).float().mean() > 0.9 and (out[0][:, ~inside] == 128).all()
    torch.testing.assert_close(out[1], x[1])  # empty holes (x1 = x2) erase nothing


def test_photometric_draws_stay_in_their_ranges():
    on = FaceTransform(get_layout("68"), 64, AugmentConfig(color=1.0, blur=1.0, noise=1.0, erase=1.0), train=True)
    off = FaceTransform(get_layout("68"), 64, AugmentConfig(), train=True)
    rng = np.random.default_rng(0)
    for _ in range(50):
        d = on.sample_photometric(rng)
        b, c, s, h = COLOR_JITTER
        assert np.all(np.abs(d["color"][:3] - 1) <= [b, c, s]) and abs(d["color"][3]) <= h
        assert abs(d["blur_kernel"].sum() - 1) < 1e-9 and d["blur_kernel"].argmax() == 2
        assert NOISE_STD[0] <= d["noise_std"] <= NOISE_STD[1]
        holes = d["holes"][d["holes"][:, 2] > d["holes"][:, 0]]
        assert 1 <= len(holes) <= 2 and holes.min() >= 0 and holes[:, 2:].max() <= 64
    k3 = [on.sample_photometric(np.random.default_rng(i))["blur_kernel"] for i in range(30)]
    assert any(k[0] == 0 for k in k3) and any(k[0] > 0 for k in k3)  # kernel sizes 3 and 5
    assert BLUR_SIGMA[0] > 0
    d = off.sample_photometric(rng)
    np.testing.assert_array_equal(d["color"], [1, 1, 1, 0])
    np.testing.assert_array_equal(d["blur_kernel"], [0, 0, 1, 0, 0])
    assert d["noise_std"] == 0 and not d["holes"].any()


def _train_batch(tmp_path, synthetic_root, augment_on, photometric=False):
    aug = [] if photometric else ["augment.color=0", "augment.blur=0", "augment.noise=0"]
    cfg = compose_train(["augment=default", *aug, f"data.augment_on={augment_on}"], tmp_path, synthetic_root)
    dm = instantiate(cfg.data, crop_size=64, augment=cfg.augment, _recursive_=False)
    dm.prepare_data()
    dm.setup("fit")
    return next(iter(dm.train_dataloader()))


def test_device_batches_match_worker_batches(tmp_path, synthetic_root):
    """Same seed, same draws: the device path gives the worker path's points and (up to resampling) crops."""
    workers = finish_batch(_train_batch(tmp_path / "w", synthetic_root, "workers"), 64)
    raw = _train_batch(tmp_path / "d", synthetic_root, "device")
    assert "image" not in raw and raw["canvas"].dtype == torch.uint8
    device = finish_batch(dict(raw), 64)
    assert "canvas" not in device and device["image"].shape == workers["image"].shape == (4, 3, 64, 64)
    for k in ("points", "visible", "affine", "box", "index"):
        torch.testing.assert_close(device[k], workers[k])
    diff = (device["image"] - workers["image"]).abs() * 0.226 * 255  # back to grey levels
    assert diff.mean() < 4.0, float(diff.mean())  # the canvas adds one resampling


def test_device_photometric_changes_the_crop(tmp_path, synthetic_root):
    plain = finish_batch(_train_batch(tmp_path / "a", synthetic_root, "device"), 64)
    coloured = finish_batch(_train_batch(tmp_path / "b", synthetic_root, "device", photometric=True), 64)
    torch.testing.assert_close(plain["points"], coloured["points"])
    assert float((plain["image"] - coloured["image"]).abs().mean()) > 0.05


def test_auto_is_workers_on_a_cpu_trainer_and_bad_values_are_refused(tmp_path, synthetic_root):
    cfg = compose_train(["data.augment_on=auto"], tmp_path, synthetic_root)
    dm = instantiate(cfg.data, crop_size=64, augment=cfg.augment, _recursive_=False)
    assert not dm.augments_on_device()  # no trainer (or a CPU one): albumentations in the workers
    cfg = compose_train(["data.augment_on=gpu"], tmp_path, synthetic_root)
    with pytest.raises(Exception, match="data.augment_on='gpu'; expected 'workers'") as e:
        instantiate(cfg.data, crop_size=64, augment=cfg.augment, _recursive_=False)
    assert isinstance(e.value.__cause__ or e.value, OptionError)
