"""experiments/run_history.py: the training history table of a synthetic report's RUN.md."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("run_history", ROOT / "experiments" / "run_history.py")
run_history = importlib.util.module_from_spec(spec)
spec.loader.exec_module(run_history)


def make_job(folder: Path, row: str, peak: float | None, schedule: dict | None = None) -> None:
    (folder / ".hydra").mkdir(parents=True)
    (folder / ".hydra" / "hydra.yaml").write_text(yaml.safe_dump({"hydra": {"runtime": {"choices": {"ablation": row}}}}))
    (folder / ".hydra" / "config.yaml").write_text(yaml.safe_dump({"data": {"primary_nme": "nme_ip"}, "seed": 7}))
    (folder / "csv").mkdir()
    (folder / "csv" / "metrics.csv").write_text(
        "epoch,step,train/loss,val/nme_ip,val/nme_io,test/full/nme_ip\n"
        "0,9,1.0,,,\n"
        "0,62,,0.25,0.5,\n"
        "1,71,0.5,,,\n"
        "1,125,,0.125,0.25,\n"
        "2,130,0.4,,,\n"  # epoch 2 cut by max_time: trained, never validated
        "3,131,,,,0.1\n"  # the test row carries the epoch after the last
    )
    if peak is not None:
        meta = {"primary_nme": "nme_ip", "peak_gpu_mem_GiB": peak, "seed": 3} | ({"schedule": schedule} if schedule else {})
        (folder / "metrics.json").write_text(json.dumps({"meta": meta, "splits": {}}))


def test_history_reads_epochs_primary_nme_and_peak_memory(tmp_path: Path) -> None:
    make_job(tmp_path / "0_ccdn" / "t7_p2", "ccdn/t7_p2", 2.0625)
    (job,) = run_history.load_jobs(tmp_path)
    assert run_history.history(job) == ("ccdn/t7_p2", 3, [25.0, 12.5], 2.0625)


def test_main_prints_one_markdown_row_per_job(tmp_path: Path, capsys) -> None:
    make_job(tmp_path / "a" / "0", "ccdn/t7_p1", None)
    make_job(tmp_path / "b" / "0", "ccdn/t7_p2", 1.5)
    capped = {"epochs": 3, "max_epochs": 12, "steps": 131, "max_steps": None, "stopped_by": "max_time", "finished": False}
    make_job(tmp_path / "c" / "0", "ccdn/t7_p3", 1.5, capped)
    run_history.main(str(tmp_path))
    lines = capsys.readouterr().out.splitlines()
    assert lines[2:] == ["| ccdn/t7_p1 | 7 | 3 | 25.0 12.5 | 12.50 | – |",
                         "| ccdn/t7_p2 | 3 | 3 | 25.0 12.5 | 12.50 | 1.50 |",
                         "| ccdn/t7_p3 | 3 | 3 of 12 (stopped early) | 25.0 12.5 | 12.50 | 1.50 |"]


def test_spread_is_the_mean_change_over_the_last_epochs() -> None:
    assert run_history.spread([9.0, 5.0, 6.0, 4.0], last=2) == 1.5  # |4-6| and |6-5|
    assert run_history.spread([3.0]) is None
