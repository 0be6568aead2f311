"""A multirun folder -> the paper's table with our numbers beside it.

    python -m flmk.report multirun/2026-11-22/10-00-00 [--paper experiments/odn/table4.yaml]

Writes ``report.md``, ``report.csv`` and ``ced.png`` (every row's CED on one
plot) into the folder. Works on a partly finished sweep: rows without a
``metrics.json`` are listed as missing. A run on synthetic data is labelled
synthetic and never presented as a reproduction.
"""

from __future__ import annotations

import argparse
import csv
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import yaml

from flmk.errors import InputNotFoundError, OptionError, run_cli
from flmk.plots import plot_ced

EXPERIMENTS_DIR = Path(__file__).resolve().parents[2] / "experiments"


@dataclass
class Job:
    folder: Path
    row: str | None
    table: str | None
    metrics: dict | None
    meta: dict = field(default_factory=dict)


def load_jobs(sweep: Path) -> list[Job]:
    jobs = []
    for cfg_file in sorted(sweep.glob("**/.hydra/config.yaml")):
        folder = cfg_file.parent.parent
        cfg = yaml.safe_load(cfg_file.read_text()) or {}
        hydra_file = folder / ".hydra" / "hydra.yaml"
        choices = {}
        if hydra_file.exists():
            choices = (yaml.safe_load(hydra_file.read_text()) or {}).get("hydra", {}).get("runtime", {}).get("choices", {})
        metrics_file = folder / "metrics.json"
        payload = json.loads(metrics_file.read_text()) if metrics_file.exists() else None
        meta = (payload or {}).get("meta", {}) or {
            "data": cfg.get("data", {}).get("name"),
            "synthetic": str(cfg.get("data", {}).get("name", "")).startswith("synthetic"),
            "stands_for": cfg.get("data", {}).get("stands_for") or {},
            "comparable": cfg.get("data", {}).get("comparable", True),
            "primary_nme": cfg.get("data", {}).get("primary_nme", "nme_io"),
        }
        jobs.append(Job(folder, choices.get("ablation") or cfg.get("row"), cfg.get("table"),
                        (payload or {}).get("splits"), meta))
    return jobs


def paper_file(table: str | None, explicit: Path | None) -> dict:
    if explicit is not None:
        return yaml.safe_load(Path(explicit).read_text())
    if table is None:
        raise OptionError("the sweep's runs name no `table`; pass --paper experiments/<paper>/<table>.yaml")
    path = EXPERIMENTS_DIR / f"{table}.yaml"
    if not path.exists():
        raise InputNotFoundError(f"no paper numbers for table {table!r}: expected {path}")
    return yaml.safe_load(path.read_text())


def our_split(job: Job, split: str) -> tuple[str, str]:
    """The split of this run that stands for the paper's split, and how to label it."""
    if job.metrics and split in job.metrics and not job.meta.get("synthetic"):
        label = job.meta.get("data", "")
        if not job.meta.get("comparable", True):
            label += " (home-made, not comparable with published numbers)"
        return split, label
    mapped = (job.meta.get("stands_for") or {}).get(split, split)
    return mapped, f"synthetic {mapped} (stands in for {split}; not a reproduction)"


def build_rows(jobs: list[Job], paper: dict) -> list[dict]:
    metric, scale = paper["metric"], float(paper.get("scale", 100))
    columns: dict = paper["columns"]
    by_row = {}
    for job in jobs:
        by_row.setdefault(job.row, job)
    names = list(paper["rows"]) + [r for r in by_row if r not in paper["rows"]]
    rows = []
    for name in names:
        job = by_row.get(name)
        entry = {"row": name, "status": "missing" if job is None else ("done" if job.metrics else "unfinished")}
        for col, split in columns.items():
            entry[f"paper {col}"] = (paper["rows"].get(name) or {}).get(col)
            value, label = None, ""
            if job is not None and job.metrics:
                ours, label = our_split(job, split)
                v = (job.metrics.get(ours) or {}).get(metric)
                value = None if v is None else round(v * scale, 3)
            entry[f"ours {col}"] = value
            entry[f"data {col}"] = label
        entry["folder"] = str(job.folder) if job else ""
        rows.append(entry)
    return rows


def write_markdown(path: Path, rows: list[dict], paper: dict, jobs: list[Job]) -> None:
    cols = list(paper["columns"])
    synthetic = any(j.meta.get("synthetic") for j in jobs)
    lines = [f"# {paper.get('title', paper.get('table'))}", ""]
    if synthetic:
        lines += ["**Synthetic data.** These numbers come from flmk's procedural faces: they show trends of the "
                  "ablation, not a reproduction of the paper's numbers.", ""]
    lines += [f"Metric: `{paper['metric']}` x {paper.get('scale', 100)}; paper dataset: {paper.get('dataset', '?')}.", ""]
    header = ["row"] + [f"{h} {c}" for c in cols for h in ("ours", "paper")] + ["our data", "status"]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    fmt = lambda v: "–" if v is None else f"{v:.2f}"  # noqa: E731
    for r in rows:
        cells = [r["row"]] + [fmt(r[f"{h} {c}"]) for c in cols for h in ("ours", "paper")]
        cells += [r[f"data {cols[0]}"] or "–", r["status"]]
        lines.append("| " + " | ".join(cells) + " |")
    missing = [r["row"] for r in rows if r["status"] != "done"]
    if missing:
        lines += ["", f"Missing or unfinished rows: {', '.join(missing)}."]
    path.write_text("\n".join(lines) + "\n")


def write_csv(path: Path, rows: list[dict]) -> None:
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def plot_rows(path: Path, jobs: list[Job], paper: dict) -> Path | None:
    split = next(iter(paper["columns"].values()))
    curves, ours = {}, split
    for job in jobs:
        if not job.metrics:
            continue
        ours, _ = our_split(job, split)
        errors = job.folder / f"errors_{ours}.npy"
        if errors.exists():
            curves[str(job.row)] = np.load(errors)
    if not curves:
        return None
    where = split if ours == split else f"{ours} (stands in for {split})"
    return plot_ced(curves, t=0.10, path=path, title=f"{paper.get('table')} — CED on {where}")


def report(sweep: Path, paper_path: Path | None = None) -> Path:
    sweep = Path(sweep)
    jobs = load_jobs(sweep)
    if not jobs:
        raise InputNotFoundError(f"{sweep}: no run folders (no */.hydra/config.yaml below it)")
    paper = paper_file(next((j.table for j in jobs if j.table), None), paper_path)
    rows = build_rows(jobs, paper)
    write_markdown(sweep / "report.md", rows, paper, jobs)
    write_csv(sweep / "report.csv", rows)
    plot_rows(sweep / "ced.png", jobs, paper)
    return sweep / "report.md"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m flmk.report", description=__doc__.splitlines()[0])
    parser.add_argument("sweep", type=Path, help="a multirun folder (multirun/<date>/<time>)")
    parser.add_argument("--paper", type=Path, default=None, help="paper numbers yaml (default: from the runs' `table`)")
    args = parser.parse_args(argv)
    path = report(args.sweep, args.paper)
    print(path.read_text())
    print(f"Written: {path}, {path.with_suffix('.csv')}, {path.parent / 'ced.png'}")


if __name__ == "__main__":
    run_cli(main)
