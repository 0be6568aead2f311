"""Folders of images with .pts files beside them: 300W and everything written like it.

300W's public release (ibug.doc.ic.ac.uk/resources/300-W) unpacks to::

    <root>/afw/*.jpg + *.pts
    <root>/helen/{trainset,testset}/*.jpg + *.pts
    <root>/lfpw/{trainset,testset}/*.png + *.pts
    <root>/ibug/*.jpg + *.pts
    <root>/300W/{01_Indoor,02_Outdoor}/*.png + *.pts      (optional private test set)

A split is a list of sub-folders. An optional ``<stem>.vis`` file beside a
.pts holds one 0/1 visibility flag per line (the synthetic set writes them).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from flmk.data.images import IMAGE_MISSING, ImageError
from flmk.data.records import AnnotationError, DatasetNotFoundError, FaceRecord
from flmk.data.sources.pts import read_pts
from flmk.layouts import get_layout

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".ppm")

W300_SPLITS: dict[str, list[str]] = {
    "train": ["afw", "helen/trainset", "lfpw/trainset"],
    "common": ["helen/testset", "lfpw/testset"],
    "challenging": ["ibug"],
    "full": ["helen/testset", "lfpw/testset", "ibug"],
    "private": ["300W/01_Indoor", "300W/02_Outdoor"],
    "indoor": ["300W/01_Indoor"],
    "outdoor": ["300W/02_Outdoor"],
}
OPTIONAL_SPLITS = ("private", "indoor", "outdoor")  # the 300W private test set is released separately

W300_LAYOUT_DOC = """\
  <root>/afw/*.jpg + .pts
  <root>/helen/trainset/ and helen/testset/ (*.jpg + .pts)
  <root>/lfpw/trainset/ and lfpw/testset/ (*.png + .pts)
  <root>/ibug/ (*.jpg + .pts)
  <root>/300W/01_Indoor/, 300W/02_Outdoor/ (optional private test set)"""


def find_image(pts_path: Path) -> Path:
    for suffix in IMAGE_SUFFIXES:
        cand = pts_path.with_suffix(suffix)
        if cand.exists():
            return cand
    raise ImageError(pts_path, f"{IMAGE_MISSING}: none beside this .pts "
                     f"(looked for {', '.join(pts_path.stem + s for s in IMAGE_SUFFIXES)})")


def read_visibility(path: Path, n: int) -> np.ndarray:
    flags = path.read_text().split()
    if len(flags) != n or any(f not in ("0", "1") for f in flags):
        raise AnnotationError(path, None, f"expected {n} visibility flags of 0 or 1, got {len(flags)} values")
    return np.array([f == "1" for f in flags])


class PtsFolderSource:
    """Reads splits made of folders of ``image + .pts`` pairs."""

    def __init__(
        self,
        root: str | Path,
        splits: dict[str, list[str]] | None = None,
        layout: str = "68",
        name: str = "300W",
        how_to_obtain: str = "https://ibug.doc.ic.ac.uk/resources/300-W/ (300W, with afw, helen, lfpw, ibug)",
        expected_layout: str = W300_LAYOUT_DOC,
        recursive: bool = False,
    ):
        self.root = Path(root).expanduser()
        self.split_dirs = {k: list(v) for k, v in (splits or W300_SPLITS).items()}
        self.layout = str(layout)
        self.num_points: int | None = get_layout(self.layout).num_points  # a .pts with another count is an error
        self.name = name
        self.how_to_obtain = how_to_obtain
        self.expected_layout = expected_layout
        self.recursive = recursive
        self.optional_splits = [s for s in OPTIONAL_SPLITS if s in self.split_dirs]  # absent: noted, not a problem

    def splits(self) -> list[str]:
        return list(self.split_dirs)

    def read(self, split: str) -> list[FaceRecord]:
        if split not in self.split_dirs:
            raise KeyError(f"{self.name}: unknown split {split!r}; known: {', '.join(self.split_dirs)}")
        if not self.root.is_dir():
            raise DatasetNotFoundError(self.name, self.root, self.expected_layout, self.how_to_obtain)
        records = []
        for sub in self.split_dirs[split]:
            folder = self.root / sub
            if not folder.is_dir():
                raise DatasetNotFoundError(
                    self.name, folder, self.expected_layout, self.how_to_obtain
                )
            pts_files = sorted(folder.rglob("*.pts") if self.recursive else folder.glob("*.pts"))
            for pts_path in pts_files:
                points = read_pts(pts_path, self.num_points)
                vis_path = pts_path.with_suffix(".vis")
                visible = read_visibility(vis_path, len(points)) if vis_path.exists() else None
                records.append(
                    FaceRecord(
                        image=find_image(pts_path),
                        points=points,
                        layout=self.layout,
                        visible=visible,
                        subsets=frozenset({split, sub}),
                        source=str(pts_path),
                    )
                )
        return records
