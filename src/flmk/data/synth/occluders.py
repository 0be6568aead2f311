"""External occluders (textured blobs, hands, bars, a lower-face mask) and the visibility they leave.

An :class:`Occluder` is a binary mask and a texture in its own patch plus the
patch's top-left corner, so a video can move it by pasting at an offset. A
landmark is hidden (visibility 0) exactly when a pasted mask covers its pixel
(the rounded 0-based point); self-occlusion by the head is not marked.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import cv2
import numpy as np

from flmk.data.synth.textures import texture

OCCLUDER_KINDS = ("blob", "hand", "bar", "mask")

_MASK_COLOURS = np.array([[235, 225, 200], [230, 230, 230], [40, 40, 40], [200, 170, 120]], np.float64)


@dataclass
class Occluder:
    """A textured shape: ``mask`` (h, w) bool, ``texture`` (h, w, 3) uint8, ``origin`` top-left (x, y) in pixels."""

    mask: np.ndarray
    texture: np.ndarray
    origin: np.ndarray

    def paste(self, img: np.ndarray, covered: np.ndarray, offset: np.ndarray | tuple[float, float] = (0, 0)) -> None:
        """Paint into ``img`` and mark ``covered`` (H, W) bool, in place; the patch is clipped to the image."""
        x0, y0 = np.round(self.origin + np.asarray(offset)).astype(int)
        h, w = self.mask.shape
        H, W = covered.shape
        ix0, iy0, ix1, iy1 = max(x0, 0), max(y0, 0), min(x0 + w, W), min(y0 + h, H)
        if ix1 <= ix0 or iy1 <= iy0:
            return
        m = self.mask[iy0 - y0:iy1 - y0, ix0 - x0:ix1 - x0]
        img[iy0:iy1, ix0:ix1][m] = self.texture[iy0 - y0:iy1 - y0, ix0 - x0:ix1 - x0][m]
        covered[iy0:iy1, ix0:ix1] |= m


def visibility(points: np.ndarray, covered: np.ndarray) -> np.ndarray:
    """(N,) bool: False where the rounded point lies on a covered pixel; points off the image count as visible."""
    xy = np.round(points).astype(int)
    H, W = covered.shape
    inside = (xy[:, 0] >= 0) & (xy[:, 0] < W) & (xy[:, 1] >= 0) & (xy[:, 1] < H)
    vis = np.ones(len(points), bool)
    vis[inside] = ~covered[xy[inside, 1], xy[inside, 0]]
    return vis


def _grain(rng: np.random.Generator, colour: np.ndarray, row_gain: np.ndarray, w: int) -> np.ndarray:
    """A flat ``colour`` with a per-row gain (pleats) and fine noise, (len(row_gain), w, 3) uint8."""
    img = colour * row_gain[:, None, None] + rng.normal(0, 5, (len(row_gain), w, 3))
    return np.clip(img, 0, 255).astype(np.uint8)


def _ellipse(centre: np.ndarray, axes: tuple[float, float], angle: float, n: int = 28) -> np.ndarray:
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)
    c, s = np.cos(angle), np.sin(angle)
    x, y = axes[0] * np.cos(t), axes[1] * np.sin(t)
    return centre + np.stack([c * x - s * y, s * x + c * y], 1)


def _build(rng: np.random.Generator, polys: list[np.ndarray], lines: list[tuple[np.ndarray, np.ndarray, float]] = (),
           paint: Callable[[int, int], np.ndarray] | None = None) -> Occluder:
    """Rasterise polygons and thick segments (image coordinates) into a patch; ``paint(h, w)`` gives its
    texture (default: a random :func:`texture`)."""
    allp = np.concatenate(polys + [np.stack([a, b]) for a, b, _ in lines])
    pad = 2 + max([t for *_, t in lines], default=0)
    origin = np.floor(allp.min(0) - pad)
    h, w = (np.ceil(allp.max(0) + pad) - origin + 1).astype(int)[::-1]
    mask = np.zeros((h, w), np.uint8)
    for p in polys:
        cv2.fillPoly(mask, [np.round((p - origin) * 16).astype(np.int32)], 255, cv2.LINE_8, 4)
    for a, b, t in lines:
        cv2.line(mask, tuple(np.round(a - origin).astype(int)), tuple(np.round(b - origin).astype(int)), 255, max(int(t), 1))
    tex = paint(h, w) if paint is not None else texture(rng, h, w)
    return Occluder(mask > 0, tex, origin)


def blob(rng: np.random.Generator, centre: np.ndarray, size: float) -> Occluder:
    """A textured ellipse or star-shaped polygon about ``size`` pixels across."""
    if rng.random() < 0.5:
        poly = _ellipse(centre, tuple(size / 2 * rng.uniform(0.5, 1.0, 2)), rng.uniform(0, np.pi))
    else:
        k = int(rng.integers(3, 9))
        ang = np.sort(rng.uniform(0, 2 * np.pi, k))
        r = size / 2 * rng.uniform(0.5, 1.0, k)
        poly = centre + np.stack([r * np.cos(ang), r * np.sin(ang)], 1)
    return _build(rng, [poly])


def hand(rng: np.random.Generator, centre: np.ndarray, size: float, skin: np.ndarray) -> Occluder:
    """A hand-like blob: palm ellipse, four fingers and a thumb (thick segments), skin-coloured."""
    up = rng.uniform(0, 2 * np.pi)
    u = np.array([np.cos(up), np.sin(up)])
    v = np.array([-u[1], u[0]])
    palm_w, palm_h = 0.5 * size, 0.6 * size
    palm = _ellipse(centre, (palm_h / 2, palm_w / 2), up)
    finger_w = 0.16 * size
    lines = []
    for i, frac in enumerate(np.linspace(-0.36, 0.36, 4)):
        base = centre + u * palm_h * 0.3 + v * palm_w * frac
        length = size * (0.45 + 0.1 * (1 - abs(i - 1.5) / 1.5)) * rng.uniform(0.85, 1.1)
        bend = rng.uniform(-0.15, 0.15)
        lines.append((base, base + length * (u + bend * v) / np.hypot(1, bend), finger_w))
    side = 1 if rng.random() < 0.5 else -1
    thumb0 = centre + v * side * palm_w * 0.4
    lines.append((thumb0, thumb0 + size * 0.4 * (0.5 * u + side * 0.85 * v), finger_w * 1.1))
    colour = skin + rng.normal(0, 12, 3)
    return _build(rng, [palm], lines, lambda h, w: _grain(rng, colour, np.ones(h), w))


def bar(rng: np.random.Generator, centre: np.ndarray, size: float) -> Occluder:
    """A long textured rectangle (pole, microphone, strap) through ``centre``."""
    a = rng.uniform(0, np.pi)
    u, v = np.array([np.cos(a), np.sin(a)]), np.array([-np.sin(a), np.cos(a)])
    half_len, half_w = size * rng.uniform(0.8, 1.6), size * rng.uniform(0.08, 0.2)
    poly = centre + np.array([u * half_len + v * half_w, -u * half_len + v * half_w,
                              -u * half_len - v * half_w, u * half_len - v * half_w])
    return _build(rng, [poly])


def face_mask(rng: np.random.Generator, points: np.ndarray) -> Occluder:
    """A lower-face (surgical / cloth) mask: polygon jaw 2..14 up to the nose bridge point 28 (IMPLEMENTATION_NOTES §6.6),
    with straps to the jaw ends 0 and 16."""
    top = points[28]
    poly = np.concatenate([points[2:15], [0.5 * (points[14] + top) + 0.1 * (points[15] - points[14]), top,
                                          0.5 * (points[2] + top) + 0.1 * (points[1] - points[2])]])
    thick = max(1.0, 0.015 * float(np.ptp(points[:, 0])))
    lines = [(points[3], points[0], thick), (points[13], points[16], thick)]
    colour = _MASK_COLOURS[rng.integers(len(_MASK_COLOURS))] + rng.normal(0, 8, 3)
    period = rng.uniform(3, 7)
    return _build(rng, [poly], lines, lambda h, w: _grain(rng, colour, 1 + 0.08 * np.sin(np.arange(h) * 2 * np.pi / period), w))


def shape_occluder(rng: np.random.Generator, kind: str, centre: np.ndarray, size: float, skin: np.ndarray) -> Occluder:
    """A free-standing occluder ("blob", "hand" or "bar") about ``size`` pixels across at ``centre``."""
    if kind == "blob":
        return blob(rng, centre, size)
    if kind == "hand":
        return hand(rng, centre, size * 1.3, skin)
    if kind == "bar":
        return bar(rng, centre, size)
    raise ValueError(f"unknown occluder kind {kind!r}; known: blob, hand, bar (and mask, fitted to a face)")


def random_occluder(rng: np.random.Generator, kind: str, points: np.ndarray, skin: np.ndarray,
                    size_range: tuple[float, float] = (0.25, 0.6)) -> Occluder:
    """An occluder of ``kind`` (one of OCCLUDER_KINDS) near a random landmark, sized relative to the face box."""
    if kind == "mask":
        return face_mask(rng, points)
    face = float(np.ptp(points, axis=0).max())
    size = face * rng.uniform(*size_range)
    centre = points[rng.integers(len(points))] + rng.normal(0, 0.1 * face, 2)
    return shape_occluder(rng, kind, centre, size, skin)
