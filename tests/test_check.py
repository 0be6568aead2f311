"""The dataset doctor on a deliberately broken dataset."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from flmk.data.check import check_sources, format_report, main
from flmk.data.sources.pts import write_pts
from flmk.data.sources.talking_face import TalkingFaceSource
from flmk.data.sources.w300 import W300Source


def face_points(cx: float, cy: float, r: float) -> np.ndarray:
    t = np.linspace(0, 2 * np.pi, 68, endpoint=False)
    return np.stack([cx + r * np.cos(t), cy + r * np.sin(t)], axis=1)


@pytest.fixture
def broken_300w(tmp_path):
    ibug = tmp_path / "300W" / "ibug"
    ibug.mkdir(parents=True)
    for name in ("good", "outside"):
        cv2.imwrite(str(ibug / f"{name}.jpg"), np.full((40, 50, 3), 128, np.uint8))
    write_pts(ibug / "good.pts", face_points(25, 20, 10))
    write_pts(ibug / "outside.pts", face_points(45, 20, 10))  # the right half sticks out of the 50-px image
    write_pts(ibug / "lost.pts", face_points(25, 20, 10))  # no image
    lines = (ibug / "good.pts").read_text().splitlines()
    lines[5] = "12.0 not-a-number"
    (ibug / "bad.pts").write_text("\n".join(lines))
    cv2.imwrite(str(ibug / "bad.jpg"), np.zeros((40, 50, 3), np.uint8))
    (ibug / "corrupt.jpg").write_bytes(b"not a jpeg")
    write_pts(ibug / "corrupt.pts", face_points(25, 20, 10))
    return tmp_path / "300W"


def test_doctor_reports_each_problem(broken_300w, tmp_path):
    sources = {"300w": W300Source(broken_300w, splits={"challenging": ["ibug"]})}
    report = check_sources(sources, tmp_path / "out", faces=4)
    s = report["sources"]["300w"]["splits"]["challenging"]
    assert s["count"] == 5
    assert s["missing_images"] == 1 and s["missing_images_examples"][0].endswith("lost.pts")
    assert s["malformed"] == 1
    bad = s["malformed_examples"][0]
    assert bad["file"].endswith("bad.pts") and bad["line"] == 6 and "not-a-number" in bad["message"]
    assert s["unreadable_images"] == 1 and s["unreadable_images_examples"][0].endswith("corrupt.jpg")
    assert s["points_outside"] == 1 and s["points_outside_examples"][0].endswith("outside.pts")
    assert s["boxes_outside"] == 0
    assert s["problems"] == 3 and report["problems"] == 3  # missing, malformed, unreadable; points a bit outside is a note
    text = format_report(report)
    assert "bad.pts, line 6: expected two numbers" in text and "lost.pts" in text and "5 faces" in text
    assert text.count("bad.pts") == 1 and text.endswith("3 problem(s) found")
    grid = cv2.imread(report["grids"]["300w"])
    assert grid.shape == (128, 2 * 128 + 2, 3)  # the two readable faces, 128-px crops, 2-px gap
    assert (grid == (0, 255, 0)).all(-1).any()  # landmarks drawn in green
    assert json.loads((tmp_path / "out" / "report.json").read_text()) == report


def test_doctor_on_missing_and_failing_sources(tmp_path):
    (tmp_path / "tf").mkdir()
    (tmp_path / "tf" / "franck_00000.pts").write_text("version: 1\nn_points: 68\n{\n1 2\n}")
    report = check_sources({"gone": W300Source(tmp_path / "nowhere"), "tf": TalkingFaceSource(tmp_path / "tf")}, tmp_path / "out")
    gone = report["sources"]["gone"]["splits"]["train"]
    assert gone["count"] == 0 and "300W dataset not found at" in gone["not_found"]
    tf = report["sources"]["tf"]["splits"]["test"]
    assert tf["malformed"] == 1 and tf["malformed_examples"][0]["line"] == 5
    assert report["grids"] == {} and report["problems"] == 5  # 4 splits not found (3 optional absent), 1 malformed
    assert "private: optional, absent" in format_report(report)


def test_cli_composes_a_source_config(broken_300w, tmp_path, capsys):
    report = main(["+source=300w", f"source.root={broken_300w}", "+source.splits={challenging: [ibug]}",
                   "--out", str(tmp_path / "cli"), "--faces", "2"])
    assert report["sources"]["300W"]["splits"]["challenging"]["malformed"] == 1
    assert "bad.pts, line 6" in capsys.readouterr().out


def test_partial_300vw_copy_is_checked_video_by_video(synthetic_video_root, tmp_path):
    from flmk.data.sources.vw300 import Vw300Source

    present = sorted(p.parent.name for p in synthetic_video_root.glob("*/annot"))
    source = Vw300Source(synthetic_video_root, splits={"train": [*present, "999"]}, frames_dir=tmp_path / "frames")
    report = check_sources({"300vw": source}, tmp_path / "out", faces=2)
    train = report["sources"]["300vw"]["splits"]["train"]
    assert train["missing_videos"] == 1 and train["missing_videos_examples"] == ["999"]
    assert train["count"] == sum(len(list((synthetic_video_root / v / "annot").glob("*.pts"))) for v in present) > 0
    assert train["problems"] == 1 and "absent videos: 999" in format_report(report)
    assert (tmp_path / "out" / "faces_300vw.png").exists()


def test_doctor_exit_status(broken_300w, tmp_path):
    from flmk.data.check import cli

    args = ["+source=300w", "+source.splits={challenging: [ibug]}", "--out", str(tmp_path / "o")]
    assert cli([f"source.root={broken_300w}", *args]) == 1
    for name in ("lost", "bad", "corrupt", "outside"):
        for f in broken_300w.glob(f"ibug/{name}.*"):
            f.unlink()
    assert cli([f"source.root={broken_300w}", *args]) == 0
