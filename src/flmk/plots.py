"""Figures: CED curves, landmark grids and map overlays (headless: Agg canvas, no pyplot state).

Points are (x, y) in the pixels of the image they are drawn on, 0-based, pixel
centres at integers (docs/ARCHITECTURE.md "Coordinates").
"""

from __future__ import annotations

from pathlib import Path

import matplotlib.image
import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from flmk.metrics import auc, ced, threshold_key

GT_COLOUR = (0, 255, 0)
PRED_COLOUR = (255, 0, 0)


def _np(x) -> np.ndarray | None:
    if x is None:
        return None
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def _save(rgb: np.ndarray, path: str | Path | None) -> None:
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        matplotlib.image.imsave(path, rgb)


def plot_ced(
    curves: dict[str, np.ndarray],
    path: str | Path,
    t: float = 0.10,
    title: str = "",
    size: tuple[int, int] = (640, 480),
) -> Path:
    """CED curves (one per name: per-image NME errors) on one axis up to ``t``, AUC@t in the legend.

    Writes a ``size`` = (width, height) pixel PNG to ``path`` and returns the path.
    """
    if not curves:
        raise ValueError("plot_ced: no curves given")
    dpi = 100
    fig = Figure(figsize=(size[0] / dpi, size[1] / dpi), dpi=dpi)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for name, errors in curves.items():
        x, y = ced(_np(errors), t)
        ax.plot(x, y, label=f"{name} (AUC@{threshold_key(t)} = {auc(_np(errors), t):.4f})")
    ax.set(xlim=(0, t), ylim=(0, 1), xlabel="NME", ylabel="fraction of images", title=title)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)
    return path


def _draw_points(canvas: np.ndarray, points: np.ndarray, colour: tuple[int, int, int], radius: int) -> None:
    """Draw filled discs in place. ``canvas`` (B, H, W, 3), ``points`` (B, N, 2); off-image parts are skipped."""
    B, H, W, _ = canvas.shape
    r = np.arange(-radius, radius + 1)
    dy, dx = (g.reshape(-1) for g in np.meshgrid(r, r, indexing="ij"))
    disc = dx**2 + dy**2 <= radius**2 + 0.5
    dx, dy = dx[disc], dy[disc]  # (K,)
    finite = np.isfinite(points).all(-1)  # (B, N)
    centre = np.rint(np.where(finite[..., None], points, -(10**6))).astype(np.int64)
    xs = centre[..., 0, None] + dx  # (B, N, K)
    ys = centre[..., 1, None] + dy
    inside = (xs >= 0) & (xs < W) & (ys >= 0) & (ys < H)
    bs = np.broadcast_to(np.arange(B)[:, None, None], xs.shape)
    canvas[bs[inside], ys[inside], xs[inside]] = colour


def landmark_grid(
    images: np.ndarray,
    pred: np.ndarray | None = None,
    gt: np.ndarray | None = None,
    path: str | Path | None = None,
    ncols: int = 4,
    radius: int | None = None,
    pad: int = 2,
) -> np.ndarray:
    """Tile ``images`` (B, H, W, 3) uint8 into a grid with GT (green) and prediction (red, on top) drawn.

    ``pred`` / ``gt`` are (B, N, 2) image pixels or None. ``radius`` defaults to max(1, min(H, W) // 128).
    Tiles are separated by ``pad`` black pixels. Returns the (rows*(H+pad)-pad, cols*(W+pad)-pad, 3)
    uint8 grid and writes it as PNG when ``path`` is given.
    """
    images = _np(images)
    if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
        raise ValueError(f"landmark_grid: images must be (B, H, W, 3) uint8, got {images.shape} {images.dtype}")
    B, H, W, _ = images.shape
    canvas = images.copy()
    radius = max(1, min(H, W) // 128) if radius is None else radius
    for points, colour in ((gt, GT_COLOUR), (pred, PRED_COLOUR)):
        if points is not None:
            points = _np(points).astype(np.float64)
            if points.ndim != 3 or points.shape[0] != B or points.shape[-1] != 2:
                raise ValueError(f"landmark_grid: points must be ({B}, N, 2), got {points.shape}")
            _draw_points(canvas, points, colour, radius)

    cols = min(ncols, B)
    rows = -(-B // cols)
    tiles = np.zeros((rows * cols, H + pad, W + pad, 3), np.uint8)
    tiles[:B, :H, :W] = canvas
    grid = tiles.reshape(rows, cols, H + pad, W + pad, 3).transpose(0, 2, 1, 3, 4)
    grid = grid.reshape(rows * (H + pad), cols * (W + pad), 3)[: rows * (H + pad) - pad, : cols * (W + pad) - pad]
    grid = np.ascontiguousarray(grid)
    _save(grid, path)
    return grid


def overlay_map(
    image: np.ndarray,
    heat: np.ndarray,
    path: str | Path | None = None,
    alpha: float = 0.5,
    cmap: str = "jet",
    vmin: float | None = None,
    vmax: float | None = None,
) -> np.ndarray:
    """Blend a map ``heat`` (h, w) (occlusion probability, attention, ...) over ``image`` (H, W, 3) uint8.

    The map is resized bilinearly to (H, W) (pixel-centre aligned), scaled to [0, 1] by
    ``vmin`` / ``vmax`` (default: its own min / max; pass 0 / 1 for probabilities),
    coloured with ``cmap`` and blended with weight ``alpha``. Returns the (H, W, 3) uint8
    overlay and writes it as PNG when ``path`` is given.
    """
    image, heat = _np(image), _np(heat).astype(np.float32)
    if image.ndim != 3 or image.shape[-1] != 3 or image.dtype != np.uint8:
        raise ValueError(f"overlay_map: image must be (H, W, 3) uint8, got {image.shape} {image.dtype}")
    if heat.ndim != 2:
        raise ValueError(f"overlay_map: heat must be (h, w), got {heat.shape}")
    H, W = image.shape[:2]
    up = torch.nn.functional.interpolate(torch.from_numpy(heat)[None, None], size=(H, W), mode="bilinear")
    up = up[0, 0].numpy()
    lo = float(up.min()) if vmin is None else vmin
    hi = float(up.max()) if vmax is None else vmax
    scaled = np.clip((up - lo) / max(hi - lo, 1e-12), 0.0, 1.0)
    colour = matplotlib.colormaps[cmap](scaled)[..., :3] * 255.0
    out = np.rint((1 - alpha) * image + alpha * colour).astype(np.uint8)
    _save(out, path)
    return out
