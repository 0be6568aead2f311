"""Reading and verifying images with one clear error naming the file; writing cache files atomically."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from flmk.errors import FlmkUserError

JPEG_EOI = b"\xff\xd9"


class ImageError(FlmkUserError, OSError):
    """A missing, unreadable, truncated or corrupt image; the message names the file."""

    def __init__(self, path: Path | str, problem: str):
        super().__init__(f"image {path}: {problem}")
        self.path, self.problem = str(path), problem


def read_rgb(path: str | Path) -> np.ndarray:
    """RGB uint8 image; ImageError naming the file when it is missing or not a readable image."""
    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if img is None:
        raise ImageError(path, "does not exist" if not Path(path).exists() else "is not a readable image")
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def _jpeg_complete(path: Path) -> bool:
    """A JPEG's last KiB holds the end-of-image marker (a short trailer may follow it); a cut-off file's does not."""
    with open(path, "rb") as f:
        f.seek(max(0, path.stat().st_size - 1024))
        return JPEG_EOI in f.read()


def verify_image(path: str | Path) -> tuple[int, int]:
    """(width, height) of an image that decodes completely; ImageError naming the file otherwise.

    PIL checks the PNG chunk checksums (``verify``) and decodes every pixel (``load``): a truncated file
    or a broken data stream raises where cv2 would print a libjpeg warning and return grey pixels.
    """
    path = Path(path)
    if not path.is_file():
        raise ImageError(path, "does not exist")
    try:
        with Image.open(path) as im:
            fmt = im.format
            im.verify()
        with Image.open(path) as im:
            im.load()
            size = im.size
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise ImageError(path, f"is truncated or not a readable image ({e})") from None
    if fmt == "JPEG" and not _jpeg_complete(path):
        raise ImageError(path, "is a truncated JPEG (no end-of-image marker)")
    return size


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
