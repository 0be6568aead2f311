"""Writing synthetic samples in the real formats, and generating a dataset once, atomically."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable

import cv2
import numpy as np
from filelock import FileLock

from flmk.data.sources.pts import write_pts

_PARAMS = "parameters: "
log = logging.getLogger("flmk.data.synth")


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


def variant(root: Path, params: dict[str, Any]) -> Path:
    """The sibling of ``root`` that holds the set with ``params`` when ``root`` holds another one."""
    digest = hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()[:10]
    return root.with_name(f"{root.name}-{digest}")


def ensure(root: str | Path, params: dict[str, Any], build: Callable[[Path], None]) -> Path:
    """The folder holding the set with ``params``: ``root``, or, when ``root`` holds other parameters,
    :func:`variant` (``<root>-<hash of params>``); ``build(folder)`` makes it on first use.

    One process builds at a time (a lock beside ``root``), in a temporary sibling folder that one
    rename publishes. A published set is never changed or replaced, so a run asking for other
    parameters never touches the files another run is reading; callers waiting on the lock find
    the finished set and get the same bytes.
    """
    root = Path(root).expanduser()
    for folder in (root, variant(root, params)):
        if has_params(folder, params):
            return folder
    root.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(root.parent / f".{root.name}.lock")):
        free = not root.exists() or (root.is_dir() and not any(root.iterdir()))
        target = root if free or has_params(root, params) else variant(root, params)
        if has_params(target, params):
            return target  # published while we waited
        if target != root:
            log.warning("%s holds a synthetic set with other parameters; this one goes to %s", root, target)
        for stale in root.parent.glob(f".{target.name}.tmp-*"):  # left by a killed builder
            shutil.rmtree(stale, ignore_errors=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=root.parent))
        try:
            build(tmp)
            try:
                os.rename(tmp, target)  # atomic; only onto a missing or empty folder
            except OSError as e:
                raise OSError(f"{target} exists without the README.txt of a synthetic set with these parameters; "
                              f"remove it or choose another root") from e
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return target
