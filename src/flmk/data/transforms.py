"""Face crops and augmentation.

Geometry is one affine per sample (original pixels -> crop pixels, cv2
convention) composed from the face box, random rotation / scale /
translation and a horizontal flip (or, with ``box_jitter``, from a jittered box around the
rotated landmarks: SRN's recipe); the image is warped once with it, the
points are mapped with it, and it is kept with the sample so predictions map
back (docs/ARCHITECTURE.md, "Coordinates"). A flip also permutes point
indices with the layout's flip map. Photometric augmentation (colour, blur,
noise, random-erasing occlusion) is albumentations in the loader workers, or, with
``data.augment_on=device``, the same draws applied to the batch on the device (flmk.data.device_augment).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import albumentations as A
import cv2
import numpy as np

from flmk.layouts import Layout

# ImageNet's channel statistics: Python floats for torch (torch.compile takes them as constants; it cannot guard a
# numpy global under inference_mode), float32 arrays for numpy
IMAGENET_MEAN_STD = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
IMAGENET_MEAN, IMAGENET_STD = (np.array(v, dtype=np.float32) for v in IMAGENET_MEAN_STD)

# Photometric ranges, shared by the albumentations pipeline and device augmentation [assume, notes §1.3]
COLOR_JITTER = (0.3, 0.3, 0.3, 0.05)  # brightness, contrast, saturation, hue
BLUR_KERNEL = (3, 5)                   # Gaussian kernel sizes ...
BLUR_SIGMA = (0.5, 3.0)                # ... and sigma (albumentations' default)
NOISE_STD = (0.02, 0.08)               # Gaussian pixel noise σ, fraction of the 0..255 range
ERASE_HOLES = (1, 2)                   # random-erasing holes per image ...
ERASE_SIZE = (0.15, 0.4)               # ... each this fraction of the crop's height and width


@dataclass
class AugmentConfig:
    """Ranges of the geometric and photometric augmentation (conf/augment/*.yaml)."""

    crop_scale: float = 1.25  # crop side = crop_scale * max(box w, h)  [assume, notes §1.3]
    rotation: float = 0.0  # degrees: uniform in ±rotation, or N(0, rotation) clipped at rotation_clip σ when gaussian
    rotation_dist: str = "uniform"
    rotation_p: float = 1.0  # probability that a training sample is rotated at all
    rotation_clip: float | None = 2.0  # gaussian draws are clipped at this many σ; None = unclipped
    # σ of the training crop's box around the box of the (rotated) landmarks: centre x, y (fractions of that
    # box's width, height), log width, log height; () = crop around the record's box (SRN §6.1 below)
    box_jitter: tuple[float, ...] = ()
    scale: tuple[float, float] = (1.0, 1.0)  # zoom range: uniform in it, or N(mid, half-width / 2) clipped to it
    scale_dist: str = "uniform"
    translation: float = 0.0  # fraction of the crop side
    flip: float = 0.0  # probability
    color: float = 0.0  # probability of colour jitter
    blur: float = 0.0
    noise: float = 0.0
    erase: float = 0.0  # random-erasing style occlusion probability
    extra: dict = field(default_factory=dict)


def crop_affine(box: np.ndarray, crop_size: int, crop_scale: float, rotation_deg: float = 0.0,
                zoom: float = 1.0, shift: tuple[float, float] = (0.0, 0.0), flip: bool = False) -> np.ndarray:
    """Affine (2x3) taking original pixels to crop pixels.

    The box centre goes to the crop centre, the box's longer side times
    ``crop_scale`` spans the crop, then rotation about the centre, zoom,
    shift (in crop pixels) and an optional mirror.
    """
    x1, y1, x2, y2 = box
    centre = np.array([(x1 + x2) / 2.0, (y1 + y2) / 2.0])
    side = max(x2 - x1, y2 - y1, 1.0) * crop_scale
    s = crop_size / side * zoom
    theta = np.deg2rad(rotation_deg)
    rot = np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]]) * s
    half = (crop_size - 1) / 2.0
    t = np.array([half, half]) + np.asarray(shift) - rot @ centre
    m = np.concatenate([rot, t[:, None]], axis=1)
    if flip:
        mirror = np.array([[-1.0, 0.0, crop_size - 1.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
        m = (mirror @ np.vstack([m, [0, 0, 1]]))[:2]
    return m


def jittered_landmark_box(points: np.ndarray, rotation_deg: float, jitter: np.ndarray) -> np.ndarray:
    """The box to give :func:`crop_affine` (with ``rotation_deg``) so that the crop is the box of the rotated
    landmarks moved by ``jitter`` (centre x, y in box widths/heights; log width, log height).

    SRN's training geometry (code:SRN train.py, notes §6.1): the mean shape is aligned to the rotated ground
    truth's box jittered like a detector's box. The net's initial shape is fixed in crop coordinates, aligned
    to the crop's box, so cropping around the jittered box aligns it to that box.
    """
    theta = np.deg2rad(rotation_deg)
    rot = np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]])
    centre = (points.min(0) + points.max(0)) / 2
    q = (points - centre) @ rot.T                       # rotated about the landmarks' box centre
    lo, hi = q.min(0), q.max(0)
    size = np.maximum(hi - lo, 1.0) * np.exp(jitter[2:])
    mid = (lo + hi) / 2 + jitter[:2] * (hi - lo)        # the jittered box, in the rotated frame
    c = centre + rot.T @ mid                            # crop_affine rotates about the box centre
    return np.concatenate([c - size / 2, c + size / 2])


def warp_crop(image: np.ndarray, m: np.ndarray, crop_size: int) -> np.ndarray:
    """The ``crop_size`` square crop of ``image`` under the affine ``m`` (original -> crop pixels)."""
    return cv2.warpAffine(image, m, (crop_size, crop_size), flags=cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_CONSTANT, borderValue=0)


def crop_to_original(points: np.ndarray, m: np.ndarray, crop_size: int) -> np.ndarray:
    """Crop-normalised (..., N, 2) points -> original pixels: numpy twin of flmk.models.module.to_original."""
    u = np.asarray(points, dtype=np.float64) * crop_size - 0.5
    inv = np.linalg.inv(np.concatenate([m, np.broadcast_to([0.0, 0.0, 1.0], (*m.shape[:-2], 1, 3))], -2))[..., :2, :]
    return u @ np.swapaxes(inv[..., :2], -1, -2) + inv[..., None, :, 2]


def apply_affine(m: np.ndarray, points: np.ndarray) -> np.ndarray:
    return points @ m[:, :2].T + m[:, 2]


def compose_affine(outer: np.ndarray, inner: np.ndarray) -> np.ndarray:
    """The affine applying ``inner`` then ``outer``."""
    return outer[:, :2] @ inner + np.concatenate([np.zeros((2, 2)), outer[:, 2:]], axis=1)


def invert_affine(m: np.ndarray) -> np.ndarray:
    full = np.vstack([m, [0.0, 0.0, 1.0]])
    return np.linalg.inv(full)[:2]


class FaceTransform:
    """Samples a crop affine, warps the image, maps and permutes the points."""

    def __init__(self, layout: Layout, crop_size: int, cfg: AugmentConfig, train: bool):
        self.layout, self.crop_size, self.cfg, self.train = layout, crop_size, cfg, train
        photometric = []
        if train:
            if cfg.color > 0:
                photometric.append(A.ColorJitter(*COLOR_JITTER, p=cfg.color))
            if cfg.blur > 0:
                photometric.append(A.GaussianBlur(blur_limit=BLUR_KERNEL, sigma_limit=BLUR_SIGMA, p=cfg.blur))
            if cfg.noise > 0:
                photometric.append(A.GaussNoise(std_range=NOISE_STD, p=cfg.noise))
            if cfg.erase > 0:
                photometric.append(
                    A.CoarseDropout(num_holes_range=ERASE_HOLES, hole_height_range=ERASE_SIZE,
                                    hole_width_range=ERASE_SIZE, fill="random", p=cfg.erase)
                )
        self.photometric = A.Compose(photometric) if photometric else None

    def sample_params(self, rng: np.random.Generator) -> dict:
        c = self.cfg
        for name, dist in (("rotation_dist", c.rotation_dist), ("scale_dist", c.scale_dist)):
            if dist not in ("uniform", "gaussian"):
                raise ValueError(f"augment.{name}={dist!r}; expected 'uniform' or 'gaussian'")
        if len(c.box_jitter) not in (0, 4):
            raise ValueError(f"augment.box_jitter={list(c.box_jitter)}; expected [] or 4 σ: centre x, centre y, "
                             "log width, log height")
        if not self.train:
            return dict(rotation_deg=0.0, zoom=1.0, shift=(0.0, 0.0), flip=False)
        if c.rotation_dist == "gaussian":
            rot = float(rng.normal(0.0, c.rotation)) if c.rotation else 0.0
            if c.rotation_clip is not None:
                rot = float(np.clip(rot, -c.rotation_clip * c.rotation, c.rotation_clip * c.rotation))
        else:
            rot = float(rng.uniform(-c.rotation, c.rotation))
        if c.rotation_p < 1.0 and rng.random() >= c.rotation_p:
            rot = 0.0
        lo, hi = c.scale
        if c.scale_dist == "gaussian":
            zoom = float(np.clip(rng.normal((lo + hi) / 2, (hi - lo) / 4), lo, hi))
        else:
            zoom = float(rng.uniform(lo, hi))
        shift = tuple(rng.uniform(-c.translation, c.translation, size=2) * self.crop_size)
        flip = bool(rng.random() < c.flip)
        params = dict(rotation_deg=rot, zoom=zoom, shift=shift, flip=flip)
        if c.box_jitter:
            params["box_jitter"] = rng.normal(0.0, 1.0, 4) * np.asarray(c.box_jitter)
        return params

    def sample_photometric(self, rng: np.random.Generator) -> dict:
        """One sample's photometric draws for device augmentation (flmk.data.device_augment), identity where
        an operation is off or not drawn: colour (brightness, contrast, saturation, hue shift in turns), a
        normalised 1D blur kernel, the noise σ and up to ERASE_HOLES[1] holes (x1, y1, x2, y2 in crop pixels)."""
        c, s = self.cfg, self.crop_size
        color = np.array([1.0, 1.0, 1.0, 0.0])
        if c.color > 0 and rng.random() < c.color:
            b, k, t, h = COLOR_JITTER
            color = np.array([*rng.uniform([1 - b, 1 - k, 1 - t], [1 + b, 1 + k, 1 + t]), rng.uniform(-h, h)])
        r = BLUR_KERNEL[1] // 2
        kernel = (np.arange(-r, r + 1) == 0).astype(np.float64)
        if c.blur > 0 and rng.random() < c.blur:
            size, sigma = rng.choice(np.arange(BLUR_KERNEL[0], BLUR_KERNEL[1] + 1, 2)), rng.uniform(*BLUR_SIGMA)
            taps = np.arange(-r, r + 1)
            kernel = np.where(np.abs(taps) <= size // 2, np.exp(-0.5 * (taps / sigma) ** 2), 0.0)
            kernel /= kernel.sum()
        noise = rng.uniform(*NOISE_STD) if c.noise > 0 and rng.random() < c.noise else 0.0
        holes = np.zeros((ERASE_HOLES[1], 4))
        if c.erase > 0 and rng.random() < c.erase:
            for i in range(rng.integers(ERASE_HOLES[0], ERASE_HOLES[1] + 1)):
                hh, ww = (rng.uniform(*ERASE_SIZE, 2) * s).astype(int)
                y, x = rng.integers(0, s - hh + 1), rng.integers(0, s - ww + 1)
                holes[i] = (x, y, x + ww, y + hh)
        return dict(color=color, blur_kernel=kernel, noise_std=noise, holes=holes)

    def __call__(self, image: np.ndarray, points: np.ndarray, box: np.ndarray, visible: np.ndarray,
                 rng: np.random.Generator, params: dict | None = None, source: np.ndarray | None = None,
                 on_device: bool = False) -> dict:
        """``params`` (from :meth:`sample_params`) share one geometry across the frames of a clip;
        ``source`` is the affine (original -> ``image`` pixels) of an image that is already a crop (the cache).
        ``on_device``: draw everything but leave the pixels (the warp of ``image`` and the photometric steps) to
        flmk.data.device_augment: the result has ``warp`` (``image`` -> crop pixels) and the photometric draws
        instead of ``crop``."""
        p = dict(self.sample_params(rng) if params is None else params)
        jitter = p.pop("box_jitter", None)
        if jitter is not None:
            box = jittered_landmark_box(points, p["rotation_deg"], jitter)
        m = crop_affine(box, self.crop_size, self.cfg.crop_scale, **p)
        warp = m if source is None else compose_affine(m, invert_affine(source))
        pts = apply_affine(m, points)
        if p["flip"]:
            perm = self.layout.flip_index
            pts, visible = pts[perm], visible[perm]
        out = dict(points=pts, visible=visible, affine=m, flipped=p["flip"])
        if on_device:
            return dict(out, warp=warp, **self.sample_photometric(rng))
        crop = warp_crop(image, warp, self.crop_size)
        if self.photometric is not None:  # seeded from the sample's RNG so a fixed seed repeats exactly
            self.photometric.set_random_seed(int(rng.integers(2**31)))
            crop = self.photometric(image=crop)["image"]
        return dict(out, crop=crop)


def to_tensor_image(crop: np.ndarray) -> np.ndarray:
    """uint8 HxWx3 RGB -> float32 3xHxW, ImageNet-normalised."""
    return normalise_chw(to_chw_uint8(crop))


def normalise_chw(x: np.ndarray) -> np.ndarray:
    """uint8 (..., 3, H, W) -> float32 ImageNet-normalised, in numpy (:func:`normalise_image` on a device); float
    input is taken as normalised already and returned as is."""
    if x.dtype != np.uint8:
        return x
    return (x.astype(np.float32) / 255.0 - IMAGENET_MEAN[:, None, None]) / IMAGENET_STD[:, None, None]


def to_uint8_image(x: np.ndarray) -> np.ndarray:
    """Inverse of :func:`to_tensor_image` (or :func:`to_chw_uint8`), for visualisation."""
    if x.dtype == np.uint8:
        return np.ascontiguousarray(x.transpose(1, 2, 0))
    img = x.transpose(1, 2, 0) * IMAGENET_STD + IMAGENET_MEAN
    return np.clip(img * 255.0, 0, 255).astype(np.uint8)


def to_chw_uint8(crop: np.ndarray) -> np.ndarray:
    """uint8 HxWx3 RGB -> uint8 3xHxW: the crop leaves the loader workers as bytes, normalised on the device."""
    return np.ascontiguousarray(crop.transpose(2, 0, 1))


def normalise_image(x: "torch.Tensor", scale: float | None = None) -> "torch.Tensor":
    """uint8 (..., 3, H, W) -> float32 ImageNet-normalised, as :func:`to_tensor_image`; float input is returned as is,
    unless ``scale`` gives its range (255.0 for float crops in 0..255, as device augmentation makes them).

    torch is imported here, not above: the numpy crop path (the ONNX backend) runs without torch."""
    import torch

    if x.dtype != torch.uint8 and scale is None:
        return x
    mean, std = (torch.tensor(v, dtype=torch.float32, device=x.device).view(3, 1, 1) for v in IMAGENET_MEAN_STD)
    return (x.float() / (scale or 255.0) - mean) / std
