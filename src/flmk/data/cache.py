"""Face-crop cache: each face cropped once to an S x S uint8 store on disk.

Training then reads a memory-mapped ``(M, S, S, 3)`` array instead of decoding
full-size photographs every epoch. A store lives in ``<cache_dir>/<key>/``,
where the key hashes the crop settings and the record list (image paths,
boxes, points), so any change builds a new store::

    crops.npy     (M, S, S, 3) uint8 RGB
    affines.npy   (M, 2, 3) float64, original pixels -> cache-crop pixels
    meta.json     settings, record count

A store is built by one process at a time (a file lock per key) in a temporary
folder and published with one rename; a published store never changes, so
readers that memory-map it (other runs, DDP ranks, loader workers) are safe,
and runs that ask for the same store at once all get the same bytes.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

import cv2
import numpy as np

from filelock import FileLock

from flmk.data.images import read_rgb
from flmk.data.records import FaceRecord
from flmk.data.transforms import crop_affine

CACHE_VERSION = 1


def warp_crop(image: np.ndarray, affine: np.ndarray, size: int, interpolation: int = cv2.INTER_LINEAR) -> np.ndarray:
    """cv2.warpAffine with anti-aliasing: halve the image (pyrDown) while the affine shrinks it more than 2x."""
    a = np.array(affine, dtype=np.float64)
    while np.sqrt(abs(np.linalg.det(a[:, :2]))) < 0.5 and min(image.shape[:2]) > 1:
        image = cv2.pyrDown(image)
        a[:, 2] += a[:, :2] @ np.array([0.5, 0.5])  # x = 2 x_half + 0.5 (pixel centres at integers)
        a[:, :2] *= 2
    return cv2.warpAffine(image, a, (size, size), flags=interpolation, borderMode=cv2.BORDER_CONSTANT)


class CropCache:
    """``CropCache(cache_dir, crop_size, margin).get(records) -> (crops memmap, affines)``.

    Each crop is the square of side ``(1 + margin) * max(box w, h)`` centred on
    the face box (``transforms.crop_affine`` with ``crop_scale = 1 + margin``);
    the data module composes its augmentation affine after the cached one.
    """

    def __init__(self, cache_dir: str | Path, crop_size: int = 256, margin: float = 0.25, interpolation: int = cv2.INTER_LINEAR):
        self.cache_dir = Path(cache_dir).expanduser()
        self.crop_size = int(crop_size)
        self.margin = float(margin)
        self.interpolation = int(interpolation)
        self.last_built = False

    def key(self, records: list[FaceRecord]) -> str:
        h = hashlib.sha256()
        settings = {"v": CACHE_VERSION, "size": self.crop_size, "margin": self.margin, "interp": self.interpolation}
        h.update(json.dumps(settings, sort_keys=True).encode())
        for r in records:
            h.update(str(r.image).encode())
            h.update(np.ascontiguousarray(r.box_or_points_box(), dtype=np.float64).tobytes())
        return h.hexdigest()[:16]

    def get(self, records: list[FaceRecord]) -> tuple[np.ndarray, np.ndarray]:
        key = self.key(records)
        folder = self.cache_dir / key
        self.last_built = False
        if not (folder / "meta.json").exists():
            self.cache_dir.mkdir(parents=True, exist_ok=True)
            with FileLock(str(self.cache_dir / f".{key}.lock")):
                if not (folder / "meta.json").exists():  # nobody published it while we waited
                    self._publish(records, folder)
                    self.last_built = True
        return np.load(folder / "crops.npy", mmap_mode="r"), np.load(folder / "affines.npy")

    def _publish(self, records: list[FaceRecord], folder: Path) -> None:
        """Build in a temporary folder and rename it into place (under the key's lock)."""
        for stale in [folder, *self.cache_dir.glob(f".{folder.name}.tmp-*")]:  # left by a killed builder
            shutil.rmtree(stale, ignore_errors=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.tmp-", dir=self.cache_dir))
        try:
            self._build(records, tmp)
            os.rename(tmp, folder)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def _build(self, records: list[FaceRecord], folder: Path) -> None:
        S = self.crop_size
        crops = np.lib.format.open_memmap(folder / "crops.npy", mode="w+", dtype=np.uint8, shape=(len(records), S, S, 3))
        affines = np.empty((len(records), 2, 3))
        for i, r in enumerate(records):
            affines[i] = crop_affine(r.box_or_points_box(), S, crop_scale=1.0 + self.margin)
            crops[i] = warp_crop(read_rgb(r.image), affines[i], S, self.interpolation)
        crops.flush()
        del crops
        np.save(folder / "affines.npy", affines)
        meta = {"version": CACHE_VERSION, "crop_size": S, "margin": self.margin, "count": len(records)}
        (folder / "meta.json").write_text(json.dumps(meta))
