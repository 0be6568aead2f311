"""Synthesise a Masked-300W-like test set: 300W test faces wearing a textured face mask.

    python -m flmk.data.mask --src <300W root> --out <dir> [--seed 0] [--bridge 28]

[assume] SAAT's generator is unpublished (IMPLEMENTATION_NOTES §6.6). Here the mask
is the polygon through the jaw points 2..14 and one nose-bridge point (0-based
iBUG indices), filled with a random fabric texture (base colour, pleats, noise,
shading). The output copies the 300W test folders (helen/testset, lfpw/testset,
ibug) with ``<name>.png`` + the original ``<name>.pts`` + ``<name>.vis`` (0 for
points under the mask), and ``NONCOMPARABLE.txt`` in its root: results on it
are NOT comparable with published Masked-300W numbers, and
:class:`flmk.data.sources.masked300w.Masked300wSource` reports ``comparable=False``.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import cv2
import numpy as np

from flmk.data.images import read_rgb
from flmk.data.sources.folders import W300_SPLITS
from flmk.data.sources.masked300w import NONCOMPARABLE_MARKER
from flmk.data.sources.w300 import W300Source
from flmk.layouts import get_layout

JAW_RANGE = (2, 14)  # inclusive, 0-based [assume, notes §6.6]
MASK_COLOURS = np.array([[168, 200, 230], [240, 240, 240], [40, 40, 45], [120, 125, 130], [190, 150, 200]], np.float64)
PLEATS = 3  # horizontal folds of a surgical mask


def mask_polygon(points: np.ndarray, bridge: int = 28) -> np.ndarray:
    """(K, 2) polygon: jaw points 2..14 then the nose-bridge point."""
    jaw = get_layout("68").groups["jaw"][JAW_RANGE[0] : JAW_RANGE[1] + 1]
    return points[[*jaw, bridge]]


def mask_alpha(shape: tuple[int, int], polygon: np.ndarray) -> np.ndarray:
    """Anti-aliased coverage in [0, 1] of the polygon, (H, W) float32."""
    shift = 4  # cv2 sub-pixel vertices: coordinates * 2**shift
    alpha = np.zeros(shape, np.uint8)
    cv2.fillPoly(alpha, [np.round(polygon * 2**shift).astype(np.int32)], 255, lineType=cv2.LINE_AA, shift=shift)
    return alpha.astype(np.float32) / 255.0


def fabric(shape: tuple[int, int], polygon: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A mask texture (H, W, 3) float: base colour, pleats across the face, fibre noise, side shading."""
    h, w = shape
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    top, bottom = polygon[:, 1].min(), polygon[:, 1].max()
    left, right = polygon[:, 0].min(), polygon[:, 0].max()
    v = (y - top) / max(bottom - top, 1.0)
    u = (x - (left + right) / 2) / max(right - left, 1.0)
    pleats = 1.0 + 0.08 * np.sin(2 * np.pi * PLEATS * v + rng.uniform(0, 2 * np.pi))
    shading = 1.0 - 0.35 * u**2
    noise = rng.normal(1.0, 0.04, size=(h, w))
    base = MASK_COLOURS[rng.integers(len(MASK_COLOURS))] * rng.uniform(0.85, 1.1)
    return np.clip(base * (pleats * shading * noise)[..., None], 0, 255)


def apply_mask(image: np.ndarray, points: np.ndarray, rng: np.random.Generator, bridge: int = 28) -> tuple[np.ndarray, np.ndarray]:
    """Masked RGB image and the visibility of each point (False under the mask)."""
    polygon = mask_polygon(points, bridge)
    alpha = mask_alpha(image.shape[:2], polygon)
    out = image * (1 - alpha[..., None]) + fabric(image.shape[:2], polygon, rng) * alpha[..., None]
    h, w = alpha.shape
    ix = np.clip(np.rint(points).astype(np.int64), 0, [w - 1, h - 1])
    covered = alpha[ix[:, 1], ix[:, 0]] >= 0.5
    covered[[*range(JAW_RANGE[0], JAW_RANGE[1] + 1), bridge]] = True  # the mask's own edge runs through them
    return np.round(out).astype(np.uint8), ~covered


def synthesise(src: str | Path, out: str | Path, seed: int = 0, bridge: int = 28) -> int:
    """Write the masked copy of the 300W ``full`` test set; returns the number of faces."""
    src, out = Path(src), Path(out)
    records = W300Source(src, splits={"full": W300_SPLITS["full"]}).read("full")
    rng = np.random.default_rng(seed)
    for r in records:
        pts_path = Path(r.source)
        target = out / pts_path.relative_to(src)
        target.parent.mkdir(parents=True, exist_ok=True)
        masked, visible = apply_mask(read_rgb(r.image), r.points, rng, bridge)
        cv2.imwrite(str(target.with_suffix(".png")), cv2.cvtColor(masked, cv2.COLOR_RGB2BGR))
        shutil.copyfile(pts_path, target)
        target.with_suffix(".vis").write_text("\n".join("1" if v else "0" for v in visible) + "\n")
    (out / NONCOMPARABLE_MARKER).write_text(
        "Home-built masked 300W test set (python -m flmk.data.mask): NOT the released Masked-300W.\n"
        f"Source: {src}; seed {seed}; mask polygon: jaw {JAW_RANGE[0]}..{JAW_RANGE[1]} + nose bridge {bridge} (0-based).\n"
        "Results on it are not comparable with published Masked-300W numbers.\n"
    )
    return len(records)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--src", required=True, help="300W root (with helen/testset, lfpw/testset, ibug)")
    parser.add_argument("--out", required=True, help="output root for the masked copy")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--bridge", type=int, default=28, help="0-based nose-bridge point closing the mask polygon")
    args = parser.parse_args(argv)
    n = synthesise(args.src, args.out, args.seed, args.bridge)
    print(f"wrote {n} masked faces to {args.out} (marked NONCOMPARABLE)")


if __name__ == "__main__":
    main()
