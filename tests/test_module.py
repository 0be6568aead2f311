"""LandmarkModule's mapping back to original pixels, clip flattening and subset scoring."""

import numpy as np
import torch
from torch import nn

from flmk.data.transforms import apply_affine, crop_affine
from flmk.models.module import LandmarkModule, flatten_clips, to_original


def test_to_original_inverts_the_crop():
    rng = np.random.default_rng(0)
    m = crop_affine(np.array([30, 40, 130, 160.0]), 64, 1.25, rotation_deg=25, zoom=1.1, shift=(2, -3))
    p = rng.uniform(20, 150, (2, 68, 2))
    c = (apply_affine(m, p) + 0.5) / 64
    back = to_original(torch.tensor(c), torch.tensor(m).expand(2, 2, 3), 64)
    np.testing.assert_allclose(back.numpy(), p, atol=1e-4)


def test_flatten_clips_keeps_valid_frames_only():
    b, t = 2, 3
    batch = {"image": torch.zeros(b, t, 3, 8, 8), "points": torch.arange(b * t).float().view(b, t, 1, 1).expand(b, t, 4, 2),
             "valid": torch.tensor([[True, True, False], [True, False, True]]), "index": torch.arange(b * t).view(b, t)}
    fb, fo = flatten_clips(batch, {"points": batch["points"]})
    assert fb["image"].shape == (4, 3, 8, 8) and fo["points"].shape == (4, 4, 2)
    assert fb["index"].tolist() == [0, 1, 3, 5]


class Fixed(nn.Module):
    """Predicts stored crop coordinates: a network stub to exercise the module's metric path."""

    def __init__(self, points):
        super().__init__()
        self.register_buffer("p", points)

    def forward(self, image):
        return {"points": self.p.expand(image.shape[0], -1, -1)}


def test_subset_split_is_scored_on_the_subset_points():
    gt = torch.rand(1, 68, 2) * 0.5 + 0.25
    pred = gt.clone()
    others = [i for i in range(68) if i not in (36, 39, 42, 45, 30, 48, 54)]
    pred[:, others] += 0.2  # wrong everywhere except the 7 Talking Face points
    module = LandmarkModule(Fixed(pred), nn.Identity(), torch.optim.SGD, layout="68", crop_size=100,
                            test_names=["full", "tf"], test_eval_layouts={"tf": "7"})
    module.on_test_start()
    affine = torch.tensor([[[1.0, 0, 0], [0, 1.0, 0]]])
    batch = {"image": torch.zeros(1, 3, 4, 4), "points": gt, "affine": affine,
             "target_orig": to_original(gt, affine, 100), "box": torch.tensor([[0.0, 0, 100, 100]]),
             "visible": torch.ones(1, 68), "has_visibility": torch.tensor([False]), "index": torch.tensor([0])}
    for i in range(2):
        module.test_step(batch, 0, dataloader_idx=i)
    module.on_test_epoch_end()
    assert module.test_results["tf"]["metrics"]["nme_io"] < 1e-6
    assert module.test_results["full"]["metrics"]["nme_io"] > 0.1
