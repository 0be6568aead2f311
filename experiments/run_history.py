"""Training history of a sweep folder, for a synthetic report's RUN.md: one row per job (row and seed) with the
epochs it reached (of its schedule, and whether a wall-clock cap stopped it early), its validation NME (primary,
in %) after each epoch, the epoch-to-epoch spread of that curve at its end (the mean |change| between consecutive
epochs over the last SPREAD_EPOCHS + 1 validations: what remains of the swings once training settles), and its peak
GPU memory.

    python experiments/run_history.py <sweep folder>   # prints a Markdown table
"""

from __future__ import annotations

import csv
import sys
from pathlib import Path

from flmk.report import Job, load_jobs

SPREAD_EPOCHS = 3


def history(job: Job) -> tuple[str, int, list[float], float | None]:
    primary = f"val/{job.meta.get('primary_nme', 'nme_io')}"
    nmes, epochs = {}, 0
    for path in job.folder.glob("**/metrics.csv"):
        for rec in csv.DictReader(path.open()):
            if any(rec[k] for k in rec if k.startswith("train/")):  # test rows carry the epoch after the last
                epochs = max(epochs, int(rec["epoch"]) + 1)
            if rec.get(primary):
                nmes[int(rec["epoch"])] = 100 * float(rec[primary])
    return job.row or job.folder.name, epochs, [nmes[e] for e in sorted(nmes)], job.meta.get("peak_gpu_mem_GiB")


def reached(job: Job, epochs: int) -> str:
    """Epochs reached, against the schedule when metrics.json records it (flmk.train's meta.schedule)."""
    schedule = job.meta.get("schedule")
    if not schedule:
        return str(epochs)
    of = f" ({schedule['steps']} of {schedule['max_steps']} steps)" if schedule.get("max_steps") else \
        f" of {schedule['max_epochs']}"
    return f"{epochs}{of}" + ("" if job.status == "done" else " (stopped early)")


def spread(nmes: list[float], last: int = SPREAD_EPOCHS) -> float | None:
    """Mean |NME(e) - NME(e-1)| over the last ``last`` epoch-to-epoch changes (None with fewer than two values)."""
    tail = nmes[-(last + 1):]
    return None if len(tail) < 2 else sum(abs(b - a) for a, b in zip(tail, tail[1:])) / (len(tail) - 1)


def main(sweep: str) -> None:
    print(f"| row | seed | epochs reached | validation NME (primary, %) per epoch | epoch-to-epoch spread, last "
          f"{SPREAD_EPOCHS} (points) | peak GPU memory (GiB) |")
    print("|---|---|---|---|---|---|")
    for job in load_jobs(Path(sweep)):
        row, epochs, nmes, peak = history(job)
        curve = " ".join(f"{v:.1f}" for v in nmes)
        sp = spread(nmes)
        print(f"| {row} | {job.seed} | {reached(job, epochs)} | {curve} | {'–' if sp is None else f'{sp:.2f}'} | "
              f"{'–' if peak is None else f'{peak:.2f}'} |")


if __name__ == "__main__":
    main(sys.argv[1])
