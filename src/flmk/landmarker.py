"""Landmarker: a trained model on a user's own images and videos.

    from flmk import Landmarker
    lm = Landmarker.from_checkpoint("best.ckpt", device="cuda")
    faces = lm(image_rgb)                       # [{"box", "score", "points", "layout"}, ...]
    lm = Landmarker.from_checkpoint("best.ckpt", device="cuda", compile="reduce-overhead")  # CUDA graphs, fp32
    faces = lm(image_rgb, boxes=[[x1, y1, x2, y2]])
    for faces in lm.track(frames): ...          # video: box tracking, trackers carry their state

Faces are cropped with the data module's own functions (``crop_affine`` with the checkpoint's crop
size and margin, ``warp_crop``; uint8 crops, normalised as in training by ``normalise_image`` on the torch
backend's device or ``normalise_chw`` in numpy under onnxruntime) and points come back through the inverse crop
affine (``to_original`` in PyTorch, its numpy twin ``crop_to_original`` under onnxruntime), so a face
is seen exactly as in training and evaluation. The ONNX backend imports neither torch nor Lightning.
``compile=`` runs the torch path (network, its decoder, the inverse affine) under torch.compile with
static batch sizes (:class:`CompiledPoints`); on CPU it stays eager.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np

from flmk.data.transforms import crop_affine, crop_to_original, normalise_chw, to_chw_uint8, warp_crop
from flmk.detectors import DlibHOG, box_iou


def points_box(points: np.ndarray) -> np.ndarray:
    """The landmark bounding box, the box convention the models were trained with."""
    return np.concatenate([points.min(-2), points.max(-2)], axis=-1)


def compile_mode(compile: bool | str | None) -> str | None:
    """``compile=`` of the Landmarker and flmk.predict: false/null (eager), true (reduce-overhead) or a mode."""
    from flmk.compiled import MODES

    if compile is None or compile is False:
        return None
    mode = "reduce-overhead" if compile is True else compile
    if mode not in MODES:
        raise ValueError(f"compile={compile!r}: expected true, false or one of {', '.join(MODES)}")
    return mode


class CompiledPoints:
    """The torch inference path as one function under torch.compile (dynamic=False): uint8 crops (n, 3, S, S) and
    affines (n, 2, 3) on the device -> normalisation -> network -> its decoder -> ``to_original`` -> points (n, N, 2)
    in original pixels; with mode reduce-overhead one CUDA graph replays all of it. (One function, not the network and
    ``to_original`` compiled apart: each call of a compiled function starts a new CUDA-graph generation, which
    would have to copy the first one's outputs out of the graph's memory.) A batch of n faces is padded to
    ``bucket(n, max_batch)`` (1, 2, 4, ... max_batch), each bucket compiled and recorded on first use or by
    :meth:`warm_up`."""

    def __init__(self, net, crop_size: int, mode: str, max_batch: int, backend: str = "inductor"):
        from flmk.compiled import compile_fn
        from flmk.data.transforms import normalise_image
        from flmk.models.module import to_original

        def points(image, affine):
            return to_original(net(normalise_image(image))["points"], affine, crop_size)

        self.path = compile_fn(points, mode, backend)
        self.crop_size, self.max_batch = crop_size, max_batch

    def __call__(self, image, affine):
        import torch

        from flmk.compiled import bucket, pad_rows

        n, m = image.shape[0], self.max_batch
        if n > m:  # more tracked faces than a batch; each part copied out before the next replay overwrites it
            return torch.cat([self(image[i:i + m], affine[i:i + m]).clone() for i in range(0, n, m)])
        rows = bucket(n, m)
        return self.path(pad_rows(image, rows), pad_rows(affine, rows))[:n]

    def warm_up(self, sizes, device, calls: int = 3) -> None:
        """Compile and record the buckets of these batch sizes (CUDA graphs record on the second or third call)."""
        import torch

        from flmk.compiled import bucket

        for rows in sorted({bucket(min(n, self.max_batch), self.max_batch) for n in sizes}):
            image = torch.zeros(rows, 3, self.crop_size, self.crop_size, dtype=torch.uint8, device=device)
            affine = torch.eye(2, 3, device=device).expand(rows, 2, 3).contiguous()
            with torch.inference_mode():
                for _ in range(calls):
                    self(image, affine)


class TorchNet:
    """A checkpoint's network in PyTorch: bf16 autocast on GPU, fp32 on CPU; ``compile`` (a torch.compile mode):
    the path under :class:`CompiledPoints`, fp32 unless precision=bf16, on GPU only (eager on CPU)."""

    def __init__(self, module, desc: dict, device: str = "cpu", precision: str = "auto", compile: str | None = None,
                 max_batch: int = 32, compile_backend: str = "inductor"):
        import torch

        self.torch, self.desc = torch, desc
        self.device = torch.device("cuda" if device == "auto" and torch.cuda.is_available() else
                                   ("cpu" if device == "auto" else device))
        self.net = module.net.to(self.device).eval()
        self.bf16 = precision == "bf16" or (precision == "auto" and self.device.type == "cuda" and compile is None)
        self.is_tracker = hasattr(self.net, "step") and hasattr(self.net, "init_state")
        if compile is not None and self.is_tracker:
            raise ValueError(f"compile={compile}: {type(self.net).__name__} is a tracker (its state crosses frames) "
                             "and runs eager; compile applies to detector networks")
        self.compiled = None  # eager on CPU: inductor's C++ code generation would only slow a CPU run down
        if compile is not None and (self.device.type == "cuda" or compile_backend != "inductor"):
            self.compiled = CompiledPoints(self.net, int(desc["crop_size"]), compile, max_batch, compile_backend)

    @property
    def threads(self) -> int | None:
        """CPU threads the network runs with (torch's intra-op pool); None on a GPU."""
        return self.torch.get_num_threads() if self.device.type == "cpu" else None

    def _run(self, fn, *args):
        torch = self.torch
        with torch.inference_mode(), torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16):
            return fn(*args)

    def _back(self, points, affines: np.ndarray) -> np.ndarray:
        from flmk.models.module import to_original

        aff = self.torch.from_numpy(affines).to(self.device)
        return to_original(points.float(), aff, self.desc["crop_size"]).cpu().numpy().astype(np.float64)

    def _image(self, x: np.ndarray):
        """Crops on the device: uint8 travel as bytes (a quarter of float32's) and are normalised there."""
        from flmk.data.transforms import normalise_image

        return normalise_image(self.torch.from_numpy(x).to(self.device))

    def __call__(self, x: np.ndarray, affines: np.ndarray) -> np.ndarray:
        """Crops (B, 3, S, S), uint8 (Landmarker.crop) or normalised float, and their affines -> points (B, N, 2)
        in original pixels."""
        if self.is_tracker:  # one frame, a fresh state: a tracker's first frame
            return np.concatenate([self.step(x[i:i + 1], affines[i:i + 1], self.init_state())[0] for i in range(len(x))])
        if self.compiled is not None:  # normalised inside the compiled path (float crops: one more graph)
            image = self.torch.from_numpy(x).to(self.device)
            points = self._run(self.compiled, image, self.torch.from_numpy(affines).to(self.device))
            return points.cpu().numpy().astype(np.float64)
        return self._back(self._run(self.net, self._image(x))["points"], affines)

    def init_state(self):
        import inspect

        if "batch_size" in inspect.signature(self.net.init_state).parameters:  # SRN tracker: RNN state per clip
            return self.net.init_state(1, self.device)
        return self.net.init_state()  # 1D-HM / 2D trackers: eq. 13 memory, empty before the first frame

    def step(self, x: np.ndarray, affines: np.ndarray, state):
        """One frame of one track (1, 3, S, S) with the tracker's state -> (points (1, N, 2), next state)."""
        out, state = self._run(self.net.step, self._image(x), state)
        return self._back(out["points"], affines), state


class OnnxNet:
    """An exported network (fp32, or int8 from ``flmk.export quantize=int8``) under onnxruntime; pre- and
    post-processing in numpy, no torch.

    The session runs on the CPU with every graph optimisation (constant folding, Conv+activation fusion,
    the NCHWc / NHWC layouts of its CPU kernels, QDQ -> integer kernels), one operator at a time
    (``inter_op`` 1), ``threads`` threads inside each operator (None: one per physical core) and the
    memory arena on. ``spin=False`` lets idle worker threads sleep instead of spinning between operators:
    on a CPU shared with other processes spinning threads take the cores from the working ones
    (2-core numbers in experiments/BENCHMARKS.md); ``spin=True`` may save latency on an idle machine.
    """

    is_tracker = False

    def __init__(self, path: str | Path, threads: int | None = None, spin: bool = False):
        import onnxruntime as ort

        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"onnx={path}: no such ONNX file (write one with `python -m flmk.export`)")
        if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
            raise ValueError(f"threads={threads!r}: expected a positive number of onnxruntime threads, or null")
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.inter_op_num_threads = 1
        opts.enable_cpu_mem_arena = True
        if threads:
            opts.intra_op_num_threads = threads
        opts.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
        try:
            self.session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        except Exception as e:
            raise ValueError(f"onnx={path}: onnxruntime cannot load it ({str(e).splitlines()[0]})") from None
        meta = self.session.get_modelmeta().custom_metadata_map
        if "flmk" not in meta:
            raise ValueError(f"onnx={path}: not an flmk export (no 'flmk' metadata; write it with flmk.export)")
        self.desc = json.loads(meta["flmk"])
        self.input = self.session.get_inputs()[0].name
        # onnxruntime's intra-op threads as set; None: onnxruntime's own choice, which its API does not report
        self.threads = threads

    def __call__(self, x: np.ndarray, affines: np.ndarray) -> np.ndarray:
        points = self.session.run(["points"], {self.input: normalise_chw(x)})[0]
        return crop_to_original(points, affines, self.desc["crop_size"])


class BoxTracker:
    """Faces across video frames: detections associated to tracks by IoU, boxes followed by the landmarks.

    Each track's box for the next frame is its current landmarks' box (the models' own box convention),
    blended with a matched detection on detection frames; ``smoothing`` is the weight of the previous
    box (an exponential moving average against jitter). A track unmatched for ``max_missed`` detection
    rounds ends. Every track carries the state of a tracker network (HM1D / SRN trackers).
    """

    def __init__(self, iou: float = 0.3, smoothing: float = 0.3, max_missed: int = 3):
        self.iou, self.smoothing, self.max_missed = iou, smoothing, max_missed
        self.tracks: list[dict] = []
        self.next_id = 0

    def associate(self, boxes: np.ndarray, scores: np.ndarray, new_state) -> None:
        """Greedy IoU matching of this frame's detections to the live tracks."""
        free = list(range(len(boxes)))
        if self.tracks and len(boxes):
            iou = box_iou(np.stack([t["box"] for t in self.tracks]), boxes)
            for ti in np.argsort(-iou.max(1)):
                if not free:
                    break
                j = free[int(np.argmax(iou[ti, free]))]
                track = self.tracks[ti]
                if iou[ti, j] >= self.iou:
                    track["box"] = self.smoothing * track["box"] + (1 - self.smoothing) * boxes[j]
                    track["score"], track["missed"] = float(scores[j]), 0
                    track["matched"] = True
                    free.remove(j)
        for t in self.tracks:
            if not t.pop("matched", False):
                t["missed"] += 1
        self.tracks = [t for t in self.tracks if t["missed"] <= self.max_missed]
        for j in free:
            self.tracks.append({"id": self.next_id, "box": boxes[j].astype(np.float64), "score": float(scores[j]),
                                "missed": 0, "state": new_state()})
            self.next_id += 1

    def follow(self, track: dict, points: np.ndarray) -> None:
        track["box"] = self.smoothing * track["box"] + (1 - self.smoothing) * points_box(points)


class Landmarker:
    def __init__(self, net, desc: dict, detector=None, batch_size: int = 32):
        self.net, self.desc, self.batch_size = net, desc, batch_size
        self.crop_size, self.crop_scale = int(desc["crop_size"]), float(desc["crop_scale"])
        self.layout = str(desc["layout"])
        self._detector = detector

    @property
    def detector(self):
        if self._detector is None:
            self._detector = DlibHOG()
        return self._detector

    @classmethod
    def from_checkpoint(cls, path: str | Path, device: str = "auto", detector=None, batch_size: int = 32,
                        precision: str = "auto", compile: bool | str | None = None) -> Landmarker:
        """A trained flmk checkpoint (.ckpt), rebuilt from the file alone (flmk.checkpoint). ``compile``: true
        (mode reduce-overhead: CUDA graphs) or a torch.compile mode runs the network, its decoder and the inverse
        affine compiled, in fp32 unless precision=bf16, for batches padded to 1, 2, 4, ... batch_size; each
        such size compiles on first use (``lm.net.compiled.warm_up(sizes, device)`` does it ahead). Eager on CPU."""
        from flmk.checkpoint import load_module

        module, desc = load_module(path)
        net = TorchNet(module, desc, device, precision, compile_mode(compile), max_batch=batch_size)
        return cls(net, desc, detector, batch_size)

    @classmethod
    def from_onnx(cls, path: str | Path, detector=None, batch_size: int = 32, threads: int | None = None,
                  spin: bool = False) -> Landmarker:
        """A model written by ``python -m flmk.export`` (fp32 or int8) under onnxruntime (no torch at run time)."""
        net = OnnxNet(path, threads, spin)
        return cls(net, net.desc, detector, batch_size)

    # -- one image -----------------------------------------------------------------------------------
    def crop(self, image: np.ndarray, boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """uint8 crops (K, 3, S, S) and affines (K, 2, 3) for K boxes, as the data module crops them; the backend
        normalises them (TorchNet on its device, OnnxNet in numpy)."""
        affines = np.stack([crop_affine(b, self.crop_size, self.crop_scale) for b in boxes]).astype(np.float32)
        crops = np.stack([to_chw_uint8(warp_crop(image, m, self.crop_size)) for m in affines])
        return crops, affines

    def find(self, image: np.ndarray, boxes=None) -> tuple[np.ndarray, np.ndarray]:
        """(boxes, scores): the given boxes (score 1) or the detector's."""
        if boxes is not None:
            boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
            return boxes, np.ones(len(boxes))
        return self.detector(image)

    def faces(self, boxes: np.ndarray, scores: np.ndarray, points: np.ndarray) -> list[dict]:
        return [{"box": [round(float(v), 2) for v in b], "score": float(s), "points": p.round(3).tolist(), "layout": self.layout}
                for b, s, p in zip(boxes, scores, points)]

    def __call__(self, image: np.ndarray, boxes=None) -> list[dict]:
        """Landmarks of every face of an RGB uint8 (H, W, 3) image, in its pixels (0-based)."""
        return next(iter(self.predict([(image, boxes)])))

    # -- many images, batched ------------------------------------------------------------------------
    def predict(self, items: Iterable[tuple[np.ndarray, object]]) -> Iterator[list[dict]]:
        """(image, boxes or None) pairs -> faces per image, in order; faces of many images share a batch."""
        pending: list[tuple[np.ndarray, np.ndarray, int]] = []  # (boxes, scores, number of crops)
        crops, affines = [], []

        def flush():
            x = np.concatenate(crops) if crops else np.zeros((0, 3, self.crop_size, self.crop_size), np.uint8)
            a = np.concatenate(affines) if affines else np.zeros((0, 2, 3), np.float32)
            pts = np.concatenate([self.net(x[i:i + self.batch_size], a[i:i + self.batch_size])
                                  for i in range(0, len(x), self.batch_size)]) if len(x) else np.zeros((0, 0, 2))
            start = 0
            for boxes, scores, n in pending:
                yield self.faces(boxes, scores, pts[start:start + n])
                start += n
            pending.clear(), crops.clear(), affines.clear()

        queued = 0
        for image, boxes in items:
            boxes, scores = self.find(image, boxes)
            if len(boxes):
                x, a = self.crop(image, boxes)
                crops.append(x), affines.append(a)
            pending.append((boxes, scores, len(boxes)))
            queued += len(boxes)
            if queued >= self.batch_size:
                yield from flush()
                queued = 0
        yield from flush()

    # -- video ---------------------------------------------------------------------------------------
    def track(self, frames: Iterable[np.ndarray], boxes: Sequence | None = None, detect_every: int = 1,
              tracker: BoxTracker | None = None) -> Iterator[list[dict]]:
        """Faces per frame; each face dict gains ``track``. ``boxes[i]`` (optional) replaces detection at frame i.

        Detection runs every ``detect_every`` frames (and whenever no face is tracked); between detections
        each track follows its own landmarks. A tracker network (HM1D / SRN tracker) steps once per frame
        and track, carrying its state as over a training clip.
        """
        tracker = tracker or BoxTracker()
        for i, frame in enumerate(frames):
            given = boxes[i] if boxes is not None and i < len(boxes) else None
            if given is not None or ((i % max(detect_every, 1) == 0 or not tracker.tracks) and boxes is None):
                tracker.associate(*self.find(frame, given), new_state=self._new_state)
            live = [t for t in tracker.tracks if t["missed"] == 0]
            if not live:
                yield []
                continue
            x, a = self.crop(frame, np.stack([t["box"] for t in live]))
            if self.net.is_tracker:
                pts = []
                for k, t in enumerate(live):
                    p, t["state"] = self.net.step(x[k:k + 1], a[k:k + 1], t["state"])
                    pts.append(p)
                pts = np.concatenate(pts)
            else:
                pts = self.net(x, a)
            faces = self.faces(np.stack([t["box"] for t in live]), np.array([t["score"] for t in live]), pts)
            for face, t, p in zip(faces, live, pts):
                face["track"] = t["id"]
                tracker.follow(t, p)
            yield faces

    def _new_state(self):
        return self.net.init_state() if self.net.is_tracker else None
