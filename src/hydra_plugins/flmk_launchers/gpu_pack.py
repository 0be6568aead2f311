"""`hydra/launcher=gpu_pack`: a table's rows side by side, several per GPU, each its own process and folder.

One row of an ablation table rarely fills an H200, so the launcher keeps `per_gpu` rows training on every
visible GPU at once (a row sees one GPU through CUDA_VISIBLE_DEVICES) and starts the next row as soon as one
ends. Each job runs `python -m <entry point> <its overrides> hydra.run.dir=<its sweep folder>`, so a job
folder holds exactly what the basic launcher's would (.hydra/, metrics.json, checkpoints), plus the row's output
(launcher.log) and launcher.json (its job number, GPU, wall-clock start and end, seconds and exit status: what
experiments/table_walltime.py schedules from), and `flmk.report` reads the sweep folder unchanged. Without a GPU,
`per_gpu` rows run side by side on the CPU.
"""

import json
import logging
import os
import queue
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

from hydra.core.config_store import ConfigStore
from hydra.core.hydra_config import HydraConfig
from hydra.core.utils import JobReturn, JobStatus, configure_log, filter_overrides, setup_globals
from hydra.plugins.launcher import Launcher
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf, open_dict

log = logging.getLogger(__name__)


@dataclass
class GpuPackLauncherConf:
    _target_: str = "hydra_plugins.flmk_launchers.gpu_pack.GpuPackLauncher"
    per_gpu: int = 1  # rows training at once on each GPU (or side by side on a machine without one)
    gpus: Optional[str] = None  # comma-separated GPU indices; null = every visible GPU
    cpu_threads: Optional[int] = None  # OMP/MKL threads per row; null = the machine's cores / rows at once
    # The module the rows run (`python -m <module>`); null = the module this multirun was started with.
    module: Optional[str] = None


ConfigStore.instance().store(group="hydra/launcher", name="gpu_pack_base", node=GpuPackLauncherConf,
                             provider="flmk")


def visible_gpus(spec: Optional[str]) -> list[str]:
    if spec is not None and str(spec).strip():
        return [g.strip() for g in str(spec).split(",") if g.strip()]
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        return [g.strip() for g in env.split(",") if g.strip()]
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return []
    return [str(i) for i, line in enumerate(out.splitlines()) if line.startswith("GPU ")]


def entry_module(explicit: Optional[str]) -> str:
    if explicit:
        return explicit
    spec = getattr(sys.modules["__main__"], "__spec__", None)
    if spec is None or not spec.name:
        raise RuntimeError("hydra/launcher=gpu_pack runs rows as `python -m <module>`: start the multirun with "
                           "`python -m flmk.train -m ...` or set hydra.launcher.module")
    return spec.name.removesuffix(".__main__")


class GpuPackLauncher(Launcher):
    def __init__(self, per_gpu: int = 1, gpus: Optional[str] = None, cpu_threads: Optional[int] = None,
                 module: Optional[str] = None) -> None:
        if int(per_gpu) < 1:
            raise ValueError(f"hydra.launcher.per_gpu must be >= 1, got {per_gpu}")
        self.per_gpu, self.gpus, self.cpu_threads, self.module = int(per_gpu), gpus, cpu_threads, module
        self.config: Optional[DictConfig] = None
        self.hydra_context: Optional[HydraContext] = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.config, self.hydra_context = config, hydra_context

    def _job(self, overrides: Sequence[str], idx: int) -> tuple[DictConfig, Path]:
        """The job's composed config and folder, exactly as the basic launcher would make them."""
        cfg = self.hydra_context.config_loader.load_sweep_config(self.config, list(overrides))
        with open_dict(cfg):
            cfg.hydra.job.id = idx
            cfg.hydra.job.num = idx
        HydraConfig.instance().set_config(cfg)
        return cfg, Path(str(cfg.hydra.sweep.dir)) / str(cfg.hydra.sweep.subdir)

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        setup_globals()
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        gpus = visible_gpus(self.gpus)
        slots: queue.Queue = queue.Queue()
        for _ in range(self.per_gpu):
            for g in gpus or [None]:
                slots.put(g)
        threads = self.cpu_threads or max(1, (os.cpu_count() or 1) // slots.qsize())
        module = entry_module(self.module)
        jobs = [(initial_job_idx + i, list(o), *self._job(o, initial_job_idx + i)) for i, o in enumerate(job_overrides)]
        log.info(f"gpu_pack: {len(jobs)} jobs, {self.per_gpu} per GPU on "
                 f"{'GPUs ' + ','.join(gpus) if gpus else 'the CPU (no GPU visible)'}, {threads} CPU threads each")

        def run(job) -> JobReturn:
            idx, overrides, cfg, job_dir = job
            gpu = slots.get()
            try:
                job_dir.mkdir(parents=True, exist_ok=True)
                env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
                if gpu is not None:
                    env["CUDA_VISIBLE_DEVICES"] = gpu
                # a job is a single run in its sweep folder, even when its experiment file asks for a multirun
                cmd = [sys.executable, "-m", module, *overrides, "hydra.mode=RUN", f"hydra.run.dir={job_dir}"]
                log.info(f"\t#{idx} on {'GPU ' + gpu if gpu is not None else 'CPU'}: "
                         f"{' '.join(filter_overrides(overrides))}")
                start, wall_start = time.monotonic(), time.time()
                with open(job_dir / "launcher.log", "w") as out:
                    rc = subprocess.run(cmd, env=env, stdout=out, stderr=subprocess.STDOUT).returncode
                (job_dir / "launcher.json").write_text(json.dumps({
                    "job": idx, "gpu": gpu, "start": wall_start, "end": time.time(),
                    "seconds": time.monotonic() - start, "returncode": rc}))
                ret = JobReturn(overrides=overrides, cfg=cfg, hydra_cfg=cfg, working_dir=str(job_dir),
                                task_name=str(cfg.hydra.job.name))
                if rc == 0:
                    ret.status, ret.return_value = JobStatus.COMPLETED, None
                    log.info(f"\t#{idx} done in {time.monotonic() - start:.0f} s")
                else:
                    ret.status = JobStatus.FAILED
                    ret._return_value = RuntimeError(f"job #{idx} ({' '.join(overrides)}) exited with {rc}; "
                                                     f"its log: {job_dir / 'launcher.log'}")
                    log.error(f"\t#{idx} FAILED (exit {rc}): see {job_dir / 'launcher.log'}")
                return ret
            finally:
                slots.put(gpu)

        with ThreadPoolExecutor(max_workers=slots.qsize()) as pool:
            return list(pool.map(run, jobs))
