"""Shared fixtures: tiny synthetic stills and videos, composed configs (real-data fixtures: real_fixtures.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, open_dict

from flmk.train import CONF_DIR

REPO = Path(__file__).resolve().parents[1]

# Small and quick: every test that trains uses these on top of its own overrides.
TINY = [
    "data.num_workers=0",
    "data.batch_size=4",
    "trainer.enable_model_summary=false",
    "trainer.log_every_n_steps=1",
    "callbacks.progress_bar=null",
    "callbacks.lr_monitor=null",
]


@pytest.fixture(scope="session")
def synthetic_root(tmp_path_factory) -> Path:
    from flmk.data.synth import ensure_synthetic

    root = tmp_path_factory.mktemp("synthetic")
    ensure_synthetic(root, n=24, seed=3, size=96)
    return root


def compose_train(overrides: list[str], out_dir: Path, synthetic_root: Path | None = None,
                  config_name: str = "train") -> DictConfig:
    """conf/train.yaml composed with overrides, writing into ``out_dir`` (no Hydra run folder)."""
    extra = [f"data.sources.synthetic.root={synthetic_root}", "data.sources.synthetic.n=24",
             "data.sources.synthetic.seed=3", "data.sources.synthetic.size=96"] if synthetic_root else []
    with initialize_config_dir(CONF_DIR, version_base="1.3"):
        tiny = [o for o in TINY if config_name == "train" or not o.startswith("callbacks.")]
        cfg = compose(config_name, overrides=tiny + extra + list(overrides))
    with open_dict(cfg):
        cfg.paths.output_dir = str(out_dir)
    return cfg


class NaNAfter:
    """A loss that turns NaN after ``steps`` calls: drives the NaN-stop test through the real config path."""

    def __init__(self, steps: int):
        from flmk.models.baseline import PointLoss

        self.inner, self.steps, self.calls = PointLoss(), steps, 0

    def __call__(self, outputs, batch, net):
        self.calls += 1
        terms = self.inner(outputs, batch, net)
        if self.calls > self.steps:
            terms = {k: v * float("nan") for k, v in terms.items()}
        return terms


@pytest.fixture(scope="session")
def synthetic_video_root(tmp_path_factory) -> Path:
    from flmk.data.synth import ensure_synthetic_videos

    root = tmp_path_factory.mktemp("synthetic_video")
    ensure_synthetic_videos(root, n_videos=3, frames=12, seed=0, size=96)
    return root
