"""One table = one command: a tiny CPU multirun of two rows x two seeds, then the report beside the paper's
numbers, with mean ± std over the seeds and the agreement line."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest
from hydra import compose, initialize_config_dir
from pytorch_lightning import Trainer
from pytorch_lightning.demos.boring_classes import BoringModel

from conftest import REPO, TINY
from flmk.artefacts import training_schedule
from flmk.report import report
from flmk.train import CONF_DIR


@pytest.fixture(scope="module")
def sweep(tmp_path_factory, synthetic_root):
    out = tmp_path_factory.mktemp("sweep")
    cmd = [sys.executable, "-m", "flmk.train", "-m", "experiment=odn/table4", "model.pretrained=false",
           "ablation=odn/brnet,odn/all", "seeds=2", f"hydra.sweep.dir={out}",
           "data=synthetic", f"data.sources.synthetic.root={synthetic_root}", "data.sources.synthetic.n=24",
           "data.sources.synthetic.seed=3", "data.sources.synthetic.size=96", *TINY,
           "model.crop_size=64", "model.pretrained=false", "trainer=cpu", "trainer.max_epochs=1", "trainer.limit_train_batches=2",
           "trainer.limit_val_batches=1"]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")]))
    done = subprocess.run(cmd, cwd=tmp_path_factory.mktemp("cwd"), env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return out


@pytest.mark.slow  # four CPU trainings: about a minute
def test_multirun_writes_one_folder_per_row_and_seed(sweep):
    runs = {}
    for path in sweep.glob("**/metrics.json"):
        meta = json.loads(path.read_text())["meta"]
        runs[path.parent.relative_to(sweep).as_posix()] = (meta["row"], meta["seed"], meta["schedule"])
    assert sorted((row, seed) for row, seed, _ in runs.values()) == \
        [("odn/all", 42), ("odn/all", 43), ("odn/brnet", 42), ("odn/brnet", 43)]
    assert len(runs) == 4  # each run its own folder
    for _, _, schedule in runs.values():  # the table's schedule, not a wall-clock budget, ended every run
        assert schedule["epochs"] == schedule["max_epochs"] == 1 and schedule["finished"]
    with np.load(sweep / "0_odn" / "brnet" / "errors_occluded.npz") as saved:  # what rows are paired on
        assert {"ids", "nme_io", "nme_ip"} <= set(saved) and np.array_equal(
            saved["nme_io"], np.load(sweep / "0_odn" / "brnet" / "errors_occluded.npy"))


@pytest.mark.slow  # four CPU trainings: about a minute
def test_report_gives_mean_std_over_seeds_and_the_agreement_line(sweep):
    md = report(sweep).read_text()
    assert "7.21" in md and "6.67" in md  # the paper's BRNet and full-ODN numbers
    assert "Synthetic data" in md and "stands in for challenging" in md
    rows = {r["row"]: r for r in csv.DictReader((sweep / "report.csv").open())}
    full = {r["row"]: r for r in json.loads((sweep / "report.json").read_text())["rows"]}  # unrounded
    for name in ("odn/brnet", "odn/all"):
        r = rows[name]
        assert r["status"] == "done" and r["n_seeds"] == "2" and r["seeds"] == "42 43"
        assert f"| {name} | {full[name]['mean']:.2f} ± {full[name]['std']:.2f} | 2 |" in md
        assert float(r["ci_low"]) <= float(r["mean"]) <= float(r["ci_high"])
    assert rows["odn/brnet"]["delta_vs_ref"] == "0.0" and 0 < float(rows["odn/all"]["p_vs_ref"]) <= 1
    assert sum(r["status"] == "missing" for r in rows.values()) == 4  # 6 paper rows, 2 run
    verdict = json.loads((sweep / "report.json").read_text())["agreement"]["all"]
    assert verdict["pairs"] == 1 and verdict["agree"] + verdict["tie"] + verdict["disagree"] == 1
    assert f"Agreement with the paper: {verdict['line']}" in md and "of 1 row pairs agree with the paper" in md
    assert str(sweep) not in md + (sweep / "report.csv").read_text()  # folders relative to the sweep
    assert (sweep / "ced.png").stat().st_size > 1000


@pytest.mark.slow  # four CPU trainings: about a minute
def test_report_on_a_partly_finished_sweep(sweep, tmp_path):
    partial = tmp_path / "partial"
    shutil.copytree(sweep, partial)
    for path in partial.glob("*_odn/all/metrics.json"):
        path.unlink()
    md = report(partial).read_text()
    assert "unfinished" in md and "Missing or unfinished rows" in md and "odn/all" in md.split("Missing")[-1]


def test_slurm_launcher_composes():
    with initialize_config_dir(CONF_DIR, version_base="1.3"):
        cfg = compose("train", overrides=["experiment=odn/table4", "hydra/launcher=slurm"], return_hydra_config=True)
    assert cfg.hydra.launcher._target_.endswith("SlurmLauncher")
    assert cfg.hydra.launcher.gpus_per_node == 1 and cfg.hydra.sweeper.params.ablation.startswith("odn/brnet")


def test_wandb_groups_runs_by_table_and_names_them_by_row():
    with initialize_config_dir(CONF_DIR, version_base="1.3"):
        cfg = compose("train", overrides=["experiment=odn/table4", "ablation=odn/gm_dm", "logger=wandb", "row=odn/gm_dm"])
    assert cfg.logger.wandb.group == "odn/table4" and cfg.logger.wandb.name == "odn/gm_dm"
    assert cfg.logger.wandb.mode in ("offline", os.environ.get("WANDB_MODE"))
    assert "csv" in cfg.logger


def test_seeds_shorthand_sweeps_seed_and_following():
    with initialize_config_dir(CONF_DIR, version_base="1.3"):
        cfg = compose("train", overrides=["experiment=odn/table4", "seeds=3", "seed=7"], return_hydra_config=True)
        assert cfg.hydra.sweeper.params.seed == "7,8,9" and cfg.hydra.sweeper.params.ablation.startswith("odn/")
        assert compose("train", return_hydra_config=True).hydra.sweeper.params.seed == "42"  # one seed by default
        with pytest.raises(ValueError, match="seeds=0: expected a positive number"):
            _ = compose("train", overrides=["seeds=0"], return_hydra_config=True).hydra.sweeper.params.seed


class SlowModel(BoringModel):
    """Training steps of 0.2 s: a 1-second cap stops it a few steps in."""

    def training_step(self, batch, batch_idx):
        time.sleep(0.2)
        return super().training_step(batch, batch_idx)


@pytest.mark.parametrize("max_time, finished", [(None, True), ({"seconds": 1}, False)])
def test_training_schedule_flags_a_run_the_wall_clock_stopped(tmp_path, max_time, finished):
    trainer = Trainer(max_epochs=10, max_time=max_time, limit_train_batches=2, limit_val_batches=0, logger=False,
                      enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                      default_root_dir=tmp_path, accelerator="cpu")
    trainer.fit(SlowModel() if max_time else BoringModel())
    schedule = training_schedule(trainer)
    assert schedule["finished"] is finished and schedule["max_epochs"] == 10
    assert schedule["stopped_by"] == (None if finished else "max_time")
    assert schedule["schedule_steps"] == 20
    if finished:
        assert (schedule["epochs"], schedule["epochs_done"], schedule["steps"]) == (10, 10, 20)
    else:
        assert 1 <= schedule["steps"] < 20 and schedule["epochs"] < 10  # the cut epoch counts as reached
        assert schedule["epochs_done"] == schedule["steps"] // 2


class SlowerModel(BoringModel):
    def training_step(self, batch, batch_idx):
        time.sleep(1.0)
        return super().training_step(batch, batch_idx)


def test_a_cap_that_fires_after_the_last_step_leaves_the_run_finished(tmp_path):
    """2 steps of 1 s under a 1.5-s cap: the timer fires at the end of the last step, the schedule is complete."""
    trainer = Trainer(max_epochs=1, max_time={"seconds": 1.5}, limit_train_batches=2, limit_val_batches=0,
                      logger=False, enable_checkpointing=False, enable_progress_bar=False,
                      enable_model_summary=False, default_root_dir=tmp_path, accelerator="cpu")
    trainer.fit(SlowerModel())
    schedule = training_schedule(trainer)
    assert schedule["stopped_by"] == "max_time" and schedule["steps"] == 2 == schedule["schedule_steps"]
    assert schedule["finished"] is True
