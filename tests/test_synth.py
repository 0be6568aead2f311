"""The procedural face generator: 300W / 300VW formats, visibility, determinism, faces drawn on their landmarks."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import cv2
import numpy as np
import pytest

from flmk.data.sources.folders import PtsFolderSource, read_visibility
from flmk.data.sources.pts import read_pts
from flmk.data.synth import ensure_synthetic, generate, generate_videos, split_sizes, video_split_sizes
from flmk.data.synth.face import MEAN_SHAPE, project, rotation
from flmk.data.synth.occluders import Occluder, visibility
from flmk.data.synth.stills import SynthConfig, _occlude
from flmk.layouts import get_layout

SIZE = 128
SPLITS = {"train": ["train"], "val": ["val"], "clean": ["test/clean"], "occluded": ["test/occluded"],
          "full": ["test/clean", "test/occluded"]}


@pytest.fixture(scope="module")
def stills(tmp_path_factory) -> Path:
    return generate(tmp_path_factory.mktemp("synth") / "set", n=20, seed=3, size=SIZE)


@pytest.fixture(scope="module")
def source(stills) -> PtsFolderSource:
    return PtsFolderSource(stills, splits=SPLITS, name="synthetic")


def _patch_mean(img: np.ndarray, p: np.ndarray) -> np.ndarray:
    """Mean BGR of the 3x3 patch at a point (clamped to the image)."""
    x, y = np.clip(np.round(p).astype(int), 1, np.array(img.shape[1::-1]) - 2)
    return img[y - 1:y + 2, x - 1:x + 2].reshape(-1, 3).astype(float).mean(0)


# ---- the 3D model ----------------------------------------------------------------------------------------

def test_mean_shape_is_mirror_symmetric_under_the_layout_flip():
    flip = get_layout("68").flip_index
    np.testing.assert_allclose(MEAN_SHAPE[flip] * [-1, 1, 1], MEAN_SHAPE, atol=1e-12)


def test_mean_shape_follows_ibug_semantics():
    p, _ = project(MEAN_SHAPE, rotation(0, 0, 0), 100.0, np.zeros(2))
    assert p[0, 0] < p[8, 0] < p[16, 0]                     # jaw runs image left -> right through the chin
    assert p[8, 1] == p[:17, 1].max()                       # chin is the lowest jaw point
    assert p[36:42, 0].mean() < p[30, 0] < p[42:48, 0].mean()  # subject's right eye on the image left
    assert p[17:27, 1].max() < p[36:48, 1].min()            # brows above eyes
    assert p[36:48, 1].max() < p[30, 1] < p[48:68, 1].min() < p[48:68, 1].max() < p[8, 1]  # eyes, nose, mouth, chin


def test_yaw_turns_the_nose_tip_towards_the_turn():
    """The nose tip sticks out (largest depth), so a yaw moves it sideways more than the eye corners."""
    p0, d0 = project(MEAN_SHAPE, rotation(0, 0, 0), 1.0, np.zeros(2))
    p1, _ = project(MEAN_SHAPE, rotation(30, 0, 0), 1.0, np.zeros(2))
    assert d0.argmax() == 30
    shift = p1[:, 0] - p0[:, 0]
    assert shift[30] > shift[[39, 42]].max()


# ---- stills in the 300W format ------------------------------------------------------------------------

def test_split_counts_read_back_with_the_300w_reader(source):
    sizes = split_sizes(20)
    assert sizes == {"train": 20, "val": 2, "test/clean": 2, "test/occluded": 2}
    counts = {s: len(source.read(s)) for s in SPLITS}
    assert counts == {"train": 20, "val": 2, "clean": 2, "occluded": 2, "full": 4}
    rec = source.read("train")[0]
    assert rec.points.shape == (68, 2) and rec.visible is not None and rec.image.suffix == ".jpg"
    assert cv2.imread(str(rec.image)).shape == (SIZE, SIZE, 3)


def test_faces_fill_the_image_and_mostly_stay_inside(source):
    recs = source.read("train") + source.read("full")
    inside = [((r.points >= -0.5) & (r.points <= SIZE - 0.5)).all() for r in recs]
    assert np.mean(inside) >= 0.7
    side = np.array([np.ptp(r.points, axis=0).max() for r in recs]) / SIZE
    assert side.min() >= 0.38 and side.max() <= 0.77


def test_visibility_files_follow_the_occlusion_of_each_split(source):
    assert all(r.visible.all() for r in source.read("clean"))
    hidden = [int((~r.visible).sum()) for r in source.read("occluded")]
    assert all(1 <= h <= 0.6 * 68 for h in hidden)
    train_hidden = np.array([(~r.visible).sum() for r in source.read("train")])
    assert 0 < (train_hidden > 0).sum() < len(train_hidden)


def test_hidden_points_are_exactly_the_points_under_pasted_occluders(source):
    """On a black canvas, a visible point's pixel is untouched and a hidden point's pixel was painted."""
    pts = source.read("clean")[0].points
    for seed in range(5):
        canvas = np.zeros((SIZE, SIZE, 3), np.uint8)
        out, vis = _occlude(np.random.default_rng(seed), canvas, pts, np.array([120.0, 150, 200]), SynthConfig())
        xy = np.clip(np.round(pts).astype(int), 0, SIZE - 1)
        painted = out[xy[:, 1], xy[:, 0]].any(axis=1)
        assert not painted[vis].any()
        assert painted[~vis].mean() > 0.9 and 1 <= (~vis).sum() <= 0.6 * 68
    vis_file = Path(source.read("occluded")[0].source).with_suffix(".vis")
    assert vis_file.read_text().split() == ["1" if v else "0" for v in source.read("occluded")[0].visible]


def test_rendered_face_sits_on_its_landmarks(source):
    """Pupils (centroids of 36-41, 42-47) are dark and lips are redder than the cheeks on unoccluded faces
    (a few blinking or strongly turned, dimly lit faces may miss)."""
    recs = source.read("clean") + [r for r in source.read("train") if r.visible.all()]
    dark, red = [], []
    for r in recs:
        img, p = cv2.imread(str(r.image)), r.points
        pupil = (_patch_mean(img, p[36:42].mean(0)) + _patch_mean(img, p[42:48].mean(0))) / 2
        cheek = (_patch_mean(img, (p[2] + p[31]) / 2) + _patch_mean(img, (p[14] + p[35]) / 2)) / 2
        lip = (_patch_mean(img, (p[50] + p[61]) / 2) + _patch_mean(img, (p[58] + p[67]) / 2)) / 2
        dark.append(pupil.mean() < 0.7 * cheek.mean())
        red.append(lip[2] - lip[1] > cheek[2] - cheek[1])       # BGR: red minus green
    assert len(recs) >= 10 and np.mean(dark) >= 0.8 and np.mean(red) >= 0.9
    # the same test on landmarks displaced by a fifth of the face fails: the check has teeth
    shifted = []
    for r in recs:
        img, p = cv2.imread(str(r.image)), r.points + np.array([0.0, 0.2]) * np.ptp(r.points[:, 1])
        pupil = _patch_mean(img, p[36:42].mean(0))
        cheek = _patch_mean(img, (p[2] + p[31]) / 2)
        shifted.append(pupil.mean() < 0.7 * cheek.mean())
    assert np.mean(shifted) < 0.6


def test_same_seed_same_bytes_other_seed_other_faces(tmp_path):
    a, b, c = (generate(tmp_path / name, n=3, seed=s, size=64) for name, s in (("a", 7), ("b", 7), ("c", 8)))
    files = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    assert len(files) == 3 * 6 + 1
    for f in files:
        assert (a / f).read_bytes() == (b / f).read_bytes(), f
    assert (a / "train/train_00000.pts").read_bytes() != (c / "train/train_00000.pts").read_bytes()


def test_written_pts_are_one_based(tmp_path):
    out = generate(tmp_path / "s", n=1, seed=0, size=64)
    pts_file = out / "train/train_00000.pts"
    raw = np.loadtxt(pts_file.read_text().splitlines()[3:71])
    np.testing.assert_allclose(raw - 1.0, read_pts(pts_file))


def test_ensure_synthetic_generates_once_and_survives_concurrent_callers(tmp_path):
    root = tmp_path / "synthetic"
    results, errors = [], []

    def call():
        try:
            results.append(ensure_synthetic(root, n=2, seed=1, size=64))
        except Exception as e:  # noqa: BLE001 - surfaced below
            errors.append(e)

    threads = [threading.Thread(target=call) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and results == [root] * 3
    assert len(list((root / "train").glob("*.pts"))) == 2
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".") and not p.name.endswith(".lock")]  # no temp
    stamp = (root / "README.txt").stat().st_mtime_ns
    assert ensure_synthetic(root, n=2, seed=1, size=64) == root
    assert (root / "README.txt").stat().st_mtime_ns == stamp               # same parameters: left alone


def _snapshot(folder: Path) -> dict[str, tuple[bytes, int]]:
    return {str(p.relative_to(folder)): (p.read_bytes(), p.stat().st_mtime_ns) for p in folder.rglob("*") if p.is_file()}


def test_other_parameters_go_to_their_own_folder_and_never_touch_the_first(tmp_path):
    """Once, a second size deleted and replaced the set a running training was reading."""
    root = tmp_path / "synthetic"
    ensure_synthetic(root, n=2, seed=1, size=64)
    before = _snapshot(root)
    other = ensure_synthetic(root, n=3, seed=1, size=64)
    assert other != root and other.parent == root.parent and other.name.startswith("synthetic-")
    assert len(list((other / "train").glob("*.pts"))) == 3 and '"n": 3' in (other / "README.txt").read_text()
    assert _snapshot(root) == before                                       # same bytes, same mtimes
    assert ensure_synthetic(root, n=3, seed=1, size=64) == other           # found again, not rebuilt
    assert ensure_synthetic(root, n=2, seed=1, size=64) == root


@pytest.mark.slow
def test_two_processes_building_the_same_set_at_once_both_succeed(tmp_path):
    import subprocess
    import sys

    root = tmp_path / "synthetic"
    code = f"from flmk.data.synth import ensure_synthetic; print(ensure_synthetic({str(root)!r}, n=20, seed=2, size=64))"
    procs = [subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [o[1][-2000:] for o in outs]
    assert [o[0].strip() for o in outs] == [str(root)] * 2
    reference = generate(tmp_path / "reference", n=20, seed=2, size=64)
    assert {k: v[0] for k, v in _snapshot(root).items()} == {k: v[0] for k, v in _snapshot(reference).items()}


# ---- occluders ----------------------------------------------------------------------------------------------

def test_visibility_is_the_mask_under_each_rounded_point():
    covered = np.zeros((10, 10), bool)
    covered[2:5, 3:6] = True
    pts = np.array([[3.0, 2.0], [5.4, 4.4], [5.6, 4.0], [2.0, 3.0], [-3.0, 3.0], [20.0, 20.0]])
    np.testing.assert_array_equal(visibility(pts, covered), [False, False, True, True, True, True])


def test_occluder_paste_clips_at_the_border():
    occ = Occluder(np.ones((4, 4), bool), np.full((4, 4, 3), 200, np.uint8), np.array([-2.0, 7.0]))
    img, covered = np.zeros((10, 10, 3), np.uint8), np.zeros((10, 10), bool)
    occ.paste(img, covered, offset=(1, 0))
    expected = np.zeros((10, 10), bool)
    expected[7:10, 0:3] = True
    np.testing.assert_array_equal(covered, expected)
    assert (img[covered] == 200).all() and (img[~covered] == 0).all()


# ---- videos in the 300VW format ------------------------------------------------------------------------

@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> Path:
    return generate_videos(tmp_path_factory.mktemp("vid") / "clips", n_videos=1, frames=40, seed=2, size=64)


def test_video_splits_and_frame_counts_match_the_annotations(videos):
    splits = json.loads((videos / "splits.json").read_text())
    assert {k: len(v) for k, v in splits.items()} == video_split_sizes(1) == {"train": 1, "cat1": 1, "cat2": 1, "cat3": 1}
    for vid in sum(splits.values(), []):
        cap = cv2.VideoCapture(str(videos / vid / "vid.avi"))
        decoded = 0
        while True:
            ok, frame = cap.read()
            if not ok:
                break
            assert frame.shape == (64, 64, 3)
            decoded += 1
        annots = sorted((videos / vid / "annot").glob("*.pts"))
        assert decoded == len(annots) == 40
        assert annots[0].name == "000001.pts" and annots[-1].name == "000040.pts"
        assert all(p.with_suffix(".vis").exists() for p in annots)


def test_video_landmarks_move_smoothly_and_occluders_come_and_go(videos):
    splits = json.loads((videos / "splits.json").read_text())
    annot = videos / splits["cat3"][0] / "annot"
    pts = np.stack([read_pts(annot / f"{t:06d}.pts") for t in range(1, 41)])
    step = np.linalg.norm(np.diff(pts, axis=0), axis=2).max()
    assert 0 < step < 0.08 * 64
    hidden = np.array([(~read_visibility(annot / f"{t:06d}.vis", 68)).sum() for t in range(1, 41)])
    assert hidden.max() > 0 and hidden.min() == 0        # cat3: an occluder enters and leaves


def test_video_output_reads_with_the_300vw_reader(videos):
    from flmk.data.sources.vw300 import Vw300Source

    recs = Vw300Source(videos).read("cat1")
    assert len(recs) == 40 and recs[0].frame == 1 and recs[0].image.exists()
    np.testing.assert_array_equal(recs[0].points, read_pts(videos / recs[0].video / "annot/000001.pts"))
