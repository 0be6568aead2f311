"""LandmarkDataModule: held-out validation, the face-crop cache, sample contents."""

from __future__ import annotations

import torch
from hydra.utils import instantiate

from conftest import compose_train
from flmk.data.transforms import normalise_image


def _dm(tmp_path, synthetic_root, *extra):
    cfg = compose_train(["augment=none", *extra], tmp_path, synthetic_root)
    dm = instantiate(cfg.data, crop_size=64, augment=cfg.augment, _recursive_=False)
    dm.prepare_data()
    dm.setup("fit")
    return dm


def test_sample_points_are_crop_normalised_and_map_back(tmp_path, synthetic_root):
    from flmk.models.module import to_original

    dm = _dm(tmp_path, synthetic_root)
    s = dm.dataset("test/clean")[0]
    assert s["image"].shape == (3, 64, 64) and s["points"].shape == (68, 2)
    assert 0 <= s["points"].min() and s["points"].max() <= 1
    back = to_original(s["points"][None], s["affine"][None], 64)[0]
    torch.testing.assert_close(back, s["target_orig"], atol=1e-3, rtol=0)


def test_held_out_validation_when_a_dataset_has_none(tmp_path, synthetic_root):
    dm = _dm(tmp_path, synthetic_root, "data.val=null", "+data.val_fraction=0.25")
    train, val = {r.image for r in dm.splits["train"]}, {r.image for r in dm.splits["val"]}
    assert len(val) == 6 and not train & val and len(train) == 18


def test_crop_cache_serves_the_same_crops(tmp_path, synthetic_root):
    plain = _dm(tmp_path / "a", synthetic_root)
    cached = _dm(tmp_path / "b", synthetic_root, "data.cache=true", f"data.cache_dir={tmp_path / 'cache'}",
                 "+data.cache_size=128")
    a, b = plain.dataset("val")[1], cached.dataset("val")[1]
    torch.testing.assert_close(a["points"], b["points"])
    torch.testing.assert_close(a["affine"], b["affine"])
    # one extra resampling through the cached crop: the pixels agree up to interpolation
    assert (normalise_image(a["image"]) - normalise_image(b["image"])).abs().mean() < 0.08
    stores = [p for p in (tmp_path / "cache").iterdir() if not p.name.startswith(".") and p.name != "verified"]
    assert len(stores) == 1  # one crop store (beside the image-check records in verified/)
