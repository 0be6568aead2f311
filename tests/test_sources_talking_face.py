"""Talking Face: franck_NNNNN frames as one video, 68 points or the 7-point subset."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from flmk.data.records import AnnotationError, DatasetNotFoundError
from flmk.data.sources.pts import write_pts
from flmk.data.sources.talking_face import TalkingFaceSource
from flmk.layouts import get_layout


@pytest.fixture
def tf_root(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "points").mkdir()
    for k in range(3):
        Image.new("RGB", (8, 8)).save(tmp_path / "images" / f"franck_{k:05d}.jpg")
        points = np.stack([np.arange(68) + 100 * k, np.arange(68) * 2.0], axis=1)
        write_pts(tmp_path / "points" / f"franck_{k:05d}.pts", points)
    return tmp_path


def test_frames_as_one_video(tf_root):
    records = TalkingFaceSource(tf_root, layout="68").read("test")
    assert [(r.video, r.frame) for r in records] == [("talking_face", 1), ("talking_face", 2), ("talking_face", 3)]
    assert records[1].image == tf_root / "images" / "franck_00001.jpg"
    np.testing.assert_allclose(records[1].points[:, 0], np.arange(68) + 100)


def test_seven_point_subset(tf_root):
    records = TalkingFaceSource(tf_root, layout="7").read("test")
    idx = list(get_layout("7").parent_indices)
    assert records[0].layout == "7" and records[0].points.shape == (7, 2)
    np.testing.assert_allclose(records[2].points[:, 0], np.array(idx) + 200.0)
    np.testing.assert_allclose(records[2].points[:, 1], np.array(idx) * 2.0)


def test_errors(tf_root, tmp_path_factory):
    with pytest.raises(ValueError, match="layout must be '68' or a subset"):
        TalkingFaceSource(tf_root, layout="98")
    with pytest.raises(DatasetNotFoundError, match="franck_NNNNN"):
        TalkingFaceSource(tf_root / "none").read("test")
    write_pts(tf_root / "points" / "franck_00003.pts", np.zeros((5, 2)))
    with pytest.raises(AnnotationError, match="franck_00003.pts, line 2: n_points: 5, the layout expects 68"):
        TalkingFaceSource(tf_root).read("test")
