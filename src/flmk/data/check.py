"""Dataset doctor: is the data on disk what the readers expect?

    python -m flmk.data.check data=300w [data.root=/datasets/300W] [--out DIR] [--faces 16]
    python -m flmk.data.check +source=cofw68 source.root=/datasets/COFW68

For every source of the data config and every split it reports the face count,
missing, unreadable or truncated images, malformed annotations (file and line),
points and boxes outside their image, absent videos, empty splits; optional
splits (300W's private test set) that are absent are listed as such. It writes
``report.json`` and one ``faces_<source>.png`` per source (a grid of face crops
with their landmarks), and exits with status 1 when it found a problem.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
from flmk.data.cache import warp_crop
from flmk.data.images import IMAGE_MISSING, ImageError, read_rgb, verify_images
from flmk.data.records import AnnotationError, DatasetNotFoundError, FaceRecord, far_outside
from flmk.data.sources.common import require
from flmk.data.sources.vw300 import VW300_LAYOUT_DOC, VW300_URL
from flmk.data.sources.w300 import Problem
from flmk.data.transforms import apply_affine, crop_affine
from flmk.errors import run_cli

MAX_EXAMPLES = 20  # listed per problem kind; counts are always complete
PIXEL_TOLERANCE = 0.5  # a pixel centre at integer i covers [i - 0.5, i + 0.5]


PROBLEMS = ("empty", "missing_videos", "missing_images", "unreadable_images", "malformed", "points_far_outside",
            "boxes_outside")  # each makes the doctor exit with status 1
NOTES = ("points_outside",)  # border faces: points a little outside the image are common in real data


def outside(xy_min: np.ndarray, xy_max: np.ndarray, size: tuple[int, int]) -> bool:
    w, h = size
    return bool((xy_min < -PIXEL_TOLERANCE).any() or xy_max[0] > w - 1 + PIXEL_TOLERANCE or xy_max[1] > h - 1 + PIXEL_TOLERANCE)


def _problem(e: AnnotationError | ImageError) -> Problem:
    if isinstance(e, AnnotationError):
        return Problem("annotation", e.path, e.line, e.problem)
    return Problem("image", e.path, None, e.problem)


def scan_videos(source: Any, split: str) -> tuple[list[FaceRecord], list[Problem], list[str]]:
    """A 300VW-style split video by video: the records and problems of the videos present, and the absent ones."""
    require(source.root, source.name, VW300_LAYOUT_DOC, VW300_URL)
    records, problems, absent = [], [], []
    for video in source.video_lists()[split]:
        if not (source.root / video / "annot").is_dir():
            absent.append(video)
            continue
        try:
            records += source.read_video(video, split)
        except (AnnotationError, ImageError) as e:
            problems.append(_problem(e))
        except (DatasetNotFoundError, OSError) as e:
            problems.append(Problem("image", str(source.root / video), None, str(e).splitlines()[0]))
    return records, problems, absent


def read_split(source: Any, split: str) -> tuple[list[FaceRecord], list[Problem], list[str]]:
    if hasattr(source, "read_video"):
        return scan_videos(source, split)
    try:
        records, problems = source.scan(split) if hasattr(source, "scan") else (source.read(split), [])
    except (AnnotationError, ImageError) as e:
        records, problems = [], [_problem(e)]
    return records, list(problems), []


def check_split(source: Any, split: str) -> tuple[dict, list[FaceRecord]]:
    """Report for one split of one source, and its readable records."""
    report: dict[str, Any] = {k: [] for k in PROBLEMS + NOTES}
    try:
        records, problems, absent = read_split(source, split)
    except DatasetNotFoundError as e:
        if split in getattr(source, "optional_splits", ()):
            return {"count": 0, "optional_absent": True, "problems": 0}, []
        return {"count": 0, "not_found": str(e), "problems": 1}, []
    report["missing_videos"] = absent
    for p in problems:
        if p.kind == "image":
            report["missing_images" if p.message.startswith(IMAGE_MISSING) else "unreadable_images"].append(p.path)
        else:
            report["malformed"].append({"file": p.path, "line": p.line, "message": p.message})
    if not records and not problems:
        report["empty"].append(f"no faces under {getattr(source, 'root', '?')}")
    checked = verify_images([r.image for r in records])
    readable = []
    for r in records:
        size = checked[Path(r.image)]
        if isinstance(size, str):
            report["missing_images" if size == IMAGE_MISSING else "unreadable_images"].append(str(r.image))
            continue
        readable.append(r)
        if len(far_outside(r.points, size)):
            report["points_far_outside"].append(r.source or str(r.image))
        elif outside(r.points.min(0), r.points.max(0), size):
            report["points_outside"].append(r.source or str(r.image))
        if r.box is not None and outside(r.box[:2], r.box[2:], size):
            report["boxes_outside"].append(r.source or str(r.image))
    summary: dict[str, Any] = {"count": len(records) + len(problems)}
    for key, items in report.items():
        summary[key] = len(items)
        summary[f"{key}_examples"] = items[:MAX_EXAMPLES]
    summary["problems"] = sum(summary[k] for k in PROBLEMS)
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
    """Check every split of every source; write ``report.json`` and one ``faces_<source>.png`` per source."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {"sources": {}, "grids": {}}
    for name, source in sources.items():
        splits, shown = {}, []
        for split in source.splits():
            splits[split], readable = check_split(source, split)
            step = max(1, len(readable) // max(1, faces))
            shown.extend(readable[::step][:faces])
        report["sources"][name] = {"splits": splits, **({"comparable": source.comparable} if hasattr(source, "comparable") else {})}
        if shown:
            step = max(1, len(shown) // faces)
            report["grids"][name] = str(face_grid(shown[::step][:faces], out / f"faces_{name}.png"))
    report["problems"] = sum(s["problems"] for e in report["sources"].values() for s in e["splits"].values())
    (out / "report.json").write_text(json.dumps(report, indent=2))
    return report


def format_report(report: dict) -> str:
    lines = []
    for name, entry in report["sources"].items():
        lines.append(f"{name}:" + ("" if entry.get("comparable", True) else "  (home-built: NOT comparable with published numbers)"))
        explained = False
        for split, s in entry["splits"].items():
            if s.get("optional_absent"):
                lines.append(f"  {split}: optional, absent")
                continue
            if "not_found" in s:  # the full message (layout, where to get it) once per source
                message = s["not_found"] if not explained else s["not_found"].splitlines()[0]
                lines.append(f"  {split}: NOT FOUND\n    " + message.replace("\n", "\n    "))
                explained = True
                continue
            found = ", ".join(f"{s[k]} {k.replace('_', ' ')}" for k in PROBLEMS + NOTES if s[k])
            lines.append(f"  {split}: {s['count']} faces" + (f"; {found}" if found else "; OK"))
            if s["missing_videos"]:
                lines.append(f"    absent videos: {', '.join(s['missing_videos_examples'])}" + (" ..." if s["missing_videos"] > MAX_EXAMPLES else ""))
            lines.extend(f"    empty: {m}" for m in s["empty_examples"])
            lines.extend(f"    malformed: {m['file']}" + (f", line {m['line']}" if m["line"] else "") + f": {m['message']}"
                         for m in s["malformed_examples"])
            lines.extend(f"    missing image (the image, or the annotation without one): {p}" for p in s["missing_images_examples"])
            lines.extend(f"    unreadable or truncated image: {p}" for p in s["unreadable_images_examples"])
            lines.extend(f"    points far outside the image: {p}" for p in s["points_far_outside_examples"])
            lines.extend(f"    box outside the image: {p}" for p in s["boxes_outside_examples"])
    lines.extend(f"face grid ({name}): {path}" for name, path in report.get("grids", {}).items())
    n = report.get("problems", 0)
    lines.append(f"{n} problem(s) found" if n else "no problems found")
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


def cli(argv: list[str] | None = None) -> int:
    """Exit status for scripts and CI: 0 when the data is as the readers expect, 1 when a problem was found."""
    return 1 if main(argv)["problems"] else 0


if __name__ == "__main__":
    sys.exit(run_cli(cli, str(Path(__file__).resolve().parents[3] / "conf"), "train"))
