"""COFW-29 from a MATLAB v7.3 (HDF5) file the test writes, and COFW-68 on the real annotations."""

from __future__ import annotations

import re

import cv2
import h5py
import numpy as np
import pytest
from scipy.io import loadmat

from flmk.data.records import AnnotationError, DatasetNotFoundError
from flmk.data.sources.cofw import Cofw68Source, CofwSource
from real_fixtures import REAL, requires_real

COFW68 = REAL / "cofw" / "cofw68_benchmark"


def write_mat_v73(path, variables: dict) -> None:
    """Write variables as MATLAB v7.3 does: HDF5, arrays transposed, cells as object references into #refs#."""
    with h5py.File(path, "w", userblock_size=512) as f:
        refs = f.create_group("#refs#")
        for name, value in variables.items():
            if isinstance(value, list):  # an n x 1 cell, stored transposed as (1, n)
                cell = np.empty((1, len(value)), dtype=h5py.ref_dtype)
                for i, arr in enumerate(value):
                    cell[0, i] = refs.create_dataset(f"{name}_{i}", data=np.asarray(arr).T).ref
                f.create_dataset(name, data=cell).attrs["MATLAB_class"] = np.bytes_("cell")
            else:
                f.create_dataset(name, data=np.asarray(value, dtype=np.float64).T).attrs["MATLAB_class"] = np.bytes_("double")
    with open(path, "r+b") as fh:
        fh.write(b"MATLAB 7.3 MAT-file, written by the flmk tests".ljust(116))


def cofw_split(rng, n: int, shapes: list[tuple]) -> tuple[list[np.ndarray], np.ndarray, np.ndarray]:
    images = [rng.integers(0, 256, size=s, dtype=np.uint8) for s in shapes]
    xs, ys = rng.uniform(1, 20, (n, 29)), rng.uniform(1, 20, (n, 29))
    occ = rng.integers(0, 2, (n, 29)).astype(float)
    phis = np.concatenate([xs, ys, occ], axis=1)
    boxes = np.column_stack([rng.uniform(1, 5, n), rng.uniform(1, 5, n), rng.uniform(10, 20, n), rng.uniform(10, 20, n)])
    return images, phis, boxes


@pytest.fixture
def cofw_root(tmp_path):
    rng = np.random.default_rng(0)
    tr = cofw_split(rng, 3, [(24, 20, 3), (16, 18, 3), (20, 20)])  # the third is greyscale
    te = cofw_split(rng, 2, [(22, 21, 3), (12, 30, 3)])
    write_mat_v73(tmp_path / "COFW_train_color.mat", dict(zip(("IsTr", "phisTr", "bboxesTr"), tr)))
    write_mat_v73(tmp_path / "COFW_test_color.mat", dict(zip(("IsT", "phisT", "bboxesT"), te)))
    return tmp_path, tr, te


def test_cofw29_reads_v73_mat(cofw_root):
    root, (images, phis, boxes), _ = cofw_root
    src = CofwSource(root)
    records = src.read("train")
    assert len(records) == 3 and records[0].layout == "29"
    for i, r in enumerate(records):
        np.testing.assert_allclose(r.points, np.stack([phis[i, :29], phis[i, 29:58]], 1) - 1)
        np.testing.assert_array_equal(r.visible, phis[i, 58:] == 0)  # flag 1 = occluded
        x, y, w, h = boxes[i]
        np.testing.assert_allclose(r.box, [x - 1, y - 1, x - 1 + w, y - 1 + h])
        decoded = cv2.imread(str(r.image), cv2.IMREAD_UNCHANGED)
        expected = images[i] if images[i].ndim == 2 else cv2.cvtColor(images[i], cv2.COLOR_RGB2BGR)
        np.testing.assert_array_equal(decoded, expected)  # PNG is lossless, orientation kept
        assert r.image == root / ".flmk_images" / "train" / f"{i + 1}.png"
    assert len(src.read("test")) == 2


def test_cofw29_images_decoded_once(cofw_root):
    root, *_ = cofw_root
    first = CofwSource(root).read("train")[0].image
    stamp = first.stat().st_mtime_ns
    CofwSource(root).read("train")
    assert first.stat().st_mtime_ns == stamp
    rng = np.random.default_rng(1)
    write_mat_v73(root / "COFW_train_color.mat", dict(zip(("IsTr", "phisTr", "bboxesTr"), cofw_split(rng, 2, [(8, 8, 3)] * 2))))
    records = CofwSource(root).read("train")  # a changed .mat is decoded again, stale PNGs removed
    assert len(records) == 2 and not (root / ".flmk_images" / "train" / "3.png").exists()
    assert cv2.imread(str(records[0].image)).shape == (8, 8, 3)


def test_cofw29_errors(tmp_path, cofw_root):
    with pytest.raises(DatasetNotFoundError, match="COFW_train_color.mat"):
        CofwSource(tmp_path / "none").read("train")
    root, (images, phis, boxes), _ = cofw_root
    write_mat_v73(root / "COFW_train_color.mat", {"IsTr": images, "phisTr": phis[:, :58], "bboxesTr": boxes})
    with pytest.raises(AnnotationError, match=r"COFW_train_color.mat: phisTr: expected \(faces, 87\)"):
        CofwSource(root).read("train")


def documented_cofw68() -> dict[int, tuple[int, tuple[float, float]]]:
    """SOURCES.md's Occ sum and first point of every <i>_points.mat."""
    pattern = re.compile(r"test_annotations/(\d+)_points\.mat` \|.*\(sum=(\d+)\); first point \(([-\d.]+), ([-\d.]+)\)")
    return {int(m[1]): (int(m[2]), (float(m[3]), float(m[4])))
            for m in pattern.finditer((REAL / "SOURCES.md").read_text())}


@requires_real
def test_cofw68_on_real_annotations(tmp_path):
    rng = np.random.default_rng(0)
    images, phis, boxes = cofw_split(rng, 507, [(4, 4, 3)] * 507)  # stand-in COFW test images
    write_mat_v73(tmp_path / "COFW_test_color.mat", {"IsT": images, "phisT": phis, "bboxesT": boxes})
    records = Cofw68Source(COFW68, cofw_root=tmp_path).read("test")
    assert len(records) == 507
    documented = documented_cofw68()
    assert len(documented) == 507
    for i, r in enumerate(records, start=1):
        occ_sum, first = documented[i]
        assert r.attributes["index"] == i and r.image == tmp_path / ".flmk_images" / "test" / f"{i}.png"
        assert int((~r.visible).sum()) == occ_sum
        np.testing.assert_allclose(r.points[0], np.array(first) - 1, atol=6e-5)  # SOURCES.md rounds to 4 decimals
    # the box file is x, y, w, h: read so, it overlaps the landmarks' box; read as x1, y1, x2, y2 it does not
    def iou(a, b):
        inter = np.clip(np.minimum(a[2:], b[2:]) - np.maximum(a[:2], b[:2]), 0, None).prod()
        area = lambda q: np.clip(q[2:] - q[:2], 0, None).prod()
        return inter / (area(a) + area(b) - inter)
    raw = loadmat(COFW68 / "COFW68_Data" / "cofw68_test_bboxes.mat")["bboxes"].astype(float) - [1, 1, 0, 0]
    tight = [np.r_[r.points.min(0), r.points.max(0)] for r in records]
    as_xywh = np.array([iou(r.box, t) for r, t in zip(records, tight)])
    as_xyxy = np.array([iou(b, t) for b, t in zip(raw, tight)])
    assert np.median(as_xywh) > 0.6 and np.median(as_xyxy) < 0.3
