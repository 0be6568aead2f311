"""Any source's faces wearing a synthetic face mask (flmk.data.mask), for masked test sets such as
SRN Table 9's masked 300VW clips.

``MaskedSource(inner, cache_dir, seed)`` reads the inner source's split, writes each face once with
a mask drawn over its lower half into ``cache_dir/<split>/`` (keyed by seed), and returns the records
with the masked image and the points under the mask marked occluded. A frame's mask is seeded by
its video and frame number, so a clip keeps one mask colour per video. The masks are our own
([assume] IMPLEMENTATION_NOTES §6.6): ``comparable`` is False, and reports say so.
"""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path

import cv2
import numpy as np

from flmk.data.images import read_rgb, write_atomic
from flmk.data.mask import apply_mask
from flmk.data.records import FaceRecord


class MaskedSource:
    comparable = False

    def __init__(self, inner, cache_dir: str | Path, seed: int = 0, bridge: int = 28, name: str | None = None):
        self.inner, self.seed, self.bridge = inner, seed, bridge
        self.cache_dir = Path(cache_dir).expanduser()
        self.layout = inner.layout
        self.name = name or f"masked {inner.name}"

    def splits(self) -> list[str]:
        return self.inner.splits()

    def prepare(self) -> None:
        if hasattr(self.inner, "prepare"):
            self.inner.prepare()

    def _rng(self, r: FaceRecord) -> np.random.Generator:
        key = f"{r.video}" if r.video is not None else str(r.image)
        return np.random.default_rng([self.seed, int(hashlib.sha1(key.encode()).hexdigest()[:8], 16)])

    def read(self, split: str) -> list[FaceRecord]:
        out_dir = self.cache_dir / f"seed{self.seed}" / split
        out_dir.mkdir(parents=True, exist_ok=True)
        masked = []
        for r in self.inner.read(split):
            stem = f"{r.video}_{r.frame:06d}" if r.video is not None else Path(r.image).stem
            path, vis_path = out_dir / f"{stem}.jpg", out_dir / f"{stem}.vis.npy"
            if not (path.exists() and vis_path.exists()):
                image, visible = apply_mask(read_rgb(r.image), r.points, self._rng(r), self.bridge)
                bgr = cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
                write_atomic(path, lambda tmp: cv2.imwrite(str(tmp), bgr, [cv2.IMWRITE_JPEG_QUALITY, 95]))
                write_atomic(vis_path, lambda tmp: np.save(tmp, visible))
            visible = np.load(vis_path)
            if r.visible is not None:
                visible = visible & r.visible
            masked.append(dataclasses.replace(r, image=path, visible=visible,
                                              attributes={**r.attributes, "masked": True}))
        return masked
