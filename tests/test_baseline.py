"""BRNet and PointLoss: shapes, the shared trunk, the pretrained failure path, the loss value."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

import flmk
from flmk.models.baseline import BRNet, PointLoss, resnet_trunk


@pytest.mark.parametrize("size", [64, 96])
def test_brnet_points_shape_and_range(size: int) -> None:
    net = BRNet(num_points=5).eval()
    out = net(torch.randn(2, 3, size, size))
    assert out["points"].shape == (2, 5, 2)
    # the FC starts near the crop centre
    assert torch.allclose(out["points"], torch.full_like(out["points"], 0.5), atol=0.1)


def test_sigmoid_output_is_bounded() -> None:
    net = BRNet(num_points=3, output="sigmoid")
    with torch.no_grad():
        net.head.fc.bias.fill_(50.0)
    pts = net(torch.randn(1, 3, 64, 64))["points"]
    assert ((pts > 0) & (pts <= 1)).all()


def test_brnet_is_resnet18_with_a_136_head() -> None:
    net = BRNet(num_points=68)
    n = sum(p.numel() for p in net.parameters())
    assert n == 11_176_512 + 512 * 136 + 136  # ResNet-18 without its 1000-way fc, plus FC 512->136


@pytest.mark.parametrize("cut, channels, stride", [(3, 256, 16), (4, 512, 32)])
def test_trunk_cut(cut: int, channels: int, stride: int) -> None:
    trunk, c = resnet_trunk("resnet18", cut_stage=cut)
    assert c == channels
    assert trunk(torch.randn(1, 3, 64, 64)).shape == (1, channels, 64 // stride, 64 // stride)


@pytest.mark.parametrize("kwargs, match", [({"backbone": "vgg16"}, "backbone"), ({"cut_stage": 5}, "cut_stage"),
                                           ({"output": "tanh"}, "output")])
def test_bad_options_name_the_key(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        BRNet(**kwargs)


def test_pretrained_offline_fails_clearly(tmp_path) -> None:
    code = ("from flmk.models.baseline import BRNet\n"
            "try:\n    BRNet(backbone='resnet18.tv_in1k', pretrained=True)\n"
            "except RuntimeError as e:\n    print('ERR', e)\n")
    src = os.path.dirname(os.path.dirname(flmk.__file__))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path), "OMP_NUM_THREADS": "1",
           "PYTHONPATH": src}
    run = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert "ERR model.pretrained=true needs the timm ImageNet weights for resnet18.tv_in1k" in run.stdout, run.stderr
    assert "model.pretrained=false" in run.stdout


def test_point_loss_hand_computed() -> None:
    pred = torch.tensor([[[0.5, 0.5], [0.2, 0.1]]])
    target = torch.tensor([[[0.4, 0.7], [0.2, 0.4]]])
    batch = {"points": target, "visible": torch.tensor([[1.0, 0.0]])}
    out = PointLoss()({"points": pred}, batch)
    assert out["loss"].item() == pytest.approx(0.01 + 0.04 + 0.09)
    assert set(out) == {"points", "loss"}
    masked = PointLoss(visible_only=True)({"points": pred}, batch)
    assert masked["loss"].item() == pytest.approx(0.05)
