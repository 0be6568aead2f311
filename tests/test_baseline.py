"""BRNet and PointLoss: shapes, the shared trunk, ImageNet weights (cache, local file, offline stop), the loss."""

from __future__ import annotations

import os
import subprocess
import sys

from pathlib import Path

import pytest
import timm
import torch
from conftest import TINY
from hydra import compose, initialize_config_dir

import flmk
from flmk.models.baseline import BRNet, PointLoss, resnet_trunk
from flmk.models.odn import ODN

CONF = Path(__file__).resolve().parents[1] / "conf"


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


def offline_env(tmp_path) -> dict[str, str]:
    src = os.path.dirname(os.path.dirname(flmk.__file__))
    return {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf"), "OMP_NUM_THREADS": "1",
            "PYTHONPATH": src}


def test_pretrained_offline_fails_clearly(tmp_path) -> None:
    code = ("from flmk.models.baseline import BRNet\n"
            "try:\n    BRNet(backbone='resnet18.tv_in1k', pretrained=True)\n"
            "except RuntimeError as e:\n    print('ERR', e)\n")
    run = subprocess.run([sys.executable, "-c", code], env=offline_env(tmp_path), capture_output=True, text=True,
                         timeout=120)
    assert "ERR model.pretrained=true needs the timm ImageNet weights 'resnet18.tv_in1k'" in run.stdout, run.stderr
    for hint in (str(tmp_path / "hf" / "hub"), "model.pretrained_path=<file>", "model.pretrained=false"):
        assert hint in run.stdout, hint


def test_paper_runs_stop_before_training_without_weights(tmp_path, synthetic_root) -> None:
    """ODN Table 4 starts from ImageNet weights by default: offline without them it stops before any epoch."""
    cmd = [sys.executable, "-m", "flmk.train", "experiment=odn/table4", "ablation=odn/all", "hydra.mode=RUN",
           "data=synthetic", f"data.sources.synthetic.root={synthetic_root}", "data.sources.synthetic.n=24",
           "data.sources.synthetic.seed=3", "data.sources.synthetic.size=96", "model.crop_size=64", "trainer=cpu",
           f"hydra.run.dir={tmp_path / 'run'}", *TINY]
    run = subprocess.run(cmd, cwd=tmp_path, env=offline_env(tmp_path), capture_output=True, text=True, timeout=300)
    assert run.returncode != 0
    assert "needs the timm ImageNet weights 'resnet18.tv_in1k'" in run.stderr + run.stdout
    assert not (tmp_path / "run" / "checkpoints").exists() and not (tmp_path / "run" / "csv").exists()


def resnet18_weights(path, wrap: bool = False, name: str = "resnet18") -> dict:
    torch.manual_seed(0)
    state = timm.create_model(name).state_dict()
    state["conv1.weight"] = torch.full_like(state["conv1.weight"], 0.25)
    state["layer3.1.conv2.weight"] = torch.full_like(state["layer3.1.conv2.weight"], -0.5)
    torch.save({"state_dict": state, "epoch": 7} if wrap else state, path)
    return state


@pytest.mark.parametrize("wrap", [False, True])  # a plain state dict, a timm training checkpoint
def test_pretrained_path_loads_a_local_file(tmp_path, wrap: bool) -> None:
    state = resnet18_weights(tmp_path / "r18.pth", wrap)
    brnet = BRNet(num_points=3, backbone="resnet18.tv_in1k", pretrained_path=str(tmp_path / "r18.pth"))
    torch.testing.assert_close(brnet.trunk[0].weight, state["conv1.weight"])
    torch.testing.assert_close(brnet.trunk[7][1].conv1.weight, state["layer4.1.conv1.weight"])
    odn = ODN(num_points=3, gm_width=8, dm_width=4, pretrained_path=str(tmp_path / "r18.pth"))  # cut at layer3
    torch.testing.assert_close(odn.trunk[6][1].conv2.weight, state["layer3.1.conv2.weight"])


def test_pretrained_path_errors_name_the_file(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="model.pretrained_path='.*missing.pth'"):
        BRNet(pretrained_path=str(tmp_path / "missing.pth"))
    resnet18_weights(tmp_path / "r34.pth", name="resnet34")
    with pytest.raises(RuntimeError, match="model.pretrained_path=.*r34.pth.*does not hold resnet18 weights"):
        BRNet(pretrained_path=str(tmp_path / "r34.pth"))


PRESETS = sorted(f"{paper}/{p.stem}" for paper in ("odn", "aodn") for p in (CONF / "experiment" / paper).glob("*.yaml"))


@pytest.mark.parametrize("experiment", PRESETS)
def test_paper_presets_start_from_imagenet(experiment: str) -> None:
    with initialize_config_dir(str(CONF), version_base="1.3"):
        cfg = compose("train", overrides=[f"experiment={experiment}"])
    assert cfg.model.pretrained is True and cfg.model.net.pretrained is True
    assert cfg.model.pretrained_path is None


def test_model_defaults_and_quickstart() -> None:
    with initialize_config_dir(str(CONF), version_base="1.3"):
        for model in ("baseline", "odn", "aodn"):
            assert compose("train", overrides=[f"model={model}"]).model.net.pretrained is True, model
        quick = compose("train", overrides=["experiment=quickstart"])
        brnet_row = compose("train", overrides=["experiment=odn/table4", "ablation=odn/brnet"])
    assert quick.model.net.pretrained is False  # `make train` downloads nothing
    # Table 4's BRNet row is the whole ResNet-18 ("the baseline ResNet-18", layer4 kept) with its ImageNet weights
    assert brnet_row.model.net.cut_stage == 4 and brnet_row.model.net.pretrained is True


def test_point_loss_hand_computed() -> None:
    pred = torch.tensor([[[0.5, 0.5], [0.2, 0.1]]])
    target = torch.tensor([[[0.4, 0.7], [0.2, 0.4]]])
    batch = {"points": target, "visible": torch.tensor([[1.0, 0.0]])}
    out = PointLoss()({"points": pred}, batch)
    assert out["loss"].item() == pytest.approx(0.01 + 0.04 + 0.09)
    assert set(out) == {"points", "loss"}
    masked = PointLoss(visible_only=True)({"points": pred}, batch)
    assert masked["loss"].item() == pytest.approx(0.05)
