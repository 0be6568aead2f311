"""Training history of a sweep folder, for a synthetic report's RUN.md: one row per job with the epochs it
reached, its validation NME (primary, in %) after each epoch, and its peak GPU memory.

    python experiments/run_history.py <sweep folder>   # prints a Markdown table
"""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import yaml


def history(job: Path) -> tuple[str, int, list[float], float | None]:
    hydra = yaml.safe_load((job / ".hydra" / "hydra.yaml").read_text())["hydra"]
    row = hydra["runtime"]["choices"].get("ablation") or job.name
    cfg = yaml.safe_load((job / ".hydra" / "config.yaml").read_text())
    primary = f"val/{cfg['data'].get('primary_nme', 'nme_io')}"
    nmes, epochs = {}, 0
    for path in job.glob("**/metrics.csv"):
        for rec in csv.DictReader(path.open()):
            if any(rec[k] for k in rec if k.startswith("train/")):  # test rows carry the epoch after the last
                epochs = max(epochs, int(rec["epoch"]) + 1)
            if rec.get(primary):
                nmes[int(rec["epoch"])] = 100 * float(rec[primary])
    metrics = job / "metrics.json"
    peak = json.loads(metrics.read_text()).get("meta", {}).get("peak_gpu_mem_GiB") if metrics.exists() else None
    return row, epochs, [nmes[e] for e in sorted(nmes)], peak


def main(sweep: str) -> None:
    print("| row | epochs reached | validation NME (primary, %) per epoch | peak GPU memory (GiB) |")
    print("|---|---|---|---|")
    for cfg in sorted(Path(sweep).glob("**/.hydra/config.yaml")):
        row, epochs, nmes, peak = history(cfg.parent.parent)
        curve = " ".join(f"{v:.1f}" for v in nmes)
        print(f"| {row} | {epochs} | {curve} | {'–' if peak is None else f'{peak:.2f}'} |")


if __name__ == "__main__":
    main(sys.argv[1])
