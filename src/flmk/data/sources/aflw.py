"""AFLW-19: the 19-point AFLW protocol of Zhu et al. (CFSS / CCL, CVPR 2016).

``AFLWinfo_release.mat`` (mmlab.ie.cuhk.edu.hk/projects/compositional.html) holds,
for 24,386 faces::

    bbox      24386x4   x_min, x_max, y_min, y_max   (note the order)
    data      24386x38  19 x then 19 y (AFLW's 21 points without the two ears)
    mask_new  24386x19  1 = visible
    nameList  24386x1   cell of image paths relative to <root>/<images_dir>, e.g. 3/image00002.jpg
    ra        1x24386   1-based permutation: the first 20,000 are train, the remaining 4,386 test

Splits: ``train``, ``full`` (the 4,386 test faces) and ``frontal`` (test faces
with all 19 points visible; 1,165 in the papers). The papers' normaliser is the
face box size sqrt(w * h) from ``bbox`` (layout "19" ``has_box_normaliser``).
[assume] Coordinates are MATLAB 1-based (the file was written in MATLAB);
``index_base`` makes that a setting.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from flmk.data.records import AnnotationError, FaceRecord
from flmk.data.sources.common import check_split, load_mat, require

AFLW_URL = (
    "images: https://www.tugraz.at/institute/icg/research/team-bischof/lrs/downloads/aflw/; "
    "AFLWinfo_release.mat: http://mmlab.ie.cuhk.edu.hk/projects/compositional.html"
)
AFLW_LAYOUT_DOC = """\
  <root>/AFLWinfo_release.mat
  <root>/data/flickr/{0,2,3}/image*.jpg   (the AFLW images, paths as in nameList)"""
AFLW_NUM_POINTS = 19
AFLW_SPLITS = ("train", "full", "frontal")


class AflwSource:
    """AFLW-19 from ``AFLWinfo_release.mat``; see the module docstring."""

    layout = "19"

    def __init__(
        self,
        root: str | Path,
        mat_file: str = "AFLWinfo_release.mat",
        images_dir: str = "data/flickr",
        num_train: int = 20000,
        index_base: int = 1,
        name: str = "AFLW",
    ):
        self.root = Path(root).expanduser()
        self.mat_file = mat_file
        self.images_dir = self.root / images_dir
        self.num_train = num_train
        self.index_base = index_base
        self.name = name

    def splits(self) -> list[str]:
        return list(AFLW_SPLITS)

    def read(self, split: str) -> list[FaceRecord]:
        check_split(self.name, split, self.splits())
        path = require(self.root / self.mat_file, self.name, AFLW_LAYOUT_DOC, AFLW_URL)
        mat = load_mat(path, ["bbox", "data", "mask_new", "nameList", "ra"])
        data, bbox, mask = (np.asarray(mat[k], dtype=np.float64) for k in ("data", "bbox", "mask_new"))
        names = [str(np.asarray(n).ravel()[0]) for n in mat["nameList"]]
        n, k = len(names), AFLW_NUM_POINTS
        for key, arr, cols in (("data", data, 2 * k), ("bbox", bbox, 4), ("mask_new", mask, k)):
            if arr.shape != (n, cols):
                raise AnnotationError(path, None, f"{key}: expected ({n}, {cols}) for {n} names, got {arr.shape}")
        bad = np.flatnonzero(~np.isfinite(data).all(axis=1))
        if len(bad):
            raise AnnotationError(path, None, f"data: non-finite coordinates in row(s) {(bad[:10] + 1).tolist()} (1-based)")
        order = np.asarray(mat["ra"]).astype(np.int64).ravel() - 1
        if sorted(order.tolist()) != list(range(n)):
            raise AnnotationError(path, None, f"ra: expected a 1-based permutation of 1..{n}")
        chosen = order[: self.num_train] if split == "train" else order[self.num_train :]
        if split == "frontal":
            chosen = chosen[(mask[chosen] == 1).all(axis=1)]
        off = self.index_base
        return [
            FaceRecord(
                image=self.images_dir / names[i],
                points=np.stack([data[i, :k], data[i, k:]], axis=1) - off,
                layout=self.layout,
                box=bbox[i, [0, 2, 1, 3]] - off,  # x_min, x_max, y_min, y_max -> x_min, y_min, x_max, y_max
                visible=mask[i] == 1,
                attributes={"index": int(i) + 1},
                subsets=frozenset({split}),
                source=f"{path}:data[{i + 1}]",
            )
            for i in chosen
        ]
