"""Synthetic clips written like 300VW: ``<video_id>/vid.avi`` + ``<video_id>/annot/000001.pts`` (+ ``.vis``).

Each clip keeps one identity, appearance, background and camera; pose,
expression and position follow smooth trajectories (sums of low-frequency
sinusoids), the eyes blink now and then, and occluders cross the frame in
straight lines, entering and leaving. ``splits.json`` lists the clip ids per
split: ``train`` and the test categories ``cat1`` (mild), ``cat2`` (moderate)
and ``cat3`` (heavier occlusion, faster motion), echoing 300VW's scenarios.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterable, Iterator

import cv2
import numpy as np

from flmk.data.synth.face import Expression, apply_expression, extra_vertices, project, rotation, sample_identity
from flmk.data.synth.files import ensure, write_annotation, write_readme
from flmk.data.synth.occluders import Occluder, shape_occluder, visibility
from flmk.data.synth.render import draw_face, sample_appearance, sample_photometric
from flmk.data.synth.textures import background

VIDEO_VERSION = 1
FPS = 25


@dataclass(frozen=True)
class Motion:
    """How a category moves and is occluded (angles in degrees, speeds in Hz, sizes as fractions of the face)."""

    max_hz: float                      # highest trajectory frequency
    pose_amp: tuple[float, float, float]  # yaw, pitch, roll swing amplitudes
    drift: float                       # position swing, fraction of the image side
    occluders: tuple[int, int]         # inclusive range of occluders crossing the clip
    occluder_size: tuple[float, float]
    crossing_s: tuple[float, float]    # seconds an occluder takes to cross the frame


CATEGORIES: dict[str, Motion] = {
    "train": Motion(0.5, (35, 12, 12), 0.06, (0, 2), (0.3, 0.7), (1.0, 2.5)),
    "cat1": Motion(0.3, (20, 8, 6), 0.04, (0, 1), (0.3, 0.5), (1.5, 2.5)),
    "cat2": Motion(0.5, (35, 12, 12), 0.06, (1, 1), (0.3, 0.6), (1.0, 2.0)),
    "cat3": Motion(0.9, (50, 18, 20), 0.08, (2, 3), (0.4, 0.8), (0.6, 1.2)),
}


def smooth_trajectory(rng: np.random.Generator, frames: int, amplitude: float, max_hz: float, k: int = 3) -> np.ndarray:
    """(frames,) sum of ``k`` sinusoids with random frequencies in [0.05, max_hz] Hz, peak <= ``amplitude``."""
    t = np.arange(frames) / FPS
    hz = rng.uniform(0.05, max_hz, k)
    phase = rng.uniform(0, 2 * np.pi, k)
    w = rng.dirichlet(np.ones(k))
    return amplitude * (w[:, None] * np.sin(2 * np.pi * hz[:, None] * t + phase[:, None])).sum(0)


def _blinks(rng: np.random.Generator, frames: int) -> np.ndarray:
    """(frames,) eye closure: a 5-frame close-open profile about every 2-5 s."""
    closure = np.zeros(frames)
    t = int(rng.integers(0, 3 * FPS))
    while t < frames:
        for dt, c in zip(range(-2, 3), (0.5, 0.9, 1.0, 0.9, 0.5)):
            if 0 <= t + dt < frames:
                closure[t + dt] = c
        t += int(rng.integers(2 * FPS, 5 * FPS))
    return closure


def _crossing(rng: np.random.Generator, frames: int, size: int, motion: Motion, occ_size: float) -> np.ndarray:
    """(frames, 2) straight path through the image centre region, outside the image before and after."""
    a = rng.uniform(0, 2 * np.pi)
    d = np.array([np.cos(a), np.sin(a)])
    through = size / 2 + rng.normal(0, 0.12 * size, 2)
    reach = size * 0.75 + occ_size
    duration = rng.uniform(*motion.crossing_s) * FPS
    t0 = rng.uniform(-0.3 * duration, max(frames - 0.7 * duration, 1))
    u = (np.arange(frames) - t0) / duration  # 0 = entering, 1 = gone
    return through + (2 * u[:, None] - 1) * reach * d


def _occluders(rng: np.random.Generator, frames: int, size: int, face: float, skin: np.ndarray,
               motion: Motion) -> list[tuple[Occluder, np.ndarray]]:
    out = []
    for _ in range(int(rng.integers(motion.occluders[0], motion.occluders[1] + 1))):
        s = face * rng.uniform(*motion.occluder_size)
        kind = ("blob", "hand", "bar")[rng.integers(3)]
        occ = shape_occluder(rng, kind, np.zeros(2), s, skin)  # centred on 0: pasted at the path point
        out.append((occ, _crossing(rng, frames, size, motion, s)))
    return out


def render_clip(rng: np.random.Generator, frames: int, size: int,
                motion: Motion) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Yield (frame BGR uint8, points (68, 2), visible (68,)) for one clip."""
    identity = sample_identity(rng)
    app = sample_appearance(rng)
    photo = sample_photometric(rng, max_blur=0.8, max_noise=5.0)
    bg = background(rng, size)
    base = rng.normal(0, [10, 5, 5])
    pose = np.stack([base[i] + smooth_trajectory(rng, frames, motion.pose_amp[i], motion.max_hz) for i in range(3)], 1)
    pose = np.clip(pose, [-60, -25, -30], [60, 25, 30])
    mouth = np.clip(smooth_trajectory(rng, frames, 1.2, motion.max_hz) + rng.uniform(-0.6, 0.2), 0, 1)
    smile = smooth_trajectory(rng, frames, 0.7, motion.max_hz / 2) + 0.3
    brow = smooth_trajectory(rng, frames, 0.6, motion.max_hz / 2)
    blink = _blinks(rng, frames)
    frontal, _ = project(identity, np.eye(3), 1.0, np.zeros(2))
    scale = rng.uniform(0.40, 0.60) * size / np.ptp(frontal, axis=0).max()
    centre = size / 2 + np.stack([smooth_trajectory(rng, frames, motion.drift * size, motion.max_hz) for _ in range(2)], 1)
    occluders = _occluders(rng, frames, size, scale, app.skin, motion)
    for t in range(frames):
        shape = apply_expression(identity, Expression(mouth[t], smile[t], blink[t], blink[t], brow[t]))
        rot = rotation(*pose[t])
        pts, depth = project(shape, rot, scale, centre[t])
        extras = {k: project(v, rot, scale, centre[t])[0] for k, v in extra_vertices(shape).items()}
        img = bg.copy()
        draw_face(img, pts, depth, extras, app, scale)
        covered = np.zeros((size, size), bool)
        for occ, path in occluders:
            occ.paste(img, covered, path[t])
        yield photo.apply(img, rng), pts, visibility(pts, covered)


def write_clip(folder: Path, frames_iter: Iterable[tuple[np.ndarray, np.ndarray, np.ndarray]]) -> int:
    """Write ``vid.avi`` (MJPG, 25 fps) and ``annot/NNNNNN.pts`` / ``.vis`` (1-based frame numbers)."""
    (folder / "annot").mkdir(parents=True, exist_ok=True)
    writer = None
    n = 0
    for n, (img, pts, vis) in enumerate(frames_iter, start=1):
        if writer is None:
            h, w = img.shape[:2]
            writer = cv2.VideoWriter(str(folder / "vid.avi"), cv2.VideoWriter_fourcc(*"MJPG"), FPS, (w, h))
            if not writer.isOpened():
                raise OSError(f"cv2 cannot write MJPG video {folder / 'vid.avi'}")
        writer.write(img)
        write_annotation(folder / "annot" / f"{n:06d}.pts", pts, vis)
    if writer is not None:
        writer.release()
    return n


def video_split_sizes(n_videos: int) -> dict[str, int]:
    m = max(1, n_videos // 3)
    return {"train": n_videos, "cat1": m, "cat2": m, "cat3": m}


def _params(n_videos: int, frames: int, seed: int, size: int) -> dict:
    return {"kind": "videos", "n_videos": n_videos, "frames": frames, "seed": seed, "size": size,
            "version": VIDEO_VERSION, "categories": {k: asdict(v) for k, v in CATEGORIES.items()}}


def generate_videos(out: str | Path, n_videos: int = 12, frames: int = 60, seed: int = 0, size: int = 128) -> Path:
    """Write ``n_videos`` training clips and ``max(1, n_videos // 3)`` per test category into ``out``."""
    if n_videos < 1 or frames < 2 or size < 32:
        raise ValueError(f"synthetic videos: need n_videos >= 1, frames >= 2, size >= 32; got {n_videos}, {frames}, {size}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    splits: dict[str, list[str]] = {}
    vid = 0
    for cat_id, (split, count) in enumerate(video_split_sizes(n_videos).items()):
        splits[split] = []
        for i in range(count):
            vid += 1
            name = f"{vid:03d}"
            rng = np.random.default_rng([seed, 100 + cat_id, i])
            write_clip(out / name, render_clip(rng, frames, size, CATEGORIES[split]))
            splits[split].append(name)
    (out / "splits.json").write_text(json.dumps(splits, indent=1) + "\n")
    text = f"""\
flmk synthetic face videos (procedural, no real people), seed {seed}, {size}x{size} px, {frames} frames at {FPS} fps.

Written like 300VW: <id>/vid.avi (MJPG) + <id>/annot/000001.pts ... (68 iBUG points, 1-based, one file per
frame, numbered from 1) + annot/000001.vis (68 lines, 1 = visible, 0 = hidden by an external occluder).
splits.json lists the ids: {', '.join(f'{k} ({len(v)})' for k, v in splits.items())}; cat3 has more, larger
occluders and faster motion. Self-occluded points at large yaw are marked visible.
Generated by `python -m flmk.data.synth --video` (flmk.data.synth.video, version {VIDEO_VERSION}).
"""
    write_readme(out, text, _params(n_videos, frames, seed, size))
    return out


def ensure_synthetic_videos(root: str | Path, n_videos: int = 12, frames: int = 60, seed: int = 0,
                            size: int = 128) -> Path:
    """The folder with these clips: ``root``, or ``<root>-<hash>`` when ``root`` holds others (files.ensure)."""
    return ensure(root, _params(n_videos, frames, seed, size), lambda tmp: generate_videos(tmp, n_videos, frames, seed, size))
