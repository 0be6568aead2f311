"""What every run leaves behind: metrics.json (with the schedule it reached), errors_<split>.npy/.npz, ced_<split>.png,
and a console table."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
from pytorch_lightning.callbacks import Timer
from rich.console import Console
from rich.table import Table

from flmk.data.images import write_atomic
from flmk.plots import plot_ced

TABLE_KEYS = ("nme_io", "nme_ip", "nme_box", "fr@0.10", "auc@0.10", "count")  # the rest is in metrics.json


def write_results(out_dir: Path, results: dict[str, dict], meta: dict) -> Path:
    """Write metrics.json (+ per-image errors and CED plots) for every test split; returns metrics.json."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    payload = {"meta": meta, "splits": {}}
    for split, entry in results.items():
        per_image = entry["per_image"]
        primary = meta.get("primary_nme", "nme_io")
        errors = np.asarray(per_image.get(primary, next(iter(per_image.values()))), dtype=np.float64)
        np.save(out_dir / f"errors_{split}.npy", errors)
        # every normaliser's per-image NME (+ image ids): flmk.report tests a table's metric on the same images
        np.savez(out_dir / f"errors_{split}.npz", **{k: np.asarray(v) for k, v in per_image.items()})
        plot_ced({f"{meta.get('model', 'model')} ({split})": errors}, t=0.10, path=out_dir / f"ced_{split}.png",
                 title=f"CED, {meta.get('data', '')} {split} ({primary})")
        payload["splits"][split] = dict(entry["metrics"])
        if "mean_shape" in entry:
            payload["splits"][split]["mean_shape"] = entry["mean_shape"]
    text = json.dumps(payload, indent=2, sort_keys=True)
    return write_atomic(out_dir / "metrics.json", lambda tmp: tmp.write_text(text))


def training_schedule(trainer) -> dict:
    """How far a run trained against its schedule (metrics.json's ``meta.schedule``).

    A wall-clock cap (``trainer.max_time``) or an interrupt that ends training before the schedule's last
    optimiser step (``max_epochs`` x steps per epoch, or ``max_steps``) makes ``finished`` false: flmk.report
    lists such a run as "stopped early" and never compares it with finished ones. A cap that fires after the last
    step does not. ``epochs`` counts an epoch cut short as reached; ``epochs_done`` counts whole epochs only.
    Read it right after ``fit`` (``test`` resets the trainer state).
    """
    timer = next((c for c in trainer.callbacks if isinstance(c, Timer)), None)
    remaining = timer.time_remaining() if timer is not None else None
    capped = remaining is not None and remaining <= 0
    stopped_by = "interrupted" if trainer.interrupted else ("max_time" if capped else None)
    max_steps = trainer.max_steps if trainer.max_steps and trainer.max_steps > 0 else None
    batches = trainer.num_training_batches
    epoch_steps = math.ceil(batches / trainer.accumulate_grad_batches) if math.isfinite(batches) and batches else None
    schedule_steps = max_steps or (epoch_steps * trainer.max_epochs if epoch_steps and trainer.max_epochs else None)
    return {
        "epochs": trainer.current_epoch,
        "epochs_done": trainer.global_step // epoch_steps if epoch_steps else None,
        "max_epochs": trainer.max_epochs,
        "steps": trainer.global_step,
        "max_steps": max_steps,
        "schedule_steps": schedule_steps,
        "stopped_by": stopped_by,
        "finished": stopped_by is None or (schedule_steps is not None and trainer.global_step >= schedule_steps),
    }


def print_results(results: dict[str, dict], title: str, out_dir: Path | None = None) -> None:
    """A rich table: NME / FR / AUC per split, and the mean-shape predictor beside it."""
    table = Table(title=title)
    table.add_column("split")
    for key in TABLE_KEYS:
        table.add_column(key, justify="right")
    table.add_column("mean shape", justify="right")
    for split, entry in results.items():
        m = entry["metrics"]
        cells = []
        for key in TABLE_KEYS:
            v = m.get(key)
            cells.append("-" if v is None else (f"{int(v)}" if key == "count" else f"{100 * v:.2f}"))
        ms = entry.get("mean_shape", {}).get("nme_io")
        cells.append("-" if ms is None else f"{100 * ms:.2f}")
        table.add_row(split, *cells)
    console = Console(width=max(100, Console().width))
    console.print(table)
    console.print("NME, FR and AUC in percent; 'mean shape' = nme_io of always predicting the training mean shape.")
    split = "full" if "full" in results else list(results)[-1]
    ours, mean = results[split]["metrics"].get("nme_io"), results[split].get("mean_shape", {}).get("nme_io")
    if ours and mean:
        verdict = f"{mean / ours:.1f}x lower" if ours < mean else "no better than the mean shape"
        console.print(f"{split}: inter-ocular NME {100 * ours:.2f}% vs {100 * mean:.2f}% for the mean shape ({verdict}).")
    if out_dir is not None:
        console.print(f"Run folder: {out_dir}")
