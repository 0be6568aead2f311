"""data.image_dtype=uint8: crops travel as bytes and are normalised on the device to what the float path gives."""

import numpy as np
import pytest
import torch
from hydra.utils import instantiate

from conftest import compose_train
from flmk.data.transforms import normalise_image, to_chw_uint8, to_tensor_image, to_uint8_image


def test_device_normalisation_equals_the_worker_one():
    crop = np.random.default_rng(0).integers(0, 256, size=(20, 24, 3), dtype=np.uint8)
    on_device = normalise_image(torch.from_numpy(to_chw_uint8(crop)))
    torch.testing.assert_close(on_device, torch.from_numpy(to_tensor_image(crop)), atol=1e-6, rtol=0)
    clip = torch.from_numpy(np.stack([to_chw_uint8(crop)] * 2))[None]  # (B, T, 3, H, W)
    torch.testing.assert_close(normalise_image(clip)[0, 1], on_device)
    assert normalise_image(on_device) is on_device  # float input: already normalised
    np.testing.assert_array_equal(to_uint8_image(to_chw_uint8(crop)), crop)


def _dm(tmp_path, synthetic_root, dtype):
    cfg = compose_train(["augment=none", f"data.image_dtype={dtype}"], tmp_path, synthetic_root)
    dm = instantiate(cfg.data, crop_size=64, augment=cfg.augment, _recursive_=False)
    dm.prepare_data()
    dm.setup("fit")
    return dm


def test_uint8_batches_reach_the_network_as_the_float_ones(tmp_path, synthetic_root):
    from flmk.models.module import LandmarkModule

    a = next(iter(_dm(tmp_path / "a", synthetic_root, "uint8").val_dataloader()))
    b = next(iter(_dm(tmp_path / "b", synthetic_root, "float32").val_dataloader()))
    assert a["image"].dtype == torch.uint8 and b["image"].dtype == torch.float32
    module = LandmarkModule.__new__(LandmarkModule)  # the hook needs no state but the crop size
    module.__dict__["crop_size"] = b["image"].shape[-1]
    moved = LandmarkModule.on_after_batch_transfer(module, dict(a), 0)
    torch.testing.assert_close(moved["image"], b["image"], atol=1e-6, rtol=0)


def test_unknown_image_dtype_is_refused(tmp_path, synthetic_root):
    dm = _dm(tmp_path, synthetic_root, "float16")
    with pytest.raises(ValueError, match="data.image_dtype='float16'"):
        dm.dataset("val")
