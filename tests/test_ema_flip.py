"""LandmarkModule's general evaluation options: EMA of the weights (model.ema_decay), flip-averaged testing
(model.test_flip)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from real_fixtures import REAL, requires_real
from torch import nn

from flmk.data.images import read_rgb
from flmk.data.sources.pts import read_pts
from flmk.data.transforms import AugmentConfig, FaceTransform, to_tensor_image
from flmk.layouts import get_layout
from flmk.models.module import LandmarkModule, to_original

IBUG = REAL / "300w" / "srn_ibug" / "databases" / "ibug"


class Linear68(nn.Module):
    """A tiny net: image mean -> 68 points, with a BatchNorm so buffers are averaged too."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(3, 136)
        self.bn = nn.BatchNorm1d(3)

    def forward(self, image):
        return {"points": self.fc(self.bn(image.mean((2, 3)))).view(-1, 68, 2)}


def make_module(net: nn.Module, **kwargs) -> LandmarkModule:
    return LandmarkModule(net, nn.Identity(), torch.optim.SGD, layout="68", crop_size=64, **kwargs)


def test_ema_follows_tf_moving_average_with_warm_up():
    torch.manual_seed(0)
    module = make_module(Linear68(), ema_decay=0.5)  # the warm-up caps at 0.5 from t = 8
    assert not any(p.requires_grad for p in module.ema.parameters())
    shadow = None
    for t in range(30):
        with torch.no_grad():  # stands in for an optimiser step
            for p in module.net.parameters():
                p.add_(torch.randn_like(p))
        module.on_train_batch_end(None, None, t)
        w = torch.cat([p.detach().flatten() for p in module.net.parameters()])
        # tf.train.ExponentialMovingAverage(0.5, num_updates=t): decay_t = min(0.5, (1 + t) / (10 + t));
        # the first update starts the average at the weights
        shadow = w.clone() if shadow is None else shadow.lerp(w, 1 - min(0.5, (1 + t) / (10 + t)))
        ema = torch.cat([p.flatten() for p in module.ema.module.parameters()])
        torch.testing.assert_close(ema, shadow)
    assert not torch.allclose(ema, w)


def test_evaluation_uses_the_ema_weights_and_checkpoints_keep_them():
    torch.manual_seed(0)
    module = make_module(Linear68(), ema_decay=0.5)
    module.on_train_batch_end(None, None, 0)
    with torch.no_grad():
        module.net.fc.bias.add_(1.0)                        # the raw net moves on, the EMA has not seen it
    image = torch.rand(2, 3, 8, 8)
    module.eval()
    torch.testing.assert_close(module.predict_eval(image)["points"], module.ema.module(image)["points"])
    assert not torch.allclose(module.predict_eval(image)["points"], module.net(image)["points"])
    state = module.state_dict()
    assert {"ema.n_averaged", "ema.module.fc.weight", "ema.module.bn.running_mean"} <= state.keys()
    fresh = make_module(Linear68(), ema_decay=0.5).eval()
    fresh.load_state_dict(state)
    torch.testing.assert_close(fresh.predict_eval(image)["points"], module.predict_eval(image)["points"])
    assert make_module(Linear68()).ema is None              # null = off: nothing extra in the checkpoint
    assert not any(k.startswith("ema.") for k in make_module(Linear68()).state_dict())
    with pytest.raises(ValueError, match="model.ema_decay"):
        make_module(Linear68(), ema_decay=1.5)


class Oracle(nn.Module):
    """Answers each image with the points stored for the nearest known image (a perfect net on those images)."""

    def __init__(self, images: torch.Tensor, points: torch.Tensor):
        super().__init__()
        self.images, self.points = images, points

    def forward(self, image):
        dist = (image[:, None] - self.images[None]).flatten(2).abs().mean(-1)   # (B, known)
        return {"points": self.points[dist.argmin(1)]}


@requires_real
@pytest.mark.parametrize("stem", ["image_025_1", "image_102"])
def test_flip_averaged_prediction_of_a_real_face_equals_its_ground_truth(stem):
    layout = get_layout("68")
    image, points = read_rgb(IBUG / f"{stem}.jpg"), read_pts(IBUG / f"{stem}.pts")
    box = np.concatenate([points.min(0), points.max(0)])
    transform = FaceTransform(layout, 128, AugmentConfig(crop_scale=1.6), train=True)
    crops = [transform(image, points, box, np.ones(68, bool), np.random.default_rng(0),
                       params=dict(rotation_deg=0.0, zoom=1.0, shift=(0.0, 0.0), flip=flip)) for flip in (False, True)]
    tensors = torch.stack([torch.from_numpy(to_tensor_image(c["crop"])) for c in crops])
    truth = torch.stack([torch.from_numpy((c["points"] + 0.5) / 128) for c in crops]).float()
    # the module mirrors the tensor; the data pipeline mirrors through the affine: the same pixels
    assert (tensors[1] - tensors[0].flip(-1)).abs().mean() < 0.02
    oracle = Oracle(tensors, truth)                        # knows the face and its mirror image (flip-permuted)
    module = make_module(oracle, test_flip=True)
    module.crop_size = 128
    pred = module.predict_eval(tensors[:1])["points"]
    torch.testing.assert_close(pred, truth[:1], atol=1e-6, rtol=0)
    back = to_original(pred, torch.from_numpy(crops[0]["affine"]).float()[None], 128)[0]
    np.testing.assert_allclose(back.numpy(), points, atol=1e-2)   # the truth's geometry, in image pixels
    # without the flip permutation the mirrored prediction lands on the wrong landmarks
    mirrored = oracle(tensors[:1].flip(-1))["points"]
    wrong = (pred + torch.stack([1 - mirrored[..., 0], mirrored[..., 1]], -1)) / 2
    iod = (truth[0, 36] - truth[0, 45]).norm()
    assert ((wrong - truth[:1]).norm(dim=-1).mean() / iod) > 0.1
    assert not make_module(oracle).test_flip                 # off by default: one pass


def test_srn_trains_with_its_recipe_by_default_and_any_model_can_switch_it_on():
    from hydra import compose, initialize_config_dir

    from flmk.train import CONF_DIR

    with initialize_config_dir(CONF_DIR, version_base="1.3"):
        srn = compose("train", overrides=["model=srn"])
        generic = compose("train", overrides=["model=srn", "augment=default"])
        odn = compose("train", overrides=["model=odn", "model.ema_decay=0.999", "model.test_flip=true"])
        table7 = compose("train", overrides=["experiment=srn/table7", "ablation=srn/full"])
    assert srn.model.ema_decay == 0.9999 and srn.model.test_flip and srn.augment.rotation_p == 0.5
    assert list(srn.augment.box_jitter) == [0.046, 0.040, 0.102, 0.104] and table7.augment == srn.augment
    assert generic.augment.rotation == 30 and "box_jitter" not in generic.augment     # the user's choice wins
    assert odn.model.ema_decay == 0.999 and odn.model.test_flip and odn.augment.rotation == 30
