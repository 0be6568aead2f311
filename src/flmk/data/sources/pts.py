"""The iBUG .pts format (300W, 300VW, Menpo, Talking Face).

    version: 1
    n_points:  68
    {
    x y          <- 1-based pixel coordinates, one point per line
    ...
    }

Header spacing varies, the closing brace may lack a trailing newline. We
return 0-based coordinates (value - 1), the convention of every record.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from flmk.data.records import AnnotationError

_NPOINTS = re.compile(r"^\s*n_points\s*:\s*(\d+)\s*$")


def read_pts(path: str | Path, num_points: int | None = None) -> np.ndarray:
    """Read a .pts file into an (N, 2) float64 array of 0-based x, y.

    With ``num_points`` (the layout's), a header or body with another count is an AnnotationError;
    so is a NaN or infinite coordinate.
    """
    path = Path(path)
    try:
        lines = path.read_text().splitlines()
    except UnicodeDecodeError as e:
        raise AnnotationError(path, None, f"not a text .pts file ({e})") from e
    n = None
    start = None
    for i, line in enumerate(lines):
        m = _NPOINTS.match(line)
        if m:
            n, header_line = int(m.group(1)), i + 1
        if line.strip() == "{":
            start = i + 1
            break
    if n is None:
        raise AnnotationError(path, None, "no 'n_points: N' header line")
    if start is None:
        raise AnnotationError(path, None, "no opening '{' line")
    if num_points is not None and n != num_points:
        raise AnnotationError(path, header_line, f"n_points: {n}, the layout expects {num_points} points")
    pts = np.empty((n, 2), dtype=np.float64)
    for k in range(n):
        lineno = start + k
        if lineno >= len(lines) or lines[lineno].strip() == "}":
            raise AnnotationError(path, lineno + 1, f"expected {n} points, file ends after {k}")
        fields = lines[lineno].split()
        try:
            if len(fields) != 2:
                raise ValueError
            pts[k] = float(fields[0]), float(fields[1])
        except ValueError:
            raise AnnotationError(path, lineno + 1, f"expected two numbers 'x y', got {lines[lineno].strip()!r}") from None
        if not np.isfinite(pts[k]).all():
            raise AnnotationError(path, lineno + 1, f"non-finite coordinate {lines[lineno].strip()!r}")
    end = start + n
    if end >= len(lines) or lines[end].strip() != "}":
        extra = end < len(lines) and len(lines[end].split()) == 2
        more = f", found another point: the body holds more than n_points: {n}" if extra else ""
        raise AnnotationError(path, end + 1, f"expected closing '}}' after {n} points{more}")
    return pts - 1.0


def write_pts(path: str | Path, points: np.ndarray, version: str = "1") -> None:
    """Write 0-based (N, 2) points as a 1-based .pts file."""
    points = np.asarray(points, dtype=np.float64) + 1.0
    body = "\n".join(f"{x:.3f} {y:.3f}" for x, y in points)
    Path(path).write_text(f"version: {version}\nn_points:  {len(points)}\n{{\n{body}\n}}\n")
