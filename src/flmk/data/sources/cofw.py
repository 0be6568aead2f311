"""COFW (Burgos-Artizzu et al., ICCV 2013) and its 68-point re-annotation COFW-68.

COFW-29 ships two MATLAB v7.3 (HDF5) files::

    <root>/COFW_train_color.mat   IsTr (1345x1 cell of uint8 images), phisTr (1345x87), bboxesTr (1345x4)
    <root>/COFW_test_color.mat    IsT  (507x1 cell),                  phisT  (507x87),  bboxesT  (507x4)

``phis`` rows hold 29 x, 29 y, then 29 occlusion flags (1 = occluded), 1-based;
boxes are x, y, w, h (1-based x, y). The images live inside the .mat, so the
reader decodes them once to ``<root>/.flmk_images/<split>/<i>.png`` (i = 1-based
index, the numbering COFW-68 uses) and points records at those files.

COFW-68 (Ghiasi & Fowlkes, github.com/golnazghiasi/cofw68-benchmark) re-annotates
the 507 test faces with 68 iBUG points::

    <cofw68_dir>/test_annotations/<i>_points.mat   Points (68x2, x y, 1-based), Occ (1x68, 1 = occluded)
    <cofw68_dir>/cofw68_test_bboxes.mat            bboxes (507x4 int16): x, y, w, h

The box format is not documented; x, y, w, h is what fits the points (the
tests check it against all 507 faces: x + w, y + h land on the far face edges).
Image i is the i-th COFW test image, so COFW-68 needs the COFW-29 test file too.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from flmk.data.images import write_atomic
from flmk.data.records import AnnotationError, FaceRecord, check_points
from flmk.data.sources.common import check_split, file_stamp, load_mat, require

COFW_URL = "http://www.vision.caltech.edu/xpburgos/ICCV13/ (COFW_train_color.mat, COFW_test_color.mat)"
COFW68_URL = "https://github.com/golnazghiasi/cofw68-benchmark (COFW68_Data/)"
COFW_LAYOUT_DOC = """\
  <root>/COFW_train_color.mat  (IsTr, phisTr, bboxesTr; MATLAB v7.3)
  <root>/COFW_test_color.mat   (IsT, phisT, bboxesT)"""
COFW68_LAYOUT_DOC = """\
  <root>/COFW68_Data/test_annotations/<i>_points.mat  (i = 1..507: Points 68x2, Occ 1x68)
  <root>/COFW68_Data/cofw68_test_bboxes.mat            (bboxes 507x4)
  <cofw_root>/COFW_test_color.mat                      (the COFW test images)"""

COFW_NUM_POINTS = 29
IMAGE_CACHE = ".flmk_images"


def xywh_to_box(b: np.ndarray) -> np.ndarray:
    """MATLAB x, y, w, h (1-based x, y) -> 0-based x_min, y_min, x_max, y_max."""
    b = np.asarray(b, dtype=np.float64)
    return np.array([b[0] - 1, b[1] - 1, b[0] - 1 + b[2], b[1] - 1 + b[3]])


def write_images_once(images: list[np.ndarray], folder: Path) -> list[Path]:
    """Write RGB / grey arrays as ``<folder>/<i>.png`` (1-based), skipping files already there."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, img in enumerate(images, start=1):
        path = folder / f"{i}.png"
        if not path.exists():
            bgr = img if img.ndim == 2 else cv2.cvtColor(np.ascontiguousarray(img), cv2.COLOR_RGB2BGR)
            write_atomic(path, lambda tmp: cv2.imwrite(str(tmp), bgr))
        paths.append(path)
    return paths


class CofwSource:
    """COFW-29: splits ``train`` (1,345) and ``test`` (507), with occlusion as visibility."""

    layout = "29"

    def __init__(
        self,
        root: str | Path,
        files: dict[str, str] | None = None,
        variables: dict[str, tuple[str, str, str]] | None = None,
        image_cache: str = IMAGE_CACHE,
        name: str = "COFW",
    ):
        self.root = Path(root).expanduser()
        self.files = dict(files or {"train": "COFW_train_color.mat", "test": "COFW_test_color.mat"})
        self.variables = dict(variables or {"train": ("IsTr", "phisTr", "bboxesTr"), "test": ("IsT", "phisT", "bboxesT")})
        self.image_cache = self.root / image_cache
        self.name = name

    def splits(self) -> list[str]:
        return list(self.files)

    def image_paths(self, split: str) -> list[Path]:
        """Decode the split's images to PNG once; return one path per face (1-based order).

        ``<cache>/<split>/DONE`` records the .mat's size and mtime; a changed
        .mat is decoded again.
        """
        mat_path = self._mat(split)
        folder = self.image_cache / split
        done = folder / "DONE"
        stamp = file_stamp(mat_path)
        if done.exists():
            count, old_stamp = done.read_text().split(maxsplit=1)
            if old_stamp == stamp:
                return [folder / f"{i}.png" for i in range(1, int(count) + 1)]
            for stale in folder.glob("*.png"):
                stale.unlink()
        images_var = self.variables[split][0]
        paths = write_images_once(load_mat(mat_path, [images_var])[images_var], folder)
        done.write_text(f"{len(paths)} {stamp}")
        return paths

    def read(self, split: str) -> list[FaceRecord]:
        mat_path = self._mat(split)
        _, phis_var, boxes_var = self.variables[split]
        mat = load_mat(mat_path, [phis_var, boxes_var])
        phis, boxes = np.asarray(mat[phis_var], dtype=np.float64), np.asarray(mat[boxes_var], dtype=np.float64)
        n = COFW_NUM_POINTS
        if phis.ndim != 2 or phis.shape[1] != 3 * n:
            raise AnnotationError(mat_path, None, f"{phis_var}: expected (faces, {3 * n}) = 29 x, 29 y, 29 occlusion flags, got {phis.shape}")
        if boxes.shape != (len(phis), 4):
            raise AnnotationError(mat_path, None, f"{boxes_var}: expected ({len(phis)}, 4) x y w h boxes, got {boxes.shape}")
        bad = np.flatnonzero(~np.isfinite(phis[:, : 2 * n]).all(axis=1))
        if len(bad):
            raise AnnotationError(mat_path, None, f"{phis_var}: non-finite coordinates in row(s) {(bad[:10] + 1).tolist()} (1-based)")
        images = self.image_paths(split)
        if len(images) != len(phis):
            raise AnnotationError(mat_path, None, f"{len(images)} images for {len(phis)} faces")
        return [
            FaceRecord(
                image=images[i],
                points=np.stack([phi[:n], phi[n : 2 * n]], axis=1) - 1.0,
                layout=self.layout,
                box=xywh_to_box(boxes[i]),
                visible=phi[2 * n :] == 0,  # flag 1 = occluded
                attributes={"index": i + 1},
                subsets=frozenset({split}),
                source=f"{mat_path}:{phis_var}[{i + 1}]",
            )
            for i, phi in enumerate(phis)
        ]

    def _mat(self, split: str) -> Path:
        check_split(self.name, split, self.splits())
        return require(self.root / self.files[split], self.name, COFW_LAYOUT_DOC, COFW_URL)


class Cofw68Source:
    """COFW-68: split ``test`` (507), 68 iBUG points with occlusion; images from the COFW test .mat."""

    layout = "68"

    def __init__(
        self,
        root: str | Path,
        cofw_root: str | Path | None = None,
        annotations: str = "COFW68_Data/test_annotations",
        bboxes: str = "COFW68_Data/cofw68_test_bboxes.mat",
        name: str = "COFW68",
    ):
        self.root = Path(root).expanduser()
        self.cofw = CofwSource(cofw_root if cofw_root is not None else root, name=name)
        self.annotations = self.root / annotations
        self.bboxes = self.root / bboxes
        self.name = name

    def splits(self) -> list[str]:
        return ["test"]

    def read(self, split: str) -> list[FaceRecord]:
        check_split(self.name, split, self.splits())
        for path in (self.annotations, self.bboxes):
            require(path, self.name, COFW68_LAYOUT_DOC, COFW68_URL)
        boxes = np.asarray(load_mat(self.bboxes, ["bboxes"])["bboxes"], dtype=np.float64)
        images = self.cofw.image_paths("test")
        if len(images) != len(boxes):
            raise AnnotationError(self.bboxes, None, f"{len(boxes)} boxes but the COFW test file holds {len(images)} images")
        records = []
        for i in range(1, len(boxes) + 1):
            path = require(self.annotations / f"{i}_points.mat", self.name, COFW68_LAYOUT_DOC, COFW68_URL)
            mat = load_mat(path, ["Points", "Occ"])
            points, occ = np.asarray(mat["Points"], dtype=np.float64), np.asarray(mat["Occ"]).reshape(-1)
            if points.shape != (68, 2) or occ.shape != (68,):
                raise AnnotationError(path, None, f"expected Points 68x2 and Occ 1x68, got {points.shape} and {occ.shape}")
            check_points(points, 68, path)
            records.append(
                FaceRecord(
                    image=images[i - 1],
                    points=points - 1.0,
                    layout=self.layout,
                    box=xywh_to_box(boxes[i - 1]),
                    visible=occ == 0,
                    attributes={"index": i},
                    subsets=frozenset({split}),
                    source=str(path),
                )
            )
        return records
