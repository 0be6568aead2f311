"""FaceRecord: one annotated face, in original image pixels (0-based)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np


@dataclass
class FaceRecord:
    """One face.

    ``points`` are (N, 2) x, y in original image pixels, 0-based (a .pts
    file's 1-based values minus one). ``box`` is x_min, y_min, x_max, y_max
    in the same frame, or None when the dataset gives none (the data module
    then derives one from the points). ``visible`` is (N,) bool or None when
    the dataset does not annotate occlusion. ``source`` names the annotation
    file (and line) for error messages.
    """

    image: Path
    points: np.ndarray
    layout: str
    box: np.ndarray | None = None
    visible: np.ndarray | None = None
    attributes: dict[str, Any] = field(default_factory=dict)
    subsets: frozenset[str] = frozenset()
    source: str = ""
    video: str | None = None
    frame: int | None = None

    def __post_init__(self):
        self.image = Path(self.image)
        self.points = np.asarray(self.points, dtype=np.float64)
        if self.points.ndim != 2 or self.points.shape[1] != 2:
            raise ValueError(f"{self.source or self.image}: points must be (N, 2), got {self.points.shape}")
        if self.box is not None:
            self.box = np.asarray(self.box, dtype=np.float64).reshape(4)
        if self.visible is not None:
            self.visible = np.asarray(self.visible, dtype=bool).reshape(-1)
            if len(self.visible) != len(self.points):
                raise ValueError(f"{self.source or self.image}: {len(self.visible)} visibility flags for {len(self.points)} points")
        self.subsets = frozenset(self.subsets)

    def box_or_points_box(self) -> np.ndarray:
        if self.box is not None:
            return self.box
        lo, hi = self.points.min(0), self.points.max(0)
        return np.concatenate([lo, hi])


class DatasetNotFoundError(FileNotFoundError):
    """A dataset root is missing: the message names where we looked, the layout and where to get it."""

    def __init__(self, name: str, looked_in: Path | str, expected_layout: str, how_to_obtain: str):
        msg = (
            f"{name} dataset not found at {looked_in}.\n"
            f"Expected layout:\n{expected_layout.rstrip()}\n"
            f"How to obtain it: {how_to_obtain}\n"
            f"Point data.root at the folder that holds it, e.g. `python -m flmk.train data={name.lower()} data.root=/path/to/{name}`."
        )
        super().__init__(msg)


class AnnotationError(ValueError):
    """A malformed annotation; the message names the file and line."""

    def __init__(self, path: Path | str, line: int | None, problem: str):
        where = f"{path}" + (f", line {line}" if line is not None else "")
        super().__init__(f"{where}: {problem}")
        self.path, self.line = str(path), line
