"""Reading images with one clear error naming the file; writing cache files atomically."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np


def read_rgb(path: str | Path) -> np.ndarray:
    """RGB uint8 image; OSError naming the file when it is missing or not a readable image."""
    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if img is None:
        reason = "does not exist" if not Path(path).exists() else "is not a readable image"
        raise OSError(f"image {path} {reason}")
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def write_atomic(path: str | Path, write: Callable[[Path], object]) -> Path:
    """``write(tmp)`` to a temporary name of this process beside ``path``, then rename it onto ``path``.

    Readers never see half a file, neither after a killed run nor while other processes (sweep rows,
    DDP ranks) fill the same cache: each writer has its own temporary file, and the rename is atomic.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp{path.suffix}")
    if write(tmp) is False:
        raise OSError(f"could not write {tmp}")
    os.replace(tmp, path)
    return path
