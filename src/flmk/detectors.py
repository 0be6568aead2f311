"""Face detectors for flmk.predict: one method, ``image (H, W, 3) RGB uint8 -> (boxes (K, 4), scores (K,))``.

Boxes are x1, y1, x2, y2 in original pixels, already in the convention the landmark models were trained
with: the bounding box of the face's landmarks (or the dataset's box), which the crop then widens by
the checkpoint's ``crop_scale`` (docs/ARCHITECTURE.md, "Faces in the wild"). A detector whose own boxes
follow another convention maps them with :class:`BoxMap`. Any class with this ``__call__`` plugs in by
``detector._target_=...``; :class:`GivenBoxes` serves boxes a user supplies (``boxes=<json or csv>``).
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np


@dataclass(frozen=True)
class BoxMap:
    """Detector box -> landmark box: centre shifted by (dx, dy) x side, width / height = (w, h) x side.

    ``side`` is the detector box's longer side.
    """

    dx: float = 0.0
    dy: float = 0.0
    w: float = 1.0
    h: float = 1.0

    def __call__(self, boxes: np.ndarray) -> np.ndarray:
        boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
        side = np.maximum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1])
        cx = (boxes[:, 0] + boxes[:, 2]) / 2 + self.dx * side
        cy = (boxes[:, 1] + boxes[:, 3]) / 2 + self.dy * side
        hw, hh = self.w * side / 2, self.h * side / 2
        return np.stack([cx - hw, cy - hh, cx + hw, cy + hh], axis=1)


class DlibHOG:
    """dlib's frontal-face HOG + linear SVM detector; its weights are compiled into the dlib wheel (offline).

    OpenCV 5 wheels no longer carry Haar cascades, so the built-in detector is dlib's (package dlib-bin).
    Images are scaled so that their longer side is at most ``max_side`` (speed), then upsampled
    ``upsample`` times (faces down to about 40 px at that scale). The default :class:`BoxMap` was fitted
    on the 68-point real fixture faces (median of 25 matched faces): dlib's square box sits above the chin
    and slightly inside the jaw line.
    """

    def __init__(self, max_side: int = 640, upsample: int = 1, threshold: float = -0.3,
                 box_map: BoxMap | dict | None = None):
        import dlib

        self.detector = dlib.get_frontal_face_detector()
        self.max_side, self.upsample, self.threshold = max_side, upsample, threshold
        self.box_map = BoxMap(**box_map) if isinstance(box_map, dict) else (box_map or BoxMap(0.012, 0.089, 0.948, 0.945))

    def __call__(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        scale = min(1.0, self.max_side / max(image.shape[:2]))
        small = cv2.resize(image, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA) if scale < 1 else image
        rects, scores, _ = self.detector.run(np.ascontiguousarray(small), self.upsample, self.threshold)
        boxes = np.array([[r.left(), r.top(), r.right(), r.bottom()] for r in rects], dtype=np.float64).reshape(-1, 4)
        order = np.argsort(-np.asarray(scores, dtype=np.float64))
        return self.box_map(boxes[order] / scale), np.asarray(scores, dtype=np.float64)[order]


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU matrix (len(a), len(b)) of x1 y1 x2 y2 boxes."""
    a, b = np.asarray(a, dtype=np.float64).reshape(-1, 4), np.asarray(b, dtype=np.float64).reshape(-1, 4)
    lo, hi = np.maximum(a[:, None, :2], b[None, :, :2]), np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(hi - lo, 0, None), axis=-1)
    area = lambda x: np.prod(x[:, 2:] - x[:, :2], axis=-1)  # noqa: E731
    return inter / (area(a)[:, None] + area(b)[None, :] - inter + 1e-12)


class BoxesError(ValueError):
    """A boxes= file that cannot be read; the message names the file and line."""


class GivenBoxes:
    """Boxes supplied by the user: ``boxes=<file.json | file.csv>``, one or more per image, in pixels.

    JSON: ``{"<image path or name>": [[x1, y1, x2, y2], ...], ...}``; a video's frames are keyed
    ``"<video name>:<frame>"`` (frames without an entry are tracked from the previous landmarks).
    CSV: a header ``image,x1,y1,x2,y2`` (optionally ``frame``), one row per face.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if not self.path.is_file():
            raise BoxesError(f"boxes={self.path}: no such file")
        self.boxes: dict[str, list[list[float]]] = {}
        if self.path.suffix.lower() == ".json":
            self._read_json()
        elif self.path.suffix.lower() == ".csv":
            self._read_csv()
        else:
            raise BoxesError(f"boxes={self.path}: expected a .json or .csv file")

    def _add(self, key: str, box, where: str) -> None:
        try:
            b = [float(v) for v in box]
        except (TypeError, ValueError):
            b = []
        if len(b) != 4 or not (b[2] > b[0] and b[3] > b[1]):
            raise BoxesError(f"{self.path}{where}: box {box!r} of {key!r} is not [x1, y1, x2, y2] with x2 > x1, y2 > y1")
        self.boxes.setdefault(key, []).append(b)

    def _read_json(self) -> None:
        try:
            data = json.loads(self.path.read_text())
        except json.JSONDecodeError as e:
            raise BoxesError(f"{self.path}, line {e.lineno}: not valid JSON ({e.msg})") from None
        if not isinstance(data, dict):
            raise BoxesError(f"{self.path}: expected an object mapping image names to lists of boxes")
        for key, boxes in data.items():
            boxes = boxes if boxes and isinstance(boxes[0], (list, tuple)) else [boxes]
            for b in boxes:
                self._add(str(key), b, "")

    def _read_csv(self) -> None:
        with self.path.open(newline="") as f:
            reader = csv.DictReader(f)
            missing = {"image", "x1", "y1", "x2", "y2"} - set(reader.fieldnames or [])
            if missing:
                raise BoxesError(f"{self.path}, line 1: header lacks {sorted(missing)} (expected image,x1,y1,x2,y2[,frame])")
            for line, row in enumerate(reader, start=2):
                key = row["image"] + (f":{int(row['frame'])}" if row.get("frame") not in (None, "") else "")
                self._add(key, [row["x1"], row["y1"], row["x2"], row["y2"]], f", line {line}")

    def lookup(self, image: str | Path, frame: int | None = None) -> np.ndarray | None:
        """The boxes given for an image (or a video frame): by full path, then by file name; None if absent."""
        p = Path(image)
        suffix = "" if frame is None else f":{frame}"
        for key in (f"{p}{suffix}", f"{p.name}{suffix}", f"{p.stem}{suffix}"):
            if key in self.boxes:
                return np.asarray(self.boxes[key], dtype=np.float64)
        return None
