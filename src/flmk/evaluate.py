"""Evaluate a checkpoint on every test split of a data config.

    python -m flmk.evaluate ckpt_path=outputs/.../checkpoints/best.ckpt [data=<d>]

The model (and, unless given, the data) config is read from the checkpoint itself
(flmk.checkpoint), so a checkpoint copied out of its run folder evaluates too. A
model=, model.crop_size, model.net.* or data.layout override that differs from the
checkpoint is refused naming both values unless force=true; the data to evaluate on
is free. Writes metrics.json, per-image errors, CED plots and the network's maps to
this evaluation's folder.
"""

from __future__ import annotations

from pathlib import Path

import hydra
import pytorch_lightning as pl
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict

from flmk.artefacts import print_results, write_results
from flmk.checkpoint import build, check_compatible, description, load_weights, model_config, read
from flmk.errors import hydra_cli
from flmk.train import CONF_DIR, build_datamodule, build_loggers, run_meta
from flmk.visualise import save_maps


def evaluate(cfg: DictConfig) -> dict:
    ckpt_path = Path(cfg.ckpt_path)
    ckpt = read(ckpt_path)
    out_dir = Path(cfg.paths.output_dir)
    desc = description(ckpt, ckpt_path)
    check_compatible(desc, cfg, ckpt_path, force=cfg.get("force", False))
    with open_dict(cfg):
        cfg.model = model_config(desc, cfg)
        cfg.data = cfg.data if cfg.get("data") is not None else OmegaConf.create(desc["data"])
        cfg.row = cfg.get("row") or desc.get("row")
        cfg.augment.crop_scale = desc["crop_scale"]  # the crop margin the model was trained with
    pl.seed_everything(cfg.seed, workers=True)
    dm = build_datamodule(cfg)
    dm.prepare_data()
    dm.setup("test")
    module = build(desc, cfg.model, dm.test_names, getattr(dm, "test_eval_layouts", {}),
                   cfg.data.get("primary_nme", "nme_io"))
    load_weights(module, ckpt, ckpt_path, desc)
    trainer: pl.Trainer = instantiate(cfg.trainer, logger=build_loggers(cfg) or False, callbacks=[],
                                      default_root_dir=str(out_dir))
    trainer.test(module, datamodule=dm, verbose=False)
    results = module.test_results
    if trainer.is_global_zero:
        meta = run_meta(cfg, out_dir) | {"checkpoint": str(ckpt_path.resolve())}
        write_results(out_dir, results, meta)
        for name in dm.test_names:
            save_maps(module, dm, f"test/{name}", out_dir / "maps", n=cfg.get("save_maps", 4))
        print_results(results, title=f"{cfg.model.name} on {cfg.data.name} ({ckpt_path.name})", out_dir=out_dir)
    return {k: v["metrics"] for k, v in results.items()}


@hydra_cli(CONF_DIR, "evaluate")
def main(cfg: DictConfig) -> None:
    evaluate(cfg)  # a CheckpointError is a user error: one line, exit status 2 (flmk.errors)


if __name__ == "__main__":
    main()
