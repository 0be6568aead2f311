"""DDP inside Hydra: each job keeps its own folder and finishes before the next starts.

Lightning re-launches the training script once per extra rank with the
parent's command line plus ``hydra.run.dir=<run dir>``. Under a Hydra
multirun that command line is the whole sweep (``-m``, every row), and the
run dir is the single-run pattern rather than the job's folder — each rank
would start the sweep again. :func:`job_scope` makes a rank instead re-run
exactly the composed config of *this* job (its ``.hydra/config.yaml``) in
*this* job's folder, and afterwards tears the process group down and
restores the environment, so the next job of the sweep starts clean.
"""

from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path

import torch.distributed as dist

_ENV_KEYS = ("MASTER_ADDR", "MASTER_PORT", "NODE_RANK", "LOCAL_RANK", "WORLD_SIZE", "RANK")


def _job_command(job_dir: Path):
    import __main__

    entry = __main__.__spec__.name if __main__.__spec__ is not None else "flmk.train"

    def command(local_rank: int):
        cmd = [
            sys.executable, "-m", entry,
            f"--config-path={job_dir / '.hydra'}", "--config-name=config",
            f"hydra.run.dir={job_dir}", "hydra.output_subdir=null", f"hydra.job.name=ddp_rank_{local_rank}",
        ]
        return cmd, os.getcwd()

    return command


@contextlib.contextmanager
def job_scope(job_dir: Path):
    """Patch Lightning's rank re-launch for this job; clean up the process group and environment after it."""
    import pytorch_lightning.strategies.launchers.subprocess_script as launcher

    saved_env = {k: os.environ.get(k) for k in _ENV_KEYS}
    original = launcher._hydra_subprocess_cmd
    if (job_dir / ".hydra" / "config.yaml").exists():
        launcher._hydra_subprocess_cmd = _job_command(job_dir)
    try:
        yield
    finally:
        launcher._hydra_subprocess_cmd = original
        if dist.is_available() and dist.is_initialized():
            dist.barrier()
            dist.destroy_process_group()
        if saved_env.get("LOCAL_RANK") is None:  # the launching process: forget this job's rendezvous
            for k, v in saved_env.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
