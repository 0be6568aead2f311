"""Runs that survive interruption: exact resume in the run's own folder, graceful Ctrl-C / SIGTERM, atomic checkpoints.

``python -m flmk.train resume=<run dir or checkpoint> [overrides]`` continues a run in its
own folder with its own composed config (``<run>/.hydra/config.yaml``) from
``checkpoints/last.ckpt``. What makes the continuation equal an uninterrupted run:

* the training order and every sample's augmentation are functions of (seed, epoch, index)
  (:mod:`flmk.data.sampling`); the data module's checkpoint state says which epoch comes next and
  how many of its batches were already trained on (``LandmarkDataModule.state_dict``);
* :class:`ExactResume` stores the Python, NumPy and torch RNG states in every checkpoint and
  restores them when training restarts;
* continuing in the same folder lets ModelCheckpoint restore its best-so-far score, and the CSV
  log keeps its rows up to the checkpoint's step (:func:`continue_csv_logs`).

:class:`Interruptible` turns the first Ctrl-C (and SLURM's SIGTERM, which Lightning already
catches) into a stop after the current batch: ``last.ckpt`` is saved, ``INTERRUPTED.txt`` states
the resume command, and the process exits so that its loader workers end with it.
"""

from __future__ import annotations

import csv
import random
import signal
import sys
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
import yaml
from lightning_fabric.plugins import CheckpointIO
from lightning_fabric.plugins.io.torch_io import TorchCheckpointIO
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.callbacks import Callback
from pytorch_lightning.loggers import CSVLogger
from pytorch_lightning.plugins.io import AsyncCheckpointIO
from pytorch_lightning.utilities.exceptions import SIGTERMException

from flmk.data.images import write_atomic
from flmk.errors import OptionError

INTERRUPTED = "INTERRUPTED.txt"


# -- resume= on the command line ------------------------------------------------------------------

def _run_dir_of(ckpt: Path) -> Path:
    for parent in ckpt.parents:
        if (parent / ".hydra" / "config.yaml").is_file():
            return parent
    raise SystemExit(f"flmk: resume={ckpt}: no .hydra/config.yaml in any parent folder, so the run folder is "
                     "unknown; pass ckpt_path=<checkpoint> with the run's options instead")


def resume_argv(argv: list[str]) -> list[str]:
    """``resume=<run dir | checkpoint>`` -> the run's own config, folder and checkpoint as Hydra arguments.

    A folder resumes from ``<folder>/checkpoints/last.ckpt``. Other arguments are kept as overrides
    of the run's config (e.g. ``trainer.max_epochs=20``); an explicit ``ckpt_path=`` wins.
    """
    given = [a.split("=", 1)[1] for a in argv[1:] if a.startswith("resume=")]
    if not given:
        return argv
    rest = [a for a in argv[1:] if not a.startswith("resume=")]
    target = Path(given[-1]).expanduser().resolve()
    if target.is_dir():
        run_dir, ckpt = target, target / "checkpoints" / "last.ckpt"
        if not (run_dir / ".hydra" / "config.yaml").is_file():
            raise SystemExit(f"flmk: resume={target}: not a run folder (no .hydra/config.yaml in it)")
    elif target.is_file():
        run_dir, ckpt = _run_dir_of(target), target
    else:
        raise SystemExit(f"flmk: resume={target}: no such run folder or checkpoint")
    if not ckpt.is_file() and not any(a.startswith("ckpt_path=") for a in rest):
        raise SystemExit(f"flmk: resume={target}: no checkpoint {ckpt} (the run stopped before its first save)")
    out = [argv[0], f"--config-path={run_dir / '.hydra'}", "--config-name=config",
           f"hydra.run.dir={run_dir}", "hydra.output_subdir=null"]  # keep the run's hydra.yaml (report reads it)
    if not any(a.startswith("ckpt_path=") for a in rest):
        out.append(f"ckpt_path={ckpt}")
    out += _wandb_resume(run_dir)
    return out + rest


def _wandb_resume(run_dir: Path) -> list[str]:
    """W&B continues the same run id when the run logged to W&B."""
    cfg = yaml.safe_load((run_dir / ".hydra" / "config.yaml").read_text()) or {}
    latest = run_dir / "wandb" / "latest-run"
    if not (cfg.get("logger") or {}).get("wandb") or not latest.exists():
        return []
    run_id = latest.resolve().name.rsplit("-", 1)[-1]
    return [f"++logger.wandb.id={run_id}", "++logger.wandb.resume=allow"]


def resuming_in_place(cfg: DictConfig) -> bool:
    """True when ``ckpt_path`` lies inside this run's own folder (``resume=``)."""
    ckpt = cfg.get("ckpt_path")
    return bool(ckpt) and Path(cfg.paths.output_dir).resolve() in Path(ckpt).resolve().parents


def record_resume(cfg: DictConfig) -> None:
    """Resuming in place: ``.hydra/config.yaml`` becomes the continued run's config (with its ``ckpt_path``),
    so a later resume and DDP's re-launched ranks (flmk.ddp) use it."""
    cfg_file = Path(cfg.paths.output_dir) / ".hydra" / "config.yaml"
    if resuming_in_place(cfg) and cfg_file.is_file():
        text = OmegaConf.to_yaml(cfg)
        write_atomic(cfg_file, lambda tmp: tmp.write_text(text))


def continue_csv_logs(loggers: list, ckpt_path: str | None) -> None:
    """A CSV log already in the folder keeps its rows up to the checkpoint's step (Lightning would delete it)."""
    if not ckpt_path:
        return
    for lg in loggers:
        old = Path(lg.log_dir) / "metrics.csv" if isinstance(lg, CSVLogger) else None
        if old is None or not old.is_file():
            continue
        step = torch.load(ckpt_path, map_location="cpu", weights_only=False, mmap=True)["global_step"]
        with open(old, newline="") as f:
            rows = [{k: v for k, v in r.items() if v != ""} for r in csv.DictReader(f)]
        kept = [r for r in rows if int(float(r.get("step", 0))) <= step]
        writer = lg.experiment  # creating it removes the file; it writes the kept rows back first
        if isinstance(getattr(writer, "metrics", None), list):  # rank zero (other ranks get a dummy)
            writer.metrics[:0] = kept


# -- callbacks --------------------------------------------------------------------------------------

def rng_states() -> dict[str, Any]:
    """Python, NumPy and torch RNG states as plain values (checkpoints load with ``weights_only=True``)."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    states = {"python": random.getstate(), "numpy": [kind, keys.tolist(), pos, has_gauss, gauss],
              "torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_rng_states(states: dict[str, Any]) -> None:
    random.setstate(states["python"])
    kind, keys, pos, has_gauss, gauss = states["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, gauss))
    torch.set_rng_state(states["torch"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


class ExactResume(Callback):
    """Checkpoints carry the RNG states (restored when training restarts); loggers are flushed at every save.
    [assume] Under DDP the states of rank 0 are saved and restored on every rank."""

    def __init__(self) -> None:
        self._pending: dict[str, Any] | None = None

    def state_dict(self) -> dict[str, Any]:
        return {"rng": rng_states()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._pending = state_dict.get("rng")

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._pending is not None:
            set_rng_states(self._pending)
            self._pending = None

    def on_save_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict) -> None:
        for lg in trainer.loggers:  # the log on disk reaches at least the checkpoint's step
            lg.save()


def resume_command(run_dir: Path) -> str:
    return f"python -m flmk.train resume={run_dir}"


class Interruptible(Callback):
    """First Ctrl-C or SIGTERM: stop after the current batch, save ``last.ckpt``, write INTERRUPTED.txt.

    Lightning raises SIGTERMException at the next batch end once ``received_sigterm`` is set; Ctrl-C
    sets the same flag. A second Ctrl-C stops at once (the previous ``last.ckpt`` stays).
    """

    def __init__(self) -> None:
        self._previous = None

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Installed after Lightning's own handlers (it restores its snapshot of them at teardown)."""
        if threading.current_thread() is not threading.main_thread():
            return

        def on_sigint(signum, frame):
            if trainer.received_sigterm:
                raise KeyboardInterrupt
            print("\nflmk: Ctrl-C: stopping after this batch and saving last.ckpt (Ctrl-C again to stop now)",
                  file=sys.stderr, flush=True)
            trainer._signal_connector.received_sigterm = True

        self._previous = signal.signal(signal.SIGINT, on_sigint)

    def _restore(self) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
            self._previous = None

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._restore()
        if trainer.is_global_zero:  # finished: an earlier interruption note no longer applies
            (Path(trainer.default_root_dir) / INTERRUPTED).unlink(missing_ok=True)

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        self._restore()
        if not isinstance(exception, (SIGTERMException, KeyboardInterrupt)):
            return
        run_dir = Path(trainer.default_root_dir)
        saved = isinstance(exception, SIGTERMException)  # stopped at a batch end: a clean state to save
        if saved:
            trainer.save_checkpoint(last_checkpoint(trainer))
        if trainer.is_global_zero:
            where = (f"after epoch {trainer.current_epoch}, step {trainer.global_step}: saved {last_checkpoint(trainer)}"
                     if saved else "at once (second Ctrl-C): the last checkpoint is the previous last.ckpt")
            text = f"Interrupted {where}.\nResume with:\n  {resume_command(run_dir)}\n"
            write_atomic(run_dir / INTERRUPTED, lambda tmp: tmp.write_text(text))


def last_checkpoint(trainer: pl.Trainer) -> Path:
    cb = trainer.checkpoint_callback
    folder = Path(cb.dirpath) if cb is not None and cb.dirpath else Path(trainer.default_root_dir) / "checkpoints"
    return folder / "last.ckpt"


def interrupted_exit(run_dir: Path) -> SystemExit:
    return SystemExit(f"flmk: interrupted; last.ckpt saved. Resume with: {resume_command(run_dir)}")


class AtomicCheckpointIO(TorchCheckpointIO):
    """Checkpoints are written to a temporary file and renamed: a killed writer never leaves half a file."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, lambda tmp: super(AtomicCheckpointIO, self).save_checkpoint(checkpoint, tmp, storage_options))


def checkpoint_io(background: bool = False) -> CheckpointIO:
    """flmk's checkpoint writer (``trainer.plugins``): atomic; with ``background`` the file is written by a thread
    while training goes on (Lightning's AsyncCheckpointIO, which clones the tensors on the training thread first,
    so the file holds the weights of the moment it was asked for). The thread is joined when fit ends, before the
    test reads ``best.ckpt``; a failed write is raised at the next save or at that join."""
    if not isinstance(background, bool):
        raise OptionError(f"checkpoint_background={background!r}: expected true or false")
    return AsyncCheckpointIO(AtomicCheckpointIO()) if background else AtomicCheckpointIO()
