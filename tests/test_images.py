"""Image reading errors and atomic cache writes."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from flmk.data.images import read_rgb, write_atomic


def test_write_atomic_publishes_only_a_complete_file(tmp_path: Path) -> None:
    target = tmp_path / "face.vis.npy"
    seen = {}

    def write(tmp: Path) -> None:
        seen["tmp"] = tmp
        seen["target_existed"] = target.exists()  # a concurrent reader would find nothing, never half a file
        np.save(tmp, np.array([True, False, True]))

    assert write_atomic(target, write) == target
    assert not seen["target_existed"]
    assert seen["tmp"].parent == tmp_path and str(os.getpid()) in seen["tmp"].name  # one temp file per process
    assert seen["tmp"].name.endswith(".npy")  # np.save and cv2.imwrite keep the format of the suffix
    np.testing.assert_array_equal(np.load(target), [True, False, True])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["face.vis.npy"]


def test_write_atomic_failed_writer_names_the_file_and_keeps_the_old_one(tmp_path: Path) -> None:
    target = tmp_path / "1.png"
    target.write_bytes(b"old")
    with pytest.raises(OSError, match=r"could not write .*1\..*\.tmp\.png"):
        write_atomic(target, lambda tmp: False)  # cv2.imwrite's way of failing
    assert target.read_bytes() == b"old"

    def write_then_fail(tmp: Path) -> None:  # e.g. a check of the written file
        tmp.write_bytes(b"new")
        raise ValueError("check failed")

    with pytest.raises(ValueError, match="check failed"):
        write_atomic(target, write_then_fail)
    assert target.read_bytes() == b"old" and sorted(p.name for p in tmp_path.iterdir()) == ["1.png"]


def test_read_rgb_names_missing_and_unreadable_files(tmp_path: Path) -> None:
    with pytest.raises(OSError, match="does not exist"):
        read_rgb(tmp_path / "nope.jpg")
    (tmp_path / "bad.jpg").write_bytes(b"not an image")
    with pytest.raises(OSError, match="bad.jpg: not a readable image"):
        read_rgb(tmp_path / "bad.jpg")
