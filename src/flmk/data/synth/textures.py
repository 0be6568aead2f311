"""Random colour textures (for backgrounds and occluders) and cluttered backgrounds."""

from __future__ import annotations

import cv2
import numpy as np


def random_colour(rng: np.random.Generator, lo: int = 0, hi: int = 255) -> np.ndarray:
    return rng.integers(lo, hi + 1, 3).astype(np.float32)


def smooth_noise(rng: np.random.Generator, h: int, w: int, cells: int) -> np.ndarray:
    """Value noise in [0, 1]: a ``cells x cells`` random grid upsampled bicubically, (h, w) float32."""
    grid = rng.random((cells, cells)).astype(np.float32)
    return np.clip(cv2.resize(grid, (w, h), interpolation=cv2.INTER_CUBIC), 0, 1)


def _coords(h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    return np.mgrid[0:h, 0:w].astype(np.float32)


def gradient(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """Linear blend of two random colours along a random direction, (h, w, 3) float32."""
    yy, xx = _coords(h, w)
    a = rng.uniform(0, 2 * np.pi)
    t = np.cos(a) * xx / max(w, 1) + np.sin(a) * yy / max(h, 1)
    t = (t - t.min()) / max(float(np.ptp(t)), 1e-6)
    c0, c1 = random_colour(rng), random_colour(rng)
    return c0 + t[..., None] * (c1 - c0)


def texture(rng: np.random.Generator, h: int, w: int, base: np.ndarray | None = None) -> np.ndarray:
    """One of: flat + grain, stripes, checks, blotches, gradient; (h, w, 3) uint8."""
    base = random_colour(rng) if base is None else np.asarray(base, np.float32)
    other = random_colour(rng)
    yy, xx = _coords(h, w)
    kind = rng.integers(5)
    if kind == 0:
        img = np.broadcast_to(base, (h, w, 3)).copy()
    elif kind == 1:
        a, period = rng.uniform(0, np.pi), rng.uniform(3, 12)
        t = 0.5 + 0.5 * np.sin((np.cos(a) * xx + np.sin(a) * yy) * 2 * np.pi / period)
        img = base + t[..., None] * (other - base)
    elif kind == 2:
        cell = int(rng.integers(3, 10))
        t = ((xx // cell + yy // cell) % 2).astype(np.float32)
        img = base + t[..., None] * (other - base)
    elif kind == 3:
        t = smooth_noise(rng, h, w, int(rng.integers(3, 9)))
        img = base + t[..., None] * (other - base)
    else:
        img = gradient(rng, h, w)
    img = img + rng.normal(0, rng.uniform(2, 14), (h, w, 1)).astype(np.float32)
    return np.clip(img, 0, 255).astype(np.uint8)


def background(rng: np.random.Generator, size: int, n_shapes: tuple[int, int] = (2, 8)) -> np.ndarray:
    """A cluttered (size, size, 3) uint8 background: gradient, blotches and random shapes."""
    img = gradient(rng, size, size)
    img += (smooth_noise(rng, size, size, int(rng.integers(3, 12)))[..., None] - 0.5) * rng.uniform(20, 90)
    img = np.clip(img, 0, 255).astype(np.uint8)
    for _ in range(int(rng.integers(*n_shapes))):
        colour = tuple(int(c) for c in random_colour(rng))
        kind = rng.integers(4)
        p = rng.integers(-size // 4, size + size // 4, (2, 2))
        if kind == 0:
            cv2.rectangle(img, tuple(map(int, p[0])), tuple(map(int, p[1])), colour, -1)
        elif kind == 1:
            axes = tuple(int(a) for a in rng.integers(3, size // 3, 2))
            cv2.ellipse(img, tuple(map(int, p[0])), axes, float(rng.uniform(0, 180)), 0, 360, colour, -1, cv2.LINE_AA)
        elif kind == 2:
            cv2.line(img, tuple(map(int, p[0])), tuple(map(int, p[1])), colour, int(rng.integers(1, 6)), cv2.LINE_AA)
        else:
            poly = rng.integers(-size // 4, size + size // 4, (int(rng.integers(3, 6)), 2)).astype(np.int32)
            cv2.fillPoly(img, [poly], colour, cv2.LINE_AA)
    return img
