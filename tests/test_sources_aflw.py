"""AFLW-19 from a generated AFLWinfo_release.mat (MATLAB v5, scipy.io.savemat) in the release's structure."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.io import savemat

from flmk.data.records import AnnotationError, DatasetNotFoundError
from flmk.data.sources.aflw import AflwSource

N, N_TRAIN = 12, 7


@pytest.fixture
def aflw(tmp_path):
    rng = np.random.default_rng(0)
    data = np.concatenate([rng.uniform(10, 90, (N, 19)), rng.uniform(10, 90, (N, 19))], axis=1)  # 19 x then 19 y
    bbox = np.column_stack([rng.uniform(1, 10, N), rng.uniform(90, 99, N), rng.uniform(1, 10, N), rng.uniform(90, 99, N)])
    mask = np.ones((N, 19))
    ra = rng.permutation(N) + 1  # 1-based
    mask[ra[N_TRAIN] - 1, 4] = 0  # one test face with an occluded point: not frontal
    mask[ra[0] - 1, 0] = 0
    names = np.empty((N, 1), dtype=object)
    for i in range(N):
        names[i, 0] = f"{i % 3}/image{i:05d}.jpg"
    savemat(tmp_path / "AFLWinfo_release.mat", {"bbox": bbox, "data": data, "mask_new": mask, "nameList": names, "ra": ra[None]})
    return tmp_path, data, bbox, mask, ra


def test_aflw_splits_points_boxes(aflw):
    root, data, bbox, mask, ra = aflw
    src = AflwSource(root, num_train=N_TRAIN)
    train, full, frontal = (src.read(s) for s in ("train", "full", "frontal"))
    assert [r.attributes["index"] for r in train] == ra[:N_TRAIN].tolist()  # ra order, 1-based face index
    assert [r.attributes["index"] for r in full] == ra[N_TRAIN:].tolist()
    assert [r.attributes["index"] for r in frontal] == ra[N_TRAIN + 1 :].tolist()
    r, i = train[0], ra[0] - 1
    np.testing.assert_allclose(r.points[:, 0], data[i, :19] - 1)
    np.testing.assert_allclose(r.points[:, 1], data[i, 19:] - 1)
    x1, x2, y1, y2 = bbox[i]  # AFLW's order: left, right, top, bottom
    np.testing.assert_allclose(r.box, [x1 - 1, y1 - 1, x2 - 1, y2 - 1])
    assert r.visible.sum() == 18 and not r.visible[0]
    assert r.image == root / "data" / "flickr" / f"{i % 3}" / f"image{i:05d}.jpg"
    assert r.layout == "19"


def test_aflw_errors(tmp_path, aflw):
    with pytest.raises(DatasetNotFoundError, match="AFLWinfo_release.mat"):
        AflwSource(tmp_path / "none").read("train")
    root, data, bbox, mask, ra = aflw
    names = np.empty((N, 1), dtype=object)
    names[:, 0] = "x.jpg"
    savemat(root / "AFLWinfo_release.mat", {"bbox": bbox, "data": data[:, :30], "mask_new": mask, "nameList": names, "ra": ra[None]})
    with pytest.raises(AnnotationError, match=r"data: expected \(12, 38\)"):
        AflwSource(root, num_train=N_TRAIN).read("train")
