"""Train, then evaluate on every test split: `python -m flmk.train model=<m> data=<d> ...`.

Hydra composes conf/train.yaml; a multirun over ablation rows reproduces a
paper's table (`python -m flmk.train -m experiment=<paper>/<table>`).
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import hydra
import pytorch_lightning as pl
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict

from flmk.artefacts import print_results, training_schedule, write_results
from flmk.checkpoint import describe
from flmk.ddp import job_scope
from flmk.errors import hydra_cli
from flmk.models.module import LandmarkModule, NonFiniteLossError
from flmk.options import check_options
from flmk.runstate import SIGTERMException, continue_csv_logs, interrupted_exit, record_resume, resume_argv

log = logging.getLogger("flmk.train")
CONF_DIR = str(Path(__file__).resolve().parents[2] / "conf")


def seed_list(first: int, n: int) -> str:
    """The seeds axis of a multirun (conf/train.yaml): ``seeds=3`` -> "42,43,44" from ``seed=42``."""
    if int(n) < 1:
        raise ValueError(f"seeds={n}: expected a positive number of seeds per row")
    return ",".join(str(int(first) + i) for i in range(int(n)))


OmegaConf.register_new_resolver("seed_list", seed_list, replace=True)


def runtime_choice(group: str) -> str | None:
    if not HydraConfig.initialized():
        return None
    return HydraConfig.get().runtime.choices.get(group)


def command_line() -> list[str]:
    """This job's overrides (a sweep's expanded per job), empty outside a Hydra run."""
    return list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []


def build_datamodule(cfg: DictConfig) -> pl.LightningDataModule:
    return instantiate(cfg.data, crop_size=cfg.model.crop_size, augment=cfg.augment, _recursive_=False)


def build_module(cfg: DictConfig, dm) -> pl.LightningModule:
    """The model config's network and loss inside LandmarkModule (or the module it names)."""
    target = cfg.model.get("module_target", "flmk.models.module.LandmarkModule")
    module_cls = hydra.utils.get_class(target)
    general = {"ema_decay": cfg.model.get("ema_decay"), "test_flip": cfg.model.get("test_flip", False),
               "finite_check_every": cfg.model.get("finite_check_every", 50),
               "compile": cfg.model.get("compile", False), "compile_mode": cfg.model.get("compile_mode", "default"),
               "compile_backend": cfg.model.get("compile_backend", "inductor"),
               "precise_bn": cfg.model.get("precise_bn", 0)}
    return module_cls(
        net=instantiate(cfg.model.net),
        loss=instantiate(cfg.model.loss),
        optimizer=instantiate(cfg.model.optimizer),
        scheduler=instantiate(cfg.model.scheduler) if cfg.model.get("scheduler") else None,
        scheduler_interval=cfg.model.get("scheduler_interval", "epoch"),
        layout=cfg.data.layout,
        crop_size=cfg.model.crop_size,
        primary_nme=cfg.data.get("primary_nme", "nme_io"),
        test_names=list(dm.test_names),
        test_eval_layouts=dict(getattr(dm, "test_eval_layouts", {})),
        **(general if issubclass(module_cls, LandmarkModule) else {}),
        **OmegaConf.to_container(cfg.model.get("module_kwargs") or OmegaConf.create(), resolve=True),
    )


def build_loggers(cfg: DictConfig) -> list:
    return [instantiate(c) for c in (cfg.get("logger") or {}).values() if c is not None]


def build_callbacks(cfg: DictConfig) -> list:
    return [instantiate(c) for c in (cfg.get("callbacks") or {}).values() if c is not None]


def run_meta(cfg: DictConfig, out_dir: Path) -> dict:
    return {
        "model": cfg.model.name,
        "data": cfg.data.name,
        "row": cfg.get("row"),
        "table": cfg.get("table"),
        "seed": cfg.seed,
        "synthetic": cfg.data.name.startswith("synthetic"),
        "comparable": bool(cfg.data.get("comparable", True)),
        "stands_for": dict(cfg.data.get("stands_for") or {}),
        "primary_nme": cfg.data.get("primary_nme", "nme_io"),
        "output_dir": str(out_dir),
        # HM1D Table 1 reports memory per heatmap length: the peak of this process's GPU allocations
        "peak_gpu_mem_GiB": torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else None,
    }


def log_test_media(loggers: list, out_dir: Path, module, dm) -> None:
    """W&B: CED plots and a grid of predicted vs true landmarks."""
    from pytorch_lightning.loggers import WandbLogger

    wandb_loggers = [lg for lg in loggers if isinstance(lg, WandbLogger)]
    if not wandb_loggers:
        return
    from flmk.visualise import prediction_grid

    images = {f"ced/{p.stem[4:]}": str(p) for p in sorted(out_dir.glob("ced_*.png"))}
    for name in dm.test_names:
        images[f"predictions/{name}"] = prediction_grid(module, dm, f"test/{name}", n=8)
    for lg in wandb_loggers:
        for key, img in images.items():
            lg.log_image(key=key, images=[img])


def train(cfg: DictConfig) -> dict:
    out_dir = Path(cfg.paths.output_dir)
    with open_dict(cfg):
        cfg.row = runtime_choice("ablation") or cfg.get("row")
    check_options(cfg, CONF_DIR, runtime_choice("ablation"), command_line())
    record_resume(cfg)
    pl.seed_everything(cfg.seed, workers=True)
    dm = build_datamodule(cfg)
    dm.prepare_data()
    dm.setup("fit")
    module = build_module(cfg, dm)
    if hasattr(module, "set_mean_shape"):
        module.set_mean_shape(dm.mean_shape())
    module.flmk_config = describe(cfg)
    loggers = build_loggers(cfg)
    # the Trainer first: a bad trainer option (plugins, callbacks) stops the run before any log is written
    trainer: pl.Trainer = instantiate(cfg.trainer, logger=loggers or False, callbacks=build_callbacks(cfg),
                                      default_root_dir=str(out_dir))
    continue_csv_logs(loggers, cfg.get("ckpt_path"))
    for lg in loggers:
        lg.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))
    try:
        trainer.fit(module, datamodule=dm, ckpt_path=cfg.get("ckpt_path"))
    except NonFiniteLossError as e:
        log.error(str(e))
        if trainer.is_global_zero:
            (out_dir / "FAILED.txt").write_text(str(e) + "\n")
        raise SystemExit(f"flmk: {e}") from None
    except SIGTERMException:  # Ctrl-C or SIGTERM: flmk.runstate.Interruptible saved last.ckpt
        raise interrupted_exit(out_dir) from None
    schedule = training_schedule(trainer)
    if not cfg.get("test", True):
        return {}
    ckpt = "best" if trainer.checkpoint_callback and trainer.checkpoint_callback.best_model_path else None
    trainer.test(module, datamodule=dm, ckpt_path=ckpt, verbose=False)
    results = getattr(module, "test_results", {})
    if trainer.is_global_zero and results:
        write_results(out_dir, results, run_meta(cfg, out_dir) | {"schedule": schedule,
                                                                  "divergence": getattr(module, "divergence", None)})
        print_results(results, title=f"{cfg.model.name} on {cfg.data.name}" + (f" [{cfg.row}]" if cfg.row else ""),
                      out_dir=out_dir)
        if getattr(module, "divergence", None):
            print(f"WARNING: the run diverged: {module.divergence}")
        log_test_media(loggers, out_dir, module, dm)
    return {k: v["metrics"] for k, v in results.items()}


@hydra_cli(CONF_DIR, "train")
def main(cfg: DictConfig) -> float | None:
    torch.set_float32_matmul_precision("high")
    with job_scope(Path(cfg.paths.output_dir)):
        metrics = train(cfg)
    first = next(iter(metrics.values()), {})
    return first.get(cfg.data.get("primary_nme", "nme_io"))


if __name__ == "__main__":
    sys.argv = resume_argv(sys.argv)  # resume=<run>: the run's own folder, config and last.ckpt
    main()
