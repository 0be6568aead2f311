"""Every experiment and every ablation row composes; every row trains one step on tiny synthetic data."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from hydra import compose, initialize_config_dir

from conftest import REPO, compose_train
from flmk.train import CONF_DIR, train

CONF = Path(CONF_DIR)
EXPERIMENTS = sorted(p.relative_to(CONF / "experiment").with_suffix("").as_posix()
                     for p in (CONF / "experiment").rglob("*.yaml"))
ROWS = sorted(p.relative_to(CONF / "ablation").with_suffix("").as_posix() for p in (CONF / "ablation").rglob("*.yaml"))
DATA = sorted(p.stem for p in (CONF / "data").glob("*.yaml"))
MODELS = sorted(p.stem for p in (CONF / "model").glob("*.yaml"))
CLIP_MODELS = {"hm1d_tracker", "fan2d_tracker", "srn_tracker"}

# Shrink each model for a CPU step without changing which modules a row switches.
TINY_MODEL = {
    "baseline": ["model.crop_size=64", "model.pretrained=false"],
    "odn": ["model.crop_size=64", "model.pretrained=false"],
    "aodn": ["model.crop_size=64", "model.pretrained=false"],
    "ccdn": ["model.crop_size=64", "model.net.channels=32", "model.net.num_stacks=2", "model.net.hg_depth=2",
             "model.net.stem_channels=[16,32]", "model.net.t_channels=32"],
    "hm1d": ["model.crop_size=64", "model.net.channels=32", "model.net.num_stacks=1"],
    "hm1d_tracker": ["model.crop_size=64", "model.net.channels=32", "model.net.num_stacks=1"],
    "fan2d": ["model.crop_size=64", "model.net.channels=32", "model.net.num_stacks=1"],
    "fan2d_tracker": ["model.crop_size=64", "model.net.channels=32", "model.net.num_stacks=1"],
    "srn": ["model.crop_size=128"],
    "srn_tracker": ["model.crop_size=128"],
}


def sweep_rows(experiment: str) -> list[str]:
    cfg = yaml.safe_load((CONF / "experiment" / f"{experiment}.yaml").read_text()) or {}
    params = ((cfg.get("hydra") or {}).get("sweeper") or {}).get("params") or {}
    return [r.strip() for r in str(params.get("ablation", "")).split(",") if r.strip()]


TABLE_ROWS = sorted({(e, r) for e in EXPERIMENTS for r in sweep_rows(e)})
# the first row of every table trains in the fast suite; the others with `make test-all` (about 10 minutes)
TRAIN_ROWS = [pytest.param(e, r, marks=() if r == sweep_rows(e)[0] else pytest.mark.slow) for e, r in TABLE_ROWS]


def _compose(overrides: list[str]):
    with initialize_config_dir(CONF_DIR, version_base="1.3"):
        return compose("train", overrides=overrides, return_hydra_config=True)


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_experiment_composes_and_names_existing_rows(experiment):
    cfg = _compose([f"experiment={experiment}"])
    rows = sweep_rows(experiment)
    for row in rows:
        assert (CONF / "ablation" / f"{row}.yaml").exists(), f"{experiment} sweeps over missing row {row}"
    if rows:
        assert cfg.table, f"{experiment}: a table sweep must name its table"
        paper = REPO / "experiments" / f"{cfg.table}.yaml"
        assert paper.exists(), f"{experiment}: no paper numbers at {paper}"
        numbers = yaml.safe_load(paper.read_text())
        assert set(numbers["rows"]) <= set(rows) | set(numbers.get("unswept_rows", [])), (
            f"{paper} lists rows the sweep does not run: {set(numbers['rows']) - set(rows)}")


@pytest.mark.parametrize("experiment, row", TABLE_ROWS)
def test_table_row_composes(experiment, row):
    cfg = _compose([f"experiment={experiment}", f"ablation={row}"])
    assert cfg.hydra.runtime.choices.ablation == row


@pytest.mark.parametrize("data", DATA)
def test_data_config_composes(data):
    cfg = _compose([f"data={data}"])
    assert cfg.data.num_points == {"68": 68, "98": 98, "29": 29, "19": 19, "7": 7}[str(cfg.data.layout)]
    tests = [v["splits"] if hasattr(v, "keys") else ([v] if isinstance(v, str) else v) for v in cfg.data.test.values()]
    for spec in list(cfg.data.train) + [s for group in tests for s in group]:
        assert spec.split("/")[0] in cfg.data.sources, f"{data}: split {spec} names no source"


def _row_model(experiment: str, row: str) -> str:
    return _compose([f"experiment={experiment}", f"ablation={row}"]).hydra.runtime.choices.model


@pytest.mark.parametrize("experiment, row", TRAIN_ROWS)
def test_table_row_trains_one_step(experiment, row, tmp_path, synthetic_root, synthetic_video_root):
    model = _row_model(experiment, row)
    if model in CLIP_MODELS:
        data = ["data=synthetic_video", f"data.sources.synthetic_video.root={synthetic_video_root}",
                "data.sources.synthetic_video.n_videos=3", "data.sources.synthetic_video.frames=12",
                "data.sources.synthetic_video.size=96", "data.clip_length=3", "data.batch_size=2"]
        root = None
    else:
        data, root = ["data=synthetic", "data.batch_size=2"], synthetic_root
    scratch = ["model.net.allow_scratch=true"] if model in CLIP_MODELS else []  # trackers' checkpoints: test_trackers
    overrides = [f"experiment={experiment}", f"ablation={row}", *data, *TINY_MODEL.get(model, []), *scratch,
                 "trainer=cpu", "trainer.max_epochs=1", "trainer.limit_train_batches=1", "trainer.limit_val_batches=1",
                 "test=false", "logger=csv", "hydra.mode=RUN"]
    cfg = compose_train(overrides, tmp_path, root)
    train(cfg)
    assert (tmp_path / "checkpoints" / "last.ckpt").exists()
