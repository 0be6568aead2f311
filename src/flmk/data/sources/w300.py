"""300W folders with a face-box policy, and a per-file scan the dataset doctor uses.

``box_policy`` chooses each record's face box:

* ``"landmarks"``: no box (the data module takes the tight box of the points);
* ``"ibug_bbs"``: the iBUG 4-corner box files, ``<bbs_dir>/<sub>/<stem>.pts``
  mirroring the data folders (``n_points: 4``, corners TL, BL, BR, TR, 1-based),
  e.g. SRN's ``bbs/ibug/*.pts``. A face without a box file falls back to the
  landmarks; ``attributes["box_from"]`` says which one was used.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from flmk.data.images import ImageError
from flmk.data.records import AnnotationError, FaceRecord
from flmk.data.sources.common import check_split, require
from flmk.data.sources.folders import PtsFolderSource, find_image, read_visibility
from flmk.data.sources.pts import read_pts

BOX_POLICIES = ("landmarks", "ibug_bbs")


@dataclass
class Problem:
    """One bad file found while scanning a split: ``kind`` is "annotation" or "image"; ``message`` omits path and line."""

    kind: str
    path: str
    line: int | None
    message: str

    def error(self, more: str = "") -> AnnotationError | ImageError:
        if self.kind == "image":
            return ImageError(self.path, self.message + more)
        return AnnotationError(self.path, self.line, self.message + more)


def read_corner_box(path: Path) -> np.ndarray:
    """A 4-corner .pts face box -> 0-based x_min, y_min, x_max, y_max."""
    corners = read_pts(path, num_points=4)
    return np.concatenate([corners.min(0), corners.max(0)])


class W300Source(PtsFolderSource):
    """300W (or any folder-of-.pts dataset) with a box policy; see the module docstring.

    Expected layout: that of :class:`PtsFolderSource` (``W300_LAYOUT_DOC``),
    plus, for ``box_policy="ibug_bbs"``, ``<bbs_dir>/<sub-folder>/<stem>.pts``.
    """

    def __init__(self, root: str | Path, box_policy: str = "landmarks", bbs_dir: str | Path | None = None, **kwargs):
        super().__init__(root, **kwargs)
        if box_policy not in BOX_POLICIES:
            raise ValueError(f"{self.name}: box_policy must be one of {BOX_POLICIES}, got {box_policy!r}")
        if box_policy == "ibug_bbs" and bbs_dir is None:
            raise ValueError(f"{self.name}: box_policy='ibug_bbs' needs bbs_dir (the folder of 4-corner box .pts files)")
        self.box_policy = box_policy
        self.bbs_dir = Path(bbs_dir).expanduser() if bbs_dir is not None else None

    def read(self, split: str) -> list[FaceRecord]:
        records, problems = self.scan(split)
        if problems:
            more = f" (and {len(problems) - 1} more problems; run `python -m flmk.data.check`)" if len(problems) > 1 else ""
            raise problems[0].error(more)
        return records

    def scan(self, split: str) -> tuple[list[FaceRecord], list[Problem]]:
        """Read every face of ``split``, collecting bad files instead of stopping at the first."""
        check_split(self.name, split, self.splits())
        require(self.root, self.name, self.expected_layout, self.how_to_obtain)
        records, problems = [], []
        for sub in self.split_dirs[split]:
            folder = require(self.root / sub, self.name, self.expected_layout, self.how_to_obtain)
            for pts_path in sorted(folder.rglob("*.pts") if self.recursive else folder.glob("*.pts")):
                try:
                    records.append(self._record(pts_path, split, sub))
                except AnnotationError as e:
                    problems.append(Problem("annotation", e.path, e.line, e.problem))
                except ImageError as e:
                    problems.append(Problem("image", e.path, None, e.problem))
        return records, problems

    def _record(self, pts_path: Path, split: str, sub: str) -> FaceRecord:
        points = read_pts(pts_path, self.num_points)
        vis_path = pts_path.with_suffix(".vis")
        box, box_from = self._box(pts_path)
        return FaceRecord(
            image=find_image(pts_path),
            points=points,
            layout=self.layout,
            box=box,
            visible=read_visibility(vis_path, len(points)) if vis_path.exists() else None,
            attributes={"box_from": box_from},
            subsets=frozenset({split, sub}),
            source=str(pts_path),
        )

    def _box(self, pts_path: Path) -> tuple[np.ndarray | None, str]:
        if self.box_policy == "ibug_bbs":
            box_path = self.bbs_dir / pts_path.relative_to(self.root)
            if box_path.exists():
                return read_corner_box(box_path), "ibug_bbs"
        return None, "landmarks"
