"""flmk.report on hand-made sweeps (no training): spread over seeds, paired tests, agreement with the paper."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from flmk.report import report

PAPER = {"table": "toy/table", "title": "Toy table", "paper": "toy", "dataset": "300W", "metric": "nme_io",
         "scale": 100, "columns": {"challenging": "challenging"}, "reference": "toy/base",
         "rows": {"toy/base": {"challenging": 7.0}, "toy/mid": {"challenging": 6.5}, "toy/best": {"challenging": 6.4}}}


def make_run(folder: Path, row: str, seed: int, errors: np.ndarray, schedule: dict | None = None) -> None:
    """A run folder as flmk.train leaves it: Hydra's config, metrics.json, errors_<split>.npy/.npz."""
    (folder / ".hydra").mkdir(parents=True)
    (folder / ".hydra" / "config.yaml").write_text(yaml.safe_dump({"table": "toy/table", "seed": seed}))
    (folder / ".hydra" / "hydra.yaml").write_text(yaml.safe_dump({"hydra": {"runtime": {"choices": {"ablation": row}}}}))
    meta = {"data": "300w", "seed": seed, "synthetic": False, "comparable": True, "primary_nme": "nme_io",
            "schedule": schedule or {"epochs": 3, "max_epochs": 3, "steps": 30, "max_steps": None,
                                     "stopped_by": None, "finished": True}}
    (folder / "metrics.json").write_text(json.dumps(
        {"meta": meta, "splits": {"challenging": {"nme_io": float(errors.mean()), "count": errors.size}}}))
    np.save(folder / "errors_challenging.npy", errors)
    np.savez(folder / "errors_challenging.npz", ids=np.arange(errors.size), nme_io=errors, nme_ip=errors * 1.4)


def toy_sweep(root: Path, rows: dict[str, list[np.ndarray]], paper: dict = PAPER) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "paper.yaml").write_text(yaml.safe_dump(paper, sort_keys=False))
    n = 0
    for row, runs in rows.items():
        for seed, e in enumerate(runs):
            make_run(root / "sweep" / f"{n}_{row}", row, seed, e)
            n += 1
    return root / "sweep"


def errors(seed: int, n: int = 200) -> np.ndarray:
    return np.random.default_rng(seed).gamma(4.0, 0.0125, n)


@pytest.fixture
def sweep(tmp_path: Path) -> Path:
    """base clearly worse than mid and best (as in the paper); mid and best within noise of each other."""
    base = errors(0)
    rng = np.random.default_rng(1)
    noisy = lambda shift: base + shift + rng.normal(0, 0.01, base.size)  # noqa: E731
    return toy_sweep(tmp_path, {"toy/base": [base, base + 0.001], "toy/mid": [noisy(-0.005), noisy(-0.005)],
                                "toy/best": [noisy(-0.005), noisy(-0.005)]})


def read_csv(path: Path) -> dict[str, dict]:
    return {r["row"]: r for r in csv.DictReader(path.open())}


def test_report_gives_spread_interval_and_paired_test_per_row(sweep: Path, tmp_path: Path):
    md = report(sweep, tmp_path / "paper.yaml").read_text()
    rows = read_csv(sweep / "report.csv")
    base = rows["toy/base"]
    assert base["n_seeds"] == "2" and base["delta_vs_ref"] == "0.0" and base["p_vs_ref"] == ""
    values = [100 * errors(0).mean(), 100 * (errors(0) + 0.001).mean()]
    assert float(base["mean"]) == pytest.approx(np.mean(values))
    assert float(base["std"]) == pytest.approx(np.std(values, ddof=1))
    assert float(base["ci_low"]) < float(base["mean"]) < float(base["ci_high"])
    mid = rows["toy/mid"]
    assert float(mid["delta_vs_ref"]) == pytest.approx(-0.55, abs=0.1) and float(mid["p_vs_ref"]) < 0.01
    assert mid["significant"] == "True" and mid["folders"] == "2_toy/mid 3_toy/mid"  # relative to the sweep
    assert f"| toy/base | {np.mean(values):.2f} ± {np.std(values, ddof=1):.2f} | 2 |" in md
    assert "| toy/base |" in md and "ref" in md and "/tmp" not in md


def test_agreement_counts_ties_and_kendall_tau(sweep: Path, tmp_path: Path):
    md = report(sweep, tmp_path / "paper.yaml").read_text()
    summary = json.loads((sweep / "report.json").read_text())["agreement"]
    assert {k: summary["all"][k] for k in ("agree", "tie", "disagree", "pairs")} == \
        {"agree": 2, "tie": 1, "disagree": 0, "pairs": 3}
    assert "2 of 3 row pairs agree with the paper, 1 ties, 0 disagree" in md
    pairs = json.loads((sweep / "report.json").read_text())["pairs"]
    assert [p["verdict"] for p in pairs if {p["row_a"], p["row_b"]} == {"toy/mid", "toy/best"}] == ["tie"]
    assert -1 <= summary["challenging"]["kendall_tau"] <= 1


def test_a_reversed_paper_order_disagrees(tmp_path: Path):
    base = errors(0)
    paper = {**PAPER, "rows": {"toy/base": {"challenging": 6.0}, "toy/mid": {"challenging": 7.0}}}
    sweep = toy_sweep(tmp_path, {"toy/base": [base], "toy/mid": [base - 0.01]}, paper)
    md = report(sweep, tmp_path / "paper.yaml").read_text()
    assert "0 of 1 row pairs agree with the paper, 0 ties, 1 disagree" in md
    assert json.loads((sweep / "report.json").read_text())["agreement"]["challenging"]["kendall_tau"] == -1.0


def test_runs_stopped_by_the_wall_clock_are_never_compared(sweep: Path, tmp_path: Path):
    run = sweep / "3_toy" / "mid"
    payload = json.loads((run / "metrics.json").read_text())
    payload["meta"]["schedule"] |= {"epochs": 1, "finished": False, "stopped_by": "max_time"}
    (run / "metrics.json").write_text(json.dumps(payload))
    md = report(sweep, tmp_path / "paper.yaml").read_text()
    mid = read_csv(sweep / "report.csv")["toy/mid"]
    assert mid["n_seeds"] == "1" and mid["seeds"] == "0"
    assert "seed 1: stopped early at epoch 1 of 3" in mid["status"] and "stopped early at epoch 1 of 3" in md


def test_a_stopped_run_names_its_whole_epochs_and_step(sweep: Path, tmp_path: Path):
    run = sweep / "3_toy" / "mid"
    payload = json.loads((run / "metrics.json").read_text())
    payload["meta"]["schedule"] |= {"epochs": 3, "epochs_done": 2, "steps": 25, "schedule_steps": 30,
                                    "finished": False, "stopped_by": "max_time"}
    (run / "metrics.json").write_text(json.dumps(payload))
    md = report(sweep, tmp_path / "paper.yaml").read_text()
    assert "seed 1: stopped early after 2 of 3 epochs (step 25 of 30)" in read_csv(sweep / "report.csv")["toy/mid"]["status"]
    assert "| toy/mid | 1 | stopped early after 2 of 3 epochs (step 25 of 30) | 2 of 3 |" in md


def test_a_table_with_one_seed_per_row_still_gets_image_intervals(tmp_path: Path):
    base = errors(0)
    sweep = toy_sweep(tmp_path, {"toy/base": [base], "toy/best": [base - 0.002]})
    for npz in sweep.glob("**/errors_*.npz"):  # runs from before the .npz: the primary NME's .npy serves
        npz.unlink()
    report(sweep, tmp_path / "paper.yaml")
    rows = read_csv(sweep / "report.csv")
    assert rows["toy/base"]["std"] == "" and rows["toy/base"]["ci_low"] != ""
    assert float(rows["toy/best"]["p_vs_ref"]) < 0.01 and rows["toy/mid"]["status"] == "missing"


def test_rows_tested_on_different_images_are_refused(tmp_path: Path):
    sweep = toy_sweep(tmp_path / "a", {"toy/base": [errors(0)], "toy/mid": [errors(1, 150)]})
    with pytest.raises(ValueError, match="toy/mid.*different images"):
        report(sweep, tmp_path / "a" / "paper.yaml")
    sweep = toy_sweep(tmp_path / "b", {"toy/base": [errors(0)], "toy/mid": [errors(1)]})
    with np.load(sweep / "1_toy" / "mid" / "errors_challenging.npz") as saved:
        np.savez(sweep / "1_toy" / "mid" / "errors_challenging.npz", **(dict(saved) | {"ids": saved["ids"] + 1}))
    with pytest.raises(ValueError, match="toy/mid.*different images"):  # as many images, but other ones
        report(sweep, tmp_path / "b" / "paper.yaml")


def test_a_reference_that_is_not_a_row_is_named(tmp_path: Path):
    sweep = toy_sweep(tmp_path, {"toy/base": [errors(0)]}, {**PAPER, "reference": "toy/bsae"})
    with pytest.raises(ValueError, match="reference: toy/bsae.*toy/base, toy/mid, toy/best"):
        report(sweep, tmp_path / "paper.yaml")


def test_every_paper_table_of_several_rows_declares_its_reference_row():
    from flmk.report import EXPERIMENTS_DIR, reference_row

    for path in sorted(EXPERIMENTS_DIR.glob("*/*.yaml")):
        paper = yaml.safe_load(path.read_text())
        if len(paper.get("rows") or {}) > 1:
            assert "reference" in paper and reference_row(paper) in paper["rows"], path
