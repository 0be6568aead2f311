"""BRNet, the ResNet-18 coordinate-regression baseline of ODN Table 4 / AODN Table 5.

BRNet = ImageNet ResNet-18 -> global average pooling -> FC 512 -> 2N
(IMPLEMENTATION_NOTES §2.2). It is the whole ResNet-18, ``layer4`` kept: ODN
§5.4 and AODN §5.3 call it "the baseline ResNet-18", and the module rows of
Tables 4/5 are that network with its last stage replaced (ODN §3). Points are regressed directly as crop-normalised
[0, 1] coordinates by a plain linear layer (``output="linear"``, bias started
at the crop centre); ``output="sigmoid"`` bounds them instead. The ResNet
trunk built here is the one ODN and AODN cut at ``layer3``.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import timm
import torch
from huggingface_hub import constants
from timm.models import load_checkpoint
from torch import nn

from flmk.models.blocks.lowrank import RegressionHead

STEM = ("conv1", "bn1", "act1", "maxpool")


def imagenet_resnet(backbone: str, pretrained: bool, pretrained_path: str | None) -> nn.Module:
    """The timm ResNet ``backbone``, with ImageNet weights when asked (ODN §5, AODN §5.3).

    ``pretrained_path`` (a local state dict or timm checkpoint) wins over
    ``pretrained``; otherwise ``pretrained=True`` loads the timm weights from
    the Hugging Face cache (downloading them when online). Missing weights stop
    the run here, before any training, with the weights' name, the cache folder
    and the way out.
    """
    if pretrained_path is not None:
        net = timm.create_model(backbone, pretrained=False)
        path = Path(pretrained_path).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"model.pretrained_path={pretrained_path!r}: no such file (expected a state "
                                    f"dict or timm checkpoint of {backbone})")
        try:  # a plain state dict, or a checkpoint holding 'state_dict' / 'model' / 'state_dict_ema'
            load_checkpoint(net, str(path), use_ema=False, strict=True)
        except (RuntimeError, KeyError, pickle.UnpicklingError) as err:
            raise RuntimeError(f"model.pretrained_path={pretrained_path!r} does not hold {backbone} weights "
                               f"(a state dict or timm checkpoint with the same keys and shapes): {err}") from err
        return net
    try:
        return timm.create_model(backbone, pretrained=pretrained)
    except OSError as err:  # no network and not in the Hugging Face cache
        raise RuntimeError(
            f"model.pretrained=true needs the timm ImageNet weights {backbone!r} (Hugging Face hub repo "
            f"timm/{backbone}), which are not in the cache folder {constants.HF_HUB_CACHE} and could not be "
            f"downloaded (offline?). Copy them there (HF_HUB_OFFLINE=1 then reads them), or point "
            f"model.pretrained_path=<file> at a copied state dict, or train from scratch with "
            f"model.pretrained=false"
        ) from err


def resnet_trunk(backbone: str = "resnet18", pretrained: bool = False, cut_stage: int = 4,
                 pretrained_path: str | None = None) -> tuple[nn.Sequential, int]:
    """A timm ResNet's stem and stages ``layer1 .. layer<cut_stage>``; returns it and its output channels."""
    if not timm.is_model(backbone) or not backbone.startswith("resnet"):
        raise ValueError(f"model.net.backbone must name a timm ResNet (e.g. 'resnet18', "
                         f"'resnet18.tv_in1k'), got {backbone!r}")
    if cut_stage not in (1, 2, 3, 4):
        raise ValueError(f"model.net.cut_stage must be 1, 2, 3 or 4 (last ResNet stage kept), "
                         f"got {cut_stage!r}")
    net = imagenet_resnet(backbone, pretrained, pretrained_path)
    names = (*STEM, *(f"layer{i}" for i in range(1, cut_stage + 1)))
    trunk = nn.Sequential(*(getattr(net, name) for name in names))
    channels = next(f["num_chs"] for f in net.feature_info if f["module"] == f"layer{cut_stage}")
    return trunk, channels


class BRNet(nn.Module):
    """ResNet trunk -> GAP -> FC -> ``points`` (B, N, 2) in crop-normalised [0, 1]."""

    visual_keys: tuple[str, ...] = ()

    def __init__(self, num_points: int = 68, backbone: str = "resnet18", pretrained: bool = False,
                 cut_stage: int = 4, output: str = "linear", pretrained_path: str | None = None) -> None:
        super().__init__()
        self.trunk, channels = resnet_trunk(backbone, pretrained, cut_stage, pretrained_path)
        self.head = RegressionHead(channels, num_points, low_rank=False, output=output)

    def forward(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        x = self.trunk(image).mean(dim=(2, 3))  # GAP
        return {"points": self.head(x)}


def squared_point_error(pred: torch.Tensor, target: torch.Tensor,
                        mask: torch.Tensor | None = None) -> torch.Tensor:
    """(1/B) sum_i ||S_i_hat - S_i||_F^2 over crop-normalised points (ODN eq. 3 data term).

    ``mask`` (B, N) keeps only the points where it is 1 (e.g. visible ones).
    """
    err = (pred.float() - target.float()).pow(2).sum(-1)  # (B, N)
    if mask is not None:
        err = err * mask.to(err.dtype)
    return err.sum(-1).mean()


class PointLoss(nn.Module):
    """BRNet's loss: the squared point error only, optionally on visible points."""

    def __init__(self, visible_only: bool = False) -> None:
        super().__init__()
        self.visible_only = visible_only

    def forward(self, outputs: dict[str, torch.Tensor], batch: dict[str, torch.Tensor],
                net: nn.Module | None = None) -> dict[str, torch.Tensor]:
        mask = batch["visible"] if self.visible_only else None
        points = squared_point_error(outputs["points"], batch["points"], mask)
        return {"points": points, "loss": points}
