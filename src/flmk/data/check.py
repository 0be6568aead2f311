"""Dataset doctor: is the data on disk what the readers expect?

    python -m flmk.data.check data=300w [data.root=/datasets/300W] [--out DIR] [--faces 16]
    python -m flmk.data.check +source=cofw68 source.root=/datasets/COFW68

For every source of the data config and every split it reports the face count,
missing or unreadable images, malformed annotations (file and line), points
and boxes outside their image, then writes ``report.json`` and ``faces.png``
(a grid of a few face crops with their landmarks) to the output folder.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from flmk.data.cache import warp_crop
from flmk.data.images import read_rgb
from flmk.data.records import AnnotationError, DatasetNotFoundError, FaceRecord
from flmk.data.transforms import apply_affine, crop_affine

MAX_EXAMPLES = 20  # listed per problem kind; counts are always complete
PIXEL_TOLERANCE = 0.5  # a pixel centre at integer i covers [i - 0.5, i + 0.5]


def image_size(path: Path) -> tuple[int, int] | None:
    """(width, height) from the image header, or None when it cannot be read."""
    try:
        with Image.open(path) as im:
            return im.size
    except (OSError, SyntaxError, ValueError):
        return None


def outside(xy_min: np.ndarray, xy_max: np.ndarray, size: tuple[int, int]) -> bool:
    w, h = size
    return bool((xy_min < -PIXEL_TOLERANCE).any() or xy_max[0] > w - 1 + PIXEL_TOLERANCE or xy_max[1] > h - 1 + PIXEL_TOLERANCE)


def check_split(source: Any, split: str) -> tuple[dict, list[FaceRecord]]:
    """Report for one split of one source, and its readable records."""
    report: dict[str, Any] = {k: [] for k in ("missing_images", "unreadable_images", "malformed", "points_outside", "boxes_outside")}
    try:
        records, problems = source.scan(split) if hasattr(source, "scan") else (source.read(split), [])
    except DatasetNotFoundError as e:
        return {"count": 0, "not_found": str(e)}, []
    except AnnotationError as e:
        records, problems = [], [e]
    for p in problems:
        if getattr(p, "kind", "annotation") == "image":
            report["missing_images"].append(p.path)
        else:
            report["malformed"].append({"file": p.path, "line": p.line, "message": str(getattr(p, "message", p))})
    readable = []
    for r in records:
        if not r.image.exists():
            report["missing_images"].append(str(r.image))
            continue
        size = image_size(r.image)
        if size is None:
            report["unreadable_images"].append(str(r.image))
            continue
        readable.append(r)
        if outside(r.points.min(0), r.points.max(0), size):
            report["points_outside"].append(r.source or str(r.image))
        if r.box is not None and outside(r.box[:2], r.box[2:], size):
            report["boxes_outside"].append(r.source or str(r.image))
    summary: dict[str, Any] = {"count": len(records) + len(problems)}
    for key, items in report.items():
        summary[key] = len(items)
        summary[f"{key}_examples"] = items[:MAX_EXAMPLES]
    return summary, readable


def face_grid(records: list[FaceRecord], path: Path, crop: int = 128, ncols: int = 4) -> Path:
    """A PNG grid of face crops with their landmarks drawn."""
    from flmk.plots import landmark_grid

    crops, points = [], []
    for r in records:
        m = crop_affine(r.box_or_points_box(), crop, crop_scale=1.25)
        crops.append(warp_crop(read_rgb(r.image), m, crop))
        points.append(apply_affine(m, r.points))
    n = max(len(p) for p in points)  # sources of different layouts share one grid: pad with NaN (not drawn)
    padded = np.full((len(points), n, 2), np.nan)
    for i, p in enumerate(points):
        padded[i, : len(p)] = p
    landmark_grid(np.stack(crops), gt=padded, path=path, ncols=ncols)
    return path


def check_sources(sources: dict[str, Any], out_dir: str | Path, faces: int = 16) -> dict:
    """Check every split of every source; write ``report.json`` and ``faces.png`` into ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {"sources": {}}
    shown: list[FaceRecord] = []
    for name, source in sources.items():
        splits = {}
        for split in source.splits():
            splits[split], readable = check_split(source, split)
            if readable:
                step = max(1, len(readable) // max(1, faces // max(1, len(sources))))
                shown.extend(readable[::step][: max(1, faces // len(sources))])
        report["sources"][name] = {"splits": splits, **({"comparable": source.comparable} if hasattr(source, "comparable") else {})}
    if shown:
        report["grid"] = str(face_grid(shown[:faces], out / "faces.png"))
    (out / "report.json").write_text(json.dumps(report, indent=2))
    return report


def format_report(report: dict) -> str:
    lines = []
    for name, entry in report["sources"].items():
        lines.append(f"{name}:" + ("" if entry.get("comparable", True) else "  (home-built: NOT comparable with published numbers)"))
        explained = False
        for split, s in entry["splits"].items():
            if "not_found" in s:  # the full message (layout, where to get it) once per source
                message = s["not_found"] if not explained else s["not_found"].splitlines()[0]
                lines.append(f"  {split}: NOT FOUND\n    " + message.replace("\n", "\n    "))
                explained = True
                continue
            problems = ", ".join(f"{s[k]} {k.replace('_', ' ')}" for k in
                                 ("missing_images", "unreadable_images", "malformed", "points_outside", "boxes_outside") if s[k])
            lines.append(f"  {split}: {s['count']} faces" + (f"; {problems}" if problems else "; OK"))
            for m in s["malformed_examples"]:
                lines.append(f"    malformed: {m['message']}")
            lines.extend(f"    missing image (the image, or the annotation without one): {p}" for p in s["missing_images_examples"])
            lines.extend(f"    unreadable image: {p}" for p in s["unreadable_images_examples"])
    if "grid" in report:
        lines.append(f"face grid: {report['grid']}")
    return "\n".join(lines)


def sources_from_config(overrides: list[str], config_dir: Path) -> dict[str, Any]:
    """Instantiate the ``source`` added with ``+source=<name>``, else ``data.sources.*``, of the composed train config."""
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate

    with initialize_config_dir(config_dir=str(config_dir.resolve()), version_base=None):
        cfg = compose(config_name="train", overrides=overrides)
    if "source" in cfg:  # one reader config checked on its own
        return {cfg.source.get("name", "source"): instantiate(cfg.source)}
    return {k: instantiate(v) for k, v in cfg.data.get("sources", {}).items()}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. data=300w")
    parser.add_argument("--out", default="outputs/check", help="folder for report.json and faces.png")
    parser.add_argument("--faces", type=int, default=16, help="faces in the grid")
    parser.add_argument("--config-dir", default=str(Path(__file__).resolve().parents[3] / "conf"))
    args = parser.parse_args(argv)
    report = check_sources(sources_from_config(args.overrides, Path(args.config_dir)), args.out, args.faces)
    print(format_report(report))
    return report


if __name__ == "__main__":
    main()
