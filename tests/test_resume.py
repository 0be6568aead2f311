"""Interrupted runs: Ctrl-C and kill -9 mid-epoch, then a resume that ends exactly where an uninterrupted run ends.

Equality is exact (torch.equal on every weight, == on every metric): on CPU in fp32 the resumed run
performs the same operations on the same batches with the same random draws, so there is nothing a
tolerance would have to absorb; any difference means some state was not restored.
"""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from pytorch_lightning.callbacks import Callback

from conftest import REPO, TINY, compose_train
from flmk.train import train

# 3 epochs of 3 batches; augmentation on, so the random streams matter
RUN = ["model=baseline", "model.pretrained=false", "model.crop_size=64", "trainer.max_epochs=3", "trainer.limit_train_batches=3",
       "trainer.limit_val_batches=2"]


class SigintAt(Callback):
    """Sends this process a real SIGINT (Ctrl-C) once ``step`` optimizer steps are done."""

    def __init__(self, step: int):
        self.step = step

    def on_train_batch_end(self, trainer, *args) -> None:
        if trainer.global_step == self.step:
            os.kill(os.getpid(), signal.SIGINT)


class HangAt(Callback):
    """Writes ``marker`` and sleeps once ``step`` steps are done, so a test can kill the process mid-epoch."""

    def __init__(self, step: int, marker: str):
        self.step, self.marker = step, marker

    def on_train_batch_end(self, trainer, *args) -> None:
        if trainer.global_step == self.step:
            Path(self.marker).write_text(str(os.getpid()))
            time.sleep(600)


def final_state(run: Path) -> dict[str, torch.Tensor]:
    return torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)["state_dict"]


def val_rows(run: Path) -> list[tuple[str, str]]:
    with open(run / "csv" / "metrics.csv", newline="") as f:
        return [(r["step"], r["val/nme"]) for r in csv.DictReader(f) if r.get("val/nme")]


def assert_same_run(a: Path, b: Path) -> None:
    sa, sb = final_state(a), final_state(b)
    assert sa.keys() == sb.keys()
    assert all(torch.equal(sa[k], sb[k]) for k in sa), [k for k in sa if not torch.equal(sa[k], sb[k])]
    ma, mb = (json.loads((r / "metrics.json").read_text())["splits"] for r in (a, b))
    assert ma == mb
    best = [torch.load(r / "checkpoints" / "best.ckpt", map_location="cpu", weights_only=False) for r in (a, b)]
    assert best[0]["epoch"] == best[1]["epoch"] and best[0]["global_step"] == best[1]["global_step"]
    assert val_rows(a) == val_rows(b)  # one CSV log, every validation once


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, synthetic_root) -> Path:
    run = tmp_path_factory.mktemp("uninterrupted") / "run"
    train(compose_train(RUN, run, synthetic_root))
    return run


def test_checkpoints_written_in_background_equal_the_synchronous_ones(tmp_path, synthetic_root, uninterrupted):
    """checkpoint_background=true: the same last.ckpt, best.ckpt (epoch, step, weights) and test numbers."""
    from pytorch_lightning.plugins.io import AsyncCheckpointIO

    from hydra.errors import InstantiationException

    from flmk.errors import OptionError
    from flmk.runstate import AtomicCheckpointIO, checkpoint_io

    assert isinstance(checkpoint_io(background=True), AsyncCheckpointIO)
    assert isinstance(checkpoint_io(background=True).checkpoint_io, AtomicCheckpointIO)
    with pytest.raises(OptionError, match="checkpoint_background='maybe': expected true or false"):
        checkpoint_io(background="maybe")
    bad = tmp_path / "bad"
    # through flmk.train (whose command line prints the OptionError in one line): stopped before any log is written
    with pytest.raises(InstantiationException, match="checkpoint_background='maybe'"):
        train(compose_train(RUN + ["checkpoint_background=maybe"], bad, synthetic_root))
    assert not (bad / "csv").exists()
    run = tmp_path / "run"
    train(compose_train(RUN + ["checkpoint_background=true"], run, synthetic_root))
    assert_same_run(uninterrupted, run)
    assert not list((run / "checkpoints").glob("*.tmp*"))


def test_resumed_epoch_has_its_own_order():
    """The bug this fixes: a restart replayed epoch 0's order. Now epoch e's order is a function of (seed, e)."""
    from flmk.data.sampling import EpochSampler

    s = EpochSampler(20, seed=5)
    epoch0 = [k[0] for k in s]
    s.set_epoch(1)
    epoch1 = [k for k in s]
    assert epoch0 != [k[0] for k in epoch1] and sorted(epoch0) == list(range(20))
    assert all(k[1:] == (5, 1) for k in epoch1)
    restarted = EpochSampler(20, seed=5, epoch=1, skip=8)  # a fresh process resuming epoch 1 after 8 samples
    assert list(restarted) == epoch1[8:] and list(restarted) == epoch1  # the skip applies to one iteration


@pytest.mark.slow
@pytest.mark.parametrize("background", [False, True])
def test_ctrl_c_mid_epoch_saves_and_resume_equals_uninterrupted(tmp_path, synthetic_root, uninterrupted, background):
    """With checkpoint_background=true the interrupt's last.ckpt is still complete when the run has stopped."""
    run = tmp_path / "run"
    sigint = ["+callbacks.sigint._target_=test_resume.SigintAt", "+callbacks.sigint.step=4"]  # epoch 1, batch 1 of 3
    with pytest.raises(SystemExit, match="resume="):
        train(compose_train(RUN + sigint + [f"checkpoint_background={background}"], run, synthetic_root))
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert ckpt["global_step"] == 4 and ckpt["LandmarkDataModule"] == {"train_epoch": 1, "train_batches_done": 1}
    note = (run / "INTERRUPTED.txt").read_text()
    assert f"python -m flmk.train resume={run}" in note and "step 4" in note
    assert not (run / "metrics.json").exists()
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # our handler is gone again

    train(compose_train(RUN + [f"ckpt_path={run / 'checkpoints' / 'last.ckpt'}"], run, synthetic_root))
    assert_same_run(uninterrupted, run)
    assert not (run / "INTERRUPTED.txt").exists()


def _cli(run: Path, synthetic_root: Path, *extra: str) -> list[str]:
    data = [f"data.sources.synthetic.root={synthetic_root}", "data.sources.synthetic.n=24",
            "data.sources.synthetic.seed=3", "data.sources.synthetic.size=96"]
    return [sys.executable, "-m", "flmk.train", *TINY, *data, *RUN, f"hydra.run.dir={run}", *extra]


def _children(pid: int) -> list[int]:
    kids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            kids.append(int(stat.parent.name))
    return kids


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc").is_dir(), reason="reads child processes from /proc")
def test_kill_9_mid_epoch_then_resume_equals_uninterrupted(tmp_path, synthetic_root, uninterrupted):
    """kill -9 in epoch 1 (last.ckpt is epoch 0's); `resume=<run>` ends like the uninterrupted run.
    Loader workers (2 here) die with the process within seconds."""
    env = {**os.environ, "PYTHONPATH": f"{REPO / 'src'}{os.pathsep}{REPO / 'tests'}"}
    run, marker = tmp_path / "run", tmp_path / "hung"
    hang = ["+callbacks.hang._target_=test_resume.HangAt", "+callbacks.hang.step=5", f"+callbacks.hang.marker={marker}"]
    proc = subprocess.Popen(_cli(run, synthetic_root, "data.num_workers=2", *hang), env=env, cwd=tmp_path,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while not marker.exists():
        assert proc.poll() is None, proc.stderr.read()[-3000:]
        assert time.time() < deadline
        time.sleep(0.5)
    workers = _children(proc.pid)
    assert len(workers) >= 2
    proc.kill()
    proc.wait()
    time.sleep(4)
    assert not [w for w in workers if Path(f"/proc/{w}").exists() and "Z" not in Path(f"/proc/{w}/stat").read_text().rsplit(")", 1)[1].split()[0]]
    assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)["epoch"] == 0

    done = subprocess.run([sys.executable, "-m", "flmk.train", f"resume={run}", "callbacks.hang=null"], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert_same_run(uninterrupted, run)
    assert not list(run.parent.glob("outputs"))  # nothing written to a new timestamped folder


_WRITER = """
import sys, time
from lightning_fabric.plugins.io.torch_io import TorchCheckpointIO
from flmk.runstate import AtomicCheckpointIO
io = AtomicCheckpointIO() if sys.argv[2] == "atomic" else TorchCheckpointIO()
io.save_checkpoint({"epoch": 1}, sys.argv[1])
def half_then_hang(self, checkpoint, path, storage_options=None):  # a writer killed half-way through the file
    open(path, "wb").write(b"PK half a checkpoint")
    print("writing", flush=True)
    time.sleep(600)
TorchCheckpointIO.save_checkpoint = half_then_hang
io.save_checkpoint({"epoch": 2}, sys.argv[1])
"""


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["atomic", "plain"])
def test_a_killed_checkpoint_writer_leaves_the_previous_checkpoint(tmp_path, kind):
    """AtomicCheckpointIO (conf/trainer): the file is the old checkpoint or the new one, never half of one;
    Lightning's plain writer (the contrast) leaves the broken half."""
    path = tmp_path / "last.ckpt"
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    proc = subprocess.Popen([sys.executable, "-c", _WRITER, str(path), kind], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "writing", proc.stderr.read()[-2000:]
    proc.kill()
    proc.wait()
    if kind == "atomic":
        assert torch.load(path, weights_only=True) == {"epoch": 1}
    else:
        assert path.read_bytes() == b"PK half a checkpoint"


def test_resume_argument_points_hydra_at_the_run_folder(tmp_path):
    from flmk.runstate import resume_argv

    run = tmp_path / "run"
    (run / ".hydra").mkdir(parents=True)
    (run / ".hydra" / "config.yaml").write_text("logger:\n  wandb: {project: flmk}\n")
    (run / "checkpoints").mkdir()
    (run / "checkpoints" / "last.ckpt").write_bytes(b"")
    (run / "wandb" / "offline-run-20261130_170000-ab12cd34").mkdir(parents=True)
    (run / "wandb" / "latest-run").symlink_to("offline-run-20261130_170000-ab12cd34")
    argv = resume_argv(["train.py", f"resume={run}", "trainer.max_epochs=9"])
    assert argv == ["train.py", f"--config-path={run / '.hydra'}", "--config-name=config", f"hydra.run.dir={run}",
                    "hydra.output_subdir=null", f"ckpt_path={run / 'checkpoints' / 'last.ckpt'}",
                    "++logger.wandb.id=ab12cd34", "++logger.wandb.resume=allow", "trainer.max_epochs=9"]
    by_file = resume_argv(["train.py", f"resume={run / 'checkpoints' / 'last.ckpt'}"])
    assert by_file[:6] == argv[:6]
    assert resume_argv(["train.py", "model=odn"]) == ["train.py", "model=odn"]  # no resume=: untouched
    with pytest.raises(SystemExit, match="no such run folder"):
        resume_argv(["train.py", f"resume={tmp_path / 'elsewhere'}"])
    (run / "checkpoints" / "last.ckpt").unlink()
    with pytest.raises(SystemExit, match="stopped before its first save"):
        resume_argv(["train.py", f"resume={run}"])
