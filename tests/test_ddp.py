"""Under DDP every test image is counted exactly once: a 2-process gloo evaluation equals a single-process one."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from omegaconf import OmegaConf

from conftest import REPO, compose_train
from flmk.train import train

SYNTH = ["data.sources.synthetic.n=30", "data.sources.synthetic.seed=5", "data.sources.synthetic.size=96"]


def _evaluate(ckpt, root, out, extra):
    cmd = [sys.executable, "-m", "flmk.evaluate", f"ckpt_path={ckpt}", "data=synthetic",
           f"data.sources.synthetic.root={root}", *SYNTH, "data.num_workers=0", "+data.eval_batch_size=2",
           "save_maps=0", f"hydra.run.dir={out}", "trainer.enable_model_summary=false", *extra]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")]),
               OMP_NUM_THREADS="1")
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600, cwd=out.parent)
    assert done.returncode == 0, done.stderr[-4000:]
    return json.loads((out / "metrics.json").read_text())["splits"]


@pytest.mark.slow
def test_ddp_evaluation_counts_every_image_once(tmp_path):
    from flmk.data.synth import ensure_synthetic

    root = tmp_path / "synthetic"
    ensure_synthetic(root, n=30, seed=5, size=96)  # 3 faces per test split: odd, so the sampler pads
    run = tmp_path / "run"
    cfg = compose_train(["model=baseline", "model.crop_size=64", "model.pretrained=false", "trainer.max_epochs=1", "trainer.limit_train_batches=2",
                         "test=false", f"data.sources.synthetic.root={root}", *SYNTH], run)
    train(cfg)
    (run / ".hydra").mkdir()
    OmegaConf.save(cfg, run / ".hydra" / "config.yaml")
    ckpt = run / "checkpoints" / "last.ckpt"
    single = _evaluate(ckpt, root, tmp_path / "single", [])
    ddp = _evaluate(ckpt, root, tmp_path / "ddp", ["trainer.accelerator=cpu", "trainer.devices=2", "trainer.strategy=ddp"])
    assert set(single) == set(ddp) == {"clean", "occluded", "full"}
    for split in single:
        assert ddp[split]["count"] == single[split]["count"] == {"clean": 3, "occluded": 3, "full": 6}[split]
        for key in ("nme_io", "nme_ip", "nme_box", "fr@0.10", "auc@0.10"):
            assert ddp[split][key] == pytest.approx(single[split][key], rel=1e-9, abs=1e-12), (split, key)
