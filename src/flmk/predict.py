"""Landmarks on your own images and videos: `python -m flmk.predict ckpt_path=<ckpt> input=<...> out=<dir>`.

``input`` is an image, a folder, a glob pattern or a video. Faces come from the built-in detector
(flmk.detectors.DlibHOG), from ``boxes=<json | csv>`` or from any detector given by ``_target_``.
Writes into ``out``: predictions.json (a list of ``{"image", "frame", "faces": [{"box", "score",
"points", "layout"}]}`` in original pixels, 0-based; unreadable inputs carry ``"error"``),
predictions.csv (one row per face), optional .pts files and overlays, and for a video an overlay
video and stability.json (frame-to-frame landmark jitter). Every file is written atomically, and the
JSON/CSV are rewritten every ``flush_every`` items, so an interrupted run keeps what it has done.
``backend=onnx onnx=<file.onnx>`` runs the exported network under onnxruntime without torch.
``compile=true`` (or a torch.compile mode) runs the torch path compiled: CUDA graphs on GPU, eager on CPU.
``bench=true`` times the pipeline instead (see :func:`bench`).
"""

from __future__ import annotations

import csv
import glob
import io
import json
import os
import sys
import time
from pathlib import Path

import cv2
import hydra
import numpy as np
from omegaconf import DictConfig

from flmk.data.images import read_rgb, write_atomic
from flmk.detectors import BoxesError, GivenBoxes
from flmk.landmarker import BoxTracker, Landmarker, compile_mode

CONF_DIR = str(Path(__file__).resolve().parents[2] / "conf")
IMAGE_EXTS = {".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".pgm", ".tif", ".tiff", ".webp"}
VIDEO_EXTS = {".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg"}


class PredictError(ValueError):
    """A problem the user fixes (bad input path, unopenable video, missing model); one line, exit status 2."""


# -- inputs ---------------------------------------------------------------------------------------
def resolve_input(spec: str) -> tuple[str, list[Path]]:
    """("video", [file]) or ("images", files) for an image, a folder, or a glob pattern."""
    path = Path(spec)
    if path.is_file():
        return ("video" if path.suffix.lower() in VIDEO_EXTS else "images"), [path]
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_EXTS)
        if not files:
            raise PredictError(f"input={spec}: the folder holds no images ({', '.join(sorted(IMAGE_EXTS))})")
        return "images", files
    files = sorted(Path(p) for p in glob.glob(spec) if Path(p).suffix.lower() in IMAGE_EXTS | VIDEO_EXTS)
    if not files:
        raise PredictError(f"input={spec}: no such file or folder, and no image matches it as a pattern")
    return "images", [f for f in files if f.suffix.lower() in IMAGE_EXTS]


def build_landmarker(cfg: DictConfig) -> Landmarker:
    detector = None
    if cfg.get("detector") is not None:
        detector = hydra.utils.instantiate(cfg.detector) if cfg.boxes is None else None
    if cfg.backend == "onnx":
        if not cfg.onnx:
            raise PredictError("backend=onnx needs onnx=<file.onnx> (write one with `python -m flmk.export`)")
        if cfg.get("compile"):
            raise PredictError(f"compile={cfg.compile}: applies to backend=torch (onnxruntime optimises its own graph)")
        return Landmarker.from_onnx(cfg.onnx, detector=detector, batch_size=cfg.batch_size, threads=cfg.threads,
                                    spin=cfg.spin)
    if cfg.backend != "torch":
        raise PredictError(f"backend={cfg.backend}: expected torch or onnx")
    if not cfg.ckpt_path:
        raise PredictError("backend=torch needs ckpt_path=<a trained flmk .ckpt>")
    try:
        mode = compile_mode(cfg.get("compile"))
    except ValueError as e:
        raise PredictError(str(e)) from None
    return Landmarker.from_checkpoint(cfg.ckpt_path, device=cfg.device, detector=detector,
                                      batch_size=cfg.batch_size, precision=cfg.precision, compile=mode)


# -- outputs --------------------------------------------------------------------------------------
class Writer:
    """predictions.json / .csv (rewritten atomically every ``flush_every`` entries), .pts and overlays."""

    def __init__(self, out: Path, cfg: DictConfig):
        self.out, self.cfg = out, cfg
        self.entries: list[dict] = []
        out.mkdir(parents=True, exist_ok=True)

    def add(self, image: Path, frame: int | None, faces: list[dict], rgb: np.ndarray | None = None,
            error: str | None = None) -> None:
        entry = {"image": str(image), "frame": frame, "faces": faces}
        if error is not None:
            entry["error"] = error
        self.entries.append(entry)
        stem = image.stem if frame is None else f"{image.stem}_{frame:06d}"
        if self.cfg.save_pts:
            from flmk.data.sources.pts import write_pts

            (self.out / "pts").mkdir(exist_ok=True)
            for k, face in enumerate(faces):
                write_atomic(self.out / "pts" / f"{stem}_{k}.pts",
                             lambda tmp, f=face: write_pts(tmp, np.asarray(f["points"])))
        if self.cfg.save_overlays and rgb is not None and frame is None:
            (self.out / "overlays").mkdir(exist_ok=True)
            bgr = cv2.cvtColor(draw(rgb, faces), cv2.COLOR_RGB2BGR)
            write_atomic(self.out / "overlays" / f"{stem}.jpg", lambda tmp: cv2.imwrite(str(tmp), bgr))
        if len(self.entries) % max(self.cfg.flush_every, 1) == 0:
            self.flush()

    def flush(self) -> None:
        text = json.dumps(self.entries)
        write_atomic(self.out / "predictions.json", lambda tmp: tmp.write_text(text))
        buf = io.StringIO()
        w = csv.writer(buf)
        n = max((len(f["points"]) for e in self.entries for f in e["faces"]), default=0)
        w.writerow(["image", "frame", "face", "score", "x1", "y1", "x2", "y2", "layout", "error"]
                   + [f"p{i}_{a}" for i in range(n) for a in "xy"])
        for e in self.entries:
            frame = "" if e["frame"] is None else e["frame"]
            if not e["faces"]:
                w.writerow([e["image"], frame, "", "", "", "", "", "", "", e.get("error", "")])
            for k, f in enumerate(e["faces"]):
                w.writerow([e["image"], frame, k, f"{f['score']:.4f}", *(f"{v:.2f}" for v in f["box"]), f["layout"], ""]
                           + [f"{v:.3f}" for p in f["points"] for v in p])
        text_csv = buf.getvalue()
        write_atomic(self.out / "predictions.csv", lambda tmp: tmp.write_text(text_csv))


def draw(rgb: np.ndarray, faces: list[dict]) -> np.ndarray:
    """A copy of the image with each face's box and points drawn (points green, box blue)."""
    img = rgb.copy()
    r = max(1, round(max(img.shape[:2]) / 400))
    for face in faces:
        x1, y1, x2, y2 = (int(round(v)) for v in face["box"])
        cv2.rectangle(img, (x1, y1), (x2, y2), (60, 120, 255), r)
        for x, y in face["points"]:
            cv2.circle(img, (int(round(x)), int(round(y))), r + 1, (0, 255, 0), -1, cv2.LINE_AA)
    return img


def progress(total: int | None, enabled: bool, desc: str):
    from tqdm import tqdm

    return tqdm(total=total, disable=not enabled, desc=desc, unit="img" if desc == "images" else "frame",
                file=sys.stderr, dynamic_ncols=True)


# -- images ---------------------------------------------------------------------------------------
def predict_images(lm: Landmarker, files: list[Path], writer: Writer, given: GivenBoxes | None, cfg) -> None:
    queue: list[tuple[Path, np.ndarray | None, str | None]] = []  # in input order, unreadable ones included
    no_boxes = np.zeros((0, 4))

    def items():
        for path in files:
            try:
                rgb = read_rgb(path)
            except OSError as e:
                print(f"flmk.predict: skipped {path}: {e}", file=sys.stderr)
                queue.append((path, None, str(e)))
                yield np.zeros((1, 1, 3), np.uint8), no_boxes  # keeps its place in the batch order, no faces
                continue
            queue.append((path, rgb, None))
            boxes = given.lookup(path) if given is not None else None
            yield rgb, (no_boxes if given is not None and boxes is None else boxes)

    with progress(len(files), cfg.progress, "images") as bar:
        for faces in lm.predict(items()):
            path, rgb, error = queue.pop(0)
            writer.add(path, None, faces, rgb, error=error)
            bar.update()


# -- video ----------------------------------------------------------------------------------------
def read_frames(path: Path, errors: list[int]):
    """RGB frames of a video; a frame that fails to decode mid-video is recorded in ``errors`` and skipped."""
    cap = cv2.VideoCapture(str(path))
    if not cap.isOpened():
        raise PredictError(f"input={path}: OpenCV cannot open this video (missing codec or not a video file)")
    total = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
    index, failures = 0, 0
    try:
        while True:
            ok, frame = cap.read()
            if not ok:
                if index >= total - 1 or failures >= 10:
                    break
                errors.append(index)  # a frame that did not decode, inside the video's length
                index, failures = index + 1, failures + 1
                continue
            failures = 0
            yield cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
            index += 1
    finally:
        cap.release()


def video_info(path: Path) -> tuple[int, float, tuple[int, int]]:
    cap = cv2.VideoCapture(str(path))
    if not cap.isOpened():
        raise PredictError(f"input={path}: OpenCV cannot open this video (missing codec or not a video file)")
    info = (int(cap.get(cv2.CAP_PROP_FRAME_COUNT)), cap.get(cv2.CAP_PROP_FPS) or 25.0,
            (int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)), int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT))))
    cap.release()
    return info


def stability(tracks: dict[int, list[tuple[int, np.ndarray]]], layout: str) -> dict:
    """Mean frame-to-frame landmark displacement / inter-ocular distance over consecutive frames of each track."""
    from flmk.metrics import jitter_terms

    total, count = 0.0, 0
    for frames in tracks.values():
        idx = np.array([f for f, _ in frames])
        pts = np.stack([p for _, p in frames])
        consecutive = np.r_[False, np.diff(idx) == 1]
        s, c = jitter_terms(pts, layout, valid=consecutive | np.r_[consecutive[1:], False])
        total, count = total + float(s), count + int(c)
    return {"jitter": total / count if count else float("nan"), "frame_pairs": count, "tracks": len(tracks)}


def predict_video(lm: Landmarker, path: Path, writer: Writer, given: GivenBoxes | None, cfg) -> dict:
    total, fps, (w, h) = video_info(path)
    errors: list[int] = []
    boxes = None
    if given is not None:
        boxes = [given.lookup(path, i) for i in range(total)]
    video = None
    tmp_video = writer.out / f".{path.stem}_overlay.{os.getpid()}.tmp.mp4"
    if cfg.save_video:
        video = cv2.VideoWriter(str(tmp_video), cv2.VideoWriter_fourcc(*"mp4v"), fps, (w, h))
    tracks: dict[int, list] = {}
    bar = progress(total or None, cfg.progress, "frames")
    shown, decoded = 0, []

    def numbered():
        i = 0
        for rgb in read_frames(path, errors):
            while i in errors:  # indices of frames that failed to decode
                i += 1
            decoded.append((i, rgb))
            i += 1
            yield rgb

    for faces in lm.track(numbered(), boxes=boxes, detect_every=cfg.detect_every, tracker=BoxTracker(**cfg.track)):
        i, rgb = decoded.pop(0)
        for e in [e for e in errors if shown <= e < i]:
            writer.add(path, e, [], error=f"frame {e} of {path} could not be decoded")
        shown = i + 1
        writer.add(path, i, faces, rgb)
        for face in faces:
            tracks.setdefault(face["track"], []).append((i, np.asarray(face["points"])))
        if video is not None:
            video.write(cv2.cvtColor(draw(rgb, faces), cv2.COLOR_RGB2BGR))
        bar.update()
    bar.close()
    if video is not None:
        video.release()
        os.replace(tmp_video, writer.out / f"{path.stem}_overlay.mp4")
    result = {str(path): stability(tracks, lm.layout)}
    text = json.dumps(result, indent=2)
    write_atomic(writer.out / "stability.json", lambda tmp: tmp.write_text(text))
    j = result[str(path)]["jitter"]
    print(f"stability of {path.name}: mean frame-to-frame landmark motion {100 * j:.2f}% of the inter-ocular "
          f"distance over {result[str(path)]['frame_pairs']} frame pairs")
    return result


def predict(cfg: DictConfig) -> Path:
    if cfg.bench:
        return bench(cfg)
    kind, files = resolve_input(str(cfg.input))
    given = GivenBoxes(cfg.boxes) if cfg.boxes else None
    lm = build_landmarker(cfg)
    out = Path(cfg.out)
    writer = Writer(out, cfg)
    if kind == "video":
        predict_video(lm, files[0], writer, given, cfg)
    else:
        predict_images(lm, files, writer, given, cfg)
    writer.flush()
    n_faces = sum(len(e["faces"]) for e in writer.entries)
    n_err = sum("error" in e for e in writer.entries)
    print(f"{len(writer.entries)} {'frames' if kind == 'video' else 'images'}, {n_faces} faces"
          + (f", {n_err} unreadable" if n_err else "") + f": {out / 'predictions.json'}")
    return out / "predictions.json"


# -- speed ----------------------------------------------------------------------------------------
def bench_video(source: Path, frames: int, size=(640, 480)) -> list[np.ndarray]:
    """A 640x480 video with one face: ``source`` (an image) letterboxed, drifting a few pixels per frame."""
    if source.suffix.lower() in VIDEO_EXTS:
        return [cv2.resize(f, size) for f, _ in zip(read_frames(source, []), range(frames))]
    rgb = read_rgb(source)
    s = min(size[0] / rgb.shape[1], size[1] / rgb.shape[0]) * 0.9
    face = cv2.resize(rgb, None, fx=s, fy=s, interpolation=cv2.INTER_AREA)
    out = []
    for t in range(frames):
        canvas = np.zeros((size[1], size[0], 3), np.uint8)
        dx, dy = int(10 * np.sin(t / 7)), int(6 * np.cos(t / 5))
        x0, y0 = (size[0] - face.shape[1]) // 2 + dx, (size[1] - face.shape[0]) // 2 + dy
        canvas[max(y0, 0):y0 + face.shape[0], max(x0, 0):x0 + face.shape[1]] = face[:size[1] - y0, :size[0] - x0]
        out.append(canvas)
    return out


def cpus() -> int:
    """The CPUs this process may run on (its affinity: taskset, cgroups), not the machine's."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


def bench(cfg: DictConfig) -> Path:
    """End-to-end frames/s of tracking a 640x480 one-face video, and each stage alone (detector, crop, network).

    bench.json also says on how many CPUs this process may run (``cpus``) and with how many threads the network
    runs (``threads``: torch's on CPU, None on a GPU; onnxruntime's as set by ``threads``, None when it chose)."""
    lm = build_landmarker(cfg)
    frames = bench_video(Path(cfg.input), cfg.bench_frames)
    timings = {}

    def timed(name, fn, n):
        fn()  # warm-up
        start = time.perf_counter()
        for _ in range(n):
            out = fn()
        timings[name] = n / (time.perf_counter() - start)
        return out

    boxes, _ = timed("detector_fps", lambda: lm.detector(frames[0]), min(len(frames), 20))
    if not len(boxes):
        raise PredictError(f"bench: the detector finds no face in {cfg.input}; give an image with one clear face")
    x, a = timed("crop_fps", lambda: lm.crop(frames[0], boxes[:1]), 200)
    if getattr(lm.net, "compiled", None) is not None:  # compile and record the batch sizes timed below
        lm.net.compiled.warm_up([1, 16], lm.net.device)
    timed("network_faces_per_s", lambda: lm.net(x, a), 50)
    xb, ab = np.repeat(x, 16, 0), np.repeat(a, 16, 0)
    timed("network_batches16_per_s", lambda: lm.net(xb, ab), 5)
    timings["network_faces_per_s_batch16"] = 16 * timings.pop("network_batches16_per_s")
    for k in (1, 5):
        start = time.perf_counter()
        n = sum(1 for _ in lm.track(frames, detect_every=k))
        timings[f"end_to_end_fps_detect_every_{k}"] = n / (time.perf_counter() - start)
    import platform

    result = {"model": lm.desc["model"].get("name"), "backend": cfg.backend, "crop_size": lm.crop_size,
              "device": getattr(getattr(lm.net, "device", None), "type", "cpu"), "cpu": platform.processor(),
              "cpus": cpus(), "threads": lm.net.threads, "frames": len(frames),
              **{k: round(v, 2) for k, v in timings.items()}}
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    text = json.dumps(result, indent=2)
    write_atomic(out / "bench.json", lambda tmp: tmp.write_text(text))
    print(text)
    return out / "bench.json"


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="predict")
def main(cfg: DictConfig) -> None:
    from flmk.checkpoint import CheckpointError

    try:
        predict(cfg)
    except (PredictError, CheckpointError, BoxesError, FileNotFoundError) as e:
        print(f"flmk.predict: {e}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
