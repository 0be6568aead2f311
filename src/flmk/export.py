"""Export a checkpoint's network: `python -m flmk.export ckpt_path=<ckpt> format=onnx out=model.onnx`.

The ONNX graph maps ImageNet-normalised crops ``image`` (B, 3, S, S), B dynamic, to crop-normalised
``points`` (B, N, 2); the checkpoint's description (crop size and margin, layout, model config) is
stored in the file's metadata under ``flmk``, so ``flmk.predict backend=onnx model=<file>`` crops and
maps back exactly as in training without torch. TorchScript (``format=torchscript``) is a trace of the
same function. Each export is checked against PyTorch on real faces (``parity_images``) through the
whole pipeline (detector, crop, network, inverse affine) and the largest point difference in pixels
is printed; above ``parity_tolerance_px`` the export fails.

``quantize=int8`` writes a statically quantised ONNX model instead (onnxruntime.quantization: QDQ,
per-channel int8 weights, uint8 activations, every convolution but the first), calibrated on real face
crops made by the predict path's own crop (``calibration_images``, none of them among ``parity_images``). Its drift from
the fp32 PyTorch model on the parity faces is printed in pixels (max, mean) and as NME (mean point
distance over the face box size sqrt(w h)); above ``int8_tolerance_nme`` the export fails. The file
carries the same metadata, so ``flmk.predict backend=onnx`` runs it unchanged.
"""

from __future__ import annotations

import glob
import json
import sys
from collections.abc import Callable
from pathlib import Path

import hydra
import numpy as np
import torch
from omegaconf import DictConfig
from torch import nn

from flmk.checkpoint import CheckpointError, load_module
from flmk.data.images import read_rgb, write_atomic
from flmk.data.transforms import crop_affine, normalise_chw
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


QUANTIZE = ("int8",)


def parity_faces(lm: Landmarker, pattern: str, limit: int = 8,
                 exclude: str | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray, str]:
    """Normalised crops (the exported graph's input), affines and boxes of up to ``limit`` detected real faces
    (the first of each image matching the glob ``pattern``, ``**`` recursive, none matching ``exclude``); random
    crops when none are found."""
    skip = set(glob.glob(exclude, recursive=True)) if exclude else set()
    crops, affines, found = [], [], []
    for path in sorted(set(glob.glob(pattern, recursive=True)) - skip):
        try:
            rgb = read_rgb(path)
        except OSError:
            continue
        boxes, _ = lm.detector(rgb)
        if len(boxes):
            x, a = lm.crop(rgb, boxes[:1])
            crops.append(x), affines.append(a), found.append(boxes[:1])
        if len(crops) == limit:
            break
    if crops:
        return (normalise_chw(np.concatenate(crops)), np.concatenate(affines), np.concatenate(found),
                f"{len(crops)} real faces ({pattern})")
    s = lm.crop_size
    rng = np.random.default_rng(0)
    box = np.array([0.0, 0.0, 100.0, 100.0])
    a = np.stack([crop_affine(box, s, lm.crop_scale)] * 4).astype(np.float32)
    return (rng.normal(size=(4, 3, s, s)).astype(np.float32), a, np.stack([box] * 4),
            f"4 random crops (no image matched {pattern})")


def drift(got: np.ndarray, expected: np.ndarray, boxes: np.ndarray) -> dict[str, float]:
    """Point differences (K, N, 2) in pixels (max, mean) and as NME: mean distance / sqrt(w h) of each face box."""
    d = np.linalg.norm(got - expected, axis=-1)
    size = np.sqrt((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]))
    nme = d.mean(-1) / size
    return {"max_px": float(d.max()), "mean_px": float(d.mean()), "nme_mean": float(nme.mean()), "nme_max": float(nme.max())}


def quantize_int8(fp32: Path, out: Path, crops: np.ndarray) -> None:
    """Static int8 quantisation of the ONNX file ``fp32`` into ``out``, calibrated on ``crops`` (K, 3, S, S).

    Only convolutions are quantised: they are nearly all the work, while quantising the regression heads'
    MatMul / Gemm (a few MFLOP) multiplied the point drift by 25 and saved no time; the first convolution (on
    the image itself) stays fp32 too, which more than halves the drift at ~6% of the work (experiments/BENCHMARKS.md).
    """
    import onnx
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Crops(CalibrationDataReader):
        def __init__(self):
            self.batches = iter(crops[i:i + 1] for i in range(len(crops)))

        def get_next(self):
            x = next(self.batches, None)
            return None if x is None else {"image": x}

    pre = out.with_name(out.stem + ".pre.onnx")
    try:
        quant_pre_process(str(fp32), str(pre), skip_symbolic_shape=True)  # shape inference + basic fusions
        graph = onnx.load(str(pre)).graph
        inputs = {i.name for i in graph.input}
        first = [n.name for n in graph.node if n.op_type == "Conv" and n.input[0] in inputs]
        quantize_static(str(pre), str(out), Crops(), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        op_types_to_quantize=["Conv"], nodes_to_exclude=first)
    finally:
        pre.unlink(missing_ok=True)


def to_onnx(fn: PointsNet, example: torch.Tensor, out: Path, desc: dict, opset: int,
            calibration: np.ndarray | None = None, check: Callable[[Path], object] | None = None) -> Path:
    """The ONNX file of ``fn`` with ``desc`` as metadata; int8-quantised on ``calibration`` crops when given.
    ``check(file)`` runs on the written file before it replaces ``out``: if it raises, ``out`` stays as it was."""
    import onnx

    def write(tmp: Path) -> None:
        fp32 = tmp.with_name(tmp.stem + ".fp32.onnx") if calibration is not None else tmp
        try:
            torch.onnx.export(fn, (example,), str(fp32), input_names=["image"], output_names=["points"],
                              dynamic_axes={"image": {0: "batch"}, "points": {0: "batch"}}, opset_version=opset,
                              dynamo=False)
            if calibration is not None:
                quantize_int8(fp32, tmp, calibration)
        finally:
            if fp32 != tmp:
                fp32.unlink(missing_ok=True)
        model = onnx.load(str(tmp))
        model.metadata_props.add(key="flmk", value=json.dumps(desc))
        onnx.save(model, str(tmp))
        if check is not None:
            check(tmp)

    return write_atomic(out, write)


def export(cfg: DictConfig) -> dict[str, float]:
    """Writes the export(s) and returns each file's largest point difference from PyTorch, in pixels."""
    if cfg.format not in ("onnx", "torchscript", "all"):
        raise ExportError(f"format={cfg.format}: expected onnx, torchscript or all")
    quantize = cfg.get("quantize")
    if quantize is not None and quantize not in QUANTIZE:
        raise ExportError(f"quantize={quantize}: expected null (fp32) or one of {', '.join(QUANTIZE)}")
    if quantize is not None and cfg.format != "onnx":
        raise ExportError(f"quantize={quantize} writes an ONNX model: use format=onnx (format={cfg.format})")
    module, desc = load_module(cfg.ckpt_path)
    net = module.net.eval()
    if hasattr(net, "step") and hasattr(net, "init_state"):
        raise ExportError(f"checkpoint {cfg.ckpt_path}: {desc['model'].get('name')} is a tracker that carries a state "
                          "across frames; export is for per-frame models (export its detector checkpoint), and "
                          "flmk.predict runs trackers in PyTorch")
    fn = PointsNet(net).eval()
    reference = Landmarker(TorchNet(module, desc, "cpu", "fp32"), desc)
    x, a, boxes, what = parity_faces(reference, str(cfg.parity_images))
    expected = reference.net(x, a)
    out = Path(cfg.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    example = torch.from_numpy(x[:2])
    if quantize is not None:
        xc, _, _, calibrated_on = parity_faces(reference, str(cfg.calibration_images), cfg.calibration_faces,
                                               exclude=str(cfg.parity_images))
        d = {}

        def within_drift(tmp: Path) -> None:
            d.update(drift(Landmarker.from_onnx(tmp).net(x, a), expected, boxes))
            print(f"{out}: {quantize} model calibrated on {calibrated_on}; vs fp32 PyTorch on {what}: points differ "
                  f"by {d['max_px']:.3f} px max, {d['mean_px']:.3f} px mean; NME (over face box size) "
                  f"{100 * d['nme_mean']:.3f}% mean, {100 * d['nme_max']:.3f}% max")
            if d["nme_max"] > cfg.int8_tolerance_nme:
                raise ExportError(f"the {quantize} model drifts from PyTorch by NME {d['nme_max']:.4f} > "
                                  f"int8_tolerance_nme={cfg.int8_tolerance_nme} (export fp32: quantize=null); "
                                  f"{out} was not written")

        to_onnx(fn, example, out, {**desc, "quantize": quantize}, cfg.opset, calibration=xc, check=within_drift)
        return {str(out): d["max_px"]}
    diffs = {}

    def within_parity(path: Path, got: np.ndarray) -> None:
        """Each file is checked before it replaces ``path``: one over the tolerance leaves ``path`` as it was."""
        diffs[str(path)] = float(np.abs(got - expected).max())
        print(f"{path}: max point difference vs PyTorch on {what}: {diffs[str(path)]:.5f} px")
        if diffs[str(path)] > cfg.parity_tolerance_px:
            raise ExportError(f"export differs from PyTorch by {diffs[str(path)]:.4f} px > "
                              f"parity_tolerance_px={cfg.parity_tolerance_px}; {path} was not written")

    if cfg.format in ("onnx", "all"):
        to_onnx(fn, example, out, desc, cfg.opset,
                check=lambda tmp: within_parity(out, Landmarker.from_onnx(tmp).net(x, a)))
    if cfg.format in ("torchscript", "all"):
        ts_path = out.with_suffix(".pt")
        with torch.no_grad():
            traced = torch.jit.trace(fn, example, check_trace=False)
        from flmk.models.module import to_original

        def write_ts(tmp: Path) -> None:
            torch.jit.save(traced, str(tmp), _extra_files={"flmk.json": json.dumps(desc)})
            with torch.no_grad():
                pts = torch.jit.load(str(tmp))(torch.from_numpy(x))
            within_parity(ts_path, to_original(pts, torch.from_numpy(a), desc["crop_size"]).numpy())

        write_atomic(ts_path, write_ts)
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
