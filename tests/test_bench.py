"""flmk.bench: the end-to-end mode's arithmetic, and (slow) a CPU run through flmk.train and a plain loop."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from flmk.bench import steady_img_s

ROOT = Path(__file__).resolve().parents[1]


def test_steady_rate_leaves_out_the_first_epoch():
    epochs = [{"images": 100, "seconds": 10.0}, {"images": 300, "seconds": 1.0}, {"images": 300, "seconds": 2.0}]
    assert steady_img_s(epochs) == pytest.approx(600 / 3.0)
    assert steady_img_s(epochs[:1]) == pytest.approx(10.0)  # one epoch: its own rate


@pytest.mark.slow
def test_e2e_mode_times_flmk_train_and_a_plain_loop(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
    cmd = [sys.executable, "-m", "flmk.bench", "bench.mode=e2e", "model=baseline", "model.pretrained=false",
           "model.crop_size=64", "bench.epochs=2", "+trainer.limit_train_batches=2", "+trainer.limit_val_batches=1",
           "bench.steps=2", "bench.warmup=1", "bench.plain_batches=2", "callbacks.progress_bar=null",
           f"hydra.run.dir={tmp_path}"]
    res = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    e2e = json.loads((tmp_path / "bench.json").read_text())["e2e"]
    assert e2e["epochs"] == 2 and e2e["flmk_img_s"] > 0 and e2e["plain_img_s"] > 0
    assert e2e["ratio"] == pytest.approx(e2e["flmk_img_s"] / e2e["plain_img_s"])
    epochs = json.loads((tmp_path / "e2e_flmk" / "throughput.json").read_text())["epochs"]
    assert [e["images"] for e in epochs] == [64, 64]  # 2 batches of 32 per epoch, counted by the callback
