"""flmk.predict, the Landmarker API and flmk.export on synthetic faces (tiny model) and real fixture faces."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir

from conftest import REPO, compose_train
from flmk import Landmarker
from flmk.checkpoint import CheckpointError
from flmk.data.images import read_rgb
from flmk.data.sources.pts import read_pts
from flmk.data.transforms import crop_affine, crop_to_original, normalise_chw, normalise_image
from flmk.landmarker import BoxTracker, points_box
from flmk.metrics import jitter, jitter_terms
from flmk.models.module import to_original
from flmk.predict import PredictError, predict
from flmk.train import CONF_DIR, train

FAST = ["model=baseline", "model.pretrained=false", "model.crop_size=64", "trainer.max_epochs=1", "trainer.limit_train_batches=2",
        "trainer.limit_val_batches=1", "test=false"]


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory, synthetic_root) -> Path:
    run = tmp_path_factory.mktemp("predict_run")
    train(compose_train(FAST, run, synthetic_root))
    return run / "checkpoints" / "last.ckpt"


def stills(synthetic_root: Path, n: int = 3) -> list[tuple[Path, np.ndarray]]:
    return [(p, read_pts(p.with_suffix(".pts"))) for p in sorted((synthetic_root / "test" / "clean").glob("*.jpg"))[:n]]


def predict_cfg(overrides: list[str]):
    with initialize_config_dir(CONF_DIR, version_base="1.3"):
        return compose("predict", overrides=["progress=false"] + overrides)


def test_numpy_inverse_equals_the_module_inverse():
    rng = np.random.default_rng(0)
    m = np.stack([crop_affine(np.array([10.0, 20, 110, 140]), 64, 1.25, rotation_deg=r, flip=f)
                  for r, f in ((0, False), (17, True))])
    p = rng.random((2, 68, 2))
    expected = to_original(torch.tensor(p), torch.tensor(m), 64).numpy()
    assert np.abs(crop_to_original(p, m, 64) - expected).max() < 1e-3


def test_landmarker_crops_and_maps_back_like_the_data_module(ckpt, synthetic_root):
    """The API's points for a given box equal the module's points on the data module's crop of that box."""
    from flmk.checkpoint import load_module
    from flmk.data.datamodule import FaceDataset
    from flmk.data.records import FaceRecord
    from flmk.data.transforms import AugmentConfig, FaceTransform
    from flmk.layouts import get_layout

    module, desc = load_module(ckpt)
    path, pts = stills(synthetic_root, 1)[0]
    record = FaceRecord(image=path, points=pts, layout="68")
    ds = FaceDataset([record], get_layout("68"), FaceTransform(get_layout("68"), 64, AugmentConfig(), train=False))
    sample = ds.sample(0, np.random.default_rng(0))
    with torch.no_grad():
        out = module(sample["image"][None])["points"]
    expected = to_original(out, sample["affine"][None], 64)[0].numpy()
    lm = Landmarker.from_checkpoint(ckpt, device="cpu")
    faces = lm(read_rgb(path), boxes=[record.box_or_points_box()])
    assert len(faces) == 1 and faces[0]["layout"] == "68"
    assert np.abs(np.array(faces[0]["points"]) - expected).max() < 2e-3


def test_crops_travel_as_bytes_and_each_backend_normalises_them(ckpt, synthetic_root):
    """Landmarker.crop gives uint8 crops (a quarter of float32's bytes to move to a GPU); the torch backend
    normalises them on its device as training does, to the same points as crops normalised beforehand."""
    lm = Landmarker.from_checkpoint(ckpt, device="cpu")
    path, pts = stills(synthetic_root, 1)[0]
    x, a = lm.crop(read_rgb(path), points_box(pts)[None])
    assert x.dtype == np.uint8 and x.shape == (1, 3, 64, 64)
    np.testing.assert_allclose(normalise_chw(x), normalise_image(torch.from_numpy(x)).numpy(), atol=1e-6, rtol=0)
    f = normalise_chw(x)
    assert f.dtype == np.float32 and normalise_chw(f) is f  # float crops count as normalised already
    np.testing.assert_allclose(lm.net(x, a), lm.net(normalise_chw(x), a), atol=1e-4, rtol=0)


def check_schema(entries: list[dict]) -> None:
    for e in entries:
        assert set(e) <= {"image", "frame", "faces", "error"} and {"image", "frame", "faces"} <= set(e)
        assert e["frame"] is None or isinstance(e["frame"], int)
        for f in e["faces"]:
            assert set(f) <= {"box", "score", "points", "layout", "track"}
            assert len(f["box"]) == 4 and isinstance(f["score"], float) and f["layout"] == "68"
            assert np.asarray(f["points"]).shape == (68, 2)


def test_predict_folder_with_a_corrupt_image(tmp_path, ckpt, synthetic_root):
    folder = tmp_path / "photos"
    folder.mkdir()
    truth = {}
    for path, pts in stills(synthetic_root):
        (folder / path.name).write_bytes(path.read_bytes())
        truth[path.name] = pts
    (folder / "broken.jpg").write_text("not an image")
    (folder / "noface.png").write_bytes(cv2.imencode(".png", np.zeros((50, 60, 3), np.uint8))[1].tobytes())
    boxes = tmp_path / "boxes.json"  # synthetic faces: boxes from the ground truth (dlib's HOG is for real faces)
    boxes.write_text(json.dumps({k: [points_box(v).tolist()] for k, v in truth.items()}))
    out = tmp_path / "out"
    predict(predict_cfg([f"ckpt_path={ckpt}", f"input={folder}", f"out={out}", f"boxes={boxes}",
                         "save_pts=true", "save_overlays=true"]))
    entries = json.loads((out / "predictions.json").read_text())
    check_schema(entries)
    by_name = {Path(e["image"]).name: e for e in entries}
    assert [Path(e["image"]).name for e in entries] == sorted(by_name)  # input order kept, the broken file included
    assert "not a readable image" in by_name["broken.jpg"]["error"] and by_name["broken.jpg"]["faces"] == []
    assert by_name["noface.png"]["faces"] == [] and "error" not in by_name["noface.png"]
    for name, pts in truth.items():
        (face,) = by_name[name]["faces"]
        p = np.array(face["points"])
        assert (p >= -5).all() and (p <= 101).all()  # inside the 96 px image (a barely trained model)
        np.testing.assert_allclose(read_pts(out / "pts" / f"{Path(name).stem}_0.pts"), p, atol=1e-3)
        assert (out / "overlays" / f"{Path(name).stem}.jpg").stat().st_size > 500
    rows = (out / "predictions.csv").read_text().strip().splitlines()
    assert len(rows) == 1 + len(truth) + 2 and rows[0].startswith("image,frame,face,score,x1,y1,x2,y2,layout,error,p0_x")
    assert not list(out.glob(".*tmp*"))  # no temporary file left behind


def write_video(path: Path, frames: list[np.ndarray], fps: float = 10.0) -> None:
    h, w = frames[0].shape[:2]
    vw = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (w, h))
    for f in frames:
        vw.write(cv2.cvtColor(f, cv2.COLOR_RGB2BGR))
    vw.release()


def test_predict_short_video_tracks_from_one_box(tmp_path, ckpt, synthetic_root):
    path, pts = stills(synthetic_root, 1)[0]
    face = read_rgb(path)
    frames = []
    for t in range(8):  # the synthetic face drifting right by 2 px a frame on a 160 x 128 canvas
        canvas = np.zeros((128, 160, 3), np.uint8)
        canvas[16:16 + 96, 10 + 2 * t:10 + 2 * t + 96] = face
        frames.append(canvas)
    video = tmp_path / "clip.mp4"
    write_video(video, frames)
    boxes = tmp_path / "boxes.csv"  # a box for frame 0 only: later frames follow the landmarks
    b = points_box(pts) + [10, 16, 10, 16]
    boxes.write_text("image,frame,x1,y1,x2,y2\n" + f"clip.mp4,0,{b[0]},{b[1]},{b[2]},{b[3]}\n")
    out = tmp_path / "out"
    predict(predict_cfg([f"ckpt_path={ckpt}", f"input={video}", f"out={out}", f"boxes={boxes}"]))
    entries = json.loads((out / "predictions.json").read_text())
    check_schema(entries)
    assert [e["frame"] for e in entries] == list(range(8))
    assert all(len(e["faces"]) == 1 and e["faces"][0]["track"] == 0 for e in entries)
    for e in entries:
        p = np.array(e["faces"][0]["points"])
        assert (p[:, 0] > -5).all() and (p[:, 0] < 165).all() and (p[:, 1] > -5).all() and (p[:, 1] < 133).all()
    cap = cv2.VideoCapture(str(out / "clip_overlay.mp4"))
    assert int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == 8
    cap.release()
    stab = json.loads((out / "stability.json").read_text())[str(video)]
    assert stab["frame_pairs"] == 7 and np.isfinite(stab["jitter"]) and stab["jitter"] > 0


def test_unopenable_video_and_missing_input_stop_with_their_name(tmp_path, ckpt):
    bad = tmp_path / "broken.mp4"
    bad.write_bytes(b"\x00" * 1000)
    with pytest.raises(PredictError, match=re.escape(str(bad))):
        predict(predict_cfg([f"ckpt_path={ckpt}", f"input={bad}", f"out={tmp_path / 'o'}"]))
    with pytest.raises(PredictError, match="nowhere"):
        predict(predict_cfg([f"ckpt_path={ckpt}", f"input={tmp_path / 'nowhere'}", f"out={tmp_path / 'o'}"]))


def test_not_a_checkpoint_stops_naming_it(tmp_path):
    fake = tmp_path / "model.ckpt"
    fake.write_text("hello")
    r = subprocess.run([sys.executable, "-m", "flmk.predict", f"ckpt_path={fake}", f"input={fake}",
                        f"out={tmp_path / 'o'}"], capture_output=True, text=True, cwd=REPO)
    assert r.returncode == 2 and str(fake) in r.stderr and "Traceback" not in r.stderr
    with pytest.raises(CheckpointError, match=re.escape(str(fake))):
        Landmarker.from_checkpoint(fake)


class CentreBox:
    """A detector for the benchmark's video of one synthetic face: a box around the middle of the frame."""

    def __call__(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        h, w = image.shape[:2]
        return np.array([[w / 4, h / 8, 3 * w / 4, 7 * h / 8]]), np.ones(1)


def test_bench_reports_the_cpus_it_may_use_and_the_threads_of_the_network(tmp_path, ckpt, synthetic_root):
    """bench.json's "cpus" is the process's CPU affinity (not the machine's cores), "threads" torch's on CPU."""
    from flmk.predict import bench

    cfg = predict_cfg([f"ckpt_path={ckpt}", f"input={stills(synthetic_root, 1)[0][0]}", f"out={tmp_path}",
                       "bench=true", "bench_frames=3", "device=cpu"])
    cfg.detector = {"_target_": f"{__name__}.CentreBox"}
    result = json.loads(bench(cfg).read_text())
    assert result["cpus"] == len(os.sched_getaffinity(0))
    assert isinstance(result["threads"], int) and result["threads"] == torch.get_num_threads() > 0
    assert result["device"] == "cpu" and result["end_to_end_fps_detect_every_1"] > 0


def test_jitter_is_motion_over_inter_ocular_distance():
    t = np.arange(5, dtype=float)
    base = np.zeros((68, 2))
    base[36], base[45] = [0, 0], [10, 0]  # inter-ocular distance 10
    still = np.repeat(base[None], 5, 0)
    moving = still + np.stack([t, np.zeros(5)], -1)[:, None, :]  # 1 px a frame
    assert jitter(still, "68") == 0
    assert jitter(moving, "68") == pytest.approx(0.1)
    assert jitter(moving, "68", target=moving) == 0  # motion the ground truth also makes is no jitter
    total, count = jitter_terms(torch.tensor(moving)[None], "68", torch.tensor(still)[None],
                                torch.tensor([[True, True, False, True, True]]))
    assert int(count) == 2 and float(total) / int(count) == pytest.approx(0.1)


class CountingTracker:
    """A stand-in tracker network: its state counts the frames it has seen; points sit at the box centre."""

    is_tracker = True

    def init_state(self):
        return 0

    def step(self, x, affines, state):
        pts = crop_to_original(np.full((1, 68, 2), 0.5), affines, 32) + state
        return pts, state + 1

    def __call__(self, x, affines):
        raise AssertionError("a tracker steps frame by frame")


def test_tracker_state_carries_across_frames_per_track():
    lm = Landmarker(CountingTracker(), {"crop_size": 32, "crop_scale": 1.25, "layout": "68"})
    frames = [np.zeros((100, 200, 3), np.uint8)] * 4
    boxes = [np.array([[10, 10, 50, 50], [120, 10, 160, 50]])] + [None] * 3
    out = list(lm.track(frames, boxes=boxes, tracker=BoxTracker(smoothing=0.0)))
    assert [len(f) for f in out] == [2, 2, 2, 2]
    # each track's state counts its frames (points = box centre + state), and the box follows the points,
    # so the offsets from frame 0 add up: 0, 1, 1 + 2, 1 + 2 + 3
    offsets = [np.array(f[0]["points"])[0, 0] - np.array(out[0][0]["points"])[0, 0] for f in out]
    np.testing.assert_allclose(offsets, [0, 1, 3, 6], atol=0.02)
    assert {f["track"] for f in out[3]} == {0, 1}


def test_export_onnx_parity_and_onnx_backend_without_torch(tmp_path, ckpt, synthetic_root):
    from flmk.export import export

    with initialize_config_dir(CONF_DIR, version_base="1.3"):
        cfg = compose("export", overrides=[f"ckpt_path={ckpt}", f"out={tmp_path / 'm.onnx'}", "format=all"])
    diffs = export(cfg)
    assert set(diffs) == {str(tmp_path / "m.onnx"), str(tmp_path / "m.pt")} and max(diffs.values()) <= 0.01
    # the same points from the ONNX backend as from PyTorch, on a batch of 3 (dynamic batch)
    path, pts = stills(synthetic_root, 1)[0]
    rgb, box = read_rgb(path), points_box(pts)
    boxes = [box, box + 3, box - 2]
    ours = np.array([f["points"] for f in Landmarker.from_onnx(tmp_path / "m.onnx")(rgb, boxes=boxes)])
    # the intra-op threads as set (bench.json's "threads"); None where onnxruntime picks them itself
    assert Landmarker.from_onnx(tmp_path / "m.onnx").net.threads is None
    assert Landmarker.from_onnx(tmp_path / "m.onnx", threads=2).net.threads == 2
    theirs = np.array([f["points"] for f in Landmarker.from_checkpoint(ckpt, device="cpu")(rgb, boxes=boxes)])
    assert np.abs(ours - theirs).max() <= 0.01
    # uint8 crops (Landmarker.crop's) and crops normalised beforehand give the ONNX graph the same input
    onnx = Landmarker.from_onnx(tmp_path / "m.onnx")
    x, a = onnx.crop(rgb, np.array(boxes))
    np.testing.assert_array_equal(onnx.net(x, a), onnx.net(normalise_chw(x), a))
    # flmk.predict backend=onnx in a process where torch cannot be imported
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / path.name).write_bytes(path.read_bytes())
    (tmp_path / "b.json").write_text(json.dumps({path.name: [box.tolist()]}))
    code = ("import sys; sys.modules['torch'] = None\n"
            "from hydra import compose, initialize_config_dir\nfrom flmk.predict import predict, CONF_DIR\n"
            "with initialize_config_dir(CONF_DIR, version_base='1.3'):\n"
            f"    cfg = compose('predict', overrides=['backend=onnx', 'onnx={tmp_path / 'm.onnx'}', 'input={folder}',"
            f" 'out={tmp_path / 'onnx_out'}', 'boxes={tmp_path / 'b.json'}', 'progress=false'])\n"
            "predict(cfg)\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert r.returncode == 0, r.stderr[-2000:]
    (entry,) = json.loads((tmp_path / "onnx_out" / "predictions.json").read_text())
    assert np.abs(np.array(entry["faces"][0]["points"]) - theirs[0]).max() <= 0.01


def test_readme_snippet_runs(ckpt, synthetic_root):
    text = (REPO / "README.md").read_text()
    section = text[text.index("## Use a trained model"):]
    snippet = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    path, pts = stills(synthetic_root, 1)[0]
    scope = {"ckpt_path": str(ckpt), "image_path": str(path), "box": points_box(pts).tolist()}
    exec(compile(snippet, "README.md", "exec"), scope)
    assert len(scope["faces"]) == 1 and np.asarray(scope["faces"][0]["points"]).shape == (68, 2)


@pytest.mark.slow
def test_quickstart_model_is_near_the_ground_truth(tmp_path_factory):
    """`make train`'s model (experiment=quickstart) through the Landmarker API: NME well under the mean shape's."""
    from omegaconf import open_dict

    from flmk.checkpoint import read

    run = tmp_path_factory.mktemp("quickstart")
    with initialize_config_dir(CONF_DIR, version_base="1.3"):
        cfg = compose("train", overrides=["experiment=quickstart", "data.num_workers=0", "callbacks.progress_bar=null"])
    with open_dict(cfg):
        cfg.paths.output_dir = str(run)
    train(cfg)
    best = run / "checkpoints" / "best.ckpt"
    lm = Landmarker.from_checkpoint(best, device="cpu")
    mean_shape = read(best)["state_dict"]["mean_shape"].numpy()  # crop-normalised training mean
    errors, mean_errors = [], []
    for img in sorted((Path(cfg.data.sources.synthetic.root) / "test" / "clean").glob("*.jpg"))[:40]:
        pts = read_pts(img.with_suffix(".pts"))
        (face,) = lm(read_rgb(img), boxes=[points_box(pts)])
        iod = np.linalg.norm(pts[36] - pts[45])
        errors.append(np.linalg.norm(np.array(face["points"]) - pts, axis=1).mean() / iod)
        m = crop_affine(points_box(pts), lm.crop_size, lm.crop_scale)
        mean_errors.append(np.linalg.norm(crop_to_original(mean_shape, m, lm.crop_size) - pts, axis=1).mean() / iod)
    assert np.mean(errors) < 0.6 * np.mean(mean_errors), (np.mean(errors), np.mean(mean_errors))


def test_clip_evaluation_reports_jitter_in_metrics():
    """Video splits gain "jitter": prediction motion minus ground-truth motion over the inter-ocular distance."""
    from torch import nn

    from flmk.models.module import LandmarkModule

    gt = torch.full((1, 68, 2), 0.5)
    gt[0, 36], gt[0, 45] = torch.tensor([0.3, 0.5]), torch.tensor([0.7, 0.5])  # 40 px apart at crop 100

    class Fixed(nn.Module):
        def forward(self, image):
            return {"points": gt.expand(*image.shape[:2], -1, -1)}

    module = LandmarkModule(Fixed(), nn.Identity(), torch.optim.SGD, layout="68", crop_size=100, test_names=["video"])
    module.on_test_start()
    affine = torch.tensor([[[1.0, 0, -t], [0, 1.0, 0]] for t in range(3)])[None]  # the crop moves 1 px a frame
    target = to_original(gt, affine[:, 0], 100)[:, None].expand(1, 3, 68, 2)  # the face stands still
    batch = {"image": torch.zeros(1, 3, 3, 4, 4), "points": gt[:, None].expand(1, 3, 68, 2), "affine": affine,
             "target_orig": target, "box": torch.tensor([[0.0, 0, 100, 100]]).expand(1, 3, 4),
             "visible": torch.ones(1, 3, 68), "has_visibility": torch.tensor([[False] * 3]),
             "index": torch.tensor([[0, 1, 2]]), "valid": torch.tensor([[True, True, True]])}
    module.test_step(batch, 0)
    module.on_test_epoch_end()
    assert module.test_results["video"]["metrics"]["jitter"] == pytest.approx(1 / 40, rel=1e-4)
