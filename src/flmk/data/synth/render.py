"""Draw a face that sits on its projected landmarks, then light, blur and add noise.

Drawing order is a painter's algorithm: hair and neck, the skin (convex hull
of jaw, forehead and nose), the jaw line, then brows, eyes, mouth and nose
sorted far to near by their mean depth, so a turned head hides its far eye
behind the nose. Colours are BGR (cv2). Points are 0-based pixel centres,
drawn with 4 fractional bits (cv2 ``shift=4``) and anti-aliasing.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from flmk.layouts import get_layout

_SHIFT = 4
_AA = cv2.LINE_AA

_LIGHT_SKIN = np.array([150.0, 180.0, 228.0])
_DARK_SKIN = np.array([55.0, 85.0, 125.0])
_HAIR = np.array([[20, 20, 25], [30, 45, 70], [60, 100, 150], [150, 150, 150], [40, 60, 110]], np.float64)
_IRIS = np.array([[20, 40, 70], [110, 80, 40], [60, 90, 50], [40, 40, 40]], np.float64)

_GROUPS = {k: np.array(v) for k, v in get_layout("68").groups.items() if k != "jaw"}


def _fx(points: np.ndarray) -> np.ndarray:
    """Float pixel points -> cv2 fixed-point int32 (shift=4)."""
    return np.round(np.asarray(points) * (1 << _SHIFT)).astype(np.int32)


def _c(colour: np.ndarray) -> tuple[float, ...]:
    return tuple(float(v) for v in np.clip(colour, 0, 255))


def _hull(points: np.ndarray) -> np.ndarray:
    return cv2.convexHull(_fx(points))


@dataclass(frozen=True)
class Appearance:
    """Colours of one identity (BGR)."""

    skin: np.ndarray
    hair: np.ndarray
    brow: np.ndarray
    lip: np.ndarray
    iris: np.ndarray
    has_hair: bool


def sample_appearance(rng: np.random.Generator) -> Appearance:
    skin = _LIGHT_SKIN + rng.uniform(0, 1) * (_DARK_SKIN - _LIGHT_SKIN) + rng.normal(0, 8, 3)
    hair = _HAIR[rng.integers(len(_HAIR))] + rng.normal(0, 10, 3)
    lip = skin * np.array([0.62, 0.58, 0.92]) + np.array([0, 0, 15]) + rng.normal(0, 6, 3)
    return Appearance(
        skin=skin,
        hair=hair,
        brow=np.minimum(hair, skin * 0.45),
        lip=lip,
        iris=_IRIS[rng.integers(len(_IRIS))] + rng.normal(0, 10, 3),
        has_hair=bool(rng.random() < 0.85),
    )


def _draw_eye(img: np.ndarray, eye: np.ndarray, app: Appearance, unit: float) -> None:
    """Sclera polygon, iris and pupil clipped to it (centred on the eye centroid), lid outline."""
    width = float(np.linalg.norm(eye[3] - eye[0]))
    centre = eye.mean(0)
    x0, y0 = np.floor(eye.min(0) - 2).astype(int)
    x1, y1 = np.ceil(eye.max(0) + 3).astype(int)
    h, w = img.shape[:2]
    x0, y0, x1, y1 = max(x0, 0), max(y0, 0), min(x1, w), min(y1, h)
    if x1 <= x0 or y1 <= y0:
        return
    roi = img[y0:y1, x0:x1]
    off = np.array([x0, y0])
    sclera = np.zeros(roi.shape[:2], np.uint8)
    cv2.fillPoly(sclera, [_fx(eye - off)], 255, _AA, _SHIFT)
    iris = np.zeros_like(sclera)
    r = max(0.42 * width, 1.0)
    cv2.circle(iris, tuple(_fx(centre - off)), int(r * (1 << _SHIFT)), 255, -1, _AA, _SHIFT)
    pupil = np.zeros_like(sclera)
    cv2.circle(pupil, tuple(_fx(centre - off)), int(0.45 * r * (1 << _SHIFT)), 255, -1, _AA, _SHIFT)
    a_sclera = sclera.astype(np.float32)[..., None] / 255
    a_iris = a_sclera * iris.astype(np.float32)[..., None] / 255
    a_pupil = a_sclera * pupil.astype(np.float32)[..., None] / 255
    out = roi.astype(np.float32)
    out += a_sclera * (np.array([225, 230, 232], np.float32) - out)
    out += a_iris * (app.iris.astype(np.float32) - out)
    out += a_pupil * (np.array([12, 10, 10], np.float32) - out)
    roi[:] = np.clip(out, 0, 255).astype(np.uint8)
    lash = _c(app.brow * 0.6)
    thick = max(1, int(round(0.018 * unit)))
    cv2.polylines(img, [_fx(eye[[0, 1, 2, 3]])], False, lash, thick, _AA, _SHIFT)
    cv2.polylines(img, [_fx(eye[[3, 4, 5, 0]])], False, _c(app.skin * 0.6), 1, _AA, _SHIFT)


def _draw_mouth(img: np.ndarray, pts: np.ndarray, app: Appearance, unit: float) -> None:
    outer, inner = pts[48:60], pts[60:68]
    cv2.fillPoly(img, [_fx(outer)], _c(app.lip), _AA, _SHIFT)
    gap = np.linalg.norm(inner[[1, 2, 3]] - inner[[7, 6, 5]], axis=1).mean()
    if gap > 0.02 * unit:
        cv2.fillPoly(img, [_fx(inner)], (30, 25, 45), _AA, _SHIFT)
        if gap > 0.05 * unit:  # teeth under the upper lip
            teeth = np.concatenate([inner[0:5], inner[[3, 2, 1]] * 0.65 + inner[[5, 6, 7]] * 0.35])
            cv2.fillPoly(img, [_fx(teeth)], (215, 225, 230), _AA, _SHIFT)
    cv2.polylines(img, [_fx(inner[[0, 1, 2, 3, 4]])], False, _c(app.lip * 0.45), 1, _AA, _SHIFT)


def _draw_nose(img: np.ndarray, pts: np.ndarray, app: Appearance, unit: float) -> None:
    tip = pts[33]
    wings = np.stack([pts[31] + 0.25 * (pts[31] - tip), pts[35] + 0.25 * (pts[35] - tip)])
    cv2.fillPoly(img, [_hull(np.concatenate([pts[27:36], wings]))], _c(app.skin * 0.93), _AA, _SHIFT)
    cv2.polylines(img, [_fx(pts[27:31])], False, _c(app.skin * 0.8), 1, _AA, _SHIFT)
    cv2.polylines(img, [_fx(np.concatenate([wings[:1], pts[31:36], wings[1:]]))], False, _c(app.skin * 0.62), 1, _AA, _SHIFT)
    axes = int(max(0.035 * unit, 1.0) * (1 << _SHIFT)), int(max(0.018 * unit, 0.6) * (1 << _SHIFT))
    for a, b in ((32, 31), (34, 35)):
        centre = 0.6 * pts[a] + 0.4 * pts[b]
        angle = float(np.degrees(np.arctan2(*(pts[35] - pts[31])[::-1])))
        cv2.ellipse(img, tuple(_fx(centre)), axes, angle, 0, 360, _c(app.skin * 0.3), -1, _AA, _SHIFT)


def draw_face(img: np.ndarray, pts: np.ndarray, depth: np.ndarray, extras: dict[str, np.ndarray],
              app: Appearance, unit: float) -> None:
    """Draw in place. ``pts`` (68, 2) image points, ``depth`` (68,) towards the camera,
    ``extras`` projected forehead / hair / neck vertices, ``unit`` pixels per face unit."""
    if app.has_hair:
        cv2.fillPoly(img, [_hull(np.concatenate([extras["hair"], extras["forehead"]]))], _c(app.hair), _AA, _SHIFT)
    cv2.fillPoly(img, [_fx(extras["neck"])], _c(app.skin * 0.8), _AA, _SHIFT)
    hull = _hull(np.concatenate([pts[0:17], pts[27:36], extras["forehead"]]))
    cv2.fillPoly(img, [hull], _c(app.skin), _AA, _SHIFT)
    # the jaw line only where it is the silhouette (a turned head hides its far cheek's contour)
    mids = (pts[0:16] + pts[1:17]) / 2 * (1 << _SHIFT)
    edge = [abs(cv2.pointPolygonTest(hull, (float(x), float(y)), True)) < 1.5 * (1 << _SHIFT) for x, y in mids]
    jaw = _fx(pts[0:17])
    cv2.polylines(img, [jaw[i:i + 2] for i in np.flatnonzero(edge)], False, _c(app.skin * 0.75), 1, _AA, _SHIFT)
    brow_thick = max(1, int(round(0.04 * unit)))
    for name in sorted(_GROUPS, key=lambda g: depth[_GROUPS[g]].mean()):
        idx = _GROUPS[name]
        if name.endswith("brow"):
            cv2.polylines(img, [_fx(pts[idx])], False, _c(app.brow), brow_thick, _AA, _SHIFT)
        elif name.endswith("eye"):
            _draw_eye(img, pts[idx], app, unit)
        elif name == "mouth":
            _draw_mouth(img, pts, app, unit)
        else:
            _draw_nose(img, pts, app, unit)


@dataclass(frozen=True)
class Photometric:
    """Camera effects of one image (or one whole video): light gradient, blur, sensor noise, JPEG quality."""

    light_angle: float
    light_strength: float
    blur_sigma: float
    noise_sigma: float
    jpeg_quality: int

    def apply(self, img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        h, w = img.shape[:2]
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        t = (np.cos(self.light_angle) * (xx / w - 0.5) + np.sin(self.light_angle) * (yy / h - 0.5))
        out = img.astype(np.float32) * (1 + self.light_strength * t)[..., None]
        if self.blur_sigma > 0.3:
            out = cv2.GaussianBlur(out, (0, 0), self.blur_sigma)
        out += rng.normal(0, self.noise_sigma, out.shape).astype(np.float32)
        return np.clip(out, 0, 255).astype(np.uint8)


def sample_photometric(rng: np.random.Generator, max_blur: float = 1.2, max_noise: float = 8.0) -> Photometric:
    return Photometric(
        light_angle=float(rng.uniform(0, 2 * np.pi)),
        light_strength=float(rng.uniform(0.0, 0.8)),
        blur_sigma=float(rng.uniform(0, max_blur)) if rng.random() < 0.6 else 0.0,
        noise_sigma=float(rng.uniform(0, max_noise)),
        jpeg_quality=int(rng.integers(75, 96)),
    )
