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
IMAGE_MISSING = "image does not exist"


class ImageError(FlmkUserError, OSError):
    """A missing, unreadable, truncated or corrupt image; the message names the file."""

    def __init__(self, path: Path | str, problem: str):
        super().__init__(f"{path}: {problem}")
        self.path, self.problem = str(path), problem


def read_rgb(path: str | Path) -> np.ndarray:
    """RGB uint8 image; ImageError naming the file when it is missing or not a readable image."""
    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if img is None:
        raise ImageError(path, IMAGE_MISSING if not Path(path).exists() else "not a readable image")
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
        raise ImageError(path, IMAGE_MISSING)
    try:
        with Image.open(path) as im:
            fmt = im.format
            im.verify()
        with Image.open(path) as im:
            im.load()
            size = im.size
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise ImageError(path, f"truncated or not a readable image ({e})") from None
    if fmt == "JPEG" and not _jpeg_complete(path):
        raise ImageError(path, "truncated JPEG (no end-of-image marker)")
    return size


def write_atomic(path: str | Path, write: Callable[[Path], object]) -> Path:
    """``write(tmp)`` to a temporary name of this process beside ``path``, then rename it onto ``path``.

    Readers never see half a file, neither after a killed run nor while other processes (sweep rows,
    DDP ranks) fill the same cache: each writer has its own temporary file, and the rename is atomic.
    A writer that fails (returns False or raises, e.g. a check of the written file) leaves ``path`` as it
    was and removes its temporary file.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp{path.suffix}")
    try:
        if write(tmp) is False:
            raise OSError(f"could not write {tmp}")
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, path)
    return path


def _stamp(path: Path) -> str:
    st = path.stat()
    return f"{st.st_size} {st.st_mtime_ns}"


def _check(path: Path) -> tuple[int, int] | str:
    try:
        return verify_image(path)
    except ImageError as e:
        return e.problem


def verify_images(paths, cache_dir: str | Path | None = None, workers: int | None = None) -> dict[Path, tuple[int, int] | str]:
    """Every image decoded once, in parallel: path -> (width, height), or the problem (a string).

    Images that passed before are remembered per folder in ``<cache_dir>/verified/<hash>.json`` under
    their size and mtime, so a second run reads no pixel of an unchanged image.
    """
    import hashlib
    import json
    from concurrent.futures import ThreadPoolExecutor

    by_folder: dict[Path, list[Path]] = {}
    for p in dict.fromkeys(Path(p) for p in paths):
        by_folder.setdefault(p.parent, []).append(p)
    store = Path(cache_dir) / "verified" if cache_dir is not None else None
    results: dict[Path, tuple[int, int] | str] = {}
    todo: list[tuple[Path, str | None]] = []
    known: dict[Path, dict] = {}
    def shard(folder: Path) -> Path:
        return store / f"{hashlib.sha1(str(folder.resolve()).encode()).hexdigest()[:16]}.json"

    for folder, files in by_folder.items():
        shard_file = shard(folder) if store is not None else None
        known[folder] = json.loads(shard_file.read_text()) if shard_file is not None and shard_file.exists() else {}
        for p in files:
            stamp = _stamp(p) if p.is_file() else None
            hit = known[folder].get(p.name)
            if stamp is not None and hit and hit[0] == stamp:
                results[p] = (hit[1], hit[2])
            else:
                todo.append((p, stamp))
    with ThreadPoolExecutor(workers or min(16, os.cpu_count() or 1)) as pool:  # PIL decodes without the GIL
        for (p, stamp), result in zip(todo, pool.map(_check, [p for p, _ in todo])):
            results[p] = result
            if stamp is not None and not isinstance(result, str):
                known[p.parent][p.name] = [stamp, *result]
    if store is not None and todo:
        store.mkdir(parents=True, exist_ok=True)
        for folder in {p.parent for p, _ in todo}:
            text = json.dumps(known[folder])
            write_atomic(shard(folder), lambda tmp, text=text: tmp.write_text(text))
    return results


MAX_LISTED = 20  # bad files named in an error; the count is always complete


class BadFilesError(FlmkUserError):
    """Faces whose image is unreadable or whose points lie far outside it, found before training."""

    def __init__(self, problems: list[str], total: int):
        listed = "\n  ".join(problems[:MAX_LISTED])
        more = f"\n  ... and {len(problems) - MAX_LISTED} more" if len(problems) > MAX_LISTED else ""
        super().__init__(f"{len(problems)} of {total} faces have bad files (data.skip_bad=true trains without them; "
                         f"`python -m flmk.data.check` checks a dataset):\n  {listed}{more}")
        self.problems = problems


def bad_records(records, cache_dir: str | Path | None = None) -> dict[int, str]:
    """id(record) -> problem, for faces whose image does not decode or whose points lie far outside it."""
    from flmk.data.records import far_outside

    checked = verify_images([r.image for r in records], cache_dir)
    bad = {}
    for r in records:
        result = checked[Path(r.image)]
        if isinstance(result, str):
            bad[id(r)] = f"{r.image}: {result}"
        elif len(idx := far_outside(r.points, result)):
            bad[id(r)] = (f"{r.source or r.image}: point(s) {idx[:10].tolist()} (0-based) lie far outside the "
                          f"{result[0]}x{result[1]} image {Path(r.image).name}")
    return bad
