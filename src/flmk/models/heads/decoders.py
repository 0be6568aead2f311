"""Heatmap -> crop-normalised coordinate decoders.

1D (1D-HM): ``argmax`` (eq. 7) and ``dark`` (DARK adapted to 1D, the "Ours+DARK" row).
2D (FAN baseline, Table 3): ``argmax``, ``dark`` (Zhang et al. 2020), ``integral``
(soft-argmax, Sun et al. 2018) and ``dsnt`` (Nibali et al. 2018; the same expectation
as ``integral`` — the two differ by their loss, see :func:`dsnt_regulariser`).
Bin j is centred at (j + 0.5) / L. Every decoder runs in fp32.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

DECODERS_1D = ("argmax", "dark")
DECODERS_2D = ("argmax", "dark", "integral", "dsnt")


def check_decoder(decoder: str, allowed: tuple[str, ...], model: str) -> str:
    if decoder not in allowed:
        raise ValueError(f"{model} decoder: expected one of {allowed}, got {decoder!r}")
    return decoder


def at_least_fp32(x: torch.Tensor) -> torch.Tensor:
    """Decoders compute in fp32 (bf16 / fp16 heatmaps are upcast); fp64 stays fp64."""
    return x if x.dtype == torch.float64 else x.float()


def to_coordinate(index: torch.Tensor, length: int) -> torch.Tensor:
    """Continuous bin index -> crop-normalised coordinate."""
    return (index + 0.5) / length


def gaussian_blur(heatmap: torch.Tensor, sigma_bins: float, dims: int) -> torch.Tensor:
    """Zero-padded Gaussian blur over the last ``dims`` (1 or 2) axes, rescaled to the input's max (DARK steps 1-2)."""
    radius = max(1, math.ceil(3 * sigma_bins))
    taps = torch.arange(-radius, radius + 1, device=heatmap.device, dtype=heatmap.dtype)
    kernel = torch.exp(-0.5 * (taps / sigma_bins) ** 2)
    kernel = kernel / kernel.sum()
    x = heatmap.reshape(-1, 1, *heatmap.shape[-dims:])
    with torch.autocast(heatmap.device.type, enabled=False):  # keep the blur in the heatmap's fp32 / fp64
        if dims == 1:
            x = F.conv1d(x, kernel.view(1, 1, -1), padding=radius)
        else:  # separable: rows, then columns
            x = F.conv2d(x, kernel.view(1, 1, 1, -1), padding=(0, radius))
            x = F.conv2d(x, kernel.view(1, 1, -1, 1), padding=(radius, 0))
    x = x.view_as(heatmap)
    peak = heatmap.flatten(-dims).amax(-1, keepdim=True)
    blurred_peak = x.flatten(-dims).amax(-1, keepdim=True).clamp_min(1e-10)
    return (x.flatten(-dims) * peak / blurred_peak).view_as(heatmap)


def decode_1d(heatmap: torch.Tensor, decoder: str = "argmax", sigma_bins: float = 1.0) -> torch.Tensor:
    """(..., L) heatmaps -> (...) crop-normalised coordinates."""
    check_decoder(decoder, DECODERS_1D, "1D heatmap")
    heatmap = at_least_fp32(heatmap)
    length = heatmap.shape[-1]
    index = heatmap.argmax(-1)  # eq. 7
    if decoder == "argmax":
        return to_coordinate(index.to(heatmap.dtype), length)
    g = gaussian_blur(heatmap, sigma_bins, 1).clamp_min(1e-10).log()

    def at(offset: int) -> torch.Tensor:
        return g.gather(-1, (index + offset).clamp(0, length - 1).unsqueeze(-1)).squeeze(-1)

    d1 = 0.5 * (at(1) - at(-1))
    d2 = 0.25 * (at(2) - 2 * at(0) + at(-2))
    ok = (index >= 2) & (index <= length - 3) & (d2 < 0)  # Taylor step only at an interior maximum
    shift = torch.where(ok, -d1 / torch.where(ok, d2, -torch.ones_like(d2)), torch.zeros_like(d1))
    shift = shift.clamp(-1.0, 1.0)  # the maximum lies within one bin of the discrete argmax
    return to_coordinate(index.to(heatmap.dtype) + shift, length)


def decode_2d(heatmap: torch.Tensor, decoder: str = "argmax", sigma_bins: float = 1.0) -> torch.Tensor:
    """(..., H, W) heatmaps (logits for integral / dsnt) -> (..., 2) crop-normalised (x, y)."""
    check_decoder(decoder, DECODERS_2D, "2D heatmap")
    heatmap = at_least_fp32(heatmap)
    if decoder in ("integral", "dsnt"):
        return soft_argmax_2d(heatmap)
    h, w = heatmap.shape[-2:]
    flat = heatmap.flatten(-2).argmax(-1)
    iy, ix = flat // w, flat % w
    xy = torch.stack((ix, iy), -1).to(heatmap.dtype)
    if decoder == "argmax":
        return to_coordinate(xy, torch.tensor([w, h], device=xy.device, dtype=xy.dtype))
    g = gaussian_blur(heatmap, sigma_bins, 2).clamp_min(1e-10).log().flatten(-2)

    def at(dx: int, dy: int) -> torch.Tensor:
        idx = (iy + dy).clamp(0, h - 1) * w + (ix + dx).clamp(0, w - 1)
        return g.gather(-1, idx.unsqueeze(-1)).squeeze(-1)

    gx, gy = 0.5 * (at(1, 0) - at(-1, 0)), 0.5 * (at(0, 1) - at(0, -1))
    gxx = 0.25 * (at(2, 0) - 2 * at(0, 0) + at(-2, 0))
    gyy = 0.25 * (at(0, 2) - 2 * at(0, 0) + at(0, -2))
    gxy = 0.25 * (at(1, 1) - at(1, -1) - at(-1, 1) + at(-1, -1))
    det = gxx * gyy - gxy**2
    interior = (ix >= 2) & (ix <= w - 3) & (iy >= 2) & (iy <= h - 3)
    ok = interior & (det > 0) & (gxx < 0)  # a local maximum: Hessian negative definite
    safe = torch.where(ok, det, torch.ones_like(det))
    shift = -torch.stack((gyy * gx - gxy * gy, gxx * gy - gxy * gx), -1) / safe.unsqueeze(-1)  # -H^{-1} grad
    shift = torch.where(ok.unsqueeze(-1), shift, torch.zeros_like(shift)).clamp(-1.0, 1.0)
    return to_coordinate(xy + shift, torch.tensor([w, h], device=xy.device, dtype=xy.dtype))


def spatial_softmax(logits: torch.Tensor) -> torch.Tensor:
    """Softmax over the last two axes: the normalised heatmap of integral regression and DSNT."""
    return torch.softmax(at_least_fp32(logits).flatten(-2), -1).view_as(logits)


def soft_argmax_2d(logits: torch.Tensor) -> torch.Tensor:
    """Expected (x, y) under the spatially soft-maxed heatmap (integral regression / DSNT)."""
    prob = spatial_softmax(logits)
    h, w = prob.shape[-2:]
    cx = to_coordinate(torch.arange(w, device=prob.device, dtype=prob.dtype), w)
    cy = to_coordinate(torch.arange(h, device=prob.device, dtype=prob.dtype), h)
    return torch.stack(((prob.sum(-2) * cx).sum(-1), (prob.sum(-1) * cy).sum(-1)), -1)


def dsnt_regulariser(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """DSNT's Jensen-Shannon regulariser between the soft-maxed heatmap and the target Gaussian
    (normalised to sum 1): (..., H, W) -> (...)."""
    prob = spatial_softmax(logits)
    target = target / target.flatten(-2).sum(-1).clamp_min(1e-12)[..., None, None]
    mix = 0.5 * (prob + target)

    def kl(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
        return (p * (p.clamp_min(1e-12).log() - q.clamp_min(1e-12).log())).flatten(-2).sum(-1)

    return 0.5 * (kl(prob, mix) + kl(target, mix))
