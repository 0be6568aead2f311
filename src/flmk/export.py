"""Export a checkpoint's network: `python -m flmk.export ckpt_path=<ckpt> format=onnx out=model.onnx`.

The ONNX graph maps ImageNet-normalised crops ``image`` (B, 3, S, S), B dynamic, to crop-normalised
``points`` (B, N, 2); the checkpoint's description (crop size and margin, layout, model config) is
stored in the file's metadata under ``flmk``, so ``flmk.predict backend=onnx model=<file>`` crops and
maps back exactly as in training without torch. TorchScript (``format=torchscript``) is a trace of the
same function. Each export is checked against PyTorch on real faces (``parity_images``) through the
whole pipeline (detector, crop, network, inverse affine) and the largest point difference in pixels
is printed; above ``parity_tolerance_px`` the export fails.
"""

from __future__ import annotations

import glob
import json
import sys
from pathlib import Path

import hydra
import numpy as np
import torch
from omegaconf import DictConfig
from torch import nn

from flmk.checkpoint import CheckpointError, load_module
from flmk.data.images import read_rgb, write_atomic
from flmk.landmarker import Landmarker, TorchNet

CONF_DIR = str(Path(__file__).resolve().parents[2] / "conf")


class ExportError(ValueError):
    """A checkpoint or option that cannot be exported; one line, exit status 2."""


class PointsNet(nn.Module):
    """The network as a function of the crop alone, returning only ``points``."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.net(image)["points"]


def parity_faces(lm: Landmarker, pattern: str, limit: int = 8) -> tuple[np.ndarray, np.ndarray, str]:
    """Crops and affines of up to ``limit`` detected real faces; random crops when none are found."""
    crops, affines = [], []
    for path in sorted(glob.glob(pattern)):
        try:
            rgb = read_rgb(path)
        except OSError:
            continue
        boxes, _ = lm.detector(rgb)
        if len(boxes):
            x, a = lm.crop(rgb, boxes[:1])
            crops.append(x), affines.append(a)
        if len(crops) == limit:
            break
    if crops:
        return np.concatenate(crops), np.concatenate(affines), f"{len(crops)} real faces ({pattern})"
    s = lm.crop_size
    rng = np.random.default_rng(0)
    from flmk.data.transforms import crop_affine

    a = np.stack([crop_affine(np.array([0.0, 0.0, 100.0, 100.0]), s, lm.crop_scale)] * 4).astype(np.float32)
    return rng.normal(size=(4, 3, s, s)).astype(np.float32), a, f"4 random crops (no image matched {pattern})"


def to_onnx(fn: PointsNet, example: torch.Tensor, out: Path, desc: dict, opset: int) -> Path:
    import onnx

    def write(tmp: Path) -> None:
        torch.onnx.export(fn, (example,), str(tmp), input_names=["image"], output_names=["points"],
                          dynamic_axes={"image": {0: "batch"}, "points": {0: "batch"}}, opset_version=opset,
                          dynamo=False)
        model = onnx.load(str(tmp))
        model.metadata_props.add(key="flmk", value=json.dumps(desc))
        onnx.save(model, str(tmp))

    return write_atomic(out, write)


def export(cfg: DictConfig) -> dict[str, float]:
    module, desc = load_module(cfg.ckpt_path)
    net = module.net.eval()
    if hasattr(net, "step") and hasattr(net, "init_state"):
        raise ExportError(f"checkpoint {cfg.ckpt_path}: {desc['model'].get('name')} is a tracker that carries a state "
                          "across frames; export is for per-frame models (export its detector checkpoint), and "
                          "flmk.predict runs trackers in PyTorch")
    if cfg.format not in ("onnx", "torchscript", "all"):
        raise ExportError(f"format={cfg.format}: expected onnx, torchscript or all")
    fn = PointsNet(net).eval()
    reference = Landmarker(TorchNet(module, desc, "cpu", "fp32"), desc)
    x, a, what = parity_faces(reference, str(cfg.parity_images))
    expected = reference.net(x, a)
    out = Path(cfg.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    example = torch.from_numpy(x[:2])
    diffs = {}
    if cfg.format in ("onnx", "all"):
        to_onnx(fn, example, out, desc, cfg.opset)
        got = Landmarker.from_onnx(out).net(x, a)
        diffs[str(out)] = float(np.abs(got - expected).max())
    if cfg.format in ("torchscript", "all"):
        ts_path = out.with_suffix(".pt")
        with torch.no_grad():
            traced = torch.jit.trace(fn, example, check_trace=False)
        write_atomic(ts_path, lambda tmp: torch.jit.save(traced, str(tmp), _extra_files={"flmk.json": json.dumps(desc)}))
        loaded = torch.jit.load(str(ts_path))
        with torch.no_grad():
            pts = loaded(torch.from_numpy(x))
        from flmk.models.module import to_original

        got = to_original(pts, torch.from_numpy(a), desc["crop_size"]).numpy()
        diffs[str(ts_path)] = float(np.abs(got - expected).max())
    for path, d in diffs.items():
        print(f"{path}: max point difference vs PyTorch on {what}: {d:.5f} px")
    worst = max(diffs.values())
    if worst > cfg.parity_tolerance_px:
        raise ExportError(f"export differs from PyTorch by {worst:.4f} px > parity_tolerance_px={cfg.parity_tolerance_px}")
    return diffs


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="export")
def main(cfg: DictConfig) -> None:
    try:
        export(cfg)
    except (ExportError, CheckpointError) as e:
        print(f"flmk.export: {e}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
