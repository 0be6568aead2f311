"""WFLW: the official subset lists (real fixtures) and a rect_attr file generated consistently with them."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from flmk.data.records import AnnotationError, DatasetNotFoundError
from flmk.data.sources.wflw import ATTRIBUTES, WflwSource, face_key, read_list
from flmk.layouts import get_layout
from real_fixtures import REAL, requires_real

WFLW = REAL / "wflw" / "pfld_amrelsersy"
COUNTS = {"pose": 326, "expression": 314, "illumination": 698, "makeup": 206, "occlusion": 736, "blur": 773}


@requires_real
def test_official_subset_lists_counts_and_first_points():
    src = WflwSource(WFLW)
    assert {s: len(src.read(s)) for s in COUNTS} == COUNTS
    blur = src.read("blur")[0]  # SOURCES.md: pt0 = (216.123001, 264.334991), used as given (0-based)
    np.testing.assert_allclose(blur.points[0], [216.123001, 264.334991])
    assert blur.image == WFLW / "WFLW_images" / "39--Ice_Skating" / "39_Ice_Skating_Ice_Skating_39_546.jpg"
    assert blur.points.shape == (98, 2) and "blur" in blur.subsets
    with pytest.raises(DatasetNotFoundError, match="list_98pt_rect_attr_test.txt"):
        src.read("test")


@requires_real
def test_flip_permutation_on_real_98_point_faces():
    layout = get_layout("98")
    faces = WflwSource(WFLW).read("expression")
    ok = 0
    for r in faces:
        flipped = r.points.copy()
        flipped[:, 0] = 1023 - flipped[:, 0]
        flipped = flipped[layout.flip_index]
        for pts in (r.points, flipped):
            # the subject's right eye (60..67, pupil 96) is on the image-left of the left eye (68..75, pupil 97)
            ok += pts[60, 0] < pts[72, 0] and pts[96, 0] < pts[97, 0] and pts[0, 0] < pts[32, 0]
    assert ok == 2 * len(faces)


def write_rect_attr(path, lists: dict[str, list], extra: int) -> dict:
    """A rect_attr test file whose attribute columns reproduce the official lists; returns face key -> line."""
    faces: dict[tuple, list] = {}
    for subset, records in lists.items():
        for r in records:
            entry = faces.setdefault(face_key(r.image, r.points), [r, set()])
            entry[1].add(subset)
    lines = []
    for r, subsets in faces.values():
        box = np.r_[r.points.min(0), r.points.max(0)]
        flags = [int(a in subsets) for a in ATTRIBUTES]
        lines.append(" ".join([*(f"{v:.6f}" for v in r.points.ravel()), *(f"{v:.0f}" for v in box), *map(str, flags), r.image.as_posix()]))
    rng = np.random.default_rng(0)
    for k in range(extra):  # test faces in no subset
        pts = rng.uniform(0, 100, (98, 2))
        lines.append(" ".join([*(f"{v:.6f}" for v in pts.ravel()), "0 0 100 100", "0 0 0 0 0 0", f"0--x/{k}.jpg"]))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return faces


@pytest.fixture(scope="module")
def official_lists():
    return {s: read_list(WflwSource(WFLW).subset_file(s), with_attributes=False) for s in COUNTS}


@pytest.fixture
def wflw_root(tmp_path, official_lists):
    shutil.copytree(WFLW / "WFLW_annotations" / "list_98pt_test", tmp_path / "WFLW_annotations" / "list_98pt_test")
    attr = tmp_path / "WFLW_annotations" / "list_98pt_rect_attr_train_test" / "list_98pt_rect_attr_test.txt"
    faces = write_rect_attr(attr, official_lists, extra=5)
    return tmp_path, attr, len(faces) + 5


@requires_real
def test_attribute_subsets_cross_check_against_official_lists(wflw_root):
    root, attr, n_test = wflw_root
    src = WflwSource(root)
    test = src.read("test")
    assert len(test) == n_test and test[-1].box.tolist() == [0, 0, 100, 100]
    assert {s: len(src.read(s)) for s in COUNTS} == COUNTS  # read() raises when a subset disagrees with its list


@requires_real
def test_cross_check_reports_a_mismatch(wflw_root):
    root, attr, _ = wflw_root
    lines = attr.read_text().splitlines()
    fields = lines[0].split()
    fields[196 + 4 + ATTRIBUTES.index("makeup")] = str(1 - int(fields[196 + 4 + ATTRIBUTES.index("makeup")]))
    lines[0] = " ".join(fields)
    attr.write_text("\n".join(lines) + "\n")
    src = WflwSource(root)
    problems = src.cross_check("makeup")
    assert len(problems) == 1 and "list_98pt_test_makeup.txt" in problems[0]
    with pytest.raises(AnnotationError, match="makeup: attribute column gives"):
        src.read("makeup")
    assert len(WflwSource(root, strict_subsets=False).read("makeup")) in (205, 207)


def test_malformed_line_names_file_and_line(tmp_path):
    attr = tmp_path / "WFLW_annotations" / "list_98pt_rect_attr_train_test" / "list_98pt_rect_attr_train.txt"
    attr.parent.mkdir(parents=True)
    good = " ".join(["1.0"] * 196 + ["0", "0", "9", "9"] + ["0"] * 6 + ["a/b.jpg"])
    attr.write_text(good + "\n" + good.replace(" a/b.jpg", "") + "\n")
    with pytest.raises(AnnotationError, match=r"list_98pt_rect_attr_train.txt, line 2: expected 207 fields, got 206"):
        WflwSource(tmp_path).read("train")
