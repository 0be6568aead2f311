"""Pictures of a model at work: predicted vs true landmarks, and the networks' own maps."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from flmk.data.transforms import normalise_image, to_uint8_image
from flmk.plots import landmark_grid, overlay_map


def _first_batch(dm, split: str, n: int) -> dict:
    ds = dm.dataset(split)
    items = [ds[i] for i in range(min(n, len(ds)))]
    return {k: torch.stack([it[k] for it in items]) for k in items[0]}


@torch.no_grad()
def _predict(module, batch: dict) -> dict:
    module.eval()
    device = next(module.parameters()).device
    return module.net(normalise_image(batch["image"].to(device)))


def prediction_grid(module, dm, split: str, n: int = 8, path: Path | None = None) -> np.ndarray:
    """Crops of the first ``n`` faces of a split with true (green) and predicted (red) landmarks."""
    batch = _first_batch(dm, split, n)
    out = _predict(module, batch)
    s = dm.crop_size
    images = np.stack([to_uint8_image(x.numpy()) for x in batch["image"]])
    pred = out["points"].float().cpu().numpy() * s - 0.5
    gt = batch["points"].numpy() * s - 0.5
    return landmark_grid(images, pred=pred, gt=gt, path=path)


def save_maps(module, dm, split: str, out_dir: Path, n: int = 4) -> list[Path]:
    """The network's `visual_keys` maps (occlusion, attention, excitation) over the first ``n`` crops of a split."""
    keys = getattr(module.net, "visual_keys", ())
    if not keys or n <= 0:
        return []
    batch = _first_batch(dm, split, n)
    out = _predict(module, batch)
    written = []
    out_dir.mkdir(parents=True, exist_ok=True)
    for i, x in enumerate(batch["image"]):
        image = to_uint8_image(x.numpy())
        for key in keys:
            maps = out[key][i].float().cpu()
            maps = maps.unsqueeze(0) if maps.dim() == 2 else maps
            for c, m in enumerate(maps):
                name = f"{split.replace('/', '_')}_{i}_{key}" + (f"_{c}" if len(maps) > 1 else "") + ".png"
                overlay_map(image, m.numpy(), out_dir / name)
                written.append(out_dir / name)
    return written
