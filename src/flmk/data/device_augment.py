"""Training augmentation on the device (``data.augment_on=device``): the loader workers keep only the sampling.

Every random draw stays in the worker, from the sample's own RNG (:meth:`FaceTransform.sample_params` and
:meth:`FaceTransform.sample_photometric`), so a fixed seed repeats a run and epochs differ exactly as with
``augment_on=workers``; only the pixel work moves to the batch on the device:

- the worker sends a *canvas* (the cached crop, or one warp of the photograph around the face box with a margin)
  and the affine ``warp`` taking canvas pixels to training-crop pixels; the batch is warped at once with
  ``grid_sample`` (bilinear, zero border: cv2.warpAffine's INTER_LINEAR / BORDER_CONSTANT);
- photometric augmentation runs on the whole batch with the per-sample parameters the worker drew: colour jitter
  (brightness, contrast, saturation, hue), Gaussian blur, Gaussian noise and random erasing, in the order and with
  the ranges of the albumentations pipeline in :class:`flmk.data.transforms.FaceTransform`.

Two readings differ from albumentations and are marked [assume]: the colour jitter's four operations run in a
fixed order (albumentations shuffles them), and the hue shift is a rotation of the chroma plane in YIQ space (a
linear map, so saturation and hue are one 3x3 matrix per sample) rather than a shift of OpenCV's HSV hue.
The pixel-level noise (Gauss noise, the erased holes' random fill) is drawn on the device from torch's RNG, which
Lightning seeds from ``seed``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from flmk.data.transforms import normalise_image

# RGB -> YIQ (NTSC); Y is the luma the saturation and hue operations keep.
_YIQ = torch.tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])
_GRAY = torch.tensor([0.299, 0.587, 0.114])  # cv2's RGB2GRAY weights (albumentations' contrast reference)


def warp_canvas(canvas: torch.Tensor, warp: torch.Tensor, crop_size: int) -> torch.Tensor:
    """uint8/float (B, 3, S, S) canvases -> float (B, 3, C, C) crops in 0..255, under (B, 2, 3) canvas->crop affines.

    An output pixel u (integer coordinates, cv2's convention) samples the canvas at warp⁻¹(u); with
    ``align_corners=True`` the normalised grid's ±1 are the centres of the first and last pixels."""
    b, _, s_h, s_w = canvas.shape
    full = torch.cat([warp.double(), warp.new_tensor([0.0, 0.0, 1.0], dtype=torch.float64).expand(b, 1, 3)], 1)
    inv = torch.linalg.inv(full)  # crop px -> canvas px
    c = crop_size
    out_to_px = torch.tensor([[(c - 1) / 2, 0, (c - 1) / 2], [0, (c - 1) / 2, (c - 1) / 2], [0, 0, 1]],
                             dtype=torch.float64, device=warp.device)
    px_to_in = torch.tensor([[2 / (s_w - 1), 0, -1], [0, 2 / (s_h - 1), -1], [0, 0, 1]], dtype=torch.float64,
                            device=warp.device)
    theta = (px_to_in @ inv @ out_to_px)[:, :2].float()
    grid = F.affine_grid(theta, [b, 3, c, c], align_corners=True)
    return F.grid_sample(canvas.float(), grid, mode="bilinear", padding_mode="zeros", align_corners=True)


def color_jitter(x: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) in 0..255; params (B, 4) = brightness, contrast, saturation factors and hue shift (turns).

    Brightness scales, contrast blends with the image's mean grey, saturation blends with the pixel's grey (luma)
    and the hue turns the chroma plane; each step clips to 0..255 as albumentations does on uint8. Identity
    parameters (1, 1, 1, 0) leave the image unchanged."""
    b = x.shape[0]
    brightness, contrast, saturation, hue = params.float().unbind(1)
    x = (x * brightness.view(b, 1, 1, 1)).clamp(0, 255)
    grey_mean = torch.einsum("c,bchw->b", _GRAY.to(x), x) / (x.shape[2] * x.shape[3])
    x = ((x - grey_mean.view(b, 1, 1, 1)) * contrast.view(b, 1, 1, 1) + grey_mean.view(b, 1, 1, 1)).clamp(0, 255)
    angle = hue * 2 * torch.pi
    cos, sin, one, zero = torch.cos(angle), torch.sin(angle), torch.ones_like(angle), torch.zeros_like(angle)
    chroma = torch.stack([torch.stack([one, zero, zero], 1),  # keep Y; scale and rotate (I, Q)
                          torch.stack([zero, saturation * cos, -saturation * sin], 1),
                          torch.stack([zero, saturation * sin, saturation * cos], 1)], 1)
    yiq = _YIQ.to(x)
    m = torch.linalg.inv(yiq) @ chroma @ yiq  # (B, 3, 3) in RGB
    return torch.einsum("bij,bjhw->bihw", m, x).clamp(0, 255)


def gaussian_blur(x: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """Per-sample separable blur with the worker's normalised 1D kernels (B, K), K odd, reflected border (cv2's
    BORDER_REFLECT_101); the kernel (0, .., 1, .., 0) leaves a sample unchanged."""
    b, ch, h, w = x.shape
    r = kernel.shape[1] // 2
    k = kernel.to(x).repeat_interleave(ch, 0)  # (B*3, K): one kernel per image channel, as grouped convolutions
    y = F.pad(x.reshape(1, b * ch, h, w), (r, r, r, r), mode="reflect")
    y = F.conv2d(y, k.view(b * ch, 1, 1, -1), groups=b * ch)
    y = F.conv2d(y, k.view(b * ch, 1, -1, 1), groups=b * ch)
    return y.view(b, ch, h, w)


def gauss_noise(x: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """Add per-pixel, per-channel N(0, (std·255)²) noise; std (B,) as a fraction of the 0..255 range."""
    return (x + torch.randn_like(x) * (std.to(x) * 255).view(-1, 1, 1, 1)).clamp(0, 255)


def erase(x: torch.Tensor, holes: torch.Tensor) -> torch.Tensor:
    """Random erasing: holes (B, K, 4) = x1, y1, x2, y2 in crop pixels (x1 = x2: no hole), filled with uniform
    random values per pixel and channel (albumentations CoarseDropout, fill="random")."""
    _, _, h, w = x.shape
    ys = torch.arange(h, device=x.device, dtype=x.dtype).view(1, 1, h, 1)
    xs = torch.arange(w, device=x.device, dtype=x.dtype).view(1, 1, 1, w)
    x1, y1, x2, y2 = (holes.to(x)[..., i, None, None] for i in range(4))  # (B, K, 1, 1)
    inside = ((xs >= x1) & (xs < x2) & (ys >= y1) & (ys < y2)).any(1, keepdim=True)  # (B, 1, H, W)
    return torch.where(inside, torch.rand_like(x) * 255, x)


def augment_batch(batch: dict, crop_size: int) -> torch.Tensor:
    """The training crops of a device-augmentation batch, float 0..255 (B, 3, C, C); clip batches (B, T, ...) too."""
    lead = batch["canvas"].shape[:-3]
    flat = lambda t: t.reshape(-1, *t.shape[len(lead):])  # noqa: E731
    x = warp_canvas(flat(batch["canvas"]), flat(batch["warp"]), crop_size)
    x = color_jitter(x, flat(batch["color"]))
    x = gaussian_blur(x, flat(batch["blur_kernel"]))
    x = gauss_noise(x, flat(batch["noise_std"]))
    x = erase(x, flat(batch["holes"]))
    return x.reshape(*lead, *x.shape[1:])


def finish_batch(batch: dict, crop_size: int) -> dict:
    """On the device, after the transfer: augment a device-augmentation batch into ``crop_size`` crops (the
    model's; a Python int, so no step waits on the device to read it), then ImageNet-normalise the image (uint8
    crops from ``data.image_dtype=uint8`` too). Float images that are already normalised pass unchanged."""
    if "canvas" in batch:
        x = augment_batch(batch, crop_size)
        for k in ("canvas", "warp", "color", "blur_kernel", "noise_std", "holes"):
            batch.pop(k)
        batch["image"] = normalise_image(x, scale=255.0)
    else:
        batch["image"] = normalise_image(batch["image"])
    return batch
