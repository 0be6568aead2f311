"""Writing synthetic samples in the real formats, and generating a dataset once, atomically."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import uuid
from pathlib import Path
from typing import Any, Callable

import cv2
import numpy as np

from flmk.data.sources.pts import write_pts

_PARAMS = "parameters: "


def write_annotation(pts_path: Path, points: np.ndarray, visible: np.ndarray) -> None:
    """``<stem>.pts`` (0-based points in, 1-based written) and ``<stem>.vis`` (one 0/1 per line, 1 = visible)."""
    write_pts(pts_path, points)
    pts_path.with_suffix(".vis").write_text("\n".join("1" if v else "0" for v in visible) + "\n")


def write_face(folder: Path, stem: str, image: np.ndarray, points: np.ndarray, visible: np.ndarray,
               jpeg_quality: int) -> None:
    """One 300W-style sample: ``<stem>.jpg`` + ``.pts`` + ``.vis``."""
    if not cv2.imwrite(str(folder / f"{stem}.jpg"), image, [cv2.IMWRITE_JPEG_QUALITY, int(jpeg_quality)]):
        raise OSError(f"could not write {folder / f'{stem}.jpg'}")
    write_annotation(folder / f"{stem}.pts", points, visible)


def write_readme(root: Path, text: str, params: dict[str, Any]) -> None:
    """README.txt: a description and a machine-readable parameters line (what :func:`ensure` compares)."""
    (root / "README.txt").write_text(text.rstrip() + "\n\n" + _PARAMS + json.dumps(params, sort_keys=True) + "\n")


def has_params(root: Path, params: dict[str, Any]) -> bool:
    readme = Path(root) / "README.txt"
    if not readme.is_file():
        return False
    line = _PARAMS + json.dumps(params, sort_keys=True)
    return line in readme.read_text().splitlines()


def ensure(root: str | Path, params: dict[str, Any], build: Callable[[Path], None]) -> Path:
    """Run ``build(folder)`` unless ``root/README.txt`` records ``params``.

    The data is built in a temporary sibling folder and renamed into place, so
    concurrent callers never see a half-written set: the first rename wins and
    the others discard their copy. A root with other parameters is replaced.
    """
    root = Path(root).expanduser()
    if has_params(root, params):
        return root
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}.tmp-", dir=root.parent))
    try:
        build(tmp)
        for _ in range(3):
            try:
                os.rename(tmp, root)  # atomic; fails when root exists and is not empty
                return root
            except OSError:
                if has_params(root, params):
                    return root  # another process finished first
                stale = root.parent / f".{root.name}.stale-{uuid.uuid4().hex}"
                try:
                    os.rename(root, stale)
                except FileNotFoundError:
                    continue
                shutil.rmtree(stale, ignore_errors=True)
        raise OSError(f"could not move the generated data into {root} (another process keeps replacing it)")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
