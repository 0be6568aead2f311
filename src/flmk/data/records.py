"""FaceRecord: one annotated face, in original image pixels (0-based)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from flmk.errors import FlmkUserError


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


# Where each dataset goes on the command line: source name -> (data config, the data key of its folder).
# A test composes every entry, so a hint never names a config or key that does not exist.
DATA_HINTS: dict[str, tuple[str, str]] = {
    "300W": ("300w", "root"),
    "COFW": ("cofw", "root"),
    "COFW68": ("300w_cofw68", "cofw68_root"),
    "AFLW": ("aflw", "root"),
    "WFLW": ("wflw", "root"),
    "300VW": ("300vw", "root"),
    "Menpo": ("menpo", "root"),
    "Masked300W": ("masked300w", "masked_root"),
    "TalkingFace": ("300vw_tf", "tf_root"),
}


def data_hint(name: str, key: str | None = None) -> str:
    """The command line that points flmk at dataset ``name`` (``key`` overrides the data key)."""
    if name not in DATA_HINTS:
        return f"Point the {name} source's root at the folder that holds it (check it with `python -m flmk.data.check`)."
    config, default_key = DATA_HINTS[name]
    return f"Point data.{key or default_key} at the folder that holds it, e.g. " \
           f"`python -m flmk.train data={config} data.{key or default_key}=/path/to/{name}`."


class DatasetNotFoundError(FlmkUserError, FileNotFoundError):
    """A dataset root is missing: the message names where we looked, the layout and where to get it."""

    def __init__(self, name: str, looked_in: Path | str, expected_layout: str, how_to_obtain: str, hint: str | None = None):
        msg = (
            f"{name} dataset not found at {looked_in}.\n"
            f"Expected layout:\n{expected_layout.rstrip()}\n"
            f"How to obtain it: {how_to_obtain}\n"
            f"{hint or data_hint(name)}"
        )
        super().__init__(msg)


class AnnotationError(FlmkUserError, ValueError):
    """A malformed annotation; the message names the file and line (``problem`` is the message without them)."""

    def __init__(self, path: Path | str, line: int | None, problem: str):
        where = f"{path}" + (f", line {line}" if line is not None else "")
        super().__init__(f"{where}: {problem}")
        self.path, self.line, self.problem = str(path), line, problem


class EmptySplitError(FlmkUserError, ValueError):
    """A split whose folders or lists hold no face; the message names where the reader looked."""


def check_points(points: np.ndarray, num_points: int | None, path: Path | str, line: int | None = None) -> np.ndarray:
    """``points`` if they are ``num_points`` finite (x, y) pairs, else an AnnotationError naming file and line."""
    points = np.asarray(points, dtype=np.float64)
    if num_points is not None and len(points) != num_points:
        raise AnnotationError(path, line, f"{len(points)} points, the layout expects {num_points}")
    bad = ~np.isfinite(points).all(axis=1)
    if bad.any():
        raise AnnotationError(path, line, f"non-finite coordinates (NaN or inf) at point(s) {np.flatnonzero(bad)[:10].tolist()} (0-based)")
    return points


FAR_OUTSIDE = 0.5  # [assume] a point more than half the image's side beyond its border is an annotation error


def far_outside(points: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Indices of points more than ``FAR_OUTSIDE`` of the (width, height) image beyond its border."""
    wh = np.asarray(size, dtype=np.float64)
    off = (points < -FAR_OUTSIDE * wh) | (points > (1 + FAR_OUTSIDE) * wh)
    return np.flatnonzero(off.any(axis=1))
