"""Synthetic still faces written like 300W: ``<split>/<stem>.jpg + .pts + .vis``.

Splits: ``train/`` (n faces), ``val/``, ``test/clean/`` (no occluder) and
``test/occluded/`` (every face occluded), each ``max(1, n // 10)``. Every face
has its own random stream ``default_rng([seed, split, index])``, so the output
does not depend on the order (or the number of processes) that writes it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from multiprocessing import Pool
from pathlib import Path

import numpy as np

from flmk.data.synth.face import (apply_expression, extra_vertices, project, rotation, sample_expression,
                                  sample_identity)
from flmk.data.synth.files import ensure, write_face, write_readme
from flmk.data.synth.occluders import OCCLUDER_KINDS, face_mask, random_occluder, visibility
from flmk.data.synth.render import draw_face, sample_appearance, sample_photometric
from flmk.data.synth.textures import background

SYNTH_VERSION = 1
"""Bumped whenever the generator's output changes, so :func:`ensure_synthetic` regenerates."""

SPLITS = ("train", "val", "test/clean", "test/occluded")


@dataclass(frozen=True)
class SynthConfig:
    """Sampling ranges of the still generator (angles in degrees, sizes as fractions)."""

    yaw_max: float = 60.0
    pitch_max: float = 25.0
    roll_max: float = 30.0
    yaw_sd: float = 30.0               # truncated normal inside +-yaw_max
    pitch_sd: float = 10.0
    roll_sd: float = 12.0
    box_frac: tuple[float, float] = (0.40, 0.75)   # landmark box side / image side
    out_margin: float = 0.015          # how far (fraction of the side) the landmark box may leave the image
    p_occluded: float = 0.4            # share of occluded faces in train and val
    occluders: tuple[int, int] = (1, 2)  # inclusive range of occluders per occluded face
    occluder_kind_p: tuple[float, ...] = (0.35, 0.25, 0.15, 0.25)  # over OCCLUDER_KINDS
    occluder_size: tuple[float, float] = (0.25, 0.6)  # fraction of the landmark box side
    max_hidden: float = 0.6            # at most this share of the 68 points hidden
    identity_strength: float = 1.0
    p_mouth_open: float = 0.4
    p_blink: float = 0.1


def _truncnorm(rng: np.random.Generator, sd: float, limit: float) -> float:
    while True:
        v = rng.normal(0, sd)
        if abs(v) <= limit:
            return float(v)


def split_sizes(n: int) -> dict[str, int]:
    m = max(1, n // 10)
    return {"train": n, "val": m, "test/clean": m, "test/occluded": m}


def render_still(rng: np.random.Generator, size: int, occluded: bool,
                 cfg: SynthConfig = SynthConfig()) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """One face: (image BGR uint8, points (68, 2) 0-based, visible (68,) bool, JPEG quality)."""
    shape = apply_expression(sample_identity(rng, cfg.identity_strength),
                             sample_expression(rng, cfg.p_mouth_open, cfg.p_blink))
    rot = rotation(_truncnorm(rng, cfg.yaw_sd, cfg.yaw_max), _truncnorm(rng, cfg.pitch_sd, cfg.pitch_max),
                   _truncnorm(rng, cfg.roll_sd, cfg.roll_max))
    unit_pts, _ = project(shape, rot, 1.0, np.zeros(2))
    extent = np.ptp(unit_pts, axis=0)
    scale = rng.uniform(*cfg.box_frac) * size / extent.max()
    half = scale * extent / 2
    lo, hi = half - cfg.out_margin * size, size - 1 - half + cfg.out_margin * size
    centre = rng.uniform(np.minimum(lo, hi), np.maximum(lo, hi))
    shift = centre - scale * (unit_pts.min(0) + extent / 2)
    pts, depth = project(shape, rot, scale, shift)
    extras = {k: project(v, rot, scale, shift)[0] for k, v in extra_vertices(shape).items()}

    img = background(rng, size)
    app = sample_appearance(rng)
    draw_face(img, pts, depth, extras, app, scale)
    visible = np.ones(68, bool)
    if occluded:
        img, visible = _occlude(rng, img, pts, app.skin, cfg)
    photo = sample_photometric(rng)
    return photo.apply(img, rng), pts, visible, photo.jpeg_quality


def _occlude(rng: np.random.Generator, img: np.ndarray, pts: np.ndarray, skin: np.ndarray,
             cfg: SynthConfig) -> tuple[np.ndarray, np.ndarray]:
    """Paste random occluders until at least one and at most ``max_hidden`` of the points are hidden
    (ten tries, then a lower-face mask)."""
    p = np.asarray(cfg.occluder_kind_p) / np.sum(cfg.occluder_kind_p)
    for attempt in range(11):
        if attempt < 10:
            kinds = rng.choice(OCCLUDER_KINDS, size=int(rng.integers(cfg.occluders[0], cfg.occluders[1] + 1)), p=p)
            occs = [random_occluder(rng, str(k), pts, skin, cfg.occluder_size) for k in kinds]
        else:
            occs = [face_mask(rng, pts)]
        out, covered = img.copy(), np.zeros(img.shape[:2], bool)
        for occ in occs:
            occ.paste(out, covered)
        visible = visibility(pts, covered)
        if 1 <= (~visible).sum() <= cfg.max_hidden * len(pts):
            break
    return out, visible


def _write_one(out: Path, split_id: int, index: int, seed: int, size: int, occluded_p: float, cfg: SynthConfig) -> None:
    rng = np.random.default_rng([seed, split_id, index])
    occluded = bool(rng.random() < occluded_p)
    img, pts, vis, quality = render_still(rng, size, occluded, cfg)
    split = SPLITS[split_id]
    write_face(out / split, f"{split.replace('/', '_')}_{index:05d}", img, pts, vis, quality)


def _readme(n: int, seed: int, size: int, cfg: SynthConfig) -> str:
    sizes = split_sizes(n)
    return f"""\
flmk synthetic faces (procedural, no real people), seed {seed}, {size}x{size} px.

Written like 300W: <split>/<stem>.jpg + <stem>.pts (68 iBUG points, 1-based) + <stem>.vis
(68 lines, 1 = visible, 0 = hidden by an external occluder). Splits: {', '.join(f'{k}/ ({v})' for k, v in sizes.items())}.
train/ and val/: {cfg.p_occluded:.0%} of faces occluded; test/clean/: none; test/occluded/: all.
Faces: a hand-built 3D mean shape of the 68 points with random identity and expression modes,
yaw/pitch/roll up to {cfg.yaw_max:g}/{cfg.pitch_max:g}/{cfg.roll_max:g} deg, weak-perspective projection.
Points hidden by the head itself at large yaw stay where the 3D model projects them and are marked
visible (1); only external occluders (blobs, hands, bars, lower-face masks) set 0.
Generated by `python -m flmk.data.synth` (flmk.data.synth.stills, version {SYNTH_VERSION}).
"""


def _params(n: int, seed: int, size: int, cfg: SynthConfig) -> dict:
    return {"kind": "stills", "n": n, "seed": seed, "size": size, "version": SYNTH_VERSION, "config": asdict(cfg)}


def generate(out: str | Path, n: int = 2000, seed: int = 0, size: int = 160, cfg: SynthConfig = SynthConfig(),
             workers: int = 1) -> Path:
    """Write the still dataset into ``out`` (created). ``workers`` > 1 uses a process pool; output is identical."""
    if n < 1 or size < 32:
        raise ValueError(f"synthetic faces: need n >= 1 and size >= 32, got n={n}, size={size}")
    out = Path(out)
    tasks = []
    for split_id, (split, count) in enumerate(split_sizes(n).items()):
        (out / split).mkdir(parents=True, exist_ok=True)
        occluded_p = {"test/clean": 0.0, "test/occluded": 1.0}.get(split, cfg.p_occluded)
        tasks += [(out, split_id, i, seed, size, occluded_p, cfg) for i in range(count)]
    if workers > 1:
        with Pool(workers) as pool:
            pool.starmap(_write_one, tasks, chunksize=32)
    else:
        for t in tasks:
            _write_one(*t)
    write_readme(out, _readme(n, seed, size, cfg), _params(n, seed, size, cfg))
    return out


def ensure_synthetic(root: str | Path, n: int = 2000, seed: int = 0, size: int = 160,
                     cfg: SynthConfig = SynthConfig(), workers: int = 1) -> Path:
    """The folder with this set: ``root``, or ``<root>-<hash>`` when ``root`` holds another (files.ensure)."""
    return ensure(root, _params(n, seed, size, cfg), lambda tmp: generate(tmp, n, seed, size, cfg, workers))
