"""Talking Face (FGNet; www-prima.inrialpes.fr/FGnet/data/01-TalkingFace/talking_face.html).

One 5,000-frame video of one person, 68 points per frame::

    <root>/**/franck_NNNNN.jpg   frames (NNNNN = 00000 .. 04999)
    <root>/**/franck_NNNNN.pts   68-point .pts (1-based)

Both are searched recursively, so the images and points may sit in one folder
or in two (e.g. ``images/`` and ``points/``). Frame NNNNN becomes ``frame``
NNNNN + 1 of video ``talking_face``; split ``test`` holds all frames.
``layout: "7"`` keeps the 7 points the trackers are evaluated on (layout "7":
eye corners, nose tip, mouth corners). [assume] The exact TSTN 7-point subset
is unverified; the indices live in flmk.layouts and are set there.
"""

from __future__ import annotations

import re
from pathlib import Path

from flmk.data.records import AnnotationError, FaceRecord
from flmk.data.sources.common import check_split, require
from flmk.data.sources.folders import IMAGE_SUFFIXES
from flmk.data.sources.pts import read_pts
from flmk.layouts import get_layout

TF_URL = "http://www-prima.inrialpes.fr/FGnet/data/01-TalkingFace/talking_face.html"
TF_LAYOUT_DOC = "  <root>/**/franck_NNNNN.jpg and <root>/**/franck_NNNNN.pts  (NNNNN = 00000..04999)"
FRAME_NAME = re.compile(r"^franck_(\d+)$")
VIDEO = "talking_face"


class TalkingFaceSource:
    """The FGNet Talking Face video as per-frame records; see the module docstring."""

    def __init__(self, root: str | Path, layout: str = "68", name: str = "TalkingFace"):
        self.root = Path(root).expanduser()
        self.layout = str(layout)
        target = get_layout(self.layout)
        if target.num_points != 68 and target.parent != "68":
            raise ValueError(f"{name}: layout must be '68' or a subset of it (e.g. '7'), got {layout!r}")
        self.indices = list(target.parent_indices) if target.parent == "68" else None
        self.name = name

    def splits(self) -> list[str]:
        return ["test"]

    def read(self, split: str) -> list[FaceRecord]:
        check_split(self.name, split, self.splits())
        require(self.root, self.name, TF_LAYOUT_DOC, TF_URL)
        images = {p.stem: p for p in self.root.rglob("franck_*") if p.suffix.lower() in IMAGE_SUFFIXES}
        records = []
        for pts_path in sorted(self.root.rglob("franck_*.pts")):
            match = FRAME_NAME.match(pts_path.stem)
            if match is None:
                raise AnnotationError(pts_path, None, "expected a name franck_NNNNN.pts")
            points = read_pts(pts_path, 68)
            records.append(
                FaceRecord(
                    image=images.get(pts_path.stem, pts_path.with_suffix(".jpg")),
                    points=points if self.indices is None else points[self.indices],
                    layout=self.layout,
                    attributes={"valid": True},
                    subsets=frozenset({split}),
                    source=str(pts_path),
                    video=VIDEO,
                    frame=int(match.group(1)) + 1,
                )
            )
        if not records:
            raise AnnotationError(self.root, None, "no franck_NNNNN.pts file found")
        return records
