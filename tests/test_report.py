"""One table = one command: a tiny CPU multirun of two rows, then the report beside the paper's numbers."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest
from hydra import compose, initialize_config_dir

from conftest import REPO, TINY
from flmk.report import report
from flmk.train import CONF_DIR


@pytest.fixture(scope="module")
def sweep(tmp_path_factory, synthetic_root):
    out = tmp_path_factory.mktemp("sweep")
    cmd = [sys.executable, "-m", "flmk.train", "-m", "experiment=odn/table4",
           "ablation=odn/brnet,odn/all", f"hydra.sweep.dir={out}",
           "data=synthetic", f"data.sources.synthetic.root={synthetic_root}", "data.sources.synthetic.n=24",
           "data.sources.synthetic.seed=3", "data.sources.synthetic.size=96", *TINY,
           "model.crop_size=64", "model.pretrained=false", "trainer=cpu", "trainer.max_epochs=1", "trainer.limit_train_batches=2",
           "trainer.limit_val_batches=1"]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")]))
    done = subprocess.run(cmd, cwd=tmp_path_factory.mktemp("cwd"), env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return out


def test_multirun_writes_one_folder_per_row(sweep):
    metrics = sorted(p.relative_to(sweep).as_posix() for p in sweep.glob("**/metrics.json"))
    assert metrics == ["0_odn/brnet/metrics.json", "1_odn/all/metrics.json"]


def test_report_puts_our_numbers_beside_the_papers(sweep):
    md = report(sweep).read_text()
    assert "odn/brnet" in md and "odn/all" in md
    assert "7.21" in md and "6.67" in md  # the paper's BRNet and full-ODN numbers
    assert "Synthetic data" in md and "stands in for challenging" in md
    csv_text = (sweep / "report.csv").read_text()
    assert csv_text.count("done") == 2 and csv_text.count("missing") == 4  # 6 paper rows, 2 run
    assert (sweep / "ced.png").stat().st_size > 1000


def test_report_on_a_partly_finished_sweep(sweep, tmp_path):
    partial = tmp_path / "partial"
    shutil.copytree(sweep, partial)
    (partial / "1_odn" / "all" / "metrics.json").unlink()
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
