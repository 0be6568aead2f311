"""Menpo-68 training set (Menpo 2D challenge 2017; ibug.doc.ic.ac.uk/resources/2nd-facial-landmark-tracking-competition-menpo-ben/).

The training release is a folder of images with .pts files; semi-frontal faces
carry 68 points, profile faces 39. AODN+ trains on the 68-point ones (5,658),
so this source keeps only .pts files with 68 points and counts the rest in
``skipped``. Layout::

    <root>/**/<name>.jpg|.png + <name>.pts   (searched recursively)
"""

from __future__ import annotations

from pathlib import Path

from flmk.data.records import FaceRecord
from flmk.data.sources.w300 import Problem, W300Source

MENPO_LAYOUT_DOC = "  <root>/**/<name>.jpg|.png + <name>.pts   (68-point semi-frontal and 39-point profile faces)"
MENPO_URL = "https://ibug.doc.ic.ac.uk/resources/2nd-facial-landmark-tracking-competition-menpo-ben/"
SEMI_FRONTAL_POINTS = 68


class MenpoSource(W300Source):
    """Menpo-68 semi-frontal training faces; split ``train``."""

    def __init__(self, root: str | Path, name: str = "Menpo", **kwargs):
        kwargs.setdefault("splits", {"train": ["."]})
        super().__init__(
            root, name=name, layout="68", recursive=True, expected_layout=MENPO_LAYOUT_DOC, how_to_obtain=MENPO_URL, **kwargs
        )
        self.num_points = None  # 39-point profile faces are read, then left out
        self.skipped = 0

    def scan(self, split: str) -> tuple[list[FaceRecord], list[Problem]]:
        records, problems = super().scan(split)
        kept = [r for r in records if len(r.points) == SEMI_FRONTAL_POINTS]
        self.skipped = len(records) - len(kept)
        return kept, problems
