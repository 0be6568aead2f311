"""A multirun folder -> the paper's table with our numbers beside it, their spread, and how far we agree.

    python -m flmk.report multirun/2026-11-22/10-00-00 [--paper experiments/odn/table4.yaml]

Writes ``report.md``, ``report.csv`` (one line per row and column), ``report.json`` (the same, every row pair
and the agreement summary) and ``ced.png`` (every row's CED on one plot) into the folder. For every row and
column: mean, std and n over the row's seeds, a 95 % bootstrap interval (over test images within a run, over
seeds across runs, see flmk.stats), and the paired difference from the table's reference row on the same test
images with its p-value. The reference is the paper yaml's ``reference:`` (default: its first row). For every
pair of rows: does our difference have the paper's sign (agree), is it not significant (tie), or the opposite
sign (disagree); and Kendall's tau between our row means and the paper's.

Works on a partly finished sweep: rows without a ``metrics.json`` are listed as missing or unfinished, runs a
wall-clock cap stopped before the end of their schedule as "stopped early", and neither is ever compared. A run
on synthetic data is labelled synthetic and never presented as a reproduction.
"""

from __future__ import annotations

import argparse
import csv
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import yaml
from scipy.stats import kendalltau

from flmk.data.images import write_atomic
from flmk.errors import InputNotFoundError, OptionError, run_cli
from flmk.plots import plot_ced
from flmk.stats import ALPHA, N_BOOT, image_draws, interval, p_value, per_image_score, seed_draws

EXPERIMENTS_DIR = Path(__file__).resolve().parents[2] / "experiments"
CSV_FIELDS = ("row", "column", "status", "paper", "mean", "std", "n_seeds", "ci_low", "ci_high", "delta_vs_ref",
              "p_vs_ref", "significant", "pairs_agree", "pairs_tie", "pairs_disagree", "kendall_tau", "data",
              "seeds", "folders")


@dataclass
class Job:
    folder: Path
    row: str | None
    table: str | None
    metrics: dict | None
    meta: dict = field(default_factory=dict)
    seed: int | None = None

    @property
    def status(self) -> str:
        """done, unfinished (no metrics.json) or "stopped early ..." (meta.schedule, flmk.train)."""
        if self.metrics is None:
            return "unfinished"
        s = self.meta.get("schedule") or {}
        if s.get("finished", True):  # runs from before the schedule was recorded count as finished
            return "done"
        if s.get("max_steps"):
            return f"stopped early at step {s['steps']} of {s['max_steps']}"
        if s.get("schedule_steps"):  # whole epochs done, and the step the cap stopped at
            return (f"stopped early after {s['epochs_done']} of {s['max_epochs']} epochs "
                    f"(step {s['steps']} of {s['schedule_steps']})")
        return f"stopped early at epoch {s['epochs']} of {s['max_epochs']}"  # an epoch cut short counts as reached


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
                        (payload or {}).get("splits"), meta, meta.get("seed", cfg.get("seed"))))
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


def reference_row(paper: dict) -> str | None:
    """The row every other is compared with: ``reference:`` in the paper yaml, else its first row."""
    rows = list(paper.get("rows") or {})
    ref = paper.get("reference", rows[0] if rows else None)
    if ref is not None and ref not in rows:
        raise ValueError(f"paper numbers of {paper.get('table')!r}: `reference: {ref}` is not one of its `rows:` "
                         f"({', '.join(rows)})")
    return ref


def our_split(job: Job, split: str) -> tuple[str, str]:
    """The split of this run that stands for the paper's split, and how to label it."""
    if job.metrics and split in job.metrics and not job.meta.get("synthetic"):
        label = job.meta.get("data", "")
        if not job.meta.get("comparable", True):
            label += " (home-made, not comparable with published numbers)"
        return split, label
    mapped = (job.meta.get("stands_for") or {}).get(split, split)
    return mapped, f"synthetic {mapped} (stands in for {split}; not a reproduction)"


def run_scores(job: Job, split: str, metric: str) -> tuple[np.ndarray, np.ndarray | None] | None:
    """Per-image scores of ``metric`` (flmk.stats.per_image_score) on ``split``, and the image ids if saved.

    ``errors_<split>.npz`` holds every normaliser's NME; runs from before it existed have only the primary NME
    in ``errors_<split>.npy``. None when the run saved no per-image errors of the metric's normaliser.
    """
    primary = job.meta.get("primary_nme", "nme_io")
    key = metric if metric.startswith("nme") else primary  # fr@t and auc@t are read on the primary NME
    npz, npy = job.folder / f"errors_{split}.npz", job.folder / f"errors_{split}.npy"
    if npz.exists():
        with np.load(npz) as saved:
            if key in saved:
                return per_image_score(metric, saved[key]), saved["ids"] if "ids" in saved else None
    if key == primary and npy.exists():
        return per_image_score(metric, np.load(npy)), None
    return None


@dataclass
class Cell:
    """One row x column of the table: the paper's number and our finished runs (values already scaled)."""

    row: str
    column: str
    paper: float | None
    jobs: list[Job]
    values: list[float] = field(default_factory=list)
    label: str = ""
    scores: np.ndarray | None = None  # (n, N) per-image scores of the finished runs, or None
    ids: np.ndarray | None = None  # the N test images' ids, where the runs saved them
    draws: np.ndarray | None = None  # (N_BOOT,) bootstrap draws of the row mean, scaled
    delta: float | None = None
    p: float | None = None
    pairs: dict = field(default_factory=lambda: {"agree": 0, "tie": 0, "disagree": 0, "untested": 0})

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def mean(self) -> float | None:
        return float(np.mean(self.values)) if self.values else None

    @property
    def std(self) -> float | None:
        return float(np.std(self.values, ddof=1)) if self.n > 1 else None

    @property
    def ci(self) -> tuple[float | None, float | None]:
        return interval(self.draws) if self.draws is not None else (None, None)


def build_cells(jobs_by_row: dict[str, list[Job]], paper: dict, column: str, split: str) -> list[Cell]:
    """Our finished runs of every row on one column, with their per-image scores where every run saved them."""
    metric, scale = paper["metric"], float(paper.get("scale", 100))
    cells = []
    for row, jobs in jobs_by_row.items():
        cell = Cell(row, column, (paper["rows"].get(row) or {}).get(column), jobs)
        scores, ids = [], []
        for job in (j for j in jobs if j.status == "done"):
            ours, cell.label = our_split(job, split)
            value = (job.metrics.get(ours) or {}).get(metric)
            if value is None:
                continue
            cell.values.append(float(value) * scale)
            found = run_scores(job, ours, metric)
            scores.append(None if found is None else found[0])
            ids.append(None if found is None else found[1])
        if scores and all(s is not None for s in scores):
            check_same_images(row, scores, ids, cells)
            cell.scores, cell.ids = np.stack(scores), next((i for i in ids if i is not None), None)
        cells.append(cell)
    return cells


def check_same_images(row: str, scores: list[np.ndarray], ids: list, earlier: list[Cell]) -> None:
    """Paired tests need every run of every row on the same test images, in the same order."""
    n_images = {len(s) for s in scores} | {c.scores.shape[1] for c in earlier if c.scores is not None}
    known = [i for i in ids + [c.ids for c in earlier] if i is not None]
    if len(n_images) > 1 or any(not np.array_equal(i, known[0]) for i in known):
        raise ValueError(f"row {row}: its runs (or other rows) were tested on different images "
                         f"({sorted(n_images)} per-image errors): the rows of a table must share one test set")


def bootstrap(cells: list[Cell], reference: str | None, scale: float, rng: np.random.Generator) -> None:
    """Each cell's draws (images x seeds, images shared by all rows), then its difference from the reference."""
    paired = [c for c in cells if c.scores is not None]
    if paired:
        runs = image_draws(np.concatenate([c.scores for c in paired]), rng) * scale
        for cell, chunk in zip(paired, np.split(runs, np.cumsum([c.n for c in paired])[:-1])):
            cell.draws = seed_draws(chunk, rng)
    for cell in cells:  # no per-image errors: the spread over seeds alone
        if cell.draws is None and cell.n > 1:
            cell.draws = seed_draws(np.broadcast_to(np.array(cell.values)[:, None], (cell.n, N_BOOT)), rng)
    ref = next((c for c in cells if c.row == reference), None)
    for cell in cells:
        if ref is None or cell is ref or not cell.values or not ref.values:
            continue
        cell.delta = cell.mean - ref.mean
        if cell.draws is not None and ref.draws is not None:
            cell.p = p_value(cell.draws - ref.draws)


def compare_pairs(cells: list[Cell]) -> list[dict]:
    """Every pair of rows with both numbers, judged against the paper's sign of their difference.

    agree: our difference is significant and has the paper's sign; tie: ours is not significant; disagree: ours
    is significant and has the other sign (or the paper prints both rows equal); untested: no draws for a row.
    """
    rows = [c for c in cells if c.paper is not None and c.values]
    pairs = []
    for i, a in enumerate(rows):
        for b in rows[i + 1:]:
            p = p_value(a.draws - b.draws) if a.draws is not None and b.draws is not None else None
            paper_sign, ours = np.sign(a.paper - b.paper), a.mean - b.mean
            if p is None:
                verdict = "untested"
            elif p >= ALPHA:
                verdict = "tie"
            else:
                verdict = "agree" if np.sign(ours) == paper_sign else "disagree"
            for c in (a, b):
                c.pairs[verdict] += 1
            pairs.append({"column": a.column, "row_a": a.row, "row_b": b.row, "paper_diff": round(a.paper - b.paper, 4),
                          "our_diff": ours, "p": p, "verdict": verdict})
    return pairs


def agreement(pairs: list[dict], cells: list[Cell] | None = None) -> dict:
    """Counts of verdicts, the summary line, and (for one column) Kendall's tau of our means vs the paper's."""
    counts = {v: sum(p["verdict"] == v for p in pairs) for v in ("agree", "tie", "disagree", "untested")}
    m = len(pairs)
    if m:
        line = (f"{counts['agree']} of {m} row pairs agree with the paper, {counts['tie']} ties, "
                f"{counts['disagree']} disagree")
        if counts["untested"]:
            line += f", {counts['untested']} untested (one seed and no per-image errors)"
    else:
        line = "no row pairs to compare (fewer than two rows with both our and the paper's numbers)"
    out = {**counts, "pairs": m, "line": line}
    if cells is not None:
        both = [c for c in cells if c.paper is not None and c.values]
        tau, p = kendalltau([c.mean for c in both], [c.paper for c in both]) if len(both) > 1 else (np.nan, np.nan)
        out |= {"kendall_tau": None if np.isnan(tau) else float(tau), "kendall_p": None if np.isnan(p) else float(p)}
    return out


def row_status(jobs: list[Job]) -> str:
    if not jobs:
        return "missing"
    others = [f"seed {j.seed}: {j.status}" for j in jobs if j.status != "done"]
    n_done = len(jobs) - len(others)
    if not others:
        return "done"
    if n_done:
        return f"done ({n_done} of {len(jobs)} runs; {'; '.join(others)})"
    return jobs[0].status if len(jobs) == 1 else "; ".join(others)


def build_report(sweep: Path, jobs: list[Job], paper: dict) -> dict:
    """Everything report.md/.csv/.json show: one line per row and column, every pair, the agreement."""
    by_row: dict[str, list[Job]] = {}
    for job in jobs:
        by_row.setdefault(job.row, []).append(job)
    names = list(paper["rows"]) + [r for r in by_row if r not in paper["rows"]]
    jobs_by_row = {name: sorted(by_row.get(name, []), key=lambda j: (j.seed is None, j.seed or 0)) for name in names}
    reference, scale = reference_row(paper), float(paper.get("scale", 100))
    rng = np.random.default_rng(0)  # a report is the same every time it is written
    lines, pairs, summary = [], [], {}
    for column, split in paper["columns"].items():
        cells = build_cells(jobs_by_row, paper, column, split)
        bootstrap(cells, reference, scale, rng)
        column_pairs = compare_pairs(cells)
        tau = agreement(column_pairs, cells)
        summary[column], pairs = tau, pairs + column_pairs
        for cell in cells:
            lo, hi = cell.ci
            done = [j for j in cell.jobs if j.status == "done"]
            lines.append({
                "row": cell.row, "column": column, "status": row_status(cell.jobs), "paper": cell.paper,
                "mean": cell.mean, "std": cell.std, "n_seeds": cell.n, "ci_low": lo, "ci_high": hi,
                "delta_vs_ref": 0.0 if cell.row == reference and cell.values else cell.delta, "p_vs_ref": cell.p,
                "significant": None if cell.p is None else cell.p < ALPHA,
                "pairs_agree": cell.pairs["agree"], "pairs_tie": cell.pairs["tie"],
                "pairs_disagree": cell.pairs["disagree"], "kendall_tau": tau["kendall_tau"], "data": cell.label,
                "seeds": " ".join(str(j.seed) for j in done),
                "folders": " ".join(j.folder.relative_to(sweep).as_posix() for j in done),
            })
    summary["all"] = agreement(pairs)
    if len(paper["columns"]) > 1 and pairs:
        summary["all"]["line"] += f" (each pair counted in each of the {len(paper['columns'])} columns)"
    runs = [{"row": j.row, "seed": j.seed, "status": j.status, "folder": j.folder.relative_to(sweep).as_posix(),
             **{k: (j.meta.get("schedule") or {}).get(k) for k in ("epochs", "epochs_done", "max_epochs", "steps", "max_steps")}}
            for name in names for j in jobs_by_row[name]]
    return {"table": paper.get("table"), "title": paper.get("title", paper.get("table")), "metric": paper["metric"],
            "scale": scale, "dataset": paper.get("dataset"), "reference": reference, "alpha": ALPHA, "n_boot": N_BOOT,
            "synthetic": any(j.meta.get("synthetic") for j in jobs), "columns": list(paper["columns"]),
            "rows": lines, "pairs": pairs, "agreement": summary, "runs": runs}


def _num(v: float | None, fmt: str = ".2f") -> str:
    return "–" if v is None else format(v, fmt)


def _p(p: float | None) -> str:
    return "–" if p is None else ("<0.001" if p < 0.001 else f"{p:.3f}")


def markdown(rep: dict) -> str:
    out = [f"# {rep['title']}", ""]
    if rep["synthetic"]:
        out += ["**Synthetic data.** These numbers come from flmk's procedural faces: they show trends of the "
                "ablation, not a reproduction of the paper's numbers.", ""]
    out += [f"Metric: `{rep['metric']}` x {rep['scale']:g}; paper dataset: {rep['dataset'] or '?'}. "
            f"Ours: mean ± std over n seeds (finished runs only), 95 % bootstrap interval over test images and "
            f"seeds. Δ = row − reference row `{rep['reference']}` on the same test images, p from a paired "
            f"bootstrap ({rep['n_boot']} draws); **n.s.** = not significant (p ≥ {rep['alpha']}).", "",
            f"**Agreement with the paper: {rep['agreement']['all']['line']}.**"]
    taus = [f"{c} {_num(rep['agreement'][c]['kendall_tau'])} (p {_p(rep['agreement'][c]['kendall_p'])})"
            for c in rep["columns"]]
    out += [f"Kendall's τ between our row means and the paper's: {', '.join(taus)}.", ""]
    header = ["row", "ours (mean ± std)", "n", "95 % CI", "Δ vs ref", "p vs ref", "paper", "status"]
    for column in rep["columns"]:
        lines = [r for r in rep["rows"] if r["column"] == column]
        label = next((r["data"] for r in lines if r["data"]), "")
        out += [f"## {column}" + (f": {label}" if label else ""), "",
                "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for r in lines:
            ours = "–" if r["mean"] is None else f"{r['mean']:.2f} ± {_num(r['std'])}"
            ci = "–" if r["ci_low"] is None else f"[{r['ci_low']:.2f}, {r['ci_high']:.2f}]"
            if r["row"] == rep["reference"] and r["mean"] is not None:
                delta = "ref"
            else:
                delta = "–" if r["delta_vs_ref"] is None else f"{r['delta_vs_ref']:+.2f}"
                delta += " n.s." if r["significant"] is False else ""
            out.append("| " + " | ".join([r["row"], ours, str(r["n_seeds"]), ci, delta, _p(r["p_vs_ref"]),
                                          _num(r["paper"]), r["status"]]) + " |")
        if len(rep["columns"]) > 1:
            out += ["", f"Agreement on {column}: {rep['agreement'][column]['line']}."]
        out.append("")
    out += ["## Runs", "", "| row | seed | status | epochs | folder |", "|---|---|---|---|---|"]
    for run in rep["runs"]:
        done = run["epochs"] if run.get("epochs_done") is None else run["epochs_done"]  # whole epochs where recorded
        epochs = "–" if done is None else f"{done} of {run['max_epochs']}"
        out.append(f"| {run['row']} | {run['seed']} | {run['status']} | {epochs} | {run['folder']} |")
    missing = list(dict.fromkeys(r["row"] for r in rep["rows"] if r["status"] != "done"))
    if missing:
        out += ["", f"Missing or unfinished rows: {', '.join(missing)}. Stopped or unfinished runs are never compared."]
    return "\n".join(out) + "\n"


def write_csv(path: Path, lines: list[dict]) -> None:
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_FIELDS)
        writer.writeheader()
        cell = lambda v: "" if v is None else (float(f"{v:.6g}") if isinstance(v, float) else v)  # noqa: E731
        writer.writerows({k: cell(v) for k, v in line.items()} for line in lines)


def plot_rows(path: Path, jobs: list[Job], paper: dict) -> Path | None:
    """Every row's CED on the first column's split, its finished seeds' errors pooled."""
    split = next(iter(paper["columns"].values()))
    curves, ours = {}, split
    for job in (j for j in jobs if j.status == "done"):
        ours, _ = our_split(job, split)
        errors = job.folder / f"errors_{ours}.npy"
        if errors.exists():
            curves.setdefault(str(job.row), []).append(np.load(errors))
    if not curves:
        return None
    where = split if ours == split else f"{ours} (stands in for {split})"
    return plot_ced({k: np.concatenate(v) for k, v in curves.items()}, t=0.10, path=path,
                    title=f"{paper.get('table')} — CED on {where}")


def report(sweep: Path, paper_path: Path | None = None) -> Path:
    sweep = Path(sweep)
    jobs = load_jobs(sweep)
    if not jobs:
        raise InputNotFoundError(f"{sweep}: no run folders (no */.hydra/config.yaml below it)")
    paper = paper_file(next((j.table for j in jobs if j.table), None), paper_path)
    rep = build_report(sweep, jobs, paper)
    text, payload = markdown(rep), json.dumps(rep, indent=2) + "\n"
    write_atomic(sweep / "report.md", lambda tmp: tmp.write_text(text))
    write_atomic(sweep / "report.csv", lambda tmp: write_csv(tmp, rep["rows"]))
    write_atomic(sweep / "report.json", lambda tmp: tmp.write_text(payload))
    plot_rows(sweep / "ced.png", jobs, paper)
    return sweep / "report.md"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m flmk.report", description=__doc__.splitlines()[0])
    parser.add_argument("sweep", type=Path, help="a multirun folder (multirun/<date>/<time>)")
    parser.add_argument("--paper", type=Path, default=None, help="paper numbers yaml (default: from the runs' `table`)")
    args = parser.parse_args(argv)
    path = report(args.sweep, args.paper)
    print(path.read_text())
    print(f"Written: {path}, {path.with_suffix('.csv')}, {path.with_suffix('.json')}, {path.parent / 'ced.png'}")


if __name__ == "__main__":
    run_cli(main)
