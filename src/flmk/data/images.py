"""Reading images: one function, one clear error naming the file."""

from __future__ import annotations

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
