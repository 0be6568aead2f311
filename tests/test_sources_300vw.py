"""300VW: the real per-frame fixtures (imgs/ layout) and a tiny generated vid.avi decoded once."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from flmk.data.records import DatasetNotFoundError
from flmk.data.sources.pts import write_pts
from flmk.data.sources.vw300 import VW300_VIDEOS, Vw300Source
from real_fixtures import REAL, requires_real

VW = REAL / "300vw" / "mmpose"


@requires_real
def test_real_frames_and_first_points():
    src = Vw300Source(VW, splits={"train": ["001"], "cat1": ["401"], "cat2": [], "cat3": []})
    assert src.splits() == ["train", "cat1", "cat2", "cat3", "test"]
    train = src.read("train")
    assert [(r.video, r.frame) for r in train] == [("001", 6), ("001", 9)]
    np.testing.assert_allclose(train[0].points[0], [742.224, 196.764])  # 000006.pts: (743.224, 197.764) 1-based
    np.testing.assert_allclose(train[1].points[0], [741.873, 202.975])
    assert train[0].image == VW / "001" / "imgs" / "000006.jpg" and train[0].image.exists()
    test = src.read("test")
    assert [r.frame for r in test] == [731, 732]
    np.testing.assert_allclose(test[0].points[0], [353.326810, 276.170196])  # "version: 1.0", 6 decimals
    assert all(r.attributes["valid"] and r.layout == "68" and len(r.points) == 68 for r in train + test)


def test_official_video_lists():
    sizes = {k: len(v) for k, v in VW300_VIDEOS.items()}
    assert sizes == {"train": 50, "cat1": 31, "cat2": 19, "cat3": 14}
    assert len({v for vs in VW300_VIDEOS.values() for v in vs}) == 114  # disjoint
    assert len(Vw300Source("/nowhere").video_lists()["test"]) == 64


FRAMES = 6


def grey_level(frame: int) -> int:
    return 30 * frame


@pytest.fixture
def video_root(tmp_path):
    """Two videos of 6 frames (frame k is uniformly grey 30k, so order is checkable) + .pts per frame."""
    for video in ("001", "114"):
        folder = tmp_path / video
        (folder / "annot").mkdir(parents=True)
        writer = cv2.VideoWriter(str(folder / "vid.avi"), cv2.VideoWriter_fourcc(*"MJPG"), 25, (32, 24))
        for k in range(1, FRAMES + 1):
            writer.write(np.full((24, 32, 3), grey_level(k), np.uint8))
            write_pts(folder / "annot" / f"{k:06d}.pts", np.full((68, 2), float(k)))
        writer.release()
    (tmp_path / "splits.json").write_text(json.dumps({"train": ["001"], "cat1": ["114"], "cat2": [], "cat3": []}))
    return tmp_path


def test_generated_video_decoded_once(video_root):
    src = Vw300Source(video_root, broken_frames={"114": [2, 5]})
    train = src.read("train")  # splits.json replaces the built-in lists
    assert [r.frame for r in train] == list(range(1, FRAMES + 1))
    for r in train:
        assert r.image == video_root / "001" / "frames" / f"{r.frame:06d}.jpg"
        assert abs(cv2.imread(str(r.image)).mean() - grey_level(r.frame)) < 3  # frame N.pts <-> N-th frame
        np.testing.assert_allclose(r.points, float(r.frame))  # written 0-based by write_pts
    stamp = train[0].image.stat().st_mtime_ns
    Vw300Source(video_root).read("train")
    assert train[0].image.stat().st_mtime_ns == stamp  # not decoded again
    test = src.read("test")
    assert [r.attributes["valid"] for r in test] == [f not in (2, 5) for f in range(1, FRAMES + 1)]
    assert {r.video for r in test} == {"114"}


def test_frames_dir_and_missing_videos(video_root, tmp_path_factory):
    cache = tmp_path_factory.mktemp("frames")
    records = Vw300Source(video_root, frames_dir=cache).read("cat1")
    assert records[0].image == cache / "114" / "000001.jpg" and records[0].image.exists()
    with pytest.raises(DatasetNotFoundError, match="lacks videos 002"):
        Vw300Source(video_root, splits={"train": ["001", "002"]}).read("train")
    (video_root / "001" / "vid.avi").unlink()
    with pytest.raises(DatasetNotFoundError, match="vid.avi"):
        Vw300Source(video_root).read("train")
